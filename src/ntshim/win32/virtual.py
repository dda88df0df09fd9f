"""VirtualAlloc, VirtualFree, VirtualProtect and VirtualQuery, as Windows has them.

Every allocation is an :class:`ntshim.memory.Region` (reserved, then committed in parts);
this module adds what Windows keeps on top: the allocation table, the Win32 protection of
each page (``PAGE_EXECUTE`` and ``PAGE_EXECUTE_READ`` differ here, not in Linux), the
allocation's own protection, and the write-watch bookkeeping of ``VirtualProtect``.  The
behaviour follows Windows as Wine's conformance tests describe it
(``dlls/kernel32/tests/virtual.c``); ``docs/win32.md`` lists what differs.
"""

from __future__ import annotations

import bisect
import ctypes
import threading
from array import array
from dataclasses import dataclass

from .. import _kernel
from ..errors import BackendUnavailable
from ..memory import Region, maps, reserve
from ..memory import protection as linux_protection
from . import arguments
from .constants import (
    ALLOCATION_GRANULARITY,
    ERROR_BUSY,
    ERROR_INVALID_ADDRESS,
    ERROR_INVALID_PARAMETER,
    ERROR_NOACCESS,
    ERROR_NOT_ENOUGH_MEMORY,
    ERROR_NOT_SUPPORTED,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_FREE,
    MEM_MAPPED,
    MEM_PRIVATE,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_RESET,
    MEM_TOP_DOWN,
    MEM_WRITE_WATCH,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOMBINE,
)
from .lasterror import Win32Error, win32_function

PAGE = _kernel.PAGE_SIZE
#: First address past the user address space of an x86-64 process (47-bit).
USER_ADDRESS_LIMIT = 1 << 47

# The base protections private memory accepts, as ntshim.memory protections.  The copy-on-
# write ones are refused on private memory (Windows does not convert them).
_BASE_PROTECTIONS = {
    PAGE_NOACCESS: "none",
    PAGE_READONLY: "r",
    PAGE_READWRITE: "rw",
    PAGE_EXECUTE: "x",
    PAGE_EXECUTE_READ: "rx",
    PAGE_EXECUTE_READWRITE: "rwx",
}
_CACHE_BITS = PAGE_NOCACHE | PAGE_WRITECOMBINE
_FROM_LINUX = {linux_protection.parse(text): win for win, text in _BASE_PROTECTIONS.items()}


class MEMORY_BASIC_INFORMATION(ctypes.Structure):
    """What VirtualQuery returns (the x64 layout)."""

    _fields_ = [
        ("BaseAddress", ctypes.c_void_p),
        ("AllocationBase", ctypes.c_void_p),
        ("AllocationProtect", ctypes.c_uint32),
        ("PartitionId", ctypes.c_uint16),
        ("RegionSize", ctypes.c_size_t),
        ("State", ctypes.c_uint32),
        ("Protect", ctypes.c_uint32),
        ("Type", ctypes.c_uint32),
    ]


@dataclass
class Allocation:
    """One VirtualAlloc reservation."""

    region: Region
    protect: int  # AllocationProtect: the protection asked for at reservation time
    page_protect: array  # Win32 protection of each committed page; 0 while only reserved
    # Pages that were dirty when VirtualProtect last covered them.  Windows keeps those
    # reported across a decommit (the test of Wine's test_write_watch that Wine marks
    # todo_wine); None unless the allocation is write-watched.
    latched: bytearray | None

    @property
    def base(self) -> int:
        return self.region.address

    @property
    def end(self) -> int:
        return self.region.address + self.region.size


_lock = threading.RLock()  # Windows serializes virtual memory calls too
_bases: list[int] = []
_allocations: dict[int, Allocation] = {}


def find(address: int) -> Allocation | None:
    """The allocation containing ``address``, if ntshim made one there."""
    i = bisect.bisect_right(_bases, address) - 1
    if i >= 0:
        allocation = _allocations[_bases[i]]
        if address < allocation.end:
            return allocation
    return None


