"""Wine's kernel32 test_write_watch (dlls/kernel32/tests/virtual.c), ported: what Windows
does with write watches.  The I/O parts (ReadFile, pipes, OVERLAPPED) are left out.  Where
Wine marks a check todo_wine, the test expects what Windows does.  Every test runs on every
write-watch backend."""

from __future__ import annotations

import os

import pytest
from win32_calls import P, get_write_watch, offsets, protect, query, write_byte

from ntshim import win32
from ntshim.win32 import (
    ERROR_INVALID_PARAMETER,
    ERROR_NOACCESS,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_PRIVATE,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_WRITE_WATCH,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    WRITE_WATCH_FAILURE,
    WRITE_WATCH_FLAG_RESET,
)

SIZE = 0x10000
pytestmark = pytest.mark.usefixtures("watch_backend")


@pytest.fixture
def base():
    address = win32.VirtualAlloc(None, SIZE, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    assert address, win32.GetLastError()
    yield address
    assert win32.VirtualFree(address, 0, MEM_RELEASE)


def test_allocation_is_queried_like_any_other(base: int) -> None:
    info = query(base)
    assert (info.BaseAddress, info.AllocationProtect, info.RegionSize) == (base, PAGE_READWRITE, SIZE)
    assert (info.State, info.Protect, info.Type) == (MEM_COMMIT, PAGE_READWRITE, MEM_PRIVATE)


def test_null_base_and_a_region_without_write_watch_are_invalid(base: int) -> None:
    r = get_write_watch(0, None, SIZE)
    assert (r.ret, r.last_error) == (WRITE_WATCH_FAILURE, ERROR_INVALID_PARAMETER)
    plain = win32.VirtualAlloc(None, SIZE, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    r = get_write_watch(0, plain, SIZE)
    assert (r.ret, r.last_error) == (WRITE_WATCH_FAILURE, ERROR_INVALID_PARAMETER)
    assert win32.ResetWriteWatch(plain, SIZE) == WRITE_WATCH_FAILURE
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER
    win32.VirtualFree(plain, 0, MEM_RELEASE)


def test_basic_sequence(base: int) -> None:
    r = get_write_watch(0, base, SIZE)
    assert (r.ret, r.count, r.granularity) == (0, 0, P)  # granularity is written even when empty

    write_byte(base + P + 1)
    r = get_write_watch(0, base, SIZE)
    assert (r.ret, r.count, offsets(r, base)) == (0, 1, [P])  # page starts, not the byte written

    r = get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE)
    assert (r.count, offsets(r, base)) == (1, [P])  # reports the state before the reset
    assert get_write_watch(0, base, SIZE).count == 0

    write_byte(base + 2 * P + 3)
    write_byte(base + 4 * P + 8)
    assert offsets(get_write_watch(0, base, SIZE), base) == [2 * P, 4 * P]  # ascending
    assert offsets(get_write_watch(0, base + 3 * P, 2 * P), base) == [4 * P]  # a sub-range

    assert win32.ResetWriteWatch(base, 3 * P) == 0
    assert offsets(get_write_watch(0, base, SIZE), base) == [4 * P]  # outside the reset stays

    for i in range(4):  # a write straddling two pages
        write_byte(base + 2 * P - 2 + i)
    assert offsets(get_write_watch(0, base, SIZE), base) == [P, 2 * P, 4 * P]

    # A buffer smaller than the number of dirty pages: no error, and only those are reset.
    r = get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE, count=1)
    assert (r.ret, r.count, offsets(r, base)) == (0, 1, [P])
    assert offsets(get_write_watch(0, base, SIZE), base) == [2 * P, 4 * P]

    # Changing protections does not affect watches, and dirty state never splits regions.
    assert protect(base, 3 * P, PAGE_READONLY) == PAGE_READWRITE
    info = query(base)
    assert (info.RegionSize, info.State, info.Protect) == (3 * P, MEM_COMMIT, PAGE_READONLY)
    assert protect(base, 3 * P, PAGE_READWRITE) == PAGE_READONLY
    assert offsets(get_write_watch(0, base, SIZE), base) == [2 * P, 4 * P]
    info = query(base)
    assert (info.RegionSize, info.State, info.Protect) == (SIZE, MEM_COMMIT, PAGE_READWRITE)


