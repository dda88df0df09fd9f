"""The WriteWatch contract, checked against every backend."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from array import array

import pytest
from required import require_backend

import ntshim
from ntshim import _core, _kernel
from ntshim.memory import PAGE_SIZE as PS

PAGES = 64


@pytest.fixture
def region(backend: str):
    with ntshim.alloc(PAGES * PS, watch=True, backend=backend) as r:
        yield r


def touch(region: ntshim.Region, *offsets: int) -> None:
    """Write a byte that differs from what is there (so the shadow backend sees it too)."""
    with memoryview(region) as view:
        for offset in offsets:
            view[offset] = (view[offset] + 1) % 256


def pages(dirty: ntshim.DirtyPages) -> list[int]:
    return [offset // PS for offset in dirty]


def test_fresh_memory_is_clean_and_backend_is_the_one_asked_for(region: ntshim.Region, backend: str) -> None:
    assert region.write_watch.backend == backend
    assert region.write_watch.granularity == PS
    assert len(region.write_watch.dirty()) == 0


def test_a_write_marks_exactly_its_page(region: ntshim.Region) -> None:
    touch(region, 5 * PS + 1234)
    assert pages(region.write_watch.dirty()) == [5]


def test_results_are_ascending_whatever_the_write_order(region: ntshim.Region) -> None:
    written = [40, 3, 63, 0, 17, 18, 19, 2]
    touch(region, *(p * PS + 7 for p in written))
    assert pages(region.write_watch.dirty()) == sorted(written)


def test_dirty_pages_forms(region: ntshim.Region) -> None:
    touch(region, *(p * PS for p in (1, 2, 3, 7, 9, 10)))
    d = region.write_watch.dirty()
    assert len(d) == 6 and bool(d)
    assert isinstance(d.offsets, array) and d.offsets.typecode == "Q"
    assert list(d.offsets) == [p * PS for p in (1, 2, 3, 7, 9, 10)]
    assert list(d.addresses) == [region.address + p * PS for p in (1, 2, 3, 7, 9, 10)]
    assert d.ranges() == [(1 * PS, 4 * PS), (7 * PS, 8 * PS), (9 * PS, 11 * PS)]
    assert list(d) == list(d.offsets)
    assert d.address == region.address and d.granularity == PS
    assert "6 page(s) in 3 run(s)" in repr(d)


def test_a_write_straddling_two_pages_marks_both(region: ntshim.Region) -> None:
    with memoryview(region) as view:
        view[3 * PS - 4 : 3 * PS + 4] = b"\xff" * 8
    assert pages(region.write_watch.dirty()) == [2, 3]


def test_reset_forgets_and_later_writes_are_seen_again(region: ntshim.Region) -> None:
    touch(region, 4 * PS)
    assert pages(region.write_watch.dirty(reset=True)) == [4]
    assert pages(region.write_watch.dirty()) == []
    touch(region, 4 * PS)
    assert pages(region.write_watch.dirty()) == [4]
    region.write_watch.reset()
    assert pages(region.write_watch.dirty()) == []


def test_queries_without_reset_do_not_reset(region: ntshim.Region) -> None:
    touch(region, 8 * PS)
    for _ in range(3):
        assert pages(region.write_watch.dirty()) == [8]


def test_sub_range_queries_and_resets_touch_only_that_range(region: ntshim.Region) -> None:
    written = [1, 10, 11, 20, 30, 50]
    touch(region, *(p * PS for p in written))
    part = region.write_watch.dirty(10 * PS, 11 * PS)  # pages 10..20
    assert pages(part) == [10, 11, 20]  # offsets still count from the region start
    assert pages(region.write_watch.dirty(10 * PS, 11 * PS, reset=True)) == [10, 11, 20]
    assert pages(region.write_watch.dirty()) == [1, 30, 50]
    region.write_watch.reset(30 * PS, PS)
    assert pages(region.write_watch.dirty()) == [1, 50]
    # A size that is not whole pages covers the page it ends in.
    assert pages(region.write_watch.dirty(50 * PS, 1)) == [50]


def test_limit_returns_and_resets_only_the_first_pages(region: ntshim.Region) -> None:
    written = [2, 3, 4, 9, 33, 60]
    touch(region, *(p * PS for p in written))
    assert pages(region.write_watch.dirty(limit=2)) == [2, 3]
    assert pages(region.write_watch.dirty()) == written  # no reset without reset=True
    assert pages(region.write_watch.dirty(reset=True, limit=4)) == [2, 3, 4, 9]
    assert pages(region.write_watch.dirty()) == [33, 60]
    assert pages(region.write_watch.dirty(reset=True, limit=100)) == [33, 60]
    assert pages(region.write_watch.dirty()) == []


def test_protection_changes_neither_lose_nor_invent_dirty_state(region: ntshim.Region) -> None:
    touch(region, 1 * PS, 6 * PS)
    for prot in ("r", "none", "rw", "rwx", "r", "rw"):
        region.protect(0, 8 * PS, prot)
        if prot != "none":
            assert pages(region.write_watch.dirty(0, 8 * PS)) == [1, 6], prot
    # Reset while the pages cannot be written, then open them again: clean.
    region.protect(0, 8 * PS, "r")
    assert pages(region.write_watch.dirty(0, 8 * PS, reset=True)) == [1, 6]
    region.protect(0, 8 * PS, "rw")
    assert pages(region.write_watch.dirty(0, 8 * PS)) == []
    touch(region, 2 * PS)
    assert pages(region.write_watch.dirty(0, 8 * PS)) == [2]


def test_pages_written_before_losing_read_access_stay_dirty(region: ntshim.Region) -> None:
    touch(region, 12 * PS)
    region.protect(12 * PS, 2 * PS, "none")
    # Unreadable pages can still be queried; what was written before is still reported.
    assert pages(region.write_watch.dirty(reset=True)) == [12]
    region.protect(12 * PS, 2 * PS, "rw")
    assert pages(region.write_watch.dirty()) == []


def test_a_read_only_page_made_writable_is_tracked(backend: str) -> None:
    with ntshim.alloc(4 * PS, watch=True, protect="r", backend=backend) as r:
        assert r.protection(0) == "r"
        r.protect(0, 4 * PS, "rw")
        touch(r, 3 * PS)
        assert pages(r.write_watch.dirty()) == [3]


def _kernel_write(view: memoryview, data: bytes) -> int:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        return os.readv(read_end, [view])
    finally:
        os.close(read_end)
        os.close(write_end)


def test_kernel_writes_are_tracked_or_fail_loudly(region: ntshim.Region) -> None:
    """Without writing(): tracked by uffd-async, shadow, and uffd-sync with kernel-fault
    rights; under mprotect the kernel's write fails with EFAULT (documented) and nothing
    is marked."""
    with memoryview(region) as view:
        target = view[9 * PS : 10 * PS]
        if region.write_watch.kernel_writes_tracked:
            assert _kernel_write(target, b"abc") == 3
            assert pages(region.write_watch.dirty()) == [9]
            assert bytes(target[:3]) == b"abc"
        else:
            with pytest.raises(OSError) as e:
                _kernel_write(target, b"abc")
            assert e.value.errno == errno.EFAULT
            assert pages(region.write_watch.dirty()) == []
        target.release()


def test_writing_window_lets_the_kernel_write_and_marks_the_pages(region: ntshim.Region) -> None:
    with region.write_watch.writing(20 * PS, 2 * PS) as window:
        assert len(window) == 2 * PS
        assert _kernel_write(window[PS + 5 :], b"kernel") == 6
    assert pages(region.write_watch.dirty()) == [20, 21]
    with memoryview(region) as view:
        assert bytes(view[21 * PS + 5 : 21 * PS + 11]) == b"kernel"


def test_writing_window_readinto_and_recv_into(region: ntshim.Region) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 100)
        f.seek(0)
        with region.write_watch.writing(30 * PS, PS) as window:
            assert f.readinto(window[:100]) == 100
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"datagram")
        with region.write_watch.writing(31 * PS, PS) as window:
            assert b.recv_into(window, 8) == 8
    assert pages(region.write_watch.dirty()) == [30, 31]


def test_a_reset_during_a_writing_window_cannot_lose_the_kernel_write(region: ntshim.Region) -> None:
    with region.write_watch.writing(40 * PS, PS) as window:
        assert pages(region.write_watch.dirty(reset=True)) == [40]  # the window counts as written
        _kernel_write(window, b"late")  # written after that reset ...
    assert pages(region.write_watch.dirty(reset=True)) == [40]  # ... so reported again
    assert pages(region.write_watch.dirty()) == []


def test_writing_windows_nest(region: ntshim.Region) -> None:
    with region.write_watch.writing(0, 2 * PS):
        with region.write_watch.writing(PS, 2 * PS):
            pass
        touch(region, 2 * PS)  # page 2 is protected again under write-protecting backends
    assert pages(region.write_watch.dirty(0, 3 * PS)) == [0, 1, 2]


def test_many_runs_are_all_reported(backend: str) -> None:
    """Every other page written: more runs than the kernel's output vector holds at once.
    (With a vector longer than its internal 512-region buffer, Linux 6.18's PAGEMAP_SCAN
    returns a stale walk_end, and resuming from it reports pages twice.)"""
    n = 4096
    with ntshim.alloc(n * PS, watch=True, backend=backend) as r:
        touch(r, *(p * PS for p in range(0, n, 2)))
        assert len(r.write_watch.dirty()) == n // 2 and len(r.write_watch.dirty().ranges()) == n // 2
        d = r.write_watch.dirty(reset=True)
        assert len(d) == n // 2 and len(d.ranges()) == n // 2
        assert list(d.offsets) == list(range(0, n * PS, 2 * PS))
        assert len(r.write_watch.dirty()) == 0


@pytest.mark.parametrize("vec_len", [1, 2, 3])
def test_pagemap_scan_resumes_when_its_output_vector_fills(vec_len: int) -> None:
    """The bug class other projects hit: a scan that stops when its output vector is full
    loses the rest.  Drive the scan with a tiny vector, with and without a page limit."""
    require_backend("uffd-async")
    n = 64
    with ntshim.alloc(n * PS, watch=True, backend="uffd-async") as r:
        written = [p for p in range(n) if p % 3 != 1]  # runs of two pages with gaps
        touch(r, *(p * PS for p in written))

        def scan(reset: bool, max_pages: int = 0) -> list[int]:
            runs = _core.pagemap_scan(
                _kernel.pagemap_fd(), r.address, r.address, r.address + n * PS, reset, max_pages, vec_len
            )
            return [o // PS for o in ntshim.DirtyPages(runs, r.address, PS)]

        assert scan(False) == written
        assert scan(True, max_pages=5) == written[:5]
        assert scan(False) == written[5:]
        assert scan(True) == written[5:]
        assert scan(False) == []


def test_close_restores_the_memory(backend: str) -> None:
    with ntshim.alloc(8 * PS, watch=True, backend=backend) as r:
        watch = r.write_watch
        touch(r, 0)
        watch.close()
        assert watch.closed and r.write_watch is None
        touch(r, *(p * PS for p in range(8)))  # no tracking left, every write simply works
        with memoryview(r) as view:
            assert _kernel_write(view[PS:], b"ok") == 2
        with pytest.raises(ValueError, match="closed"):
            watch.dirty()
        assert r.protect(0, PS, "r") == "rw"  # the region itself stays usable
