"""Placing memory below an address bound (for 32-bit pointers in a 64-bit process).

The kernel's own search (``mmap`` without an address) cannot be told "below 4 GiB", and
``MAP_32BIT`` only searches 1–2 GiB on x86-64.  So: read the free ranges from
``/proc/self/maps``, pick the highest range that fits below the bound (top-down, leaving the
lowest addresses for tighter bounds), and map there with ``MAP_FIXED_NOREPLACE``, which
never replaces anything.  Another thread may map into the range between the read and the
map; the kernel then refuses (EEXIST) and we read the maps again: race-free without a lock
that other mmap callers in the process would ignore anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .._kernel import PAGE_SIZE
from . import maps

T = TypeVar("T")

#: The end of the user address space on x86-64 with 4-level page tables (the kernel's
#: TASK_SIZE): a bound beyond it cannot mean anything.
USER_SPACE_END = 0x7FFFFFFFF000
#: How often to re-read the maps when other threads keep taking the chosen range.
ATTEMPTS = 64


def mmap_min_addr() -> int:
    """The lowest address the kernel lets an unprivileged mmap use (vm.mmap_min_addr)."""
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            return max(int(f.read()), PAGE_SIZE)
    except (OSError, ValueError):
        return 0x10000  # the usual default


def _gaps() -> list[tuple[int, int]]:
    """Free ranges of the address space, ascending, as ``[start, end)``."""
    out = []
    cursor = mmap_min_addr()
    for lo, hi, _prot, _path in maps._mappings():
        if lo > cursor:
            out.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < USER_SPACE_END:
        out.append((cursor, USER_SPACE_END))
    return out


def highest_fit(size: int, below: int, align: int) -> int | None:
    """The highest ``align``-aligned start of ``size`` free bytes ending at or below
    ``below``, or None."""
    for lo, hi in reversed(_gaps()):
        top = min(hi, below)
        if top - lo < size:
            continue
        start = (top - size) // align * align
        if start >= lo:
            return start
    return None


def place_below(size: int, below: int, align: int, map_at: Callable[[int], T]) -> T:
    """``map_at(address)`` at the highest free address that keeps ``[address, address+size)``
    below ``below``; ``map_at`` must refuse (FileExistsError) rather than replace.  Raises
    MemoryError when no free range fits."""
    for _ in range(ATTEMPTS):
        start = highest_fit(size, below, align)
        if start is None:
            raise MemoryError(
                f"no free range of {size:#x} bytes (aligned to {align:#x}) ends below {below:#x}: "
                "the address space under the bound is full or too fragmented"
            )
        try:
            return map_at(start)
        except FileExistsError:
            continue  # another thread mapped there after we read the maps: look again
    raise MemoryError(f"other threads took every free range below {below:#x} {ATTEMPTS} times in a row")
