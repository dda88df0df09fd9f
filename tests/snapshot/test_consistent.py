"""save(consistent=True): point-in-time generations while native threads write (docs/snapshot.md,
"Consistent saves"), on the backends that can freeze (uffd-async, mprotect)."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import numpy as np
import pytest
from required import require_backend

import ntshim
from ntshim import _bench, _core
from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, checkpointer, generations, load

FREEZING = ("uffd-async", "mprotect")
SECONDS = 0.4


@pytest.fixture(params=FREEZING)
def freezing(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


def sweep_cut(values: np.ndarray) -> bool:
    """Whether page values written by one sequential native writer (``_bench.Writers(...,
    random=False)``: the n-th store, value n, goes to page n mod N) are the memory of one
    instant.  At an instant where the last store was value v to page L, page p holds the
    latest n <= v with n = p (mod N): in sweep order (pages 1..N-1, then 0) the sweep numbers
    (n - position - 1) / N are one value k on a prefix and k - 1 on the rest, or k throughout."""
    n = values.size
    order = np.roll(np.arange(n), -1)  # pages in the order the writer visits them: 1, 2, ..., N-1, 0
    v = values[order].astype(np.int64) - np.arange(1, n + 1)
    if np.any(v % n):
        return False
    sweep = v // n
    steps = np.diff(sweep)
    return bool(np.all((steps == 0) | (steps == -1)) and np.count_nonzero(steps) <= 1)


def test_sweep_cut_tells_torn_from_whole() -> None:
    """The check itself: images of one instant pass, images copied at two instants fail."""
    n = 64

    def at(count: int) -> np.ndarray:  # memory after `count` stores
        values = np.zeros(n, np.uint64)
        for value in range(max(1, count - n + 1), count + 1):
            values[value % n] = value
        return values

    assert sweep_cut(at(5 * n)) and sweep_cut(at(5 * n + 17))
    torn = at(5 * n + 10)
    torn[40:] = at(7 * n + 3)[40:]  # the later pages copied two sweeps later
    assert not sweep_cut(torn)
    torn = at(5 * n + 30)
    torn[:20] = at(4 * n + 50)[:20]  # the first pages copied earlier than the rest
    assert not sweep_cut(torn)


def wait_for_sweeps(values: np.ndarray, sweeps: int) -> None:
    deadline = time.monotonic() + 10
    while int(values.max()) < sweeps * values.size:
        assert time.monotonic() < deadline, "the writer did not get going"
        time.sleep(0.001)


def test_saves_show_one_instant_while_a_native_writer_sweeps(freezing: str, tmp_path: Path) -> None:
    """A native thread writes 1, 2, 3, ... into page after page, around and around; every
    consistent generation is the memory of one instant of that sweep, across two buffers."""
    pages = 128
    memory = mmap.mmap(-1, 2 * pages * PS)
    first = memoryview(memory)[: pages * PS]  # two buffers: the instant spans both
    second = memoryview(memory)[pages * PS :]
    values = np.frombuffer(memory, np.uint64)[:: PS // 8]
    with Checkpointer(tmp_path, {"a": first, "b": second}, backend=freezing) as checkpoint:
        writer = _bench.Writers(memoryview(memory), 1, random=False)
        try:
            wait_for_sweeps(values, 2)
            checkpoint.save(consistent=True)  # a base, taken while the writer runs
            faulted = 0
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                info = checkpoint.save(consistent=True)
                faulted += info.faulted
        finally:
            writes, _ = writer.stop()
        assert writes > 0
        for generation in generations(tmp_path):
            image = load(tmp_path, generation)
            saved = np.frombuffer(image["a"] + image["b"], np.uint64)[:: PS // 8]
            assert sweep_cut(saved), f"generation {generation} is torn: {saved.tolist()}"
        assert len(generations(tmp_path)) > 3
        checkpoint.save(consistent=True)  # nothing written during the windows was lost
        image = load(tmp_path)
        assert image["a"] + image["b"] == memory[:]
    del values, first, second
    memory.close()


def test_non_consistent_saves_may_be_torn(freezing: str, tmp_path: Path) -> None:
    """The same sweep with plain saves: each loads and verifies; whether one is torn depends on
    timing (a plain save copies each page when it gets to it), so it is counted, not asserted."""
    pages = 256
    region = ntshim.alloc(pages * PS)
    values = np.frombuffer(region, np.uint64)[:: PS // 8]
    with Checkpointer(tmp_path, {"m": region}, backend=freezing) as checkpoint:
        writer = _bench.Writers(memoryview(region), 1, random=False)
        try:
            wait_for_sweeps(values, 2)
            for _ in range(20):
                checkpoint.save()
        finally:
            writer.stop()
        torn = sum(
            not sweep_cut(np.frombuffer(load(tmp_path, g)["m"], np.uint64)[:: PS // 8]) for g in generations(tmp_path)
        )
        print(f"{torn} of {len(generations(tmp_path))} plain generations torn")
    del values
    region.close()


def test_writes_in_the_window_land_in_the_next_delta(freezing: str, tmp_path: Path) -> None:
    """Native writers at random through consistent saves lose nothing: once they stop, one more
    save equals memory, and every page written during a window is in a later delta."""
    pages = 256
    region = ntshim.alloc(pages * PS)
    with Checkpointer(tmp_path, {"m": region}, backend=freezing) as checkpoint:
        checkpoint.save(consistent=True)
        writer = _bench.Writers(memoryview(region), 2, random=True)
        try:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                checkpoint.save(consistent=True)
        finally:
            writes, _ = writer.stop()
        assert writes > 0
        checkpoint.save(consistent=True)
        with memoryview(region) as view:
            assert load(tmp_path)["m"] == view
        assert checkpoint.save(consistent=True).pages == 0  # nothing written since: an empty delta
    region.close()


def protections(start: int, end: int) -> list[str]:
    """The protections of /proc/self/maps entries overlapping [start, end)."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo < end and hi > start:
                found.append(line.split()[1])
    return found


