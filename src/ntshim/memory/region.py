"""Region: page-aligned anonymous memory with the buffer protocol, optionally write-watched; Reservation:
a region whose pages are committed in parts."""

from __future__ import annotations

import os
import threading
import weakref

from .. import _core, _kernel
from .._arguments import page_range
from ..writewatch import WriteWatch
from . import protection


class Region(_core.Mapping):
    """Anonymous memory, ``size`` bytes (whole pages) at ``address``: private, or with
    ``shared`` shared with fork children and with aliases (:func:`ntshim.memory.alias`).

    Supports the buffer protocol (``memoryview``, ``numpy.frombuffer``,
    ``ctypes.c_char.from_buffer``) while every page is readable; buffers are read-only
    unless every page is writable.  ``close()`` (or its alias ``free()``, or leaving a
    ``with`` block) unmaps it; it raises BufferError while a buffer export is alive, and every
    use of a closed region raises ValueError.  ``len(region)`` is its size in bytes.

    Made by :func:`ntshim.memory.alloc`, every page committed; :func:`ntshim.memory.reserve`
    makes a :class:`Reservation` (pages committed in parts), :func:`ntshim.memory.alias` an
    :class:`~ntshim.memory.Alias`.

    A region allocated with ``watch=True`` (or passed to :func:`ntshim.memory.watch`, which
    returns the watch) has its :class:`~ntshim.writewatch.WriteWatch` in ``write_watch``
    (None otherwise): ``region.write_watch.dirty()``, ``.reset()``, ``.writing()``, ...

    Every method may be called from several threads.  The protection and commit state of
    each page are kept in the C base (``_core.Mapping``), which decides whether a buffer may
    be exported and whether pages may lose access in one step each (see ``_change_protection``).
    """

    def __init__(
        self, size: int, prot: int, *, address: int = 0, align: int = 0, shared: bool = False, committed: bool = True
    ) -> None:
        # (size, prot, address, align and committed are taken by _core.Mapping.__new__)
        self._shared = shared  # MAP_SHARED: seen by fork children and by aliases
        self._write_watch: WriteWatch | None = None
        # Serializes what changes the region (protect, commit, decommit, discard, watching,
        # free): each is several steps, some of them without the GIL.
        self._lock = threading.RLock()
        with _live_lock:
            _live.add(self)

    # ---- protection ------------------------------------------------------------------------

    def protect(self, offset: int, size: int, protect: str | int) -> str:
        """Set the protection (``"rw"``, ``"r"``, ``"rx"``, ``"none"``, ..., or ``mmap.PROT_*``
        bits) of whole committed pages; return the previous protection of the first one, as
        letters.

        Raises ValueError when a page of the range is not committed, and BufferError when a
        live buffer export would lose access it was granted (a writable memoryview over
        pages becoming read-only, say).
        """
        prot = protection.parse(protect)
        with self._lock:
            first, count = self._pages(offset, size)
            self._require_committed(first, count)
            previous = self._protections(first, 1)[0]
            self._set_protection(first, count, prot)
        return protection.format(previous)

    def protection(self, offset: int = 0) -> str:
        """Protection of the page at ``offset`` (``"none"`` while it is only reserved)."""
        first, _ = self._pages(offset, None)
        return protection.format(self._protections(first, 1)[0])

    def view(self, offset: int = 0, size: int | None = None) -> memoryview:
        """A memoryview of whole pages (read-only unless every page is writable), for regions
        whose other pages are not all accessible (a reservation committed in parts).  Like
        any buffer export it keeps the region from being freed, and the protection of its
        pages from losing the access it grants, while it lives."""
        first, count = self._pages(offset, size)
        return memoryview(self._view(first, count))

    def committed(self, offset: int = 0) -> bool:
        """Whether the page at ``offset`` is committed (usable) rather than only reserved."""
        first, _ = self._pages(offset, None)
        return bool(self._commit_state(first, 1)[0])

    def _require_committed(self, first: int, count: int) -> None:
        gap = self._commit_state(first, count).find(0)
        if gap >= 0:
            raise ValueError(f"page at offset {(first + gap) * _kernel.PAGE_SIZE:#x} is not committed")

    def _set_protection(self, first: int, count: int, prot: int, committed: bool | None = None) -> None:
        """Change the pages' protection, through the write watch when there is one (it keeps
        the dirty state exact), and record them ``committed`` or not (None: unchanged) with it.
        BufferError when a live export over them would lose access."""
        watch = self._write_watch
        state = -1 if committed is None else int(committed)
        self._change_protection(first, count, prot, None if watch is None else watch._protect, state)

    def _pages(self, offset: object, size: object) -> tuple[int, int]:
        if self.closed:
            raise ValueError("region is freed")
        return page_range(offset, size, self.size, _kernel.PAGE_SIZE)

    # ---- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop any write watch and unmap the memory, as ``mmap.close()`` does.  BufferError
        while buffer exports live, and then nothing changes (the watch keeps watching).
        Closing a closed region does nothing."""
        with self._lock:
            watch = self._write_watch
            # The watch is closed only once no export is alive, and none can appear meanwhile.
            self._unmap(None if watch is None else watch.close)

    free = close  # Windows' word (VirtualFree), kept as an alias of close()

    def __len__(self) -> int:
        """Size in bytes, as ``len(mmap)``; still answered once closed."""
        return self.size

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self.closed and not self.exports:
            self.close()

    # ---- write watch -------------------------------------------------------------------

    def _start_watch(self, backend: str | None) -> WriteWatch:
        with self._lock:  # a free() waits until the watch exists, and then closes it
            if self.closed:
                raise ValueError("region is freed")
            if self._write_watch is not None:
                raise ValueError("this region is already watched")
            region = weakref.ref(self)
            # The tracker shares the mapping's protection table: one record of each page's protection.
            self._write_watch = WriteWatch(
                self.address, self.size, self, backend, region, 0, on_close=self._watch_closed
            )
            return self._write_watch

    def _watch_closed(self) -> None:
        self._write_watch = None

    @property
    def write_watch(self) -> WriteWatch | None:
        """The WriteWatch tracking this region, or None."""
        return self._write_watch

    def __repr__(self) -> str:
        if self.closed:
            return "<Region freed>"
        watch = f" watched by {self._write_watch.backend}" if self._write_watch else ""
        return f"<Region {self.address:#x}+{self.size:#x}{watch}>"


class Reservation(Region):
    """Address space reserved by :func:`ntshim.memory.reserve`: every page starts only reserved
    (inaccessible, costing nothing) and is committed, decommitted and discarded in parts, as
    ``VirtualAlloc`` reservations are.  Everything else works as on any :class:`Region`
    (``protect`` of committed pages, ``view``, write watches, ``close``)."""

    def commit(self, offset: int, size: int, protect: str | int = "rw") -> None:
        """Commit whole pages with the given protection.  Pages committed for the first time,
        or again after :meth:`decommit`, read as zero; pages already committed keep their
        contents and take the new protection."""
        prot = protection.parse(protect)
        with self._lock:
            first, count = self._pages(offset, size)
            self._set_protection(first, count, prot, committed=True)

    def decommit(self, offset: int, size: int) -> None:
        """Give whole pages' memory back, keeping the address range reserved.  Their contents
        are dropped (they read as zero once committed again) and, as on Windows, so is their
        write-watch state."""
        with self._lock:
            first, count = self._pages(offset, size)
            self._set_protection(first, count, 0, committed=False)
            self._drop_contents(first, count)

    def discard(self, offset: int, size: int) -> None:
        """Tell the kernel the contents of these pages are no longer needed (Windows'
        ``MEM_RESET``): until written again, a page may read as before or as zero.  Pages
        only reserved are left alone.  A write-watched region is left alone too: freeing
        its pages would change them behind the watch's back."""
        with self._lock:
            first, count = self._pages(offset, size)
            if self._write_watch is not None or self._shared:
                return  # (MADV_FREE applies to private memory only; "as before" is a valid answer)
            ps = _kernel.PAGE_SIZE
            for start, end in flag_runs(self._commit_state(first, count), 0, count):  # each run of committed pages
                _core.madvise(self.address + (first + start) * ps, (end - start) * ps, _core.MADV_FREE)

    def _drop_contents(self, first: int, count: int) -> None:
        if self._shared:  # unmapping shared pages keeps them in the shared object: remove them there
            ps = _kernel.PAGE_SIZE
            _core.madvise(self.address + first * ps, count * ps, _core.MADV_REMOVE)
        if self._write_watch is not None:
            self._write_watch._discard(first, count)
        else:
            ps = _kernel.PAGE_SIZE
            _core.madvise(self.address + first * ps, count * ps, _core.MADV_DONTNEED)