@pytest.mark.parametrize(
    ("count", "addresses_null", "count_null", "granularity_null", "flags", "offset", "size", "error"),
    [
        (0, False, False, False, 0, 0, SIZE, ERROR_INVALID_PARAMETER),
        (64, False, True, False, 0, 0, SIZE, ERROR_NOACCESS),
        (64, False, False, True, 0, 0, SIZE, ERROR_NOACCESS),
        (64, True, False, False, 0, 0, SIZE, ERROR_NOACCESS),
        (0, True, False, False, 0, 0, SIZE, ERROR_INVALID_PARAMETER),  # count 0 is checked first
        (64, False, False, False, 0xDEADBEEF, 0, SIZE, ERROR_INVALID_PARAMETER),
        (64, False, False, False, 0, 0, 0, ERROR_INVALID_PARAMETER),
        (64, False, False, False, 0, 0, 2 * SIZE, ERROR_INVALID_PARAMETER),
        (64, False, False, False, 0, SIZE - P, P + 1, ERROR_INVALID_PARAMETER),  # rounds out to a page past the end
        (64, False, True, False, 0, None, SIZE, ERROR_NOACCESS),  # pointer checks come before the range check
    ],
)
def test_invalid_parameters(
    base: int,
    count: int,
    addresses_null: bool,
    count_null: bool,
    granularity_null: bool,
    flags: int,
    offset: int | None,
    size: int,
    error: int,
) -> None:
    import ctypes

    write_byte(base + 5 * P)
    results = (ctypes.c_void_p * 64)()
    n = ctypes.c_size_t(count)
    granularity = ctypes.c_ulong(0xDEADBEEF)
    win32.SetLastError(0xDEADBEEF)
    ret = win32.GetWriteWatch(
        flags,
        None if offset is None else base + offset,
        size,
        None if addresses_null else results,
        None if count_null else ctypes.byref(n),
        None if granularity_null else ctypes.byref(granularity),
    )
    assert (ret, win32.GetLastError()) == (WRITE_WATCH_FAILURE, error)
    assert n.value == count and granularity.value == 0xDEADBEEF  # outputs untouched on failure
    assert offsets(get_write_watch(0, base, SIZE), base) == [5 * P]  # state unchanged


def test_reset_write_watch_invalid_parameters(base: int) -> None:
    write_byte(base)
    assert win32.ResetWriteWatch(base, 0) == WRITE_WATCH_FAILURE
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER
    assert win32.ResetWriteWatch(None, SIZE) == WRITE_WATCH_FAILURE
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER
    assert win32.ResetWriteWatch(base, SIZE + P) == WRITE_WATCH_FAILURE
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER
    assert offsets(get_write_watch(0, base, SIZE), base) == [0]


def test_write_watch_needs_reserve() -> None:
    for allocation_type in (MEM_WRITE_WATCH, MEM_COMMIT | MEM_WRITE_WATCH):
        win32.SetLastError(0xDEADBEEF)
        assert win32.VirtualAlloc(None, SIZE, allocation_type, PAGE_READWRITE) == 0
        assert win32.GetLastError() == ERROR_INVALID_PARAMETER


