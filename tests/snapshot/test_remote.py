"""Checkpoints at fsspec URLs (memory://, file://): round trips, compaction, clean-up, the
object-store crash rules (a data object without its manifest is never reported and is
deleted by the next writer; a manifest whose data object is missing raises SnapshotError;
an incomplete manifest is not trusted), and bad arguments."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from helpers import page_aligned

from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, SnapshotError, describe_generations, generations, load, restore, verify


@pytest.fixture
def memory_url() -> str:
    return f"memory://ntshim-tests/{uuid.uuid4().hex}"


def names(url: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(url)
    return sorted(entry.rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False))


def stored_bytes(url: str) -> int:
    fs, root = fsspec.core.url_to_fs(url)
    return sum(fs.size(entry) for entry in fs.ls(root, detail=False))


def history(url: str, rounds: int, compress: str | None = None) -> list[np.ndarray]:
    """Save ``rounds`` generations of a 64-page int64 array, each changing a few seeded pages;
    return the state of each generation."""
    rng = np.random.default_rng(7)
    state = page_aligned((64 * PS // 8,), np.int64)
    states = []
    with Checkpointer(url, {"state": state}, compress=compress) as c:
        for g in range(1, rounds + 1):
            for page in rng.choice(64, 3, replace=False):
                state[page * PS // 8 : page * PS // 8 + 7] = rng.integers(0, 1 << 40, 7)
            info = c.save()
            assert info.generation == g and info.full == (g == 1)
            states.append(state.copy())
    return states


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_round_trip_of_every_generation(scheme: str, memory_url: str, tmp_path: Path) -> None:
    url = memory_url if scheme == "memory" else f"file://{tmp_path}/ckpt"
    states = history(url, 12)
    assert generations(url) == list(range(1, 13))
    for g, expected in enumerate(states, 1):
        assert np.array_equal(load(url, g)["state"], expected)
    target = page_aligned((64 * PS // 8,), np.int64)
    restore(url, {"state": target}, 5)
    assert np.array_equal(target, states[4])
    assert "lock" not in names(url)  # no lock on an object store


def test_save_bytes_are_what_the_store_holds(memory_url: str) -> None:
    state = page_aligned((16 * PS,), np.uint8)
    with Checkpointer(memory_url, {"state": state}) as c:
        first = c.save()
        assert first.bytes == stored_bytes(memory_url)
        state[PS] = 1
        second = c.save()
        assert first.bytes + second.bytes == stored_bytes(memory_url)


def test_compaction_and_reopening(memory_url: str) -> None:
    states = history(memory_url, 10)
    state = page_aligned((64 * PS // 8,), np.int64)
    with Checkpointer(memory_url, {"state": state}) as c:
        assert c.generation == 10
        c.compact(keep=3)
        assert generations(memory_url) == [8, 9, 10]
        assert names(memory_url) == [
            "0000000008.base.data",
            "0000000008.manifest",
            "0000000009.delta.data",
            "0000000009.manifest",
            "0000000010.delta.data",
            "0000000010.manifest",
        ]
        for g in (8, 9, 10):
            assert np.array_equal(load(memory_url, g)["state"], states[g - 1])
        c.compact()  # keep all: the newest becomes a base too
        assert generations(memory_url) == [8, 9, 10]
        assert "0000000010.base.data" in names(memory_url) and "0000000010.delta.data" not in names(memory_url)
        assert np.array_equal(load(memory_url)["state"], states[-1])
        restore(memory_url, {"state": state})
        assert c.save().full  # the first save after opening is a base
        assert c.generation == 11


def test_a_data_object_without_its_manifest_is_ignored_and_cleaned(memory_url: str) -> None:
    history(memory_url, 2)
    fs, root = fsspec.core.url_to_fs(memory_url)
    fs.pipe_file(f"{root}/0000000003.delta.data", b"uploaded, then the writer died")
    fs.pipe_file(f"{root}/0000000003.manifest.tmp", b"half")
    assert generations(memory_url) == [1, 2]
    assert load(memory_url)["state"].any()
    with Checkpointer(memory_url, {"state": page_aligned((64 * PS // 8,), np.int64)}) as c:
        assert "0000000003.delta.data" not in names(memory_url)
        assert "0000000003.manifest.tmp" not in names(memory_url)
        assert c.save().generation == 3


def test_a_manifest_whose_data_object_is_missing(memory_url: str) -> None:
    states = history(memory_url, 3)
    fs, root = fsspec.core.url_to_fs(memory_url)
    fs.rm_file(f"{root}/0000000002.delta.data")
    assert generations(memory_url) == [1, 2, 3]  # the manifests are complete
    for g in (2, 3):
        with pytest.raises(SnapshotError, match="data file is missing") as error:
            load(memory_url, g)
        assert error.value.generation == 2 and error.value.file == f"{memory_url}/0000000002.delta.data"
    assert np.array_equal(load(memory_url, 1)["state"], states[0])


def test_an_incomplete_newest_manifest_is_not_trusted(memory_url: str) -> None:
    states = history(memory_url, 3)
    fs, root = fsspec.core.url_to_fs(memory_url)
    raw = fs.cat_file(f"{root}/0000000003.manifest")
    fs.pipe_file(f"{root}/0000000003.manifest", raw[: len(raw) // 2])  # a torn upload
    assert generations(memory_url) == [1, 2]
    assert np.array_equal(load(memory_url)["state"], states[1])
    with pytest.raises(ValueError, match="generation 3 is not in"):
        load(memory_url, 3)
    # The next writer numbers its generations above every manifest it finds, complete or not,
    # and keeps the incomplete one's data (it may be repaired).
    with Checkpointer(memory_url, {"state": page_aligned((64 * PS // 8,), np.int64)}) as c:
        assert c.save().generation == 4
    assert "0000000003.delta.data" in names(memory_url)
    assert generations(memory_url) == [1, 2, 4]


def test_a_damaged_data_object(memory_url: str) -> None:
    history(memory_url, 2)
    fs, root = fsspec.core.url_to_fs(memory_url)
    key = f"{root}/0000000002.delta.data"
    raw = bytearray(fs.cat_file(key))
    raw[10] ^= 0x10
    fs.pipe_file(key, bytes(raw))
    with pytest.raises(SnapshotError, match="checksum mismatch in the block at byte 0") as error:
        load(memory_url)
    assert (error.value.generation, error.value.file) == (2, f"{memory_url}/0000000002.delta.data")
    fs.pipe_file(key, bytes(raw[:-1]))
    with pytest.raises(SnapshotError, match="truncated"):
        load(memory_url)


def test_bad_arguments(memory_url: str, tmp_path: Path) -> None:
    state = np.zeros(PS, np.uint8)
    with pytest.raises(TypeError, match="storage_options must be a dict"):
        Checkpointer(memory_url, {"s": state}, storage_options=["x"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="storage_options apply to fsspec URLs only"):
        Checkpointer(tmp_path / "local", {"s": state}, storage_options={"key": "x"})
    assert not (tmp_path / "local").exists()
    with pytest.raises(ValueError, match="storage_options apply to fsspec URLs only"):
        load(tmp_path, storage_options={"key": "x"})
    with pytest.raises(FileNotFoundError):
        generations(memory_url + "/nothing-here")
    with pytest.raises(FileNotFoundError):
        load(memory_url + "/nothing-here")


def test_missing_fsspec_names_the_extra(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "fsspec", None)
    with pytest.raises(ImportError, match=r"ntshim\[remote\]"):
        Checkpointer(memory_url, {"s": np.zeros(PS, np.uint8)})
    with pytest.raises(ImportError, match=r"ntshim\[remote\]"):
        generations(memory_url)


@pytest.mark.parametrize("compress", [None, "zstd"])
def test_describe_and_verify_read_a_remote_checkpoint(compress: str | None, memory_url: str) -> None:
    history(memory_url, 3, compress)
    described = describe_generations(memory_url)
    assert [(d.generation, d.parent) for d in described] == [(1, None), (2, 1), (3, 2)]
    assert sum(d.disk_bytes for d in described) == stored_bytes(memory_url)
    assert verify(memory_url) == []
    fs, root = fsspec.core.url_to_fs(memory_url)
    damaged = f"{root}/{described[1].data_file}"
    data = bytearray(fs.cat_file(damaged))
    data[0] ^= 0xFF
    fs.pipe_file(damaged, bytes(data))
    problems = verify(memory_url)
    assert [p.generation for p in problems] == [2, 3]  # the damaged delta, and the delta built on it
    assert problems[0].file.endswith(described[1].data_file)
