"""Keeping every later mapping of the process below an address (as FEX and Hangover do).

The kernel places a mapping without an address top-down from ``mmap_base`` (just under
the main thread's stack), and falls back to the lowest free range when nothing is free
above.  Reserving every free range above the limit — inaccessible, ``MAP_NORESERVE``, so it
costs no memory and no commit charge — leaves the kernel nothing but the ranges below it:
malloc's mappings, thread stacks, libraries loaded later, ``mmap`` from any code, all land
under the limit.  Releasing unmaps exactly what was reserved.

The range the main thread's stack may still grow into (``RLIMIT_STACK`` below the
``[stack]`` mapping, plus the kernel's guard gap) is left free: the kernel never places
mappings there anyway (it is above ``mmap_base``), and reserving it would turn deep
recursion into a crash.
"""

from __future__ import annotations

import errno
import resource
import threading
from types import TracebackType

from .. import _core
from .._arguments import as_int
from . import maps, placement

#: The stack growth room left free under ``[stack]`` when RLIMIT_STACK is unlimited.
_UNLIMITED_STACK_ROOM = 1 << 30
#: The kernel's stack guard gap (stack_guard_gap: 256 pages).
_GUARD = 256 * placement.PAGE_SIZE
#: Reserving races with other threads' mappings; after this many passes, give up.
_PASSES = 64

_lock = threading.Lock()


def _stack_room() -> tuple[int, int] | None:
    """The range below the main thread's stack kept free for its growth."""
    for mapping in maps.mappings():
        if mapping.path == "[stack]":
            soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
            room = _UNLIMITED_STACK_ROOM if soft == resource.RLIM_INFINITY else soft
            return max(mapping.start - room - _GUARD, 0), mapping.start
    return None


class AddressSpaceLimit:
    """The reservations that keep new mappings below ``limit``; ``release()`` (or leaving
    the ``with`` block) gives the address space back."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._reserved: list[tuple[int, int]] = []
        self._released = False

    @property
    def reserved(self) -> list[tuple[int, int]]:
        """The ranges reserved, as ``(start, size)``."""
        return list(self._reserved)

    @property
    def active(self) -> bool:
        return not self._released

    def _fill(self) -> None:
        keep_free = _stack_room()
        for _ in range(_PASSES):
            gaps = [(max(lo, self.limit), hi) for lo, hi in placement._gaps() if hi > self.limit]
            if keep_free:  # the stack's growth room is not ours to take
                gaps = [piece for lo, hi in gaps for piece in _without(lo, hi, *keep_free) if piece[1] > piece[0]]
            if not gaps:
                return
            for lo, hi in gaps:
                try:
                    _core.reserve_range(lo, hi - lo)
                except FileExistsError:
                    continue  # another thread mapped into it: the next pass sees what is left
                except OSError as e:
                    if e.errno == errno.ENOMEM:
                        raise MemoryError(f"cannot reserve {hi - lo:#x} bytes at {lo:#x} (RLIMIT_AS?): {e}") from None
                    raise
                self._reserved.append((lo, hi - lo))
        raise MemoryError(f"other threads kept mapping above {self.limit:#x}; {_PASSES} passes did not fill it")

    def release(self) -> None:
        """Unmap every reservation (idempotent): normal placement returns."""
        with _lock:
            if self._released:
                return
            self._released = True
            for start, size in reversed(self._reserved):
                _core.unmap(start, size)

    def __enter__(self) -> AddressSpaceLimit:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "active" if self.active else "released"
        total = sum(size for _, size in self._reserved)
        return f"<AddressSpaceLimit below {self.limit:#x}: {len(self._reserved)} ranges, {total:#x} bytes, {state}>"


def _without(lo: int, hi: int, cut_lo: int, cut_hi: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` minus ``[cut_lo, cut_hi)``."""
    if cut_hi <= lo or cut_lo >= hi:
        return [(lo, hi)]
    return [(lo, min(hi, cut_lo)), (max(lo, cut_hi), hi)]


def limit_address_space(limit: int = 4 << 30) -> AddressSpaceLimit:
    """Reserve every free range of the address space above ``limit`` so that every later
    mapping of the process — malloc, thread stacks, libraries, any ``mmap`` — lands below
    it.  Returns a handle whose ``release()`` (or ``with`` exit) gives the space back.

    Mappings that already exist above the limit stay where they are.  MemoryError if the
    process cannot map that much address space (RLIMIT_AS).
    """
    limit = as_int(limit, "limit")
    if not placement.mmap_min_addr() < limit <= placement.USER_SPACE_END:
        raise ValueError(
            f"limit must be above vm.mmap_min_addr ({placement.mmap_min_addr():#x}) and at most the end of the "
            f"user address space ({placement.USER_SPACE_END:#x}), got {limit:#x}"
        )
    if limit % placement.PAGE_SIZE:
        raise ValueError(f"limit must be a multiple of the page size ({placement.PAGE_SIZE}), got {limit:#x}")
    handle = AddressSpaceLimit(limit)
    with _lock:
        try:
            handle._fill()
        except BaseException:
            handle._released = True
            for start, size in reversed(handle._reserved):
                _core.unmap(start, size)
            raise
    return handle
