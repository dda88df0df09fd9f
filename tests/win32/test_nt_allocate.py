"""NtAllocateVirtualMemory: the zero_bits cases of Wine's test_NtAllocateVirtualMemory
(dlls/ntdll/tests/virtual.c) that a 64-bit process can express, the in/out base and size,
the NTSTATUS of each refusal (Wine's dlls/ntdll/unix/virtual.c), and the bookkeeping it
shares with VirtualAlloc / VirtualFree / VirtualQuery."""

from __future__ import annotations

import ctypes
import itertools
import threading

import pytest
from win32_calls import P, get_write_watch, query, write_byte

from ntshim import win32
from ntshim.memory import placement
from ntshim.win32 import (
    AT_ROUND_TO_PAGE,
    ERROR_INVALID_PARAMETER,
    MEM_COMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_RESET,
    MEM_TOP_DOWN,
    MEM_WRITE_WATCH,
    PAGE_EXECUTE_READWRITE,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOPY,
    STATUS_ACCESS_VIOLATION,
    STATUS_CONFLICTING_ADDRESSES,
    STATUS_INVALID_HANDLE,
    STATUS_INVALID_PAGE_PROTECTION,
    STATUS_INVALID_PARAMETER,
    STATUS_INVALID_PARAMETER_3,
    STATUS_NO_MEMORY,
    STATUS_NOT_MAPPED_VIEW,
    STATUS_NOT_SUPPORTED,
    STATUS_SUCCESS,
)
from ntshim.win32.virtual import USER_ADDRESS_LIMIT

GRANULARITY = 0x10000
ULONG_PTR_MAX = (1 << 64) - 1
CURRENT = win32.NtCurrentProcess()


class Call:
    """One NtAllocateVirtualMemory call with its in/out values."""

    def __init__(
        self,
        base: int | None,
        size: int,
        allocation_type: int,
        protect: int = PAGE_READWRITE,
        zero_bits: int = 0,
        process: object = CURRENT,
    ) -> None:
        self.base_in, self.size_in = base, size
        out_base, out_size = ctypes.c_void_p(base), ctypes.c_size_t(size)
        self.status = win32.NtAllocateVirtualMemory(
            process, ctypes.byref(out_base), zero_bits, ctypes.byref(out_size), allocation_type, protect
        )
        self.base, self.size = out_base.value or 0, out_size.value

    def unchanged(self) -> bool:
        return self.base == (self.base_in or 0) and self.size == self.size_in


def release(address: int) -> None:
    assert win32.VirtualFree(address, 0, MEM_RELEASE), win32.GetLastError()