def test_reserved_regions_commit_and_decommit() -> None:
    # The initial protection does not matter; a reserve-only region answers with count 0.
    base = win32.VirtualAlloc(None, SIZE, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_NOACCESS)
    assert base
    r = get_write_watch(0, base, SIZE)
    assert (r.ret, r.count) == (0, 0)
    assert win32.ResetWriteWatch(base, SIZE) == 0

    # Committing is not writing.
    assert win32.VirtualAlloc(base, SIZE, MEM_COMMIT, PAGE_NOACCESS) == base
    assert get_write_watch(0, base, SIZE).count == 0

    # The watch survives a change to PAGE_NOACCESS.
    assert protect(base, 6 * P, PAGE_READWRITE) == PAGE_NOACCESS
    write_byte(base + 5 * P + 200)
    assert protect(base, 6 * P, PAGE_NOACCESS) == PAGE_READWRITE
    r = get_write_watch(0, base, SIZE)
    assert offsets(r, base) == [5 * P]

    assert win32.ResetWriteWatch(base, SIZE) == 0
    assert win32.ResetWriteWatch(base + 6 * P, SIZE - 6 * P) == 0
    r = get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE)
    assert (r.ret, r.count) == (0, 0)  # and the results array is untouched (checked by the helper)

    # A partial decommit dirties nothing; a range holding a decommitted page is still valid.
    assert win32.VirtualFree(base + P, P, MEM_DECOMMIT)
    assert protect(base + 2 * P, P, PAGE_READWRITE) == PAGE_NOACCESS
    r = get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE)
    assert (r.ret, r.count) == (0, 0)
    write_byte(base + 2 * P + 200)
    assert offsets(get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE), base) == [2 * P]

    # Decommit clears the watch state (Windows; Wine gets this wrong: todo_wine).
    assert win32.VirtualAlloc(base, SIZE, MEM_COMMIT, PAGE_NOACCESS) == base
    assert protect(base, 6 * P, PAGE_READWRITE) == PAGE_NOACCESS
    write_byte(base + 3 * P)
    write_byte(base + 5 * P)
    assert win32.VirtualFree(base, SIZE, MEM_DECOMMIT)
    assert get_write_watch(0, base, SIZE).count == 0
    assert win32.VirtualAlloc(base, SIZE, MEM_COMMIT, PAGE_READWRITE) == base
    assert get_write_watch(0, base, SIZE).count == 0

    # ... except for pages that were dirty when VirtualProtect last covered them
    # (Windows, todo_wine in Wine): those stay reported across the decommit.
    write_byte(base + 3 * P)
    assert protect(base, 6 * P, PAGE_READWRITE) == PAGE_READWRITE
    write_byte(base + 5 * P)
    assert offsets(get_write_watch(0, base, SIZE), base) == [3 * P, 5 * P]
    assert win32.VirtualFree(base, SIZE, MEM_DECOMMIT)
    assert offsets(get_write_watch(0, base, SIZE), base) == [3 * P]
    assert win32.VirtualAlloc(base, SIZE, MEM_COMMIT, PAGE_READWRITE) == base
    assert offsets(get_write_watch(0, base, SIZE), base) == [3 * P]
    for page in (4, 2, 6):
        write_byte(base + page * P)
    assert offsets(get_write_watch(0, base, SIZE), base) == [2 * P, 3 * P, 4 * P, 6 * P]
    # A reset forgets the latched page too.
    assert get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE).count == 4
    assert win32.VirtualFree(base, SIZE, MEM_DECOMMIT)
    assert get_write_watch(0, base, SIZE).count == 0

    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_long_range() -> None:
    size = 2048 * P
    base = win32.VirtualAlloc(None, size, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    assert base
    assert get_write_watch(0, base, size, count=2048).count == 0
    for page in range(0, 2048, 2):
        write_byte(base + page * P)
    protect(base, size // 2, PAGE_READONLY)  # read-only does not clear dirty bits
    expected = [page * P for page in range(0, 2048, 2)]
    r = get_write_watch(0, base, size, count=2048)
    assert (r.count, offsets(r, base)) == (1024, expected)
    r = get_write_watch(WRITE_WATCH_FLAG_RESET, base, size, count=1024)
    assert (r.count, offsets(r, base)) == (1024, expected)
    assert get_write_watch(0, base, size, count=2048).count == 0
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_reserve_time_protection_stays_the_allocation_protection() -> None:
    """The write-watch part of ntdll's test_NtAllocateVirtualMemoryEx, through kernel32."""
    base = win32.VirtualAlloc(None, SIZE, MEM_RESERVE | MEM_WRITE_WATCH, PAGE_READONLY)
    assert win32.VirtualAlloc(base, SIZE, MEM_COMMIT, PAGE_READWRITE) == base
    info = query(base)
    assert (info.AllocationProtect, info.State, info.Type, info.RegionSize) == (
        PAGE_READONLY,
        MEM_COMMIT,
        MEM_PRIVATE,
        SIZE,
    )
    assert get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE, count=16).count == 0
    write_byte(base + 0x1000)
    r = get_write_watch(WRITE_WATCH_FLAG_RESET, base, SIZE, count=16)
    assert (r.count, offsets(r, base)) == (1, [0x1000])
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_the_backend_is_the_one_the_environment_names(watch_backend: str, base: int) -> None:
    from ntshim.win32.virtual import find

    assert os.environ["NTSHIM_WRITEWATCH_BACKEND"] == watch_backend
    allocation = find(base)
    assert allocation is not None and allocation.region.write_watch.backend == watch_backend
