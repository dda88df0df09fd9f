"""What Wine's tests do not cover: MEM_RESET with watches, threads, huge sparse reservations,
the last bytes of a region, per-thread last errors, the forms ctypes arguments take, and
VirtualQuery of memory ntshim did not allocate."""

from __future__ import annotations

import ctypes
import mmap
import threading
import time

import numpy as np
import pytest
from win32_calls import P, get_write_watch, protect, query, write_byte

from ntshim import _bench, win32
from ntshim.win32 import (
    ERROR_INVALID_ADDRESS,
    ERROR_INVALID_PARAMETER,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_FREE,
    MEM_MAPPED,
    MEM_PRIVATE,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_RESET,
    MEM_WRITE_WATCH,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    WRITE_WATCH_FAILURE,
    WRITE_WATCH_FLAG_RESET,
)
from ntshim.win32.virtual import USER_ADDRESS_LIMIT

GIB = 1 << 30


def offsets(result, base: int) -> list[int]:
    return [a - base for a in result.addresses]


def test_mem_reset_keeps_the_watch_state_and_the_data(watch_backend: str) -> None:
    base = win32.VirtualAlloc(None, 16 * P, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    write_byte(base + 3 * P)
    before = ctypes.c_ubyte.from_address(base + 3 * P).value
    assert win32.VirtualAlloc(base, 16 * P, MEM_RESET, PAGE_READWRITE) == base
    assert offsets(get_write_watch(0, base, 16 * P), base) == [3 * P]
    assert ctypes.c_ubyte.from_address(base + 3 * P).value == before
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_mem_reset_on_unwatched_memory_frees_it_lazily() -> None:
    base = win32.VirtualAlloc(None, 64 * P, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    ctypes.memset(base, 0x5A, 64 * P)
    assert win32.VirtualAlloc(base + P, 32 * P, MEM_RESET, PAGE_NOACCESS) == base + P
    info = query(base)
    assert (info.RegionSize, info.State, info.Protect) == (64 * P, MEM_COMMIT, PAGE_READWRITE)
    assert ctypes.c_ubyte.from_address(base + 2 * P).value in (0x5A, 0)  # kept until reclaimed
    ctypes.memset(base + 2 * P, 1, 1)  # and usable as before
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_huge_sparse_reservation(watch_backend: str) -> None:
    size = 2 * GIB
    base = win32.VirtualAlloc(None, size, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_NOACCESS)
    assert base, win32.GetLastError()
    chunks = [0, size // 3 - size // 3 % 0x10000, size - 0x10000]
    for chunk in chunks:
        assert win32.VirtualAlloc(base + chunk, 0x10000, MEM_COMMIT, PAGE_READWRITE) == base + chunk
    for chunk in chunks:
        write_byte(base + chunk + 5 * P)
    write_byte(base + size - 1)  # the very last byte
    expected = sorted([c + 5 * P for c in chunks] + [size - P])
    assert offsets(get_write_watch(0, base, size), base) == expected
    info = query(base + 0x10000)
    assert (info.State, info.RegionSize) == (MEM_RESERVE, chunks[1] - 0x10000)
    assert win32.ResetWriteWatch(base, size) == 0
    assert get_write_watch(0, base, size).count == 0
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_the_end_of_a_region(watch_backend: str) -> None:
    size = 8 * P
    base = win32.VirtualAlloc(None, size, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    write_byte(base + size - 1)
    assert offsets(get_write_watch(0, base + size - P, P), base) == [size - P]
    assert offsets(get_write_watch(0, base + size - 1, 1), base) == [size - P]  # rounds to the page
    r = get_write_watch(0, base + size, 1)
    assert (r.ret, r.last_error) == (WRITE_WATCH_FAILURE, ERROR_INVALID_PARAMETER)
    old = ctypes.c_ulong()
    assert win32.VirtualProtect(base + size - 1, 1, PAGE_READONLY, ctypes.byref(old))
    assert query(base + size - P).Protect == PAGE_READONLY
    assert not win32.VirtualProtect(base + size - 1, 2, PAGE_READONLY, ctypes.byref(old))
    assert win32.GetLastError() == ERROR_INVALID_ADDRESS
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_no_write_is_lost_under_get_write_watch_with_reset(watch_backend: str) -> None:
    """Native threads write while a thread calls GetWriteWatch(WRITE_WATCH_FLAG_RESET) with a
    small buffer; a mirror kept from the answers must match the memory at the end."""
    pages = 256
    size = pages * P
    base = win32.VirtualAlloc(None, size, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    memory = np.ctypeslib.as_array((ctypes.c_ubyte * size).from_address(base))
    mirror = memory.copy()
    writers = _bench.Writers((ctypes.c_ubyte * size).from_address(base), 2, random=True)
    try:
        deadline = time.monotonic() + 0.75
        while time.monotonic() < deadline:
            for address in get_write_watch(WRITE_WATCH_FLAG_RESET, base, size, count=8).addresses:
                offset = address - base
                mirror[offset : offset + P] = memory[offset : offset + P]
    finally:
        writers.stop()
    while True:
        addresses = get_write_watch(WRITE_WATCH_FLAG_RESET, base, size, count=64).addresses
        if not addresses:
            break
        for address in addresses:
            offset = address - base
            mirror[offset : offset + P] = memory[offset : offset + P]
    lost = np.flatnonzero((mirror != memory).reshape(pages, P).any(axis=1))
    assert lost.size == 0, f"writes to pages {lost[:10].tolist()} were never reported"
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_threads_allocating_protecting_and_freeing_at_once(watch_backend: str) -> None:
    failures: list[str] = []

    def churn(seed: int) -> None:
        deadline = time.monotonic() + 0.5
        rounds = 0
        while time.monotonic() < deadline:
            base = win32.VirtualAlloc(None, 32 * P, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_NOACCESS)
            if not base:
                failures.append(f"VirtualAlloc failed: {win32.GetLastError()}")
                return
            win32.VirtualAlloc(base, 16 * P, MEM_COMMIT, PAGE_READWRITE)
            write_byte(base + (seed % 16) * P)
            protect(base, 16 * P, PAGE_READONLY)
            found = offsets(get_write_watch(WRITE_WATCH_FLAG_RESET, base, 32 * P), base)
            if found != [(seed % 16) * P]:
                failures.append(f"thread {seed}: got {found}")
            win32.VirtualFree(base, 16 * P, MEM_DECOMMIT)
            if not win32.VirtualFree(base, 0, MEM_RELEASE):
                failures.append(f"VirtualFree failed: {win32.GetLastError()}")
            rounds += 1
        if rounds == 0:
            failures.append(f"thread {seed} made no progress")

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_last_error_is_per_thread() -> None:
    win32.SetLastError(11)
    seen = []

    def other() -> None:
        seen.append(win32.GetLastError())
        win32.SetLastError(22)
        seen.append(win32.GetLastError())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [0, 22] and win32.GetLastError() == 11
    assert win32.VirtualFree(None, 0, MEM_RELEASE) is False
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER


def test_the_forms_ctypes_arguments_take(watch_backend: str) -> None:
    base = win32.VirtualAlloc(ctypes.c_void_p(None), 4 * P, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    write_byte(base + P)
    count64 = ctypes.c_uint64(16)
    granularity = ctypes.c_uint32()
    results = (ctypes.c_void_p * 16)()
    # A ctypes pointer, the object itself, a POINTER made by cast, a c_void_p base.
    as_pointer = ctypes.cast(results, ctypes.POINTER(ctypes.c_void_p))
    assert win32.GetWriteWatch(0, ctypes.c_void_p(base), 4 * P, as_pointer, ctypes.pointer(count64), granularity) == 0
    assert (count64.value, granularity.value, results[0]) == (1, P, base + P)
    # byref of the array, and an array of typed pointers.
    typed = (ctypes.POINTER(ctypes.c_char) * 4)()
    count64.value = 4
    assert win32.GetWriteWatch(0, base, 4 * P, ctypes.byref(typed), ctypes.byref(count64), ctypes.byref(granularity)) == 0
    assert ctypes.cast(typed[0], ctypes.c_void_p).value == base + P
    for wrong in ("0", 1.5, [1]):
        with pytest.raises(TypeError):
            win32.VirtualAlloc(wrong, P, MEM_COMMIT, PAGE_READWRITE)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        win32.VirtualProtect(base, P, PAGE_READONLY, 5)
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_virtual_query_of_memory_ntshim_did_not_allocate() -> None:
    data = ctypes.create_string_buffer(64)
    info = query(ctypes.addressof(data))
    assert (info.State, info.Protect, info.Type) == (MEM_COMMIT, PAGE_READWRITE, MEM_PRIVATE)
    with open(__file__, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        info = query(view.ctypes.data)
        assert (info.State, info.Protect, info.Type) == (MEM_COMMIT, PAGE_READONLY, MEM_MAPPED)
        del view
    base = win32.VirtualAlloc(None, 0x10000, MEM_RESERVE, PAGE_NOACCESS)
    assert win32.VirtualFree(base, 0, MEM_RELEASE)
    info = query(base)
    assert (info.State, info.Protect, info.AllocationBase, info.Type) == (MEM_FREE, PAGE_NOACCESS, None, 0)
    assert info.RegionSize >= 0x10000
    assert win32.VirtualQuery(USER_ADDRESS_LIMIT) is None
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER
