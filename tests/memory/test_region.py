"""Region: allocation, the buffer protocol, lifetime, page protection (as the kernel sees it
in /proc/self/maps) and attaching write watches."""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable

import numpy
import pytest

import ntshim
from ntshim.memory import PAGE_SIZE, Region, alloc

P = PAGE_SIZE


# ---- helpers -------------------------------------------------------------------------


def maps_perms(address: int) -> str:
    """The permissions column of /proc/self/maps ("rw-p", "r--p", ...) for ``address``."""
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo_text, hi_text = span.split("-")
            if int(lo_text, 16) <= address < int(hi_text, 16):
                return perms
    raise AssertionError(f"address {address:#x} is not mapped")


def kernel_prot(region: Region, page: int) -> str:
    """The rwx part of the kernel's protection of one page of ``region`` ("rw-", "r--", "---")."""
    return maps_perms(region.address + page * P)[:3]


def bump(region: Region, page: int, at: int = 0) -> int:
    """Write a value that differs from the one there (so every backend sees it); return it."""
    with memoryview(region) as mv:
        value = (mv[page * P + at] + 1) % 256
        mv[page * P + at] = value
    return value


def dirty_pages(region: Region) -> list[int]:
    return [offset // P for offset in region.write_watch.dirty().offsets]


# The user protection strings and what the kernel shows for them.
PROTECTIONS = [
    # (argument, Region.protection(), /proc/self/maps)
    ("rw", "rw", "rw-"),
    ("r", "r", "r--"),
    ("none", "none", "---"),
    ("rx", "rx", "r-x"),
    ("rwx", "rwx", "rwx"),
    ("", "none", "---"),
]


# ---- allocation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(1, P), (P - 1, P), (P, P), (P + 1, 2 * P), (3 * P, 3 * P), (5 * P - 7, 5 * P)],
)
def test_alloc_rounds_size_up_to_whole_pages(requested: int, expected: int) -> None:
    with alloc(requested) as region:
        assert isinstance(region, Region)
        assert region.size == expected
        assert region.address % P == 0
        assert not region.closed
        assert region.protection() == "rw"
        assert kernel_prot(region, 0) == "rw-"


def test_alloc_memory_is_zeroed() -> None:
    with alloc(4 * P) as region, memoryview(region) as mv:
        assert mv.nbytes == 4 * P
        assert bytes(mv) == bytes(4 * P)


def test_distinct_regions_do_not_overlap() -> None:
    with alloc(2 * P) as a, alloc(2 * P) as b:
        assert a.address + a.size <= b.address or b.address + b.size <= a.address


# ---- buffer protocol -----------------------------------------------------------------


def test_memoryview_reads_and_writes() -> None:
    with alloc(2 * P) as region:
        with memoryview(region) as mv:
            assert not mv.readonly
            assert mv.format == "B" and mv.itemsize == 1 and mv.ndim == 1
            assert len(mv) == 2 * P
            mv[0] = 7
            mv[2 * P - 1] = 9
            mv[P : P + 3] = b"abc"
        with memoryview(region) as again:
            assert again[0] == 7
            assert again[2 * P - 1] == 9
            assert bytes(again[P : P + 3]) == b"abc"
            assert region.exports == 1
        assert region.exports == 0


def test_numpy_frombuffer_sees_writes_both_ways() -> None:
    with alloc(2 * P) as region:
        arr = numpy.frombuffer(region, dtype=numpy.uint8)
        assert arr.shape == (2 * P,)
        assert arr.flags.writeable
        assert arr.ctypes.data == region.address
        with memoryview(region) as mv:
            mv[10] = 42
            assert arr[10] == 42
            arr[P + 5] = 200
            assert mv[P + 5] == 200
        words = numpy.frombuffer(region, dtype=numpy.uint64)
        words[1] = 0x0102030405060708
        assert list(arr[8:16]) == [8, 7, 6, 5, 4, 3, 2, 1]
        del arr, words


def test_ctypes_from_buffer_sees_the_same_bytes() -> None:
    with alloc(P) as region:
        first = ctypes.c_char.from_buffer(region)
        n = 64
        array = (ctypes.c_ubyte * n).from_buffer(region)
        assert ctypes.addressof(first) == region.address
        assert ctypes.addressof(array) == region.address
        array[0] = ord("Z")
        assert first.value == b"Z"
        first.value = b"A"
        assert array[0] == ord("A")
        with memoryview(region) as mv:
            mv[1:4] = b"\x01\x02\x03"
            assert list(array[:4]) == [ord("A"), 1, 2, 3]
            array[n - 1] = 0xEE
            assert mv[n - 1] == 0xEE
        at_offset = ctypes.c_char.from_buffer(region, 1)
        assert at_offset.value == b"\x01"
        del first, array, at_offset
        assert region.exports == 0


