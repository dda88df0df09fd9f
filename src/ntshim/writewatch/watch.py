"""WriteWatch: the one contract every backend is used through."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .. import _kernel
from .._arguments import as_int, page_range
from .backend import Protections, Tracker
from .dirtypages import DirtyPages
from .registry import open_tracker, watched

_live: weakref.WeakSet[WriteWatch] = weakref.WeakSet()


class WriteWatch:
    """Tracks which pages of a piece of memory are written.

    The watch covers whole pages, ``size`` bytes from ``address``; offsets in arguments and
    results count from ``address``.  Obtain one from :func:`ntshim.memory.watch` or
    :func:`ntshim.memory.alloc` (``watch=True``); do not construct it directly.
    Methods are safe to call from several threads: the tracker behind the watch takes a
    lock around each operation, so closing cannot race with a query.
    """

    def __init__(
        self,
        address: int,
        size: int,
        prots: Protections | Callable[[], bytes],
        backend: str | None,
        buffer: Callable[[], Any],
        buffer_offset: int,
        on_close: Callable[[], None] | None = None,
        shares_pages: bool = False,
    ) -> None:
        watched.claim(address, address + size)
        try:
            # Memory we do not own: its pages' protections as the kernel has them, read only
            # now that the range is ours — before, another watch of a page it shares could
            # still have it write-protected, and that would be taken for the owner's wish.
            owner_prots = prots() if callable(prots) else prots
            self._tracker: Tracker | None
            self._tracker, self._backend = open_tracker(address, size, owner_prots, backend, shares_pages)
        except BaseException:
            watched.release(address)
            raise
        self._address = address
        self._size = size
        self._pid = _kernel.pid
        self._lock = threading.Lock()
        self._buffer = buffer  # () -> an exporter of the watched bytes, for writing()
        self._buffer_offset = buffer_offset  # where that exporter's byte 0 lies, from address
        self._on_close = on_close
        self._shares_pages = shares_pages  # the first or last page holds bytes that are not the buffer's
        _live.add(self)

    # ---- what it watches -------------------------------------------------------------

    @property
    def address(self) -> int:
        """Address of the first watched page."""
        return self._address

    @property
    def size(self) -> int:
        """Bytes watched: whole pages."""
        return self._size

    @property
    def granularity(self) -> int:
        """Bytes per tracked page."""
        return _kernel.PAGE_SIZE

    @property
    def backend(self) -> str:
        """Name of the backend doing the tracking."""
        return self._backend.name

    @property
    def closed(self) -> bool:
        return self._tracker is None

    @property
    def kernel_writes_tracked(self) -> bool:
        """True when writes the kernel makes into the memory (``os.readv``, ``readinto``,
        ``recv_into``) simply work and are tracked; False when they fail with EFAULT unless
        done inside :meth:`writing`."""
        return self._live_tracker().kernel_writes_tracked

    # ---- the contract ----------------------------------------------------------------

    def dirty(
        self, offset: int = 0, size: int | None = None, *, reset: bool = False, limit: int | None = None
    ) -> DirtyPages:
        """Pages written since they were last reset, ascending.

        ``offset`` (page aligned) and ``size`` (bytes, rounded up to pages; ``None``: to the
        end) select part of the memory.  With ``reset=True`` exactly the returned pages are
        reset in the same atomic step: a write racing with the call is either in this
        answer or in a later one, never lost.  ``limit=N`` returns (and resets) only the
        first N written pages.
        """
        if reset is not True and reset is not False:
            raise TypeError(f"reset must be a bool, not {type(reset).__name__}")
        if offset == 0 and size is None and offset.__class__ is int:  # the whole memory: the common case
            first, count = 0, self._size // _kernel.PAGE_SIZE
        else:
            first, count = page_range(offset, size, self._size, _kernel.PAGE_SIZE)
        if limit is not None:
            limit = as_int(limit, "limit")
            if limit < 1:
                raise ValueError(f"limit must be >= 1 (or None for no limit), got {limit}")
            limit = min(limit, count)  # a limit beyond the range is no limit
        runs = self._live_tracker().dirty(first, count, reset, limit or 0)
        return DirtyPages(runs, self._address, _kernel.PAGE_SIZE)

    def reset(self, offset: int = 0, size: int | None = None) -> None:
        """Forget that the pages of the range were written."""
        first, count = page_range(offset, size, self._size, _kernel.PAGE_SIZE)
        self._live_tracker().dirty(first, count, True, 0)

    @contextlib.contextmanager
    def writing(self, offset: int = 0, size: int | None = None) -> Iterator[memoryview]:
        """Open the range for writes made by the kernel and yield a memoryview of it.

        Under ``mprotect`` (and ``uffd-sync`` without privilege) the kernel cannot write into
        protected pages: ``os.readv``, ``file.readinto`` and ``socket.recv_into`` fail with
        EFAULT.  Inside this block the pages are writable for everyone.  On every backend
        the pages of the range count as written during the block and once more after it,
        so nothing written in it is lost even if another thread resets meanwhile.  The view
        covers the watched bytes of the range (not the parts of the first and last page
        outside a watched buffer) and is released when the block ends.
        """
        first, count = page_range(offset, size, self._size, _kernel.PAGE_SIZE)
        exporter = self._buffer()
        if exporter is None or self.closed:
            raise ValueError("WriteWatch is closed")
        view = memoryview(exporter)
        ps = _kernel.PAGE_SIZE
        lo = max(first * ps - self._buffer_offset, 0)
        hi = min((first + count) * ps - self._buffer_offset, view.nbytes)
        window = view[lo:hi]
        tracker = self._live_tracker()
        tracker.kernel_write(first, count, True)
        try:
            yield window
        finally:
            if not tracker.closed:
                tracker.kernel_write(first, count, False)
            with contextlib.suppress(BufferError):  # objects made from the view keep it alive
                window.release()
                view.release()

    def close(self) -> None:
        """Stop tracking and give the memory back as it was.  Idempotent."""
        with self._lock:
            tracker, self._tracker = self._tracker, None
            if tracker is None:
                return
            tracker.close()
            self._buffer = _gone
            watched.release(self._address)
            if self._on_close is not None:
                self._on_close()

    # ---- plumbing ----------------------------------------------------------------------

    def _live_tracker(self) -> Tracker:
        tracker = self._tracker
        if tracker is None:
            raise ValueError("WriteWatch is closed")
        if self._pid != _kernel.pid and not self._backend.survives_fork:
            raise RuntimeError(
                f"this WriteWatch was made in process {self._pid}; the {self.backend} backend does not "
                "track a forked child (the kernel drops userfaultfd registrations on fork)"
            )
        return tracker

    def _protect(self, first: int, count: int, prot: int) -> None:
        """Change page protections (for Region.protect), keeping the dirty state exact."""
        self._live_tracker().protect(first, count, prot)

    def _mark(self, first: int, count: int) -> None:
        """Count the pages as written (for ntshim.win32's VirtualProtect bookkeeping)."""
        self._live_tracker().mark(first, count)

    def _discard(self, first: int, count: int) -> None:
        """Drop the pages' contents and their write state (for Region.decommit)."""
        self._live_tracker().discard(first, count)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> WriteWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_tracker", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"backend={self.backend}"
        return f"<WriteWatch {self._address:#x}+{self._size:#x} {state}>"


def _gone() -> None:
    return None


def _reset_locks_in_child() -> None:
    # A lock held by another thread at fork() would stay held forever in the child.
    for w in list(_live):
        w._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_locks_in_child)
