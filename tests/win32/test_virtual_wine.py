"""Wine's kernel32 test_VirtualAlloc, test_VirtualProtect and test_VirtualAlloc_protection
(dlls/kernel32/tests/virtual.c) and the NtFreeVirtualMemory cases that kernel32 can reach,
ported: Windows' region bookkeeping."""

from __future__ import annotations

import ctypes

import pytest
from win32_calls import P, fails, protect, query

from ntshim import win32
from ntshim.win32 import (
    AT_ROUND_TO_PAGE,
    ERROR_INVALID_ADDRESS,
    ERROR_INVALID_PARAMETER,
    ERROR_NOACCESS,
    ERROR_NOT_SUPPORTED,
    MEM_COMMIT,
    MEM_DECOMMIT,
    MEM_FREE,
    MEM_PRIVATE,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_RESET,
    PAGE_EXECUTE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_EXECUTE_WRITECOPY,
    PAGE_GUARD,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOPY,
)


def test_reserve_commit_protect_reset_free_sequence() -> None:
    win32.SetLastError(0xDEADBEEF)
    assert fails(win32.VirtualAlloc(None, 0, MEM_RESERVE, PAGE_NOACCESS), ERROR_INVALID_PARAMETER)

    addr1 = win32.VirtualAlloc(None, 0xFFFC, MEM_RESERVE, PAGE_NOACCESS)
    assert addr1 and addr1 % 0x10000 == 0
    info = query(addr1)
    assert (info.BaseAddress, info.AllocationBase, info.AllocationProtect) == (addr1, addr1, PAGE_NOACCESS)
    assert (info.RegionSize, info.State, info.Protect, info.Type) == (0x10000, MEM_RESERVE, 0, MEM_PRIVATE)

    old = ctypes.c_ulong(0)
    assert fails(win32.VirtualProtect(addr1, 0xFFFC, PAGE_READONLY, ctypes.byref(old)), ERROR_INVALID_ADDRESS)

    assert win32.VirtualAlloc(addr1, 0x1000, MEM_COMMIT, PAGE_NOACCESS) == addr1
    info = query(addr1)
    assert (info.AllocationProtect, info.RegionSize, info.State, info.Protect) == (
        PAGE_NOACCESS,
        0x1000,
        MEM_COMMIT,
        PAGE_NOACCESS,
    )
    rest = query(addr1 + 0x1000)
    assert (rest.BaseAddress, rest.RegionSize, rest.State, rest.Protect) == (addr1 + 0x1000, 0xF000, MEM_RESERVE, 0)

    # The whole range must be committed.
    assert fails(win32.VirtualProtect(addr1, 0xFFFC, PAGE_READONLY, ctypes.byref(old)), ERROR_INVALID_ADDRESS)
    assert old.value == PAGE_NOACCESS  # written anyway (Windows 8 and later)

    assert protect(addr1, 0x1000, PAGE_READONLY) == PAGE_NOACCESS
    assert protect(addr1, 0x1000, PAGE_READWRITE) == PAGE_READONLY
    info = query(addr1)
    assert (info.RegionSize, info.State, info.Protect) == (0x1000, MEM_COMMIT, PAGE_READWRITE)

    # MEM_RESET: the data may stay or read back as zero; the protect argument is ignored
    # and nothing about the pages changes.
    ctypes.memset(addr1, 0x55, 20)
    assert win32.VirtualAlloc(addr1, 0x1000, MEM_RESET, PAGE_NOACCESS) == addr1
    assert ctypes.c_uint32.from_address(addr1).value in (0x55555555, 0)
    info = query(addr1)
    assert (info.RegionSize, info.State, info.Protect) == (0x1000, MEM_COMMIT, PAGE_READWRITE)
    assert win32.VirtualAlloc(addr1 + 0x1000, 0x1000, MEM_RESET, PAGE_NOACCESS) == addr1 + 0x1000
    info = query(addr1 + 0x1000)
    assert (info.RegionSize, info.State, info.Protect) == (0xF000, MEM_RESERVE, 0)
    assert fails(win32.VirtualAlloc(addr1 + 0xF000, 0x2000, MEM_RESET, PAGE_NOACCESS), ERROR_INVALID_ADDRESS)

    # Invalid protections.
    assert fails(win32.VirtualAlloc(None, 0x1000, MEM_RESERVE, 0), ERROR_INVALID_PARAMETER)
    assert fails(win32.VirtualAlloc(None, 0x1000, MEM_COMMIT, 0), ERROR_INVALID_PARAMETER)
    assert fails(win32.VirtualAlloc(addr1, 0x1000, MEM_COMMIT, PAGE_READONLY | PAGE_EXECUTE), ERROR_INVALID_PARAMETER)
    bad = PAGE_READWRITE | PAGE_EXECUTE_WRITECOPY
    assert fails(win32.VirtualProtect(addr1, 0x1000, bad, ctypes.byref(old)), ERROR_INVALID_PARAMETER)
    assert fails(win32.VirtualProtect(addr1, 0x1000, 0, ctypes.byref(old)), ERROR_INVALID_PARAMETER)

    # Bad free types; decommitting a mixed range; MEM_RELEASE needs size 0.
    assert fails(win32.VirtualFree(addr1, 0x10000, 0), ERROR_INVALID_PARAMETER)
    assert fails(win32.VirtualFree(addr1, 0, MEM_FREE), ERROR_INVALID_PARAMETER)
    assert fails(win32.VirtualFree(addr1, 0x10000, MEM_DECOMMIT | MEM_RELEASE), ERROR_INVALID_PARAMETER)
    assert win32.VirtualFree(addr1, 0x10000, MEM_DECOMMIT)
    assert query(addr1).State == MEM_RESERVE
    assert fails(win32.VirtualFree(addr1, 1, MEM_RELEASE), ERROR_INVALID_PARAMETER)
    assert win32.VirtualFree(addr1, 0, MEM_RELEASE)
    info = query(addr1)
    assert (info.State, info.Protect, info.AllocationBase, info.AllocationProtect, info.Type) == (
        MEM_FREE,
        PAGE_NOACCESS,
        None,
        0,
        0,
    )


