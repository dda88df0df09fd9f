"""``zero_bits``: NtAllocateVirtualMemory's address bound, in ``placement.zero_bits_limit``
and in ``alloc(zero_bits=)`` / ``reserve(zero_bits=)``.  The rules are Wine's
(dlls/ntdll/unix/virtual.c), which dlls/ntdll/tests/virtual.c checks against Windows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ntshim
from ntshim.memory import PAGE_SIZE, placement
from ntshim.memory.placement import zero_bits_limit

GiB = 1 << 30
ULONG_PTR_MAX = (1 << 64) - 1


@pytest.mark.parametrize("count", range(1, 22))
def test_a_count_keeps_that_many_of_the_32_low_bits_zero(count: int) -> None:
    limit = zero_bits_limit(count)
    assert limit is not None and limit == 2 ** (32 - count)
    # Wine's test of a placed address: (address >> (32 - zero_bits)) == 0 for every byte.
    assert (limit - 1) >> (32 - count) == 0 and limit >> (32 - count) == 1


def test_well_known_counts() -> None:
    assert zero_bits_limit(0) is None
    assert zero_bits_limit(1) == 2 * GiB
    assert zero_bits_limit(2) == 1 * GiB
    assert zero_bits_limit(12) == 1 << 20
    assert zero_bits_limit(21) == 0x800  # legal, and no allocation can get it


@pytest.mark.parametrize(
    ("mask", "limit"),
    [
        (32, 0x40),  # the one mask below 0xFFFF: 0b100000
        (0xFFFF, 0x10000),
        (0x10000, 0x20000),
        (0x1AAAAAAA, 0x20000000),  # only the highest set bit counts (Wine's 0x1aaaaaaa case)
        (0x7FFFFFFF, 2 * GiB),
        (0x80000000, 4 * GiB),
        (0xFFFFFFFF, 4 * GiB),
        (0x7FFFFFFFFFFF, 1 << 47),
        (ULONG_PTR_MAX, 1 << 64),
    ],
)
def test_masks(mask: int, limit: int) -> None:
    assert zero_bits_limit(mask) == limit


@given(st.integers(min_value=0xFFFF, max_value=ULONG_PTR_MAX))
def test_a_mask_allows_every_address_up_to_its_highest_bit(mask: int) -> None:
    limit = zero_bits_limit(mask)
    assert limit is not None
    # The last address allowed is all ones up to the mask's highest bit, and no further.
    last = limit - 1
    assert last.bit_length() == mask.bit_length() and last & (last + 1) == 0  # a run of ones
    assert last >= mask > limit // 2 - 1


@pytest.mark.parametrize("value", [*range(22, 32), 33, 34, 0x100, 0x1000, 0xFFFE])
def test_values_windows_refuses(value: int) -> None:
    with pytest.raises(ValueError, match=f"zero_bits={value:#x}|zero_bits={value}"):
        zero_bits_limit(value)


@pytest.mark.parametrize("value", [-1, -0x10000, 1 << 64, 1 << 70])
def test_values_outside_ulong_ptr(value: int) -> None:
    with pytest.raises(ValueError, match="ULONG_PTR"):
        zero_bits_limit(value)


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_non_integers(value: object) -> None:
    with pytest.raises(TypeError, match="zero_bits"):
        zero_bits_limit(value)  # type: ignore[arg-type]


def _fits(size: int, limit: int, align: int = PAGE_SIZE) -> bool:
    return placement.highest_fit(-(-size // PAGE_SIZE) * PAGE_SIZE, limit, align) is not None


@pytest.mark.parametrize("zero_bits", [1, 2, 4, 8, 12, 15, 0x7FFFFFFF, 0xFFFFFFFF, 0x3FFFFFFF, 0x1AAAAAAA])
@pytest.mark.parametrize("size", [1, PAGE_SIZE, 65536, 1 << 20])
def test_allocated_memory_ends_below_the_limit(zero_bits: int, size: int) -> None:
    limit = zero_bits_limit(zero_bits)
    assert limit is not None
    if not _fits(size, limit):  # the low range may be taken on some machine: then say so
        with pytest.raises(MemoryError):
            ntshim.alloc(size, zero_bits=zero_bits)
        return
    with ntshim.alloc(size, zero_bits=zero_bits) as region:
        assert region.address + region.size <= limit
        assert region.address >= placement.mmap_min_addr()
        memoryview(region)[size - 1] = 3
        assert memoryview(region)[size - 1] == 3


def test_zero_bits_is_the_same_bound_as_below() -> None:
    with ntshim.alloc(PAGE_SIZE, zero_bits=1) as a, ntshim.alloc(PAGE_SIZE, below=2 * GiB) as b:
        assert a.address + a.size <= 2 * GiB and b.address + b.size <= 2 * GiB


@pytest.mark.parametrize("zero_bits", [1, 0xFFFFFFFF])
def test_reserved_memory_is_placed_and_commits_in_parts(zero_bits: int) -> None:
    limit = zero_bits_limit(zero_bits)
    assert limit is not None
    with ntshim.reserve(16 << 20, zero_bits=zero_bits, align=1 << 16) as region:
        assert region.address + region.size <= limit and region.address % (1 << 16) == 0
        region.commit(4 << 20, 1 << 20)
        with region.view(4 << 20, 1 << 20) as view:
            view[-1] = 9
            assert view[-1] == 9
        assert not region.committed(0)


def test_reserve_at_an_address_must_end_below_the_limit() -> None:
    probe = ntshim.reserve(4 * PAGE_SIZE, zero_bits=1)
    address = probe.address
    probe.free()
    with ntshim.reserve(4 * PAGE_SIZE, address=address, zero_bits=1) as region:
        assert region.address == address
    # A count whose limit is the highest power of two at or below the address.
    tighter = 33 - address.bit_length()
    with pytest.raises(ValueError, match="does not end below"):
        ntshim.reserve(4 * PAGE_SIZE, address=address, zero_bits=tighter)


def test_a_mask_wider_than_the_address_space_bounds_nothing() -> None:
    for mask in (0x7FFFFFFFFFFF, ULONG_PTR_MAX):
        with ntshim.alloc(PAGE_SIZE, zero_bits=mask) as region:
            assert region.address + region.size <= placement.USER_SPACE_END


@pytest.mark.parametrize("zero_bits", [21, 20, 32])
def test_a_legal_value_without_room_is_a_memory_error(zero_bits: int) -> None:
    with pytest.raises(MemoryError, match="zero_bits"):
        ntshim.alloc(2 * PAGE_SIZE, zero_bits=zero_bits)
    with pytest.raises(MemoryError, match="zero_bits"):
        ntshim.reserve(2 * PAGE_SIZE, zero_bits=zero_bits)


def test_no_free_range_under_the_limit_is_a_memory_error() -> None:
    limit = zero_bits_limit(12)  # 1 MiB: fill what is free there, then ask for more
    assert limit is not None
    taken = []
    try:
        while (start := placement.highest_fit(PAGE_SIZE, limit, PAGE_SIZE)) is not None:
            taken.append(ntshim.reserve(PAGE_SIZE, address=start))
        with pytest.raises(MemoryError, match="no free range"):
            ntshim.alloc(PAGE_SIZE, zero_bits=12)
    finally:
        for region in taken:
            region.free()


@pytest.mark.parametrize("value", [22, 31, 33, 0xFFFE, -1])
def test_alloc_and_reserve_refuse_invalid_values(value: int) -> None:
    with pytest.raises(ValueError, match="zero_bits"):
        ntshim.alloc(PAGE_SIZE, zero_bits=value)
    with pytest.raises(ValueError, match="zero_bits"):
        ntshim.reserve(PAGE_SIZE, zero_bits=value)


def test_below_and_zero_bits_together_are_refused() -> None:
    with pytest.raises(ValueError, match="below and zero_bits"):
        ntshim.alloc(PAGE_SIZE, below=4 * GiB, zero_bits=1)
    with pytest.raises(ValueError, match="below and zero_bits"):
        ntshim.reserve(PAGE_SIZE, below=4 * GiB, zero_bits=0xFFFFFFFF)


def test_zero_bits_zero_is_no_bound() -> None:
    with ntshim.alloc(PAGE_SIZE, zero_bits=0) as region:
        assert region.size == PAGE_SIZE


def test_bad_size_is_still_reported_as_such() -> None:
    with pytest.raises(ValueError, match="size must be positive"):
        ntshim.alloc(0, zero_bits=1)
    with pytest.raises(TypeError, match="size"):
        ntshim.alloc("4096", zero_bits=1)  # type: ignore[arg-type]
