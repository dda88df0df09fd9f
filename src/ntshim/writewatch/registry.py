"""Which backends exist, which one serves a request, and which memory is already watched."""

from __future__ import annotations

import bisect
import collections
import os
import threading

from .._backends import Family
from ..errors import BackendUnavailable
from .backend import Backend, Protections, Tracker
from .mprotect import Mprotect
from .shadow import Shadow
from .uffd_async import UffdAsync
from .uffd_sync import UffdSync

#: Best first: automatic selection takes the first that is available and accepts the memory.
_CLASSES: dict[str, type[Backend]] = {b.name: b for b in (UffdAsync, UffdSync, Mprotect, Shadow)}
FAMILY: Family[Backend] = Family(
    "write-watch", "NTSHIM_WRITEWATCH_BACKEND", tuple(_CLASSES), _CLASSES.__getitem__, exhausted="can watch this memory"
)
ENV_VAR, backend_class, backends = FAMILY.env_var, FAMILY.backend_class, FAMILY.backends


def open_tracker(
    address: int, size: int, prots: Protections, backend: str | None, shares_pages: bool = False
) -> tuple[Tracker, type[Backend]]:
    """Start tracking with the requested backend, or the best one that accepts this memory.
    ``shares_pages``: the first or last page holds bytes that are not the watched buffer's."""

    def attempt(chosen: type[Backend]) -> tuple[Tracker, type[Backend]]:
        hazard = chosen.shared_page_hazard() if shares_pages else ""
        if hazard:
            raise BackendUnavailable(
                chosen.name,
                "the buffer shares its first or last page with memory it does not own (the heap's, say), and "
                f"{chosen.name} would write-protect that page: {hazard}; watch whole pages (ntshim.alloc, "
                "mmap.mmap, or a slice of them) or use another backend",
            )
        return chosen.track(address, size, prots), chosen

    return FAMILY.select(backend, attempt)


class _WatchedRanges:
    """Address ranges under watch in this process.  Two watches over the same page would
    reset each other's state (and the userfaultfd backends cannot register a page twice),
    so overlaps are refused.

    Watches also end in finalizers (a Region or WriteWatch the collector frees), and the
    collector may run at any allocation — also inside :meth:`claim`, on the thread holding
    the lock.  So :meth:`release` never waits for the lock: it queues the range, and whoever
    holds the lock next applies the queue before looking for overlaps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._released: collections.deque[int] = collections.deque()  # appends are atomic

    def claim(self, start: int, end: int) -> None:
        with self._lock:
            self._apply_releases()
            i = bisect.bisect_right(self._starts, start)
            overlaps = (i > 0 and self._ends[i - 1] > start) or (i < len(self._starts) and self._starts[i] < end)
            if not overlaps:
                self._starts.insert(i, start)
                self._ends.insert(i, end)
        if overlaps:
            raise ValueError(f"memory {start:#x}-{end:#x} overlaps memory that is already watched")

    def release(self, start: int) -> None:
        self._released.append(start)
        if self._lock.acquire(blocking=False):  # else its holder (maybe this very thread) applies it
            try:
                self._apply_releases()
            finally:
                self._lock.release()

    def _apply_releases(self) -> None:
        while self._released:
            start = self._released.popleft()
            i = bisect.bisect_left(self._starts, start)
            if i < len(self._starts) and self._starts[i] == start:
                del self._starts[i], self._ends[i]

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


watched = _WatchedRanges()
os.register_at_fork(after_in_child=watched._after_fork_in_child)