# ---- lifetime ------------------------------------------------------------------------


def _memoryview(region: Region) -> object:
    return memoryview(region)


def _numpy(region: Region) -> object:
    return numpy.frombuffer(region, dtype=numpy.uint8)


def _ctypes_char(region: Region) -> object:
    return ctypes.c_char.from_buffer(region)


def _ctypes_array(region: Region) -> object:
    return (ctypes.c_ubyte * 16).from_buffer(region)


EXPORTERS: list[Callable[[Region], object]] = [_memoryview, _numpy, _ctypes_char, _ctypes_array]


@pytest.mark.parametrize("make", EXPORTERS, ids=lambda f: f.__name__.lstrip("_"))
def test_free_refused_while_an_export_lives(make: Callable[[Region], object]) -> None:
    region = alloc(P)
    obj = make(region)
    assert region.exports == 1
    with pytest.raises(BufferError, match="buffer export"):
        region.free()
    assert not region.closed
    # The export still works: the memory was not unmapped underneath it.
    with memoryview(region) as mv:
        mv[0] = 0x5A
    assert memoryview(obj).tobytes()[:1] == b"\x5a"
    if isinstance(obj, memoryview):
        obj.release()
    del obj
    assert region.exports == 0
    region.free()
    assert region.closed


def test_free_is_idempotent_and_everything_after_it_raises() -> None:
    region = alloc(2 * P)
    region.free()
    region.free()  # idempotent
    assert region.closed
    with pytest.raises(ValueError, match="freed"):
        region.address
    with pytest.raises(ValueError, match="freed"):
        memoryview(region)
    with pytest.raises(ValueError, match="freed"):
        numpy.frombuffer(region, dtype=numpy.uint8)
    with pytest.raises(ValueError, match="freed"):
        region.protect(0, P, "r")
    with pytest.raises(ValueError, match="freed"):
        region.protection(0)
    with pytest.raises(ValueError, match="freed"):
        ntshim.memory.watch(region)
    assert region.size == 2 * P
    assert "freed" in repr(region)


def test_context_manager_frees_on_exit() -> None:
    with alloc(P) as region:
        address = region.address
        bump(region, 0)
    assert region.closed
    with pytest.raises(ValueError, match="freed"):
        region.address
    assert address % P == 0


def test_context_manager_frees_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), alloc(P) as region:
        raise RuntimeError("boom")
    assert region.closed


def test_context_manager_exit_with_live_export_raises_buffer_error() -> None:
    with pytest.raises(BufferError), alloc(P) as region:
        mv = memoryview(region)
    assert not region.closed
    mv.release()
    region.free()
    assert region.closed


def test_free_of_watched_region_with_live_export_keeps_the_watch(backend: str) -> None:
    region = alloc(4 * P, watch=True, backend=backend)
    watch = region.write_watch
    assert watch is not None
    mv = memoryview(region)
    with pytest.raises(BufferError):
        region.free()
    assert not region.closed and not watch.closed
    mv[2 * P] = 1
    assert dirty_pages(region) == [2]
    mv.release()
    region.free()
    assert region.closed and watch.closed
    assert region.write_watch is None


def test_close_unmaps_and_free_is_its_alias() -> None:
    region = alloc(2 * P)
    assert Region.free is Region.close
    mv = memoryview(region)
    with pytest.raises(BufferError, match="buffer export"):
        region.close()
    mv.release()
    region.close()
    region.close()  # idempotent, as mmap.close()
    assert region.closed
    region.free()  # and so is its alias
    with pytest.raises(ValueError, match="freed"):
        memoryview(region)


def test_len_is_the_size_in_bytes_even_once_closed() -> None:
    region = alloc(P + 1)
    assert len(region) == 2 * P == region.size
    region.close()
    assert len(region) == 2 * P


# ---- protection ----------------------------------------------------------------------


@pytest.mark.parametrize(("argument", "reported", "kernel"), PROTECTIONS)
def test_protect_sets_and_reports_protection(argument: str, reported: str, kernel: str) -> None:
    with alloc(4 * P) as region:
        previous = region.protect(P, 2 * P, argument)
        assert previous == "rw"
        assert region.protection(P) == reported
        assert region.protection(2 * P) == reported
        assert region.protection(0) == "rw"
        assert region.protection(3 * P) == "rw"
        assert kernel_prot(region, 1) == kernel
        assert kernel_prot(region, 2) == kernel
        assert kernel_prot(region, 0) == "rw-"
        assert kernel_prot(region, 3) == "rw-"
        assert region.protect(P, 2 * P, "rw") == reported
        assert kernel_prot(region, 1) == "rw-"
        assert kernel_prot(region, 2) == "rw-"


