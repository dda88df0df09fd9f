"""No write is ever lost: native threads write while Python gets and resets.

The check is the one a capture tool or live migration relies on.  The reader keeps a
mirror of the memory and, after every get-and-reset, copies the reported pages into it.
Once the writers stop and a last get-and-reset has been applied, the mirror must equal
the memory byte for byte: a write that no get reported would leave the mirror behind.
Every store the writers make changes the page's bytes (a counter), so the shadow backend
is held to the same standard.  Each run is bounded in time, not in iterations; what it
asserts does not depend on the timing.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import ntshim
from ntshim import _bench, _core
from ntshim.memory import PAGE_SIZE as PS

PAGES = 512
UNTOUCHED = 16  # the last pages are never written: reporting one would be an invented write
SECONDS = 0.75


def assert_nothing_lost(backend: str, mirror: np.ndarray, memory: np.ndarray) -> None:
    lost = np.flatnonzero((mirror != memory).reshape(-1, PS).any(axis=1))
    assert lost.size == 0, f"{backend}: writes to pages {lost[:10].tolist()} were never reported"


def apply(mirror: np.ndarray, memory: np.ndarray, dirty: ntshim.DirtyPages) -> int:
    for start, end in dirty.ranges():
        mirror[start:end] = memory[start:end]
    return len(dirty)


@pytest.mark.parametrize("mode", ["random", "sequential"])
@pytest.mark.parametrize("limit", [None, 7])
def test_no_write_is_lost_under_concurrent_get_and_reset(backend: str, mode: str, limit: int | None) -> None:
    region = ntshim.alloc(PAGES * PS, watch=True, backend=backend)
    memory = np.frombuffer(region, dtype=np.uint8)
    mirror = memory.copy()
    writers = _bench.Writers(memoryview(region)[: (PAGES - UNTOUCHED) * PS], 2, random=mode == "random")
    reported_while_writing = gets = 0
    highest = 0
    try:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            dirty = region.write_watch.dirty(reset=True, limit=limit)
            gets += 1
            if dirty:
                highest = max(highest, dirty.offsets[-1])
            reported_while_writing += apply(mirror, memory, dirty)
    finally:
        writes, _ns = writers.stop()
    while True:  # drain: with a limit this takes several calls
        dirty = region.write_watch.dirty(reset=True, limit=limit)
        if not dirty:
            break
        highest = max(highest, dirty.offsets[-1])
        apply(mirror, memory, dirty)
    # The test only means something if both sides really ran concurrently.
    assert writes > 10_000 and gets > 10 and reported_while_writing > 0
    assert highest < (PAGES - UNTOUCHED) * PS, "a page nobody wrote was reported"
    assert_nothing_lost(backend, mirror, memory)
    del memory
    region.free()


def test_no_write_is_lost_with_sub_range_gets(backend: str) -> None:
    """Get-and-reset in slices (as a GC scanning its heap in chunks) while writers write."""
    chunk = 48 * PS
    region = ntshim.alloc(PAGES * PS, watch=True, backend=backend)
    memory = np.frombuffer(region, dtype=np.uint8)
    mirror = memory.copy()
    writers = _bench.Writers(memoryview(region), 2, random=True)
    try:
        deadline = time.monotonic() + SECONDS
        offset = 0
        while time.monotonic() < deadline:
            size = min(chunk, PAGES * PS - offset)
            apply(mirror, memory, region.write_watch.dirty(offset, size, reset=True))
            offset = (offset + size) % (PAGES * PS)
    finally:
        writers.stop()
    apply(mirror, memory, region.write_watch.dirty(reset=True))
    assert_nothing_lost(backend, mirror, memory)
    del memory
    region.free()


def test_protection_changes_during_writes_lose_nothing(backend: str) -> None:
    """Flip a part the writers never touch between "r" and "rw" while they write elsewhere,
    and get-and-reset the whole region: the flips must not disturb the tracking.  (The
    flips go to the watch directly: Region.protect refuses to take write access away
    while the numpy view used here is alive.)"""
    region = ntshim.alloc(PAGES * PS, watch=True, backend=backend)
    memory = np.frombuffer(region, dtype=np.uint8)
    mirror = memory.copy()
    writers = _bench.Writers(memoryview(region)[: (PAGES - UNTOUCHED) * PS], 2, random=True)
    try:
        deadline = time.monotonic() + SECONDS
        flips = 0
        while time.monotonic() < deadline:
            region.write_watch._protect(PAGES - UNTOUCHED, UNTOUCHED, _core.PROT_READ)
            apply(mirror, memory, region.write_watch.dirty(reset=True))
            region.write_watch._protect(PAGES - UNTOUCHED, UNTOUCHED, _core.PROT_READ | _core.PROT_WRITE)
            flips += 1
    finally:
        writers.stop()
    apply(mirror, memory, region.write_watch.dirty(reset=True))
    assert flips > 10
    assert_nothing_lost(backend, mirror, memory)
    del memory
    region.free()