# Every live region, so that fork() waits until no thread is halfway through changing one:
# a child must not inherit a region lock held by a thread that does not exist there, nor a
# protection change left half done.  Regions made while a fork is prepared wait for it.
# (Python runs `before` handlers last registered first: these, registered after those of
# the write-watch modules imported above, run first, so a thread finishing its change can
# still take a tracker's lock.)
_live: weakref.WeakSet[Region] = weakref.WeakSet()
_live_lock = threading.Lock()
_held_at_fork: list[Region] = []


def _before_fork() -> None:
    _live_lock.acquire()
    _held_at_fork[:] = list(_live)
    for region in _held_at_fork:
        region._lock.acquire()


def _after_fork() -> None:
    for region in _held_at_fork:
        region._lock.release()
    _held_at_fork.clear()
    _live_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def flag_runs(flags: bytes | bytearray, first: int, end: int) -> list[tuple[int, int]]:
    """Runs of 1 bytes in ``flags[first:end]`` (per-page flags of 0 and 1) as ``(start, stop)`` indexes."""
    runs: list[tuple[int, int]] = []
    i = first
    while (start := flags.find(1, i, end)) >= 0:
        stop = flags.find(0, start, end)
        i = end if stop < 0 else stop
        runs.append((start, i))
    return runs