@pytest.mark.parametrize(
    ("bits", "reported", "kernel"),
    [
        (mmap.PROT_READ | mmap.PROT_WRITE, "rw", "rw-"),
        (mmap.PROT_READ, "r", "r--"),
        (0, "none", "---"),  # PROT_NONE (mmap has no name for it)
        (mmap.PROT_READ | mmap.PROT_EXEC, "rx", "r-x"),
        (mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC, "rwx", "rwx"),
    ],
)
def test_protect_alloc_and_commit_accept_mmap_prot_bits(bits: int, reported: str, kernel: str) -> None:
    with alloc(2 * P) as region:
        assert region.protect(P, P, bits) == "rw"
        assert region.protection(P) == reported and kernel_prot(region, 1) == kernel
        assert region.protect(P, P, "rw") == reported
    with alloc(P, protect=bits) as region:
        assert region.protection(0) == reported and kernel_prot(region, 0) == kernel
    with ntshim.memory.reserve(2 * P) as reservation:
        reservation.commit(P, P, bits)
        assert reservation.protection(P) == reported and kernel_prot(reservation, 1) == kernel


def test_protect_returns_previous_protection_of_first_page() -> None:
    with alloc(4 * P) as region:
        region.protect(P, P, "r")
        region.protect(2 * P, P, "none")
        assert region.protect(P, 2 * P, "rx") == "r"
        assert region.protection(P) == "rx" and region.protection(2 * P) == "rx"
        assert region.protect(0, 4 * P, "rw") == "rw"
        assert [region.protection(i * P) for i in range(4)] == ["rw"] * 4


def test_protect_rounds_size_up_to_whole_pages() -> None:
    with alloc(3 * P) as region:
        region.protect(P, 1, "r")
        assert [region.protection(i * P) for i in range(3)] == ["rw", "r", "rw"]
        assert [kernel_prot(region, i) for i in range(3)] == ["rw-", "r--", "rw-"]
        region.protect(0, P + 1, "none")
        assert [region.protection(i * P) for i in range(3)] == ["none", "none", "rw"]
        region.protect(0, None, "rw")  # type: ignore[arg-type]  # None: to the end
        assert [kernel_prot(region, i) for i in range(3)] == ["rw-"] * 3


def test_read_only_page_makes_buffers_read_only_but_readable() -> None:
    with alloc(3 * P) as region:
        with memoryview(region) as mv:
            mv[P] = 0x11
            mv[3 * P - 1] = 0x22
        region.protect(P, P, "r")
        with memoryview(region) as mv:
            assert mv.readonly
            assert mv[P] == 0x11 and mv[3 * P - 1] == 0x22
            with pytest.raises(TypeError):
                mv[0] = 1
        arr = numpy.frombuffer(region, dtype=numpy.uint8)
        assert not arr.flags.writeable
        assert arr[P] == 0x11
        del arr
        with pytest.raises(TypeError):
            ctypes.c_char.from_buffer(region)  # needs a writable buffer
        assert region.protect(P, P, "rw") == "r"
        with memoryview(region) as mv:
            assert not mv.readonly
            mv[P] = 0x33
        assert bytes(memoryview(region)[P : P + 1]) == b"\x33"


def test_unreadable_page_refuses_every_buffer_export() -> None:
    with alloc(3 * P) as region:
        with memoryview(region) as mv:
            mv[0] = 5
        region.protect(2 * P, P, "none")
        with pytest.raises(BufferError, match="read access"):
            memoryview(region)
        with pytest.raises(BufferError):
            numpy.frombuffer(region, dtype=numpy.uint8)
        assert region.exports == 0
        region.protect(2 * P, P, "r")
        with memoryview(region) as mv:
            assert mv.readonly and mv[0] == 5
        region.protect(2 * P, P, "rw")
        with memoryview(region) as mv:
            assert not mv.readonly
            mv[2 * P] = 6
            assert mv[2 * P] == 6 and mv[0] == 5


@pytest.mark.parametrize("narrower", ["r", "rx", "none", ""])
def test_protect_refused_when_a_live_writable_export_would_lose_access(narrower: str) -> None:
    with alloc(3 * P) as region:
        mv = memoryview(region)
        with pytest.raises(BufferError, match="export"):
            region.protect(P, P, narrower)
        assert [region.protection(i * P) for i in range(3)] == ["rw"] * 3
        assert [kernel_prot(region, i) for i in range(3)] == ["rw-"] * 3
        mv[P] = 0x7F  # still writable
        assert mv[P] == 0x7F
        mv.release()
        assert region.protect(P, P, narrower) == "rw"
        assert region.protection(P) == {"": "none"}.get(narrower, narrower)