def test_nocache_belongs_to_the_allocation() -> None:
    a = win32.VirtualAlloc(None, 0x2000, MEM_COMMIT, PAGE_READWRITE | PAGE_NOCACHE)
    info = query(a)
    assert (info.AllocationProtect, info.Protect, info.RegionSize) == (
        PAGE_READWRITE | PAGE_NOCACHE,
        PAGE_READWRITE | PAGE_NOCACHE,
        0x2000,
    )
    assert protect(a, 0x1000, PAGE_READWRITE) == PAGE_READWRITE | PAGE_NOCACHE
    info = query(a)
    assert (info.RegionSize, info.Protect) == (0x2000, PAGE_READWRITE | PAGE_NOCACHE)
    assert protect(a, 0x1000, PAGE_READONLY) == PAGE_READWRITE | PAGE_NOCACHE
    info = query(a)
    assert (info.RegionSize, info.Protect, info.AllocationProtect) == (
        0x1000,
        PAGE_READONLY | PAGE_NOCACHE,
        PAGE_READWRITE | PAGE_NOCACHE,
    )
    b = win32.VirtualAlloc(None, 0x2000, MEM_COMMIT, PAGE_READWRITE)
    assert protect(b, 0x1000, PAGE_READONLY | PAGE_NOCACHE) == PAGE_READWRITE
    info = query(b)
    assert (info.RegionSize, info.Protect) == (0x1000, PAGE_READONLY)
    assert win32.VirtualFree(a, 0, MEM_RELEASE) and win32.VirtualFree(b, 0, MEM_RELEASE)


def test_reservations_are_64k_aligned_and_can_be_placed() -> None:
    a = win32.VirtualAlloc(None, 0x2000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE)
    assert a and a % 0x10000 == 0
    assert win32.VirtualFree(a, 0, MEM_RELEASE)
    assert win32.VirtualAlloc(a, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE) == a
    assert win32.VirtualFree(a, 0, MEM_RELEASE)
    assert fails(win32.VirtualAlloc(None, 0x1000, MEM_RESERVE | AT_ROUND_TO_PAGE, PAGE_READWRITE), ERROR_INVALID_PARAMETER)