def page_span(address: int, size: int) -> tuple[int, int]:
    """The pages ``[address, address + size)`` touches, as ``(start, end)``."""
    return address - address % PAGE, -(-(address + size) // PAGE) * PAGE


def parse_protect(protect: int) -> str:
    """A Win32 page protection as an ntshim.memory protection; Win32Error if Windows refuses it."""
    base, modifiers = protect & 0xFF, protect & ~0xFF
    if base not in _BASE_PROTECTIONS or modifiers & ~(PAGE_GUARD | _CACHE_BITS) or modifiers & _CACHE_BITS == _CACHE_BITS:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    if modifiers & PAGE_GUARD:
        # Guard pages report their first access as an exception (SEH), which Python
        # programs cannot receive; refuse rather than pretend.
        raise Win32Error(ERROR_NOT_SUPPORTED)
    return _BASE_PROTECTIONS[base]


def _page_word(allocation: Allocation, protect: int) -> int:
    # The cache attribute belongs to the allocation: a page always carries the allocation's,
    # whatever a later call asks for.
    return (protect & 0xFF) | (allocation.protect & _CACHE_BITS)


# ---- VirtualAlloc --------------------------------------------------------------------------


@win32_function(0)
def VirtualAlloc(address: int | None, size: int, allocation_type: int, protect: int) -> int:
    """Reserve and/or commit pages; the base address of what was allocated, 0 on failure."""
    address = arguments.address(address, "address")
    size = arguments.size(size, "size")
    allocation_type = arguments.dword(allocation_type, "allocation_type")
    protect = arguments.dword(protect, "protect")
    known = MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_TOP_DOWN | MEM_WRITE_WATCH
    if size == 0 or allocation_type & ~known or not allocation_type & (MEM_COMMIT | MEM_RESERVE | MEM_RESET):
        raise Win32Error(ERROR_INVALID_PARAMETER)
    with _lock:
        if allocation_type & MEM_RESET:
            if allocation_type != MEM_RESET:
                raise Win32Error(ERROR_INVALID_PARAMETER)
            return _reset(address, size)
        if allocation_type & MEM_WRITE_WATCH and not allocation_type & MEM_RESERVE:
            raise Win32Error(ERROR_INVALID_PARAMETER)
        text = parse_protect(protect)
        if allocation_type & MEM_RESERVE or address == 0:
            allocation = _reserve(address, size, protect, bool(allocation_type & MEM_WRITE_WATCH))
            if allocation_type & MEM_COMMIT:
                _commit(allocation, 0, len(allocation.page_protect), protect, text)
            return allocation.base
        start, end = page_span(address, size)
        existing = find(start)
        if existing is None or end > existing.end:
            raise Win32Error(ERROR_INVALID_ADDRESS)
        _commit(existing, (start - existing.base) // PAGE, (end - start) // PAGE, protect, text)
        return start


def _reserve(address: int, size: int, protect: int, watch: bool) -> Allocation:
    if address:
        base = address - address % ALLOCATION_GRANULARITY
        length = page_span(address, size)[1] - base
    else:
        base, length = 0, page_span(0, size)[1]
    if length <= 0 or base + length > USER_ADDRESS_LIMIT or (base and find(base)) or (base and find(base + length - 1)):
        raise Win32Error(ERROR_INVALID_ADDRESS)
    try:
        region = reserve(length, address=base or None, align=ALLOCATION_GRANULARITY, watch=watch)
    except FileExistsError:
        raise Win32Error(ERROR_INVALID_ADDRESS) from None
    except MemoryError:
        raise Win32Error(ERROR_NOT_ENOUGH_MEMORY) from None
    except BackendUnavailable:
        raise Win32Error(ERROR_NOT_SUPPORTED) from None
    npages = length // PAGE
    allocation = Allocation(region, protect, array("H", bytes(2 * npages)), bytearray(npages) if watch else None)
    bisect.insort(_bases, allocation.base)
    _allocations[allocation.base] = allocation
    return allocation


def _commit(allocation: Allocation, first: int, count: int, protect: int, text: str) -> None:
    try:
        allocation.region.commit(first * PAGE, count * PAGE, text)
    except BufferError:
        raise Win32Error(ERROR_BUSY) from None
    allocation.page_protect[first : first + count] = array("H", [_page_word(allocation, protect)]) * count


def _reset(address: int, size: int) -> int:
    """MEM_RESET: the contents of the pages are no longer of interest."""
    start, end = page_span(address, size)
    allocation = find(start)
    if allocation is None or end > allocation.end:
        raise Win32Error(ERROR_INVALID_ADDRESS)
    allocation.region.discard(start - allocation.base, end - start)
    return start


# ---- VirtualFree ---------------------------------------------------------------------------


@win32_function(False)
def VirtualFree(address: int | None, size: int, free_type: int) -> bool:
    """Decommit pages (``MEM_DECOMMIT``) or release a whole reservation (``MEM_RELEASE``, size 0)."""
    address = arguments.address(address, "address")
    size = arguments.size(size, "size")
    free_type = arguments.dword(free_type, "free_type")
    if free_type == MEM_RELEASE and size != 0:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    if address == 0:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    with _lock:
        start, end = page_span(address, size)
        allocation = find(start)
        if allocation is None:
            raise Win32Error(ERROR_INVALID_ADDRESS)
        if size == 0:
            if start != allocation.base:
                raise Win32Error(ERROR_INVALID_ADDRESS)
            start, end = allocation.base, allocation.end
        elif end > allocation.end:
            raise Win32Error(ERROR_INVALID_PARAMETER)
        if free_type == MEM_RELEASE:
            _release(allocation)
        elif free_type == MEM_DECOMMIT:
            _decommit(allocation, (start - allocation.base) // PAGE, (end - start) // PAGE)
        else:
            raise Win32Error(ERROR_INVALID_PARAMETER)
    return True


def _release(allocation: Allocation) -> None:
    base = allocation.base
    try:
        allocation.region.free()
    except BufferError:  # a Python buffer still uses the memory: freeing it would be unsafe
        raise Win32Error(ERROR_BUSY) from None
    _bases.remove(base)
    del _allocations[base]


def _decommit(allocation: Allocation, first: int, count: int) -> None:
    region = allocation.region
    try:
        region.decommit(first * PAGE, count * PAGE)
    except BufferError:
        raise Win32Error(ERROR_BUSY) from None
    allocation.page_protect[first : first + count] = array("H", bytes(2 * count))
    if allocation.latched is not None and region.write_watch is not None:
        for start, stop in _runs(allocation.latched, first, first + count):
            region.write_watch._mark(start, stop - start)


def _runs(flags: bytearray, first: int, end: int) -> list[tuple[int, int]]:
    """Runs of non-zero bytes of ``flags[first:end]`` as ``(start, stop)`` indexes."""
    runs: list[tuple[int, int]] = []
    i = first
    while True:
        start = flags.find(1, i, end)
        if start < 0:
            return runs
        stop = flags.find(0, start, end)
        stop = end if stop < 0 else stop
        runs.append((start, stop))
        i = stop


# ---- VirtualProtect ------------------------------------------------------------------------


@win32_function(False)
def VirtualProtect(address: int | None, size: int, new_protect: int, old_protect_out: object) -> bool:
    """Change the protection of committed pages; the first page's previous protection goes
    to ``old_protect_out`` (``ctypes.byref(DWORD)``; NULL fails with ERROR_NOACCESS)."""
    address = arguments.address(address, "address")
    size = arguments.size(size, "size")
    new_protect = arguments.dword(new_protect, "new_protect")
    old = arguments.target(old_protect_out, "old_protect_out")
    if old is None:
        raise Win32Error(ERROR_NOACCESS)
    text = parse_protect(new_protect)
    with _lock:
        start, end = page_span(address, size)
        allocation = find(start)
        if start == end or allocation is None or end > allocation.end:
            raise Win32Error(ERROR_INVALID_ADDRESS)
        first, count = (start - allocation.base) // PAGE, (end - start) // PAGE
        words = allocation.page_protect[first : first + count]
        if 0 in words:  # not committed
            arguments.write(old, PAGE_NOACCESS)
            raise Win32Error(ERROR_INVALID_ADDRESS)
        region = allocation.region
        if allocation.latched is not None:
            for dirty_start, dirty_end in region.dirty(start - allocation.base, end - start).ranges():
                allocation.latched[dirty_start // PAGE : dirty_end // PAGE] = b"\x01" * ((dirty_end - dirty_start) // PAGE)
        try:
            region.protect(first * PAGE, count * PAGE, text)
        except BufferError:
            raise Win32Error(ERROR_BUSY) from None
        allocation.page_protect[first : first + count] = array("H", [_page_word(allocation, new_protect)]) * count
        arguments.write(old, words[0])
    return True


# ---- VirtualQuery --------------------------------------------------------------------------


@win32_function(None)
def VirtualQuery(address: int | None) -> MEMORY_BASIC_INFORMATION | None:
    """What is at ``address``: the run of pages with the same state and protection from there,
    inside its allocation.  Memory ntshim did not allocate is described from
    ``/proc/self/maps``.  None (ERROR_INVALID_PARAMETER) beyond the user address space."""
    address = arguments.address(address, "address")
    if address >= USER_ADDRESS_LIMIT - PAGE:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    start = address - address % PAGE
    info = MEMORY_BASIC_INFORMATION(BaseAddress=start)
    with _lock:
        allocation = find(start)
        if allocation is not None:
            words = allocation.page_protect
            first = (start - allocation.base) // PAGE
            word = words[first]
            last = first + 1
            while last < len(words) and words[last] == word:
                last += 1
            info.AllocationBase = allocation.base
            info.AllocationProtect = allocation.protect
            info.RegionSize = (last - first) * PAGE
            info.State = MEM_COMMIT if word else MEM_RESERVE
            info.Protect = word
            info.Type = MEM_PRIVATE
            return info
    found = maps.mapping_at(start)
    if isinstance(found, tuple):  # someone else's mapping: the program, Python, a library
        lo, hi, prot, path = found
        info.AllocationBase = lo
        info.AllocationProtect = info.Protect = _FROM_LINUX.get(prot, PAGE_NOACCESS)
        info.RegionSize = hi - start
        info.State = MEM_COMMIT
        info.Type = MEM_MAPPED if path.startswith("/") else MEM_PRIVATE
    else:
        info.RegionSize = (found or USER_ADDRESS_LIMIT) - start
        info.State = MEM_FREE
        info.Protect = PAGE_NOACCESS
    return info
