"""uffd-async: userfaultfd asynchronous write-protection read back with PAGEMAP_SCAN (Linux 6.7+).

The kernel keeps the dirty state in the page tables: a write to a protected page just
clears the page's uffd-wp bit, inside the page fault, with no message and no thread of
ours.  A query is one PAGEMAP_SCAN walk that reports written pages and, when resetting,
write-protects exactly those pages in the same atomic step.  Writes the kernel makes on
our behalf (read(2) into watched memory) are tracked the same way.  The mechanism is in
C (``_core/writewatch/uffd.c``, ``_core/writewatch/tracker.c``).
"""

from __future__ import annotations

import errno
from array import array

from .. import _core, _kernel
from ..errors import BackendUnavailable
from .backend import ALREADY_REGISTERED, Availability, Backend, Protections, Tracker

_REQUIRED = _core.UFFD_FEATURE_WP_ASYNC | _core.UFFD_FEATURE_WP_UNPOPULATED
_WANTED = _REQUIRED | _core.UFFD_FEATURE_PAGEFAULT_FLAG_WP | _core.UFFD_FEATURE_WP_HUGETLBFS_SHMEM

_REFUSALS = {
    errno.EINVAL: "userfaultfd cannot write-protect this mapping (driver mappings, VM_PFNMAP/VM_IO, "
    "cannot be watched by it); the shadow backend can",
    errno.EPERM: "userfaultfd refuses memory that can never be written (a shared mapping of a file opened "
    "read-only, or a read-only alias of one); mprotect and shadow can watch it",
    errno.EBUSY: ALREADY_REGISTERED,
}


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
    def track(cls, address: int, size: int, prots: Protections) -> Tracker:
        features = _WANTED & _kernel.userfaultfd().features
        try:
            return _core.uffd_async_tracker(address, size, prots, features=features, pagemap_fd=_kernel.pagemap_fd())
        except OSError as e:
            if e.filename == "UFFDIO_REGISTER" and e.errno in _REFUSALS:
                raise BackendUnavailable(cls.name, _REFUSALS[e.errno]) from e
            if e.errno == errno.EOPNOTSUPP:
                raise BackendUnavailable(cls.name, "the kernel accepted UFFDIO_API but dropped WP_ASYNC") from e
            raise


def _self_test(name: str) -> Availability:
    """Watch one page and check that one write is reported exactly once: kernels have been
    seen to accept the feature bits and still not deliver."""
    ps = _kernel.PAGE_SIZE
    memory = _core.Mapping(ps, _core.PROT_READ | _core.PROT_WRITE)
    try:
        tracker = UffdAsync.track(memory.address, ps, bytes([_core.PROT_READ | _core.PROT_WRITE]))
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
        if e.filename == "PAGEMAP_SCAN" and e.errno in (errno.ENOTTY, errno.EINVAL):
            return Availability(name, False, "PAGEMAP_SCAN ioctl on /proc/self/pagemap is missing (Linux 6.7+)")
        return Availability(name, False, f"self-test failed: {e}")
    finally:
        memory._unmap()
    if (before, after, again) != (b"", array("Q", [0, ps]).tobytes(), b""):
        return Availability(name, False, "self-test failed: a write to a watched page was not reported exactly once")
    return Availability(name, True)
