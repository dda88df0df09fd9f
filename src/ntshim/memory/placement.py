"""Placing memory below an address bound (for 32-bit pointers in a 64-bit process).

The kernel's own search (``mmap`` without an address) cannot be told "below 4 GiB", and
``MAP_32BIT`` only searches 1–2 GiB on x86-64.  So: read the free ranges from
``/proc/self/maps``, pick the highest range that fits below the bound (top-down, leaving the
lowest addresses for tighter bounds), and map there with ``MAP_FIXED_NOREPLACE``, which
never replaces anything.  Other code in the process may map into the range between the read
and the map; the kernel then refuses (EEXIST) and we read the maps again.  ntshim's own
placements take turns (``_PLACING``): threads placing at once would otherwise all pick the
same highest range, only one of them wins each round, and a thread could lose any number of
rounds in a row.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from .. import _core
from .._arguments import as_int
from .._kernel import PAGE_SIZE
from . import maps

T = TypeVar("T")

#: The end of the user address space on x86-64 with 4-level page tables (the kernel's
#: TASK_SIZE): a bound beyond it cannot mean anything.
USER_SPACE_END = 0x7FFFFFFFF000
#: How often to re-read the maps when code outside ntshim keeps taking the chosen range.
ATTEMPTS = 64
#: Held from reading the maps until the mapping is made, so that this process's threads
#: placing memory never race each other for the same range.
_PLACING = threading.Lock()


def _fresh_lock_in_child() -> None:
    # A fork child has only the forking thread: a placement another thread was making holds
    # the lock for nobody there.  The lock guards no data, only turns, so a new one is right.
    global _PLACING
    _PLACING = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)


@functools.cache
def mmap_min_addr() -> int:
    """The lowest address the kernel lets an unprivileged mmap use (vm.mmap_min_addr),
    read once per process."""
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            return max(int(f.read()), PAGE_SIZE)
    except (OSError, ValueError):
        return 0x10000  # the usual default


def _gaps() -> list[tuple[int, int]]:
    """Free ranges of the address space, ascending, as ``[start, end)``."""
    out = []
    cursor = mmap_min_addr()
    for lo, hi, *_ in maps.mappings():
        lo = min(lo, USER_SPACE_END)  # [vsyscall] lies beyond the user address space
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
    with _PLACING:
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
                continue  # other code mapped there after we read the maps: look again
    raise MemoryError(f"other code took every free range below {below:#x} {ATTEMPTS} times in a row")


# ---- NtAllocateVirtualMemory's zero_bits -------------------------------------------------------

#: The largest count of leading zero bits NtAllocateVirtualMemory accepts: 21 leaves only
#: addresses below 2 KiB, which no allocation can get, but the value itself is legal.
ZERO_BITS_MAX_COUNT = 21
#: From here on a zero_bits value is a mask (x64 only; 32-bit Windows refuses it); between
#: 33 and this value it is refused, so that a count cannot be mistaken for a mask.
ZERO_BITS_MIN_MASK = 0xFFFF


def check_address(address: object, align: int) -> int:
    """A placement address: positive and aligned (to a page at least); 0 for None."""
    if address is None:
        return 0
    address = as_int(address, "address")
    unit = max(align, PAGE_SIZE)
    if address <= 0 or address % unit:
        raise ValueError(f"address must be a positive multiple of {unit:#x}, got {address:#x}")
    return address


def check_below(below: object, size: int, address: int) -> int | None:
    """A bound ``size`` bytes can be placed under (ending below it, ``address`` included)."""
    if below is None:
        return None
    bound = as_int(below, "below")
    if bound > USER_SPACE_END:
        raise ValueError(f"below={bound:#x} is beyond the end of the user address space ({USER_SPACE_END:#x})")
    if bound < size + mmap_min_addr():
        raise ValueError(
            f"below={bound:#x} leaves no room for {size:#x} bytes above the lowest mappable address "
            f"({mmap_min_addr():#x}, vm.mmap_min_addr)"
        )
    if address and address + size > bound:
        raise ValueError(f"address {address:#x} + size {size:#x} does not end below {bound:#x}")
    return bound


def bound_of(below: int | None, zero_bits: int | None, size: object, address: object = None) -> int | None:
    """``below``, or the bound ``zero_bits`` sets instead (:func:`zero_bits_limit`)."""
    if zero_bits is None:
        return below
    if below is not None:
        raise ValueError("below and zero_bits both bound the address: give one of them")
    bound = zero_bits_limit(zero_bits)
    if bound is None or bound > USER_SPACE_END:
        return None  # a mask wider than the address space bounds nothing
    # A legal zero_bits can still leave no room (21 allows only the first 2 KiB): that is a
    # request nothing can satisfy, as on Windows (STATUS_NO_MEMORY), not a bad argument.
    rounded = -(-as_int(size, "size") // PAGE_SIZE) * PAGE_SIZE
    if address is None and rounded > 0 and bound - rounded < mmap_min_addr():
        raise MemoryError(
            f"zero_bits keeps memory below {bound:#x}: no room there for {rounded:#x} bytes above "
            f"vm.mmap_min_addr ({mmap_min_addr():#x})"
        )
    return bound


def map_placed(make: Callable[[int], T], size: int, address: int, align: int, bound: int | None) -> T:
    """``make(address)``: at ``address`` if given, else under ``bound`` if given (see
    :func:`place_below`), else ``make(0)`` (anywhere)."""
    if bound is not None and not address:
        return place_below(size, bound, max(align, PAGE_SIZE), make)
    return make(address)


def zero_bits_limit(zero_bits: int) -> int | None:
    """The exclusive address bound that ``NtAllocateVirtualMemory``'s ``zero_bits`` sets on
    x64: the allocation's last byte must lie below it.  None for 0 (no bound).

    - 1 to 21: how many of the 32 low address bits must be zero at the top, so the bound is
      ``1 << (32 - zero_bits)`` (1 → 2 GiB, 2 → 1 GiB, ... 21 → 2 KiB).
    - 32, and ``0xFFFF`` up to ``2**64 - 1``: a mask whose highest set bit is the highest
      address bit allowed; only that bit counts, so the bound is ``1 << bit_length``
      (``0x7FFFFFFF`` → 2 GiB, ``0xFFFFFFFF`` → 4 GiB, 32 → 64 bytes).

    22 to 31 and 33 to 0xFFFE raise ValueError (Windows: STATUS_INVALID_PARAMETER_3), as do
    negative values and values wider than 64 bits.  The rules are Wine's
    (``dlls/ntdll/unix/virtual.c``: NtAllocateVirtualMemory and ``get_zero_bits_limit``),
    which its tests check against Windows.
    """
    zero_bits = as_int(zero_bits, "zero_bits")
    if zero_bits == 0:
        return None
    if zero_bits < 0 or zero_bits >> 64:
        raise ValueError(f"zero_bits must be a ULONG_PTR (0 to 2**64 - 1), got {zero_bits:#x}")
    if zero_bits < 32:
        if zero_bits > ZERO_BITS_MAX_COUNT:
            raise ValueError(
                f"zero_bits={zero_bits} is invalid: a count of leading zero bits goes up to "
                f"{ZERO_BITS_MAX_COUNT} (values from 32 are masks)"
            )
        return 1 << (32 - zero_bits)
    if 32 < zero_bits < ZERO_BITS_MIN_MASK:
        raise ValueError(
            f"zero_bits={zero_bits:#x} is invalid: a mask must be 32 or at least {ZERO_BITS_MIN_MASK:#x} "
            f"(counts go up to {ZERO_BITS_MAX_COUNT})"
        )
    return 1 << zero_bits.bit_length()


def capabilities() -> dict[str, object]:
    """What placement can do on this kernel, each mechanism tried on a scratch page (for
    ``ntshim info``)."""
    probe = _core.placement_probe()
    low = int(probe["map_32bit_address"])
    return {
        "map_fixed_noreplace": probe["map_fixed_noreplace"],
        "mremap_alias": probe["mremap_alias"],
        "mremap_dontunmap_shared": probe["mremap_dontunmap_shared"],
        "map_32bit": bool(low),
        "map_32bit_address": low,
        "mmap_min_addr": mmap_min_addr(),
        "user_space_end": USER_SPACE_END,
        "used": (
            "below=/zero_bits=: free ranges from /proc/self/maps, top-down, MAP_FIXED_NOREPLACE; "
            "alias: mremap(old_size=0) or the descriptor mapped again, onto a reserved placeholder; "
            "limit_address_space: PROT_NONE MAP_NORESERVE reservations above the limit"
        ),
    }