def test_protect_refused_when_a_live_read_only_export_would_lose_read_access() -> None:
    with alloc(2 * P) as region:
        region.protect(0, P, "r")
        mv = memoryview(region)
        assert mv.readonly
        with pytest.raises(BufferError):
            region.protect(P, P, "none")
        assert region.protection(P) == "rw"
        assert kernel_prot(region, 1) == "rw-"
        assert mv[P] == 0
        mv.release()
        region.protect(P, P, "none")
        assert kernel_prot(region, 1) == "---"


def test_protect_refused_with_live_export_on_watched_region_keeps_tracking(backend: str) -> None:
    with alloc(4 * P, watch=True, backend=backend) as region:
        mv = memoryview(region)
        with pytest.raises(BufferError):
            region.protect(P, 2 * P, "r")
        assert region.protection(P) == "rw" and region.protection(2 * P) == "rw"
        mv[P] = 3
        mv[2 * P + 100] = 4
        assert mv[P] == 3 and mv[2 * P + 100] == 4
        assert dirty_pages(region) == [1, 2]
        mv.release()


# ---- protection as the kernel sees it, on watched regions ---------------------------


def test_watched_region_protect_reaches_the_kernel(backend: str) -> None:
    region = alloc(4 * P, watch=True, backend=backend)
    assert region.write_watch.backend == backend
    bump(region, 0)
    assert region.protect(P, P, "r") == "rw"
    assert kernel_prot(region, 1) == "r--"
    assert region.protect(2 * P, P, "none") == "rw"
    assert kernel_prot(region, 2) == "---"
    assert region.protect(3 * P, P, "rx") == "rw"
    assert kernel_prot(region, 3) == "r-x"
    assert [region.protection(i * P) for i in range(4)] == ["rw", "r", "none", "rx"]
    # The page written before is still reported; nothing else is.
    assert dirty_pages(region) == [0]
    # Back to "rw", then stop watching: every page is plain read-write again.
    region.protect(P, 3 * P, "rw")
    region.write_watch.close()  # type: ignore[union-attr]
    assert region.write_watch is None
    assert [kernel_prot(region, i) for i in range(4)] == ["rw-"] * 4
    with memoryview(region) as mv:
        assert not mv.readonly
        for i in range(4):
            mv[i * P] = 0xAB  # no fault handler left: these must simply work
        assert bytes(mv[0 : 4 * P : P]) == b"\xab" * 4
    region.free()
    assert region.closed


def test_watch_close_restores_mixed_user_protections(backend: str) -> None:
    region = alloc(4 * P, watch=True, backend=backend)
    bump(region, 3)
    region.protect(P, P, "r")
    region.protect(2 * P, P, "none")
    assert dirty_pages(region) == [3]
    watch = region.write_watch
    assert watch is not None
    watch.close()
    watch.close()  # idempotent
    assert [kernel_prot(region, i) for i in range(4)] == ["rw-", "r--", "---", "rw-"]
    assert [region.protection(i * P) for i in range(4)] == ["rw", "r", "none", "rw"]
    region.protect(P, 2 * P, "rw")
    assert [kernel_prot(region, i) for i in range(4)] == ["rw-"] * 4
    region.free()


def test_free_of_watched_region_closes_the_watch(backend: str) -> None:
    region = alloc(4 * P, watch=True, backend=backend)
    watch = region.write_watch
    assert watch is not None
    bump(region, 2)
    region.protect(P, P, "r")
    region.free()
    assert region.closed
    assert watch.closed
    assert region.write_watch is None
    with pytest.raises(ValueError, match="closed"):
        watch.dirty()
    # The address range is free for a new watch (the registry forgot the old one).
    with alloc(4 * P, watch=True, backend=backend) as again:
        bump(again, 1)
        assert dirty_pages(again) == [1]


def test_protect_keeps_dirty_state_exact(backend: str) -> None:
    with alloc(6 * P, watch=True, backend=backend) as region:
        bump(region, 1)
        bump(region, 2)
        bump(region, 3)
        region.protect(P, P, "r")
        region.protect(2 * P, P, "none")
        region.protect(4 * P, P, "r")  # clean page
        region.protect(5 * P, P, "none")  # clean page
        assert dirty_pages(region) == [1, 2, 3]
        region.protect(0, 6 * P, "rw")
        assert dirty_pages(region) == [1, 2, 3]  # no write lost, none invented
        assert [kernel_prot(region, i) for i in (1, 2, 3)] == ["rw-"] * 3
        assert region.write_watch.dirty(reset=True).offsets.tolist() == [P, 2 * P, 3 * P]
        assert dirty_pages(region) == []
        bump(region, 5)
        assert dirty_pages(region) == [5]


