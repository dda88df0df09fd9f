"""VirtualAlloc, VirtualFree, VirtualProtect and VirtualQuery, as Windows has them, and the
allocation work NtAllocateVirtualMemory shares with VirtualAlloc.

Every allocation is an :class:`ntshim.memory.Reservation` (reserved, then committed in
parts), which keeps the protection and commit state of each page; this module adds only
what Windows keeps on top: the allocation table, the allocation's own protection (and with
it the cache attribute every page carries), and the write-watch bookkeeping of
``VirtualProtect``.  The behaviour follows Windows as Wine's conformance tests describe it
(``dlls/kernel32/tests/virtual.c``); ``docs/win32.md`` lists what differs.

Allocation fails with an NTSTATUS (:class:`NtStatusError`), as ntdll's does on Windows:
``NtAllocateVirtualMemory`` returns it and ``VirtualAlloc`` turns it into the Win32 error
``RtlNtStatusToDosError`` gives, so the two cannot drift apart.
"""

from __future__ import annotations

import bisect
import ctypes
import threading
from dataclasses import dataclass

from .. import _kernel
from ..errors import BackendUnavailable
from ..memory import Reservation, maps, reserve
from ..memory import protection as linux_protection
from ..memory.placement import zero_bits_limit
from ..memory.region import flag_runs
from . import arguments
from .constants import (
    ALLOCATION_GRANULARITY,
    ERROR_BUSY,
    ERROR_INVALID_ADDRESS,
    ERROR_INVALID_HANDLE,
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
    STATUS_ACCESS_VIOLATION,
    STATUS_CONFLICTING_ADDRESSES,
    STATUS_DEVICE_BUSY,
    STATUS_INVALID_HANDLE,
    STATUS_INVALID_PAGE_PROTECTION,
    STATUS_INVALID_PARAMETER,
    STATUS_INVALID_PARAMETER_3,
    STATUS_NO_MEMORY,
    STATUS_NOT_MAPPED_VIEW,
    STATUS_NOT_SUPPORTED,
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
_ALLOCATION_TYPES = MEM_COMMIT | MEM_RESERVE | MEM_RESET | MEM_TOP_DOWN | MEM_WRITE_WATCH
#: NtCurrentProcess(), the pseudo handle of the calling process, as a 64-bit HANDLE value.
CURRENT_PROCESS = (1 << 64) - 1

# RtlNtStatusToDosError for the statuses this layer produces (Wine's dlls/ntdll/error.c
# table has the same pairs).
_DOS_ERRORS = {
    STATUS_ACCESS_VIOLATION: ERROR_NOACCESS,
    STATUS_CONFLICTING_ADDRESSES: ERROR_INVALID_ADDRESS,
    STATUS_DEVICE_BUSY: ERROR_BUSY,
    STATUS_INVALID_HANDLE: ERROR_INVALID_HANDLE,
    STATUS_INVALID_PAGE_PROTECTION: ERROR_INVALID_PARAMETER,
    STATUS_INVALID_PARAMETER: ERROR_INVALID_PARAMETER,
    STATUS_INVALID_PARAMETER_3: ERROR_INVALID_PARAMETER,
    STATUS_NO_MEMORY: ERROR_NOT_ENOUGH_MEMORY,
    STATUS_NOT_MAPPED_VIEW: ERROR_INVALID_ADDRESS,
    STATUS_NOT_SUPPORTED: ERROR_NOT_SUPPORTED,
}


class NtStatusError(Win32Error):
    """Internal: an NT-level failure with ``status``.  The NT functions return the status;
    it is also a Win32Error carrying the matching Win32 code, so Win32 functions that meet
    it fail exactly as their Windows counterparts over ntdll do."""

    def __init__(self, status: int) -> None:
        super().__init__(_DOS_ERRORS[status])
        self.status = status


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
    """One VirtualAlloc reservation: its region, and what Windows adds to the region's pages."""

    region: Reservation
    protect: int  # AllocationProtect: the protection asked for at reservation time
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

    def page_protections(self, first: int, count: int) -> tuple[bytes, bytes]:
        """The region's ``(PROT_* byte, committed byte)`` of each page of ``[first, first+count)``."""
        return self.region._protections(first, count), self.region._commit_state(first, count)

    def win32_protection(self, prot: int, committed: int) -> int:
        """The Win32 protection of a page with ``prot`` (PROT_* bits): 0 while only reserved.
        The cache attribute belongs to the allocation: a page always carries the allocation's,
        whatever a later call asks for."""
        return _FROM_LINUX[prot] | (self.protect & _CACHE_BITS) if committed else 0


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
    """A Win32 page protection as an ntshim.memory protection; NtStatusError if Windows refuses it."""
    base, modifiers = protect & 0xFF, protect & ~0xFF
    if base not in _BASE_PROTECTIONS or modifiers & ~(PAGE_GUARD | _CACHE_BITS) or modifiers & _CACHE_BITS == _CACHE_BITS:
        raise NtStatusError(STATUS_INVALID_PAGE_PROTECTION)
    if modifiers & PAGE_GUARD:
        # Guard pages report their first access as an exception (SEH), which Python
        # programs cannot receive; refuse rather than pretend.
        raise NtStatusError(STATUS_NOT_SUPPORTED)
    return _BASE_PROTECTIONS[base]


# ---- VirtualAlloc --------------------------------------------------------------------------


@win32_function(0)
def VirtualAlloc(address: int | None, size: int, allocation_type: int, protect: int) -> int:
    """Reserve and/or commit pages; the base address of what was allocated, 0 on failure."""
    address = arguments.address(address, "address")
    size = arguments.size(size, "size")
    allocation_type = arguments.dword(allocation_type, "allocation_type")
    protect = arguments.dword(protect, "protect")
    return allocate(CURRENT_PROCESS, address, size, allocation_type, protect, 0)[0]


def allocate(
    process: int, address: int, size: int, allocation_type: int, protect: int, zero_bits: int
) -> tuple[int, int]:
    """What NtAllocateVirtualMemory and VirtualAlloc do: reserve, commit or reset pages and
    return the ``(base, size)`` they cover; NtStatusError otherwise.  ``process`` is a
    64-bit HANDLE value, ``zero_bits`` a ULONG_PTR.

    The checks come in Wine's order (``dlls/ntdll/unix/virtual.c``: NtAllocateVirtualMemory,
    then allocate_virtual_memory), so a call with several mistakes gets the status Wine gives.
    """
    if size == 0:
        raise NtStatusError(STATUS_INVALID_PARAMETER)
    try:
        zero_bits_limit(zero_bits)
    except ValueError:
        raise NtStatusError(STATUS_INVALID_PARAMETER_3) from None
    if allocation_type & ~_ALLOCATION_TYPES:
        raise NtStatusError(STATUS_INVALID_PARAMETER)
    if process != CURRENT_PROCESS:
        # Other processes' memory is out of reach of a Python library: no process handles exist.
        raise NtStatusError(STATUS_INVALID_HANDLE)
    if address:
        granule = ALLOCATION_GRANULARITY if allocation_type & MEM_RESERVE else PAGE
        # The first 64 KiB are never given out on Windows; past the address space is nowhere.
        if address - address % granule < ALLOCATION_GRANULARITY or page_span(address, size)[1] > USER_ADDRESS_LIMIT:
            raise NtStatusError(STATUS_INVALID_PARAMETER)
    elif size > USER_ADDRESS_LIMIT:
        raise NtStatusError(STATUS_INVALID_PARAMETER)
    if not allocation_type & (MEM_COMMIT | MEM_RESERVE | MEM_RESET):
        raise NtStatusError(STATUS_INVALID_PARAMETER)
    with _lock:
        if allocation_type & MEM_RESET:
            if allocation_type != MEM_RESET:
                raise NtStatusError(STATUS_INVALID_PARAMETER)
            return _reset(address, size)
        if allocation_type & MEM_WRITE_WATCH and not allocation_type & MEM_RESERVE:
            raise NtStatusError(STATUS_INVALID_PARAMETER)
        text = parse_protect(protect)
        if allocation_type & MEM_RESERVE or address == 0:
            # zero_bits only places memory the call places itself: with an address given,
            # the address decides, as in Wine (the limit is dropped when *base is set).
            watch = bool(allocation_type & MEM_WRITE_WATCH)
            allocation = _reserve(address, size, protect, watch, 0 if address else zero_bits)
            if allocation_type & MEM_COMMIT:
                _commit(allocation, 0, (allocation.end - allocation.base) // PAGE, text)
            return allocation.base, allocation.end - allocation.base
        start, end = page_span(address, size)
        existing = find(start)
        if existing is None or end > existing.end:
            raise NtStatusError(STATUS_NOT_MAPPED_VIEW)
        _commit(existing, (start - existing.base) // PAGE, (end - start) // PAGE, text)
        return start, end - start


def _reserve(address: int, size: int, protect: int, watch: bool, zero_bits: int) -> Allocation:
    if address:
        base = address - address % ALLOCATION_GRANULARITY
        length = page_span(address, size)[1] - base
    else:
        base, length = 0, page_span(0, size)[1]
    if base and (find(base) or find(base + length - 1)):
        raise NtStatusError(STATUS_CONFLICTING_ADDRESSES)
    try:
        region = reserve(
            length,
            address=base or None,
            zero_bits=zero_bits or None,
            align=ALLOCATION_GRANULARITY,
            watch=watch,
        )
    except FileExistsError:
        raise NtStatusError(STATUS_CONFLICTING_ADDRESSES) from None
    except MemoryError:  # no free range (under the zero_bits bound), or the kernel's refusal
        raise NtStatusError(STATUS_NO_MEMORY) from None
    except BackendUnavailable:
        raise NtStatusError(STATUS_NOT_SUPPORTED) from None
    allocation = Allocation(region, protect, bytearray(length // PAGE) if watch else None)
    bisect.insort(_bases, allocation.base)
    _allocations[allocation.base] = allocation
    return allocation


def _commit(allocation: Allocation, first: int, count: int, text: str) -> None:
    try:
        allocation.region.commit(first * PAGE, count * PAGE, text)
    except BufferError:  # a Python buffer export still uses pages whose access would change
        raise NtStatusError(STATUS_DEVICE_BUSY) from None


def _reset(address: int, size: int) -> tuple[int, int]:
    """MEM_RESET: the contents of the pages are no longer of interest."""
    start, end = page_span(address, size)
    allocation = find(start)
    if allocation is None or end > allocation.end:
        raise NtStatusError(STATUS_NOT_MAPPED_VIEW)
    allocation.region.discard(start - allocation.base, end - start)
    return start, end - start


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
        allocation.region.close()
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
    if allocation.latched is not None and region.write_watch is not None:
        for start, stop in flag_runs(allocation.latched, first, first + count):
            region.write_watch._mark(start, stop - start)


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
        region = allocation.region
        if 0 in region._commit_state(first, count):
            arguments.write(old, PAGE_NOACCESS)
            raise Win32Error(ERROR_INVALID_ADDRESS)
        previous = region._protections(first, 1)[0]
        watch = region.write_watch
        if allocation.latched is not None and watch is not None:
            for dirty_start, dirty_end in watch.dirty(start - allocation.base, end - start).ranges():
                allocation.latched[dirty_start // PAGE : dirty_end // PAGE] = b"\x01" * ((dirty_end - dirty_start) // PAGE)
        try:
            region.protect(first * PAGE, count * PAGE, text)
        except BufferError:
            raise Win32Error(ERROR_BUSY) from None
        arguments.write(old, allocation.win32_protection(previous, 1))
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
            first = (start - allocation.base) // PAGE
            prots, committed = allocation.page_protections(first, 1)
            info.AllocationBase = allocation.base
            info.AllocationProtect = allocation.protect
            info.RegionSize = allocation.region._run(first) * PAGE
            info.State = MEM_COMMIT if committed[0] else MEM_RESERVE
            info.Protect = allocation.win32_protection(prots[0], committed[0])
            info.Type = MEM_PRIVATE
            return info
    found = maps.mapping_at(start)
    if isinstance(found, maps.MapsEntry):  # someone else's mapping: the program, Python, a library
        lo, hi, prot, _shared, path, *_ = found
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
