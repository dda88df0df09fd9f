"""GetWriteWatch where Wine's tests do not go: huge sparse reservations, the last bytes of a
region, answers of thousands of pages, and writers or other threads racing the calls."""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
from win32_calls import P, get_write_watch, offsets, protect, query, write_byte

from ntshim import _bench, win32
from ntshim.win32 import (
    ERROR_INVALID_ADDRESS,
    ERROR_INVALID_PARAMETER,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_WRITE_WATCH,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    WRITE_WATCH_FAILURE,
    WRITE_WATCH_FLAG_RESET,
)

GIB = 1 << 30


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


def test_an_answer_of_thousands_of_pages_lands_exactly(watch_backend: str) -> None:
    """The addresses are copied into the caller's array in one block: every entry right, up
    to the caller's count and not one entry further."""
    pages = 8192
    base = win32.VirtualAlloc(None, pages * P, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    ctypes.memset(base, 1, pages * P)
    every = [page * P for page in range(pages)]
    whole = get_write_watch(0, base, pages * P, count=pages, buffer_size=pages + 16)
    assert (whole.ret, whole.count, whole.granularity) == (0, pages, P)
    assert offsets(whole, base) == every
    # A smaller count: the first pages only, and with the reset exactly those are reset.
    first = get_write_watch(WRITE_WATCH_FLAG_RESET, base, pages * P, count=5000, buffer_size=pages)
    assert (first.ret, first.count) == (0, 5000) and offsets(first, base) == every[:5000]
    rest = get_write_watch(0, base, pages * P, count=pages, buffer_size=pages)
    assert offsets(rest, base) == every[5000:]
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
