"""Memory placed below an address bound: ``alloc(below=)`` and ``reserve(below=)``."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import warnings
from collections.abc import Callable

import pytest

import ntshim
from ntshim.memory import PAGE_SIZE, placement

GiB = 1 << 30


@pytest.mark.parametrize("below", [2 * GiB, 4 * GiB, GiB + 12345])
@pytest.mark.parametrize("size", [1, PAGE_SIZE, 65536, 1 << 20, 256 << 20])
def test_placed_memory_ends_below_the_bound(below: int, size: int) -> None:
    with ntshim.alloc(size, below=below) as region:
        assert region.address + region.size <= below
        assert region.address >= placement.mmap_min_addr()
        memoryview(region)[size - 1] = 7  # committed and usable
        assert memoryview(region)[size - 1] == 7


def test_reserved_memory_is_placed_and_commits_in_parts() -> None:
    with ntshim.reserve(64 << 20, below=4 * GiB, align=1 << 16) as region:
        assert region.address + region.size <= 4 * GiB
        assert region.address % (1 << 16) == 0
        region.commit(1 << 20, 1 << 20)
        with region.view(1 << 20, 1 << 20) as view:
            view[0] = 1


def test_the_highest_hole_under_the_bound_is_used_and_a_too_small_one_skipped() -> None:
    # A 64 MiB window below 4 GiB, occupied except for one 1 MiB hole in its middle.
    window = ntshim.reserve(64 << 20, below=4 * GiB)
    base, end = window.address, window.address + window.size
    window.free()
    hole = base + (32 << 20)
    low = ntshim.reserve(hole - base, address=base)
    high = ntshim.reserve(end - hole - (1 << 20), address=hole + (1 << 20))
    try:
        with ntshim.alloc(1 << 20, below=end) as fits:
            assert fits.address == hole
        with ntshim.alloc(2 << 20, below=end) as too_big_for_the_hole:
            assert too_big_for_the_hole.address + too_big_for_the_hole.size <= base
    finally:
        low.free()
        high.free()


def test_no_room_below_the_bound_is_a_memory_error() -> None:
    bound = placement.mmap_min_addr() + (16 << 20)
    taken = []
    try:  # fill whatever is free under a low bound, then ask for more
        while (start := placement.highest_fit(PAGE_SIZE, bound, PAGE_SIZE)) is not None:
            taken.append(ntshim.reserve(PAGE_SIZE, address=start))
        with pytest.raises(MemoryError, match="no free range"):
            ntshim.alloc(PAGE_SIZE, below=bound)
    finally:
        for region in taken:
            region.free()


def test_threads_placing_at_once_never_overlap() -> None:
    regions: list[ntshim.Region] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def place() -> None:
        start.wait()
        for _ in range(20):
            region = ntshim.alloc(1 << 20, below=4 * GiB)
            with lock:
                regions.append(region)

    threads = [threading.Thread(target=place) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        spans = sorted((r.address, r.address + r.size) for r in regions)
        assert len(spans) == 160
        assert all(end <= 4 * GiB for _, end in spans)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    finally:
        for region in regions:
            region.free()


def test_placements_take_turns() -> None:
    """A thread placing memory while another is between reading the maps and mapping waits
    for it: otherwise both pick the same highest range and one loses, round after round."""
    inside, release = threading.Event(), threading.Event()
    second_saw_first_inside: list[bool] = []
    regions: list[ntshim.Reservation] = []
    first_inside = False

    def first_map(at: int) -> ntshim.Reservation:
        nonlocal first_inside
        first_inside = True
        inside.set()
        release.wait(10)
        first_inside = False
        return ntshim.reserve(PAGE_SIZE, address=at)

    def second_map(at: int) -> ntshim.Reservation:
        second_saw_first_inside.append(first_inside)
        return ntshim.reserve(PAGE_SIZE, address=at)

    def place(map_at: Callable[[int], ntshim.Reservation]) -> None:
        regions.append(placement.place_below(PAGE_SIZE, 4 * GiB, PAGE_SIZE, map_at))

    first = threading.Thread(target=place, args=(first_map,))
    first.start()
    try:
        assert inside.wait(10)
        second = threading.Thread(target=place, args=(second_map,))
        second.start()
        second.join(0.2)  # long enough to reach the map if nothing holds it back
    finally:
        release.set()
        first.join()
        second.join()
    try:
        assert second_saw_first_inside == [False]
        assert len(regions) == 2 and regions[0].address != regions[1].address
    finally:
        for region in regions:
            region.free()


def test_a_fork_child_places_memory_while_a_parent_thread_was_placing() -> None:
    """The child of a fork made while another thread holds the placement turn has no such
    thread: its own placements must not wait for it."""
    inside, release = threading.Event(), threading.Event()

    def held_map(at: int) -> ntshim.Reservation:
        inside.set()
        release.wait(10)
        return ntshim.reserve(PAGE_SIZE, address=at)

    holder = threading.Thread(target=lambda: placement.place_below(PAGE_SIZE, 4 * GiB, PAGE_SIZE, held_map).free())
    holder.start()
    try:
        assert inside.wait(10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
            pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a child that waits for the turn dies of SIGALRM
            try:
                ntshim.alloc(PAGE_SIZE, below=4 * GiB).free()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(TypeError, match="below"):
        ntshim.alloc(PAGE_SIZE, below="4G")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="below"):
        ntshim.alloc(PAGE_SIZE, below=True)
    for bound in (0, -1, PAGE_SIZE, placement.mmap_min_addr()):
        with pytest.raises(ValueError, match="no room"):
            ntshim.alloc(PAGE_SIZE, below=bound)
    with pytest.raises(ValueError, match="beyond the end of the user address space"):
        ntshim.alloc(PAGE_SIZE, below=1 << 60)
    with pytest.raises(ValueError, match="does not end below"):
        ntshim.reserve(1 << 20, address=4 * GiB, below=4 * GiB)


def test_write_watch_on_placed_memory(backend: str) -> None:
    with ntshim.alloc(16 * PAGE_SIZE, below=4 * GiB, watch=True, backend=backend) as region:
        assert region.address + region.size <= 4 * GiB
        memoryview(region)[5 * PAGE_SIZE] = 1
        assert list(region.write_watch.dirty().offsets) == [5 * PAGE_SIZE]


def test_zero_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size must be positive"):
        ntshim.alloc(0, below=4 * GiB)
    with pytest.raises(ValueError, match="size must be positive"):
        ntshim.reserve(0, below=4 * GiB)
