"""VirtualAlloc(MEM_RESET) with and without a write watch, and VirtualQuery of memory ntshim did
not allocate: what Wine's tests do not cover."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np
from win32_calls import P, get_write_watch, offsets, query, write_byte

from ntshim import win32
from ntshim.win32 import (
    ERROR_INVALID_PARAMETER,
    MEM_COMMIT,
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
)
from ntshim.win32.virtual import USER_ADDRESS_LIMIT


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
