"""GetWriteWatch and ResetWriteWatch over the allocation's ntshim write watch."""

from __future__ import annotations

from .. import _core
from ..writewatch import WriteWatch
from . import arguments
from .constants import ERROR_INVALID_PARAMETER, ERROR_NOACCESS, WRITE_WATCH_FAILURE, WRITE_WATCH_FLAG_RESET
from .lasterror import Win32Error, win32_function
from .virtual import PAGE, Allocation, _lock, find, page_span


def _watched(start: int, end: int) -> tuple[Allocation, WriteWatch]:
    """The write-watched allocation that holds all of ``[start, end)``, and its watch."""
    allocation = find(start) if start else None
    watch = None if allocation is None else allocation.region.write_watch
    if allocation is None or end > allocation.end or watch is None:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    return allocation, watch


def _forget_latched(allocation: Allocation, offsets: list[tuple[int, int]]) -> None:
    assert allocation.latched is not None
    for start, stop in offsets:
        allocation.latched[start // PAGE : stop // PAGE] = bytes((stop - start) // PAGE)


@win32_function(WRITE_WATCH_FAILURE)
def GetWriteWatch(
    flags: int, base: int | None, size: int, addresses: object, count: object, granularity: object
) -> int:
    """Pages written in ``[base, base + size)`` since they were last reset, ascending; at most
    ``*count`` of them go to ``addresses`` (a ctypes array of pointers), ``*count`` becomes
    how many, ``*granularity`` the page size.  With ``WRITE_WATCH_FLAG_RESET`` exactly the
    returned pages are reset.  0 on success, 0xFFFFFFFF on failure (see GetLastError)."""
    flags = arguments.dword(flags, "flags")
    base = arguments.address(base, "base")
    size = arguments.size(size, "size")
    count_target = arguments.target(count, "count")
    granularity_target = arguments.target(granularity, "granularity")
    # The order in which Windows (per Wine's tests and implementation) checks arguments.
    if count_target is None or granularity_target is None:
        raise Win32Error(ERROR_NOACCESS)
    limit = arguments.read(count_target)
    start, end = page_span(base, size)
    if limit == 0 or start == end or flags & ~WRITE_WATCH_FLAG_RESET:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    if addresses is None:
        raise Win32Error(ERROR_NOACCESS)
    reset = bool(flags & WRITE_WATCH_FLAG_RESET)
    with _lock:
        allocation, watch = _watched(start, end)
        dirty = watch.dirty(start - allocation.base, end - start, reset=reset, limit=limit)
        if reset and allocation.latched is not None:
            _forget_latched(allocation, dirty.ranges())
    # The addresses are made once, in C, and copied once, into the caller's array.
    arguments.store_addresses(addresses, _core.expand_runs(dirty.runs, dirty.address, dirty.granularity))
    arguments.write(count_target, len(dirty))
    arguments.write(granularity_target, PAGE)
    return 0


@win32_function(WRITE_WATCH_FAILURE)
def ResetWriteWatch(base: int | None, size: int) -> int:
    """Forget the writes to ``[base, base + size)``.  0 on success, 0xFFFFFFFF on failure."""
    base = arguments.address(base, "base")
    size = arguments.size(size, "size")
    start, end = page_span(base, size)
    if start == end:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    with _lock:
        allocation, watch = _watched(start, end)
        watch.reset(start - allocation.base, end - start)
        if allocation.latched is not None:
            _forget_latched(allocation, [(start - allocation.base, end - allocation.base)])
    return 0