def free_64k_fit(size: int, limit: int) -> bool:
    """Whether a 64 KiB aligned range of ``size`` bytes is free below ``limit`` right now."""
    return placement.highest_fit(-(-size // P) * P, limit, GRANULARITY) is not None


# ---- Wine's test_NtAllocateVirtualMemory, the zero_bits part -------------------------------------


def test_wine_zero_bits_sequence() -> None:
    first = Call(None, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE)
    assert first.status == STATUS_SUCCESS
    addr1 = first.base
    assert addr1 % GRANULARITY == 0 and first.size == 0x1000

    # The allocation conflicts because of the 64 KiB alignment, even with zero_bits given:
    # an explicit base decides, zero_bits does not apply.
    for zero_bits in (0, 12):
        conflict = Call(addr1 + 0x1000, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE, zero_bits)
        assert conflict.status == STATUS_CONFLICTING_ADDRESSES and conflict.unchanged()

    # 1 zero bit clears bits 63-31: below 2 GiB.  Below that there is room here, so success.
    low = Call(None, 0x1000, MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN, PAGE_READWRITE, zero_bits=1)
    assert low.status == STATUS_SUCCESS
    assert low.base >> 31 == 0 and (low.base + low.size - 1) >> 31 == 0
    release(low.base)

    for zero_bits in range(2, 21):
        limit = 1 << (32 - zero_bits)
        expected = STATUS_SUCCESS if free_64k_fit(0x1000, limit) else STATUS_NO_MEMORY
        call = Call(None, 0x1000, MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN, PAGE_READWRITE, zero_bits)
        assert call.status == expected, (zero_bits, hex(call.status))
        if call.status == STATUS_SUCCESS:
            assert call.base >> (32 - zero_bits) == 0, (zero_bits, hex(call.base))
            assert (call.base + call.size - 1) >> (32 - zero_bits) == 0
            release(call.base)
        else:
            assert call.unchanged()

    # 21 zero bits never succeeds (Windows may also answer STATUS_INVALID_PARAMETER); 22 is invalid.
    assert Call(None, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE, 21).status == STATUS_NO_MEMORY
    assert Call(None, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE, 22).status == STATUS_INVALID_PARAMETER_3

    # Above 31, zero_bits is a mask of the leading zeroes on 64-bit: only its highest bit counts.
    mask = 0x1AAAAAAA
    masked = Call(None, 0x1000, MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN, PAGE_READWRITE, mask)
    assert masked.status == STATUS_SUCCESS
    allowed = ULONG_PTR_MAX >> (64 - mask.bit_length())  # every bit up to the mask's top one
    assert masked.base & ~allowed == 0 and (masked.base + masked.size - 1) & ~allowed == 0
    assert masked.base & ~mask != 0  # bits the mask lacks below its top are allowed
    release(masked.base)

    # AT_ROUND_TO_PAGE is not for NtAllocateVirtualMemory (Windows: _PARAMETER_5 or this).
    rounded = Call(addr1 + 0x1000, 0x1000, MEM_RESERVE | MEM_COMMIT | AT_ROUND_TO_PAGE, PAGE_EXECUTE_READWRITE)
    assert rounded.status == STATUS_INVALID_PARAMETER

    release(addr1)


# ---- zero_bits values ------------------------------------------------------------------------------


@pytest.mark.parametrize(("zero_bits", "limit"), [(0x7FFFFFFF, 1 << 31), (0xFFFFFFFF, 1 << 32), (0x3FFFFFFFF, 1 << 34)])
def test_masks_place_below_their_power_of_two(zero_bits: int, limit: int) -> None:
    call = Call(None, 0x30000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, zero_bits)
    assert call.status == STATUS_SUCCESS
    assert call.base + call.size <= limit and call.size == 0x30000
    release(call.base)


@pytest.mark.parametrize("zero_bits", [ULONG_PTR_MAX, -1, 0x7FFFFFFFFFFF])
def test_masks_as_wide_as_the_address_space_place_anywhere(zero_bits: int) -> None:
    call = Call(None, P, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, zero_bits)
    assert call.status == STATUS_SUCCESS
    release(call.base)


@pytest.mark.parametrize("zero_bits", [32, 0xFFFF, 16, 21])
def test_legal_values_without_room_are_no_memory(zero_bits: int) -> None:
    # 32 and 0xFFFF are masks allowing 64 bytes and 64 KiB; 16 allows 64 KiB: Windows never
    # gives out the first 64 KiB, so none of them can be satisfied.
    call = Call(None, P, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, zero_bits)
    assert call.status == STATUS_NO_MEMORY and call.unchanged()


@pytest.mark.parametrize("zero_bits", [*range(22, 32), 33, 0x1000, 0xFFFE])
def test_invalid_values_are_parameter_3(zero_bits: int) -> None:
    call = Call(None, P, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE, zero_bits)
    assert call.status == STATUS_INVALID_PARAMETER_3 and call.unchanged()


def test_zero_bits_also_places_commit_without_reserve() -> None:
    # MEM_COMMIT with a NULL base reserves and commits: the bound applies to that too.
    call = Call(None, 2 * P, MEM_COMMIT, PAGE_READWRITE, 1)
    assert call.status == STATUS_SUCCESS and call.base + call.size <= 1 << 31
    ctypes.memset(call.base, 0x11, call.size)
    release(call.base)


def test_threads_placing_below_a_bound_never_overlap() -> None:
    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def place() -> None:
        for _ in range(20):
            call = Call(None, 0x20000, MEM_RESERVE, PAGE_NOACCESS, zero_bits=1)
            assert call.status == STATUS_SUCCESS
            with lock:
                results.append((call.base, call.base + call.size))

    threads = [threading.Thread(target=place) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(results) == 80
        ordered = sorted(results)
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(ordered))
        assert all(end <= 1 << 31 for _, end in ordered)
    finally:
        for start, _ in results:
            release(start)


# ---- base and size in and out -------------------------------------------------------------------


def test_reserve_at_an_unaligned_address_reports_the_whole_reservation() -> None:
    probe = Call(None, GRANULARITY, MEM_RESERVE, PAGE_NOACCESS)
    a = probe.base
    release(a)  # a known free, 64 KiB aligned place
    call = Call(a + 0x4080, 0x1000, MEM_RESERVE, PAGE_NOACCESS)
    assert call.status == STATUS_SUCCESS
    assert (call.base, call.size) == (a, 0x6000)  # rounded down to 64 KiB, to the page end
    info = query(a)
    assert (info.AllocationBase, info.RegionSize, info.Protect) == (a, 0x6000, 0)

    # Commit inside: the page-rounded range comes back.
    commit = Call(a + 0x1001, 1, MEM_COMMIT, PAGE_READONLY)
    assert commit.status == STATUS_SUCCESS and (commit.base, commit.size) == (a + 0x1000, 0x1000)
    assert (query(a + 0x1000).Protect, query(a + 0x1000).RegionSize) == (PAGE_READONLY, 0x1000)
    assert query(a).Protect == 0  # the rest stays reserved

    commit = Call(a + 0x1800, 0x2000, MEM_COMMIT, PAGE_READWRITE)
    assert commit.status == STATUS_SUCCESS and (commit.base, commit.size) == (a + 0x1000, 0x3000)
    ctypes.memset(a + 0x1000, 0x5A, 0x3000)

    reset = Call(a + 0x2000, 0x10, MEM_RESET, PAGE_NOACCESS)
    assert reset.status == STATUS_SUCCESS and (reset.base, reset.size) == (a + 0x2000, P)

    # VirtualAlloc commits in what NtAllocateVirtualMemory reserved, and VirtualFree releases it.
    assert win32.VirtualAlloc(a, 0x1000, MEM_COMMIT, PAGE_READWRITE) == a
    release(a + 0xFFF)


def test_reserve_then_commit_with_zero_bits_then_use() -> None:
    reserved = Call(None, 0x100000, MEM_RESERVE, PAGE_NOACCESS, zero_bits=1)
    assert reserved.status == STATUS_SUCCESS and reserved.base + reserved.size <= 1 << 31
    # zero_bits with a base is ignored: the commit goes where the base says.
    committed = Call(reserved.base + 0x40000, 0x20000, MEM_COMMIT, PAGE_READWRITE, zero_bits=20)
    assert committed.status == STATUS_SUCCESS
    assert (committed.base, committed.size) == (reserved.base + 0x40000, 0x20000)
    ctypes.memset(committed.base, 1, committed.size)
    info = query(committed.base)
    assert (info.AllocationBase, info.RegionSize, info.Protect) == (reserved.base, 0x20000, PAGE_READWRITE)
    release(reserved.base)


def test_pointer_and_handle_forms() -> None:
    for process in (-1, ULONG_PTR_MAX, ctypes.c_void_p(-1), win32.NtCurrentProcess(), win32.GetCurrentProcess()):
        base, size = ctypes.c_void_p(), ctypes.c_size_t(P)
        for pointers in ((base, size), (ctypes.pointer(base), ctypes.pointer(size))):
            base.value, size.value = None, P
            status = win32.NtAllocateVirtualMemory(process, pointers[0], 0, pointers[1], MEM_COMMIT, PAGE_READWRITE)
            assert status == STATUS_SUCCESS and base.value and size.value == P
            release(base.value)
    # A SIZE_T-typed base works too (it is the same 64 bits).
    base64 = ctypes.c_uint64(0)
    size = ctypes.c_size_t(P)
    assert win32.NtAllocateVirtualMemory(CURRENT, ctypes.byref(base64), 1, ctypes.byref(size), MEM_COMMIT, 4) == 0
    assert 0 < base64.value < 1 << 31
    release(base64.value)


def test_wrong_python_types_raise() -> None:
    base, size = ctypes.c_void_p(), ctypes.c_size_t(P)
    with pytest.raises(TypeError, match="base_address"):
        win32.NtAllocateVirtualMemory(CURRENT, ctypes.byref(ctypes.c_int(0)), 0, ctypes.byref(size), MEM_COMMIT, 4)
    with pytest.raises(TypeError, match="region_size"):
        win32.NtAllocateVirtualMemory(CURRENT, ctypes.byref(base), 0, 4096, MEM_COMMIT, 4)
    with pytest.raises(TypeError, match="zero_bits"):
        win32.NtAllocateVirtualMemory(CURRENT, ctypes.byref(base), "1", ctypes.byref(size), MEM_COMMIT, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="process"):
        win32.NtAllocateVirtualMemory("me", ctypes.byref(base), 0, ctypes.byref(size), MEM_COMMIT, 4)
    assert base.value is None and size.value == P


# ---- status codes ---------------------------------------------------------------------------------


def test_status_codes() -> None:
    rw = PAGE_READWRITE
    assert Call(None, 0, MEM_RESERVE).status == STATUS_INVALID_PARAMETER
    assert Call(None, P, MEM_RESERVE | 0x1).status == STATUS_INVALID_PARAMETER  # unknown type bit
    assert Call(None, P, MEM_TOP_DOWN).status == STATUS_INVALID_PARAMETER  # no commit/reserve/reset
    assert Call(None, P, MEM_COMMIT | MEM_WRITE_WATCH).status == STATUS_INVALID_PARAMETER
    assert Call(None, P, MEM_RESET | MEM_COMMIT).status == STATUS_INVALID_PARAMETER
    assert Call(None, P, MEM_RESERVE, 0).status == STATUS_INVALID_PAGE_PROTECTION
    assert Call(None, P, MEM_RESERVE, PAGE_WRITECOPY).status == STATUS_INVALID_PAGE_PROTECTION
    assert Call(None, P, MEM_RESERVE, PAGE_READONLY | PAGE_READWRITE).status == STATUS_INVALID_PAGE_PROTECTION
    assert Call(None, P, MEM_RESERVE, rw | PAGE_GUARD).status == STATUS_NOT_SUPPORTED  # see docs/win32.md
    assert Call(0x1000, P, MEM_RESERVE).status == STATUS_INVALID_PARAMETER  # the first 64 KiB
    assert Call(0xF000, P, MEM_COMMIT).status == STATUS_INVALID_PARAMETER
    assert Call(USER_ADDRESS_LIMIT - P, 2 * P, MEM_RESERVE).status == STATUS_INVALID_PARAMETER
    assert Call(None, USER_ADDRESS_LIMIT + P, MEM_RESERVE).status == STATUS_INVALID_PARAMETER
    for process in (None, 0, 4, 0xFFFFFFFF, -2):
        assert Call(None, P, MEM_RESERVE, process=process).status == STATUS_INVALID_HANDLE


def test_commit_and_reset_where_nothing_is_reserved() -> None:
    probe = Call(None, GRANULARITY, MEM_RESERVE, PAGE_NOACCESS)
    release(probe.base)
    for allocation_type in (MEM_COMMIT, MEM_RESET):
        call = Call(probe.base, P, allocation_type)
        assert call.status == STATUS_NOT_MAPPED_VIEW and call.unchanged()


def test_checks_come_in_wines_order() -> None:
    # size, then zero_bits, then the allocation type, then the process, then the rest.
    assert Call(None, 0, MEM_RESERVE, zero_bits=22).status == STATUS_INVALID_PARAMETER
    assert Call(None, P, MEM_RESERVE | 0x1, zero_bits=22).status == STATUS_INVALID_PARAMETER_3
    assert Call(None, P, MEM_RESERVE | 0x1, process=4).status == STATUS_INVALID_PARAMETER
    assert Call(None, P, MEM_RESERVE, 0, process=4).status == STATUS_INVALID_HANDLE
    assert Call(0x1000, P, MEM_RESERVE, 0).status == STATUS_INVALID_PARAMETER


def test_null_pointers_are_access_violations() -> None:
    base, size = ctypes.c_void_p(), ctypes.c_size_t(P)
    assert win32.NtAllocateVirtualMemory(CURRENT, None, 0, ctypes.byref(size), MEM_COMMIT, 4) == STATUS_ACCESS_VIOLATION
    assert win32.NtAllocateVirtualMemory(CURRENT, ctypes.byref(base), 0, None, MEM_COMMIT, 4) == STATUS_ACCESS_VIOLATION
    assert base.value is None and size.value == P


def test_conflicts_leave_the_outputs_alone() -> None:
    first = Call(None, GRANULARITY, MEM_RESERVE, PAGE_NOACCESS)
    again = Call(first.base, P, MEM_RESERVE, PAGE_NOACCESS)
    assert again.status == STATUS_CONFLICTING_ADDRESSES and again.unchanged()
    release(first.base)


def test_nt_calls_leave_the_last_error_alone() -> None:
    win32.SetLastError(1234)
    assert Call(None, 0, MEM_RESERVE).status == STATUS_INVALID_PARAMETER
    ok = Call(None, P, MEM_COMMIT)
    assert ok.status == STATUS_SUCCESS and win32.GetLastError() == 1234
    release(ok.base)


def test_virtual_alloc_reports_the_same_failures_as_win32_errors() -> None:
    assert not win32.VirtualAlloc(0x1000, P, MEM_RESERVE, PAGE_READWRITE)
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER


def test_nt_success() -> None:
    assert win32.NT_SUCCESS(STATUS_SUCCESS) and win32.NT_SUCCESS(0x40000000)
    assert not win32.NT_SUCCESS(STATUS_NO_MEMORY)
    assert not win32.NT_SUCCESS(ctypes.c_int32(STATUS_NO_MEMORY).value)  # the signed form
    assert not win32.NT_SUCCESS(0x80000011)


def test_write_watch_on_low_memory(watch_backend: str) -> None:
    call = Call(None, 4 * P, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE, zero_bits=0xFFFFFFFF)
    assert call.status == STATUS_SUCCESS and call.base + call.size <= 1 << 32
    write_byte(call.base + 2 * P)
    result = get_write_watch(0, call.base, call.size)
    assert (result.ret, result.addresses) == (0, [call.base + 2 * P])
    release(call.base)
