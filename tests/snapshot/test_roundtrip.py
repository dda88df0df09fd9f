"""Checkpointer, load, restore, generations and compact: what is saved comes back, exactly,
for every generation; deltas hold the pages written; history goes on across reopening."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import directory_bytes, page_aligned

import ntshim
from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, generations, load, restore
from ntshim.snapshot.store import Directory


def test_many_generations_round_trip_exactly(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grid = page_aligned((64, 1024), np.float64)  # 128 pages
    small = page_aligned((300,), np.int16)  # 600 bytes: one partial page
    stamps = page_aligned((5, 7), "datetime64[ms]")  # a dtype numpy cannot export as a buffer
    raw = mmap.mmap(-1, 10 * PS)
    buffers = {"grid": grid, "small": small, "stamps": stamps, "raw": raw}
    history = []
    with Checkpointer(tmp_path, buffers, backend=backend) as checkpoint:
        assert set(checkpoint.backends.values()) == {backend}
        for step in range(12):
            flat = grid.reshape(-1)
            for page in rng.choice(128, size=rng.integers(0, 10), replace=False):
                flat[page * 512 + rng.integers(512)] = rng.random()
            small[rng.integers(300)] = step + 1
            stamps[step % 5, step % 7] = np.datetime64(1_000_000 * step, "ms")
            raw[int(rng.integers(len(raw)))] = step + 1
            info = checkpoint.save()
            assert (info.generation, info.full) == (step + 1, step == 0)
            history.append({"grid": grid.copy(), "small": small.copy(), "stamps": stamps.copy(), "raw": raw[:]})
    assert generations(tmp_path) == list(range(1, 13))
    for generation, expected in enumerate(history, 1):
        loaded = load(tmp_path, generation)
        assert set(loaded) == set(buffers)
        for name in ("grid", "small", "stamps"):
            assert isinstance(loaded[name], np.ndarray)
            assert (loaded[name].dtype, loaded[name].shape) == (expected[name].dtype, expected[name].shape)
            assert np.array_equal(loaded[name], expected[name]), (generation, name)
        assert isinstance(loaded["raw"], bytearray) and loaded["raw"] == expected["raw"]
        targets = {
            "grid": page_aligned((64, 1024), np.float64),
            "small": np.zeros(300, np.int16),
            "stamps": np.zeros((5, 7), "datetime64[ms]"),
            "raw": bytearray(10 * PS),
        }
        restore(tmp_path, targets, generation)
        for name in ("grid", "small", "stamps"):
            assert np.array_equal(targets[name], expected[name]), (generation, name)
        assert targets["raw"] == expected["raw"]
    latest = load(tmp_path)
    assert np.array_equal(latest["grid"], grid) and latest["raw"] == raw[:]


def test_a_delta_holds_exactly_the_pages_written(backend: str, tmp_path: Path) -> None:
    pages = 64
    memory = page_aligned((pages * PS,), np.uint8)
    written = sorted(np.random.default_rng(2).choice(pages, size=13, replace=False).tolist())
    with Checkpointer(tmp_path, {"m": memory}, backend=backend) as checkpoint:
        base = checkpoint.save()
        assert base.full and base.pages == pages and base.bytes > pages * PS
        for page in written:
            memory[page * PS + 5] += 1  # a new value: shadow (comparison) sees it too
        delta = checkpoint.save()
        assert not delta.full and delta.pages == 13
        assert 13 * PS < delta.bytes < 13 * PS + 4096  # the pages, their checksums, a small manifest
        nothing = checkpoint.save()
        assert nothing.pages == 0 and nothing.bytes < 4096
    manifest = Directory(str(tmp_path)).manifest(2)
    assert manifest.parent == 1
    stored = [page for e in manifest.extents for page in range(e.offset // PS, (e.offset + e.length) // PS)]
    assert stored == written


def test_mmap_region_bytearray_and_ctypes_buffers(heap_backend: str, tmp_path: Path) -> None:
    region = ntshim.alloc(3 * PS)
    anonymous = mmap.mmap(-1, 5 * PS)
    # Not whole pages: heap memory around it on its edge pages.  (Two heap buffers that share a
    # page cannot be watched at once, so the ctypes array lies in memory of its own.)
    heap = bytearray(200_001)
    ints = (ctypes.c_int32 * 50_000).from_buffer(mmap.mmap(-1, 50 * PS))
    buffers = {"region": region, "mmap": anonymous, "bytearray": heap, "ctypes": ints}
    with memoryview(region) as view, Checkpointer(tmp_path, buffers, backend=heap_backend) as checkpoint:
        checkpoint.save()
        view[PS + 1] = 9
        anonymous[4 * PS + 7] = 8
        heap[200_000] = 7
        ints[49_999] = -123456
        info = checkpoint.save()
        assert not info.full and info.pages >= 4
        expected = {"region": bytes(view), "mmap": anonymous[:], "bytearray": bytes(heap), "ctypes": bytes(ints)}
    loaded = load(tmp_path)
    assert all(isinstance(value, bytearray) for value in loaded.values())
    assert {name: bytes(value) for name, value in loaded.items()} == expected
    assert len(loaded["bytearray"]) == 200_001
    region.close()


def test_reopening_continues_history_and_saves_a_base_first(backend: str, tmp_path: Path) -> None:
    state = page_aligned((16, 512), np.int64)
    with Checkpointer(tmp_path, {"state": state}, backend=backend) as checkpoint:
        checkpoint.save()
        state[3, 3] = 1
        checkpoint.save()
    state[5, 5] = 2  # written while nothing watched: only a base can hold it
    with Checkpointer(tmp_path, {"state": state}, backend=backend) as checkpoint:
        assert checkpoint.generation == 2
        first = checkpoint.save()
        assert (first.generation, first.full, first.pages) == (3, True, 16)
        state[7, 7] = 3
        second = checkpoint.save()
        assert (second.generation, second.full, second.pages) == (4, False, 1)
    assert generations(tmp_path) == [1, 2, 3, 4]
    assert load(tmp_path, 2)["state"][5, 5] == 0
    assert load(tmp_path, 3)["state"][5, 5] == 2
    assert np.array_equal(load(tmp_path)["state"], state)


def test_reopening_with_other_buffers_is_refused(tmp_path: Path) -> None:
    with Checkpointer(tmp_path, {"a": np.zeros(1000), "b": bytearray(100)}) as checkpoint:
        checkpoint.save()
    cases = [
        ({"a": np.zeros(1000)}, r"missing: \['b'\]"),
        ({"a": np.zeros(1000), "b": bytearray(100), "c": bytearray(1)}, r"not in the checkpoint: \['c'\]"),
        ({"a": np.zeros(1001), "b": bytearray(100)}, "'a' is 8008 bytes, saved 8000"),
        ({"a": np.zeros(1000, np.int64), "b": bytearray(100)}, "'a' is a numpy array <i8"),
        ({"a": np.zeros((10, 100)), "b": bytearray(100)}, r"shape \(10, 100\)"),
        ({"a": bytearray(8000), "b": bytearray(100)}, "'a' is raw bytes"),
    ]
    for buffers, message in cases:
        with pytest.raises(ValueError, match=message):
            Checkpointer(tmp_path, buffers)
    with Checkpointer(tmp_path, {"a": np.zeros(1000), "b": bytearray(100)}) as checkpoint:
        assert checkpoint.save().generation == 2  # the refusals left the lock free


def test_one_writer_per_checkpoint(tmp_path: Path) -> None:
    first = Checkpointer(tmp_path, {"a": bytearray(100)})
    with pytest.raises(BlockingIOError, match="another writer") as refused:
        Checkpointer(tmp_path, {"b": bytearray(100)})
    assert refused.value.filename == os.path.join(tmp_path, "lock")
    first.save()
    first.close()
    first.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        first.save()
    with Checkpointer(tmp_path, {"a": bytearray(100)}) as second:
        assert second.save().generation == 2


def test_restore_refuses_other_names_or_sizes_and_changes_nothing(tmp_path: Path) -> None:
    with Checkpointer(tmp_path, {"a": np.arange(1000.0), "b": bytearray(b"x" * 100)}) as checkpoint:
        checkpoint.save()
    a, b = np.full(1000, -1.0), bytearray(b"y" * 100)
    for buffers, message in [
        ({"a": a}, "missing"),
        ({"a": a, "b": b, "c": bytearray(5)}, "not in the checkpoint"),
        ({"a": a, "b": bytearray(99)}, "'b' is 99 bytes, saved 100"),
        ({"a": np.full(999, -1.0), "b": b}, "'a' is 7992 bytes"),
    ]:
        with pytest.raises(ValueError, match=message):
            restore(tmp_path, buffers)
        assert np.all(a == -1.0) and b == b"y" * 100
    restore(tmp_path, {"a": a, "b": b})  # sizes matter, not dtypes: a raw-bytes target is fine too
    assert np.array_equal(a, np.arange(1000.0)) and b == b"x" * 100


def test_compaction_keeps_history_loadable_and_shrinks_the_directory(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    state = page_aligned((256, 512), np.uint64)  # 256 pages
    with Checkpointer(tmp_path, {"state": state}, backend=backend) as checkpoint:
        for step in range(10):
            for page in rng.choice(256, size=40, replace=False):
                state[page, :] = step * 1000 + page  # 40 whole pages per generation
            checkpoint.save()
        before = {g: load(tmp_path, g)["state"] for g in generations(tmp_path)}
        size_before = directory_bytes(tmp_path)
        checkpoint.compact(keep=4)
        assert generations(tmp_path) == [7, 8, 9, 10]
        for g in (7, 8, 9, 10):
            assert np.array_equal(load(tmp_path, g)["state"], before[g]), g
        assert directory_bytes(tmp_path) < size_before
        names = sorted(name for name in os.listdir(tmp_path) if name.endswith(".data"))
        assert names == ["0000000007.base.data", *(f"{g:010d}.delta.data" for g in (8, 9, 10))]
        assert Directory(str(tmp_path)).manifest(7).parent is None
        # Without keep: everything stays, the newest becomes a base.
        checkpoint.compact()
        assert generations(tmp_path) == [7, 8, 9, 10]
        assert Directory(str(tmp_path)).manifest(10).parent is None
        for g in (7, 8, 9, 10):
            assert np.array_equal(load(tmp_path, g)["state"], before[g]), g
        # History goes on after compaction, as deltas over the compacted generations.
        state[0, 0] = 42
        info = checkpoint.save()
        assert (info.generation, info.full, info.pages) == (11, False, 1)
        assert np.array_equal(load(tmp_path)["state"], state)
        checkpoint.compact(keep=1)
        assert generations(tmp_path) == [11]
        assert np.array_equal(load(tmp_path)["state"], state)
        assert sorted(os.listdir(tmp_path)) == ["0000000011.base.data", "0000000011.manifest", "lock"]