def test_protections_come_back(freezing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a consistent save, and after one that failed mid-way, the memory has the
    protections it had before, writes need no copy, and the next save is a base."""
    pages = 64
    region = ntshim.alloc(pages * PS)
    array = np.frombuffer(region, np.uint8)
    start, end = region.address, region.address + pages * PS
    with Checkpointer(tmp_path, {"m": region}, backend=freezing) as checkpoint:
        checkpoint.save()
        before = protections(start, end)
        array[::PS] = 1  # every page written: the save copies them all
        info = checkpoint.save(consistent=True)
        assert (info.staged, info.faulted) == (pages, 0)
        assert protections(start, end) == before
        array[::PS] = 2  # no copy, no freeze: a plain write
        assert checkpoint.save(consistent=True).faulted == 0

        def failing(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device (injected)")

        class FailingFreeze:  # the real freeze, failing while the memory is frozen
            def __init__(self, trackers: object, full: bool) -> None:
                self.freeze = _core.Freeze(trackers, full)  # type: ignore[arg-type]

            def copy(self) -> None:
                if freezing == "uffd-async":  # (under mprotect, clean pages are read-only anyway)
                    assert protections(start, end) == ["r--p"]  # frozen now
                failing()

            def end(self) -> None:
                self.freeze.end()

        class Core:
            Freeze = FailingFreeze

        array[5 * PS] = 3
        monkeypatch.setattr(checkpointer, "_core", Core)
        with pytest.raises(OSError, match="injected"):
            checkpoint.save(consistent=True)
        monkeypatch.undo()
        assert protections(start, end) == before
        array[6 * PS] = 3  # a plain write again
        monkeypatch.setattr(checkpoint._store, "create_data", failing)  # failing after the copy
        with pytest.raises(OSError, match="injected"):
            checkpoint.save(consistent=True)
        monkeypatch.undo()
        assert protections(start, end) == before
        array[7 * PS] = 4
        info = checkpoint.save(consistent=True)
        assert info.full  # the pages the failed save reset were saved by no generation
        assert load(tmp_path)["m"] == bytes(array)
    del array
    region.close()


def test_cost_is_the_delta(freezing: str, tmp_path: Path) -> None:
    """A delta stages exactly the pages written since the previous save, not the state."""
    pages = 1024
    region = ntshim.alloc(pages * PS)
    array = np.frombuffer(region, np.uint8)
    with Checkpointer(tmp_path, {"m": region}, backend=freezing) as checkpoint:
        assert checkpoint.save(consistent=True).staged == pages  # a base: every page
        written = [3, 4, 5, 200, 777]
        for page in written:
            array[page * PS + 9] = 1
        info = checkpoint.save(consistent=True)
        assert (info.full, info.pages, info.staged) == (False, len(written), len(written))
        assert load(tmp_path)["m"] == bytes(array)
    del array
    region.close()


def test_kernel_writes_inside_writing(freezing: str, tmp_path: Path) -> None:
    """A kernel write (readinto) through WriteWatch.writing() during the window works: the
    page is copied first, and the write lands in the next generation."""
    pages = 16
    region = ntshim.alloc(pages * PS)
    source = tmp_path / "source"
    source.write_bytes(b"\x05" * PS)
    with Checkpointer(tmp_path / "c", {"m": region}, backend=freezing) as checkpoint:
        checkpoint.save(consistent=True)
        watch = checkpoint._watched[0].watch
        with memoryview(region) as view:
            view[3 * PS] = 1
        freeze = _core.Freeze([watch._live_tracker()], False)
        try:
            with watch.writing(3 * PS, PS) as window, open(source, "rb") as f:
                assert f.readinto(window) == PS
        finally:
            freeze.copy()
            freeze.end()
        with memoryview(freeze) as staging:
            assert staging[0] == 1 and len(staging) == PS  # the page as it was at the freeze
        assert checkpoint.save(consistent=True).pages == 1
        with memoryview(region) as view:
            assert load(tmp_path / "c")["m"] == view
            assert view[3 * PS : 4 * PS] == b"\x05" * PS
    region.close()


def test_refused_where_it_cannot_work(tmp_path: Path) -> None:
    """shadow (other processes' writes cannot be stopped) and heap buffers sharing their edge
    pages are refused with ValueError, and nothing changes."""
    require_backend("shadow")
    region = ntshim.alloc(4 * PS)
    with Checkpointer(tmp_path / "s", {"m": region}, backend="shadow") as checkpoint:
        with pytest.raises(ValueError, match="shadow backend"):
            checkpoint.save(consistent=True)
        assert checkpoint.generation == 0
        with pytest.raises(TypeError, match="consistent must be a bool"):
            checkpoint.save(consistent=1)  # type: ignore[arg-type]
    require_backend("uffd-async")
    heap = bytearray(3 * PS + 100)
    with Checkpointer(tmp_path / "h", {"h": heap}, backend="uffd-async") as checkpoint:
        with pytest.raises(ValueError, match="shares its first or last page"):
            checkpoint.save(consistent=True)
        checkpoint.save()
    region.close()