def test_a_reservation_over_an_existing_one_conflicts() -> None:
    a = win32.VirtualAlloc(None, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    # The base rounds down to 64 KiB, onto the existing allocation.
    assert fails(win32.VirtualAlloc(a + 0x1000, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), ERROR_INVALID_ADDRESS)
    assert fails(win32.VirtualAlloc(a, 0x1000, MEM_RESERVE, PAGE_READWRITE), ERROR_INVALID_ADDRESS)
    assert win32.VirtualFree(a, 0, MEM_RELEASE)


def test_unaligned_reservation_base_rounds_down_and_size_covers_the_request() -> None:
    a = win32.VirtualAlloc(None, 0x10000, MEM_RESERVE, PAGE_NOACCESS)
    assert win32.VirtualFree(a, 0, MEM_RELEASE)  # a known-free, 64 KiB aligned place
    got = win32.VirtualAlloc(a + 0x4080, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    assert got == a
    info = query(a)
    assert (info.RegionSize, info.State) == (0x6000, MEM_COMMIT)
    # Committing inside returns the page-rounded address.
    assert win32.VirtualAlloc(a + 0x1001, 1, MEM_COMMIT, PAGE_READONLY) == a + 0x1000
    assert win32.VirtualFree(a + 0xFFF, 0, MEM_RELEASE)  # rounds down to the base


@pytest.mark.parametrize("exec_bit", [0, PAGE_EXECUTE, PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE, PAGE_EXECUTE_WRITECOPY])
@pytest.mark.parametrize("rw_bit", [0, PAGE_NOACCESS, PAGE_READONLY, PAGE_READWRITE, PAGE_WRITECOPY])
def test_which_protections_private_memory_takes(rw_bit: int, exec_bit: int) -> None:
    value = rw_bit | exec_bit
    valid = bool(rw_bit) != bool(exec_bit) and value not in (PAGE_WRITECOPY, PAGE_EXECUTE_WRITECOPY)
    base = win32.VirtualAlloc(None, P, MEM_RESERVE | MEM_COMMIT, PAGE_NOACCESS)
    old = ctypes.c_ulong(0)
    ok = win32.VirtualProtect(base, P, value, ctypes.byref(old))
    assert ok == valid and (valid or win32.GetLastError() == ERROR_INVALID_PARAMETER)
    info = query(base)
    assert info.Protect == (value if valid else PAGE_NOACCESS)
    assert (info.AllocationProtect, info.RegionSize, info.State, info.Type) == (PAGE_NOACCESS, P, MEM_COMMIT, MEM_PRIVATE)
    # VirtualAlloc(MEM_COMMIT) over committed memory takes the same values and returns the base.
    committed = win32.VirtualAlloc(base, P, MEM_COMMIT, value)
    assert committed == (base if valid else 0)
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_virtual_protect_with_a_null_old_pointer_changes_nothing() -> None:
    base = win32.VirtualAlloc(None, P, MEM_RESERVE | MEM_COMMIT, PAGE_NOACCESS)
    assert fails(win32.VirtualProtect(base, P, PAGE_READWRITE, None), ERROR_NOACCESS)
    assert protect(base, P, PAGE_READONLY) == PAGE_NOACCESS
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_protecting_a_mixed_range_reports_the_first_page() -> None:
    base = win32.VirtualAlloc(None, 16 * P, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    protect(base + 8 * P, 8 * P, PAGE_EXECUTE_READWRITE)
    assert query(base).RegionSize == 8 * P
    assert protect(base, 16 * P, PAGE_EXECUTE_READ) == PAGE_READWRITE
    assert query(base).RegionSize == 16 * P
    assert protect(base + 1, 1, PAGE_READONLY) == PAGE_EXECUTE_READ  # rounds to the page
    assert query(base).RegionSize == P
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_free_variants() -> None:
    a = win32.VirtualAlloc(None, 0x10000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    assert win32.VirtualFree(a + 0x1FFF, 2, MEM_DECOMMIT)  # every page touched: 0x1000-0x3000
    assert (query(a + 0x1000).State, query(a + 0x1000).RegionSize) == (MEM_RESERVE, 0x2000)
    assert fails(win32.VirtualFree(a + 0x1001, 0, MEM_DECOMMIT), ERROR_INVALID_ADDRESS)  # size 0: not the base
    assert win32.VirtualFree(a + 0xFFE, 0, MEM_DECOMMIT)  # rounds down to the base: all of it
    assert (query(a).State, query(a).RegionSize) == (MEM_RESERVE, 0x10000)
    assert fails(win32.VirtualFree(a + 0x1000, 0, MEM_RELEASE), ERROR_INVALID_ADDRESS)
    assert fails(win32.VirtualFree(a, 0x11000, MEM_DECOMMIT), ERROR_INVALID_PARAMETER)  # past the end
    assert fails(win32.VirtualFree(None, 0, MEM_RELEASE), ERROR_INVALID_PARAMETER)
    assert win32.VirtualFree(a, 0, MEM_RELEASE)
    assert fails(win32.VirtualFree(a, 0, MEM_RELEASE), ERROR_INVALID_ADDRESS)  # not allocated any more
    assert fails(win32.VirtualAlloc(a, 0x1000, MEM_COMMIT, PAGE_READWRITE), ERROR_INVALID_ADDRESS)  # commit on free


def test_guard_pages_are_refused_not_faked() -> None:
    assert fails(win32.VirtualAlloc(None, P, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD), ERROR_NOT_SUPPORTED)
    base = win32.VirtualAlloc(None, P, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE)
    old = ctypes.c_ulong(0)
    assert fails(win32.VirtualProtect(base, P, PAGE_READWRITE | PAGE_GUARD, ctypes.byref(old)), ERROR_NOT_SUPPORTED)
    assert query(base).Protect == PAGE_READWRITE
    assert win32.VirtualFree(base, 0, MEM_RELEASE)