def test_alloc_read_only_watched_region(backend: str) -> None:
    with alloc(4 * P, protect="r", watch=True, backend=backend) as region:
        assert [region.protection(i * P) for i in range(4)] == ["r"] * 4
        assert [kernel_prot(region, i) for i in range(4)] == ["r--"] * 4
        with memoryview(region) as mv:
            assert mv.readonly
            assert bytes(mv) == bytes(4 * P)
            with pytest.raises(TypeError):
                mv[0] = 1
        assert dirty_pages(region) == []
        assert region.protect(0, 4 * P, "rw") == "r"
        with memoryview(region) as mv:
            assert not mv.readonly
            mv[2 * P + 9] = 1
        assert dirty_pages(region) == [2]
        assert region.write_watch.dirty(reset=True).offsets.tolist() == [2 * P]
        assert dirty_pages(region) == []


def test_alloc_with_protect_none(backend: str) -> None:
    with alloc(2 * P, protect="none", watch=True, backend=backend) as region:
        assert [kernel_prot(region, i) for i in range(2)] == ["---"] * 2
        with pytest.raises(BufferError):
            memoryview(region)
        region.protect(0, 2 * P, "rw")
        bump(region, 1)
        assert dirty_pages(region) == [1]


# ---- attaching a watch later -------------------------------------------------------


def test_a_region_reaches_its_watch_one_way_only() -> None:
    with alloc(2 * P) as region:
        assert region.write_watch is None  # unwatched
        # The watch calls are the WriteWatch's (region.write_watch, or ntshim.watch(region)).
        for name in ("dirty", "reset", "writing", "granularity", "backend"):
            assert not hasattr(region, name)
        # The region itself still works.
        bump(region, 1)
        assert "watched" not in repr(region)


def test_watch_attaches_to_a_region_and_close_detaches(backend: str) -> None:
    with alloc(4 * P) as region:
        bump(region, 0)  # before the watch: not reported
        watch = ntshim.memory.watch(region, backend=backend)
        assert region.write_watch is watch
        assert watch.address == region.address and watch.size == region.size
        assert region.write_watch.backend == backend == watch.backend
        assert region.write_watch.granularity == P
        assert dirty_pages(region) == []
        bump(region, 3)
        assert dirty_pages(region) == [3]
        assert watch.dirty() == region.write_watch.dirty()
        with pytest.raises(ValueError, match="already watched"):
            ntshim.memory.watch(region, backend=backend)
        with pytest.raises(ValueError, match="already watched"):
            ntshim.memory.watch(region)
        assert region.write_watch is watch
        assert dirty_pages(region) == [3]
        watch.close()
        assert region.write_watch is None
        assert watch.closed
        with pytest.raises(ValueError, match="closed"):
            watch.dirty()
        assert [kernel_prot(region, i) for i in range(4)] == ["rw-"] * 4
        # It can be watched again, from a clean slate.
        again = ntshim.memory.watch(region, backend=backend)
        assert region.write_watch is again
        assert dirty_pages(region) == []
        bump(region, 2)
        assert dirty_pages(region) == [2]


def test_watch_of_region_allocated_watched_is_refused(backend: str) -> None:
    with alloc(2 * P, watch=True, backend=backend) as region:
        first = region.write_watch
        bump(region, 1)
        with pytest.raises(ValueError, match="already watched"):
            ntshim.memory.watch(region, backend=backend)
        assert region.write_watch is first
        assert dirty_pages(region) == [1]


def test_watch_attached_after_protect_respects_the_protections(backend: str) -> None:
    with alloc(4 * P) as region:
        region.protect(P, P, "r")
        region.protect(2 * P, P, "none")
        watch = ntshim.memory.watch(region, backend=backend)
        assert [kernel_prot(region, i) for i in (1, 2)] == ["r--", "---"]
        assert dirty_pages(region) == []
        region.protect(P, 2 * P, "rw")
        bump(region, 2)
        assert dirty_pages(region) == [2]
        region.protect(P, P, "r")
        watch.close()
        assert [kernel_prot(region, i) for i in range(4)] == ["rw-", "r--", "rw-", "rw-"]
        assert region.protection(P) == "r"
