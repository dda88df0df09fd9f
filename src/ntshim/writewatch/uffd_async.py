"""uffd-async: userfaultfd asynchronous write-protection read back with PAGEMAP_SCAN (Linux 6.7+).

The kernel keeps the dirty state in the page tables: a write to a protected page just
clears the page's uffd-wp bit, inside the page fault, with no message and no thread of
ours.  A query is one PAGEMAP_SCAN walk that reports written pages and, when resetting,
write-protects exactly those pages in the same atomic step.  Writes the kernel makes on
our behalf (read(2) into watched memory) are tracked the same way.
"""

from __future__ import annotations

import errno
import os
from array import array

from .. import _core, _kernel
from ..errors import BackendUnavailable
from .backend import ALREADY_REGISTERED, Availability, Backend

_REQUIRED = _core.UFFD_FEATURE_WP_ASYNC | _core.UFFD_FEATURE_WP_UNPOPULATED
_WANTED = _REQUIRED | _core.UFFD_FEATURE_PAGEFAULT_FLAG_WP | _core.UFFD_FEATURE_WP_HUGETLBFS_SHMEM


class UffdAsyncTracker:
    kernel_writes_tracked = True

    def __init__(self, address: int, size: int) -> None:
        offered = _kernel.userfaultfd().features
        # User-mode-only is enough (and needs no privilege): in asynchronous mode the kernel
        # resolves every fault itself, kernel-mode ones included.
        fd = _core.uffd_open(True)
        try:
            granted, _ = _core.uffd_api(fd, _WANTED & offered)
            if granted & _REQUIRED != _REQUIRED:
                raise BackendUnavailable(UffdAsync.name, "the kernel accepted UFFDIO_API but dropped WP_ASYNC")
            try:
                _core.uffd_register(fd, address, size, _core.UFFDIO_REGISTER_MODE_WP)
            except OSError as e:
                raise BackendUnavailable(UffdAsync.name, _register_failure(e)) from e
            _core.uffd_writeprotect(fd, address, size, True)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._pid = os.getpid()
        self._address = address
        self._size = size

    def dirty(self, first: int, count: int, reset: bool, limit: int) -> bytes:
        start = self._address + first * _kernel.PAGE_SIZE
        return _core.pagemap_scan(
            _kernel.pagemap_fd(), self._address, start, start + count * _kernel.PAGE_SIZE, reset, limit
        )

    def protect(self, first: int, count: int, prot: int) -> None:
        # The uffd-wp bits live in the page table entries and survive mprotect().
        ps = _kernel.PAGE_SIZE
        _core.mprotect(self._address + first * ps, count * ps, prot)

    def mark(self, first: int, count: int) -> None:
        # A page without its uffd-wp bit reads as written.
        ps = _kernel.PAGE_SIZE
        _core.uffd_writeprotect(self._fd, self._address + first * ps, count * ps, False)

    def kernel_write(self, first: int, count: int, open: bool) -> None:
        # The kernel's own writes are tracked like any other: the window only has to make
        # the pages count as written, as it promises.
        self.mark(first, count)

    def discard(self, first: int, count: int) -> None:
        # Dropped pages lose their uffd-wp markers and would read as written: protect again.
        ps = _kernel.PAGE_SIZE
        start, size = self._address + first * ps, count * ps
        _core.madvise(start, size, _core.MADV_DONTNEED)
        _core.uffd_writeprotect(self._fd, start, size, True)

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._pid == os.getpid():  # in a forked child the registration is the parent's
            try:
                _core.uffd_unregister(self._fd, self._address, self._size)
            except OSError:
                pass  # the memory is gone already; closing the fd drops what is left
        os.close(self._fd)
        self._fd = -1

    __del__ = close


def _register_failure(e: OSError) -> str:
    if e.errno == errno.EBUSY:
        return ALREADY_REGISTERED
    return (
        f"userfaultfd cannot write-protect this mapping ({errno.errorcode.get(e.errno or 0, e.errno)}); "
        "driver mappings (VM_PFNMAP/VM_IO) cannot be watched by it; the shadow backend can"
    )


class UffdAsync(Backend):
    name = "uffd-async"
    summary = "userfaultfd asynchronous write-protect + PAGEMAP_SCAN (Linux 6.7+)"
    survives_fork = False

    @classmethod
    def _probe(cls) -> Availability:
        reason = _kernel.userfaultfd().lacking(_REQUIRED, "Linux 6.7+")
        if reason:
            return Availability(cls.name, False, reason)
        return _self_test(cls.name)

    @classmethod
    def track(cls, address: int, size: int, prots: bytes) -> UffdAsyncTracker:
        return UffdAsyncTracker(address, size)


def _self_test(name: str) -> Availability:
    """Watch one page and check that one write is reported exactly once: kernels have been
    seen to accept the feature bits and still not deliver."""
    ps = _kernel.PAGE_SIZE
    memory = _core.Mapping(ps, _core.PROT_READ | _core.PROT_WRITE)
    try:
        tracker = UffdAsyncTracker(memory.address, ps)
        try:
            before = tracker.dirty(0, 1, True, 0)
            with memoryview(memory) as view:
                view[0] = 1
            after = tracker.dirty(0, 1, True, 0)
            again = tracker.dirty(0, 1, True, 0)
        finally:
            tracker.close()
    except BackendUnavailable as e:
        return Availability(name, False, e.reason)
    except OSError as e:
        if "PAGEMAP_SCAN" in str(e) and e.errno in (errno.ENOTTY, errno.EINVAL):
            return Availability(name, False, "PAGEMAP_SCAN ioctl on /proc/self/pagemap is missing (Linux 6.7+)")
        return Availability(name, False, f"self-test failed: {e}")
    finally:
        memory._unmap()
    if (before, after, again) != (b"", array("Q", [0, ps]).tobytes(), b""):
        return Availability(name, False, "self-test failed: a write to a watched page was not reported exactly once")
    return Availability(name, True)
