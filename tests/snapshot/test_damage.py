"""Damaged, truncated, missing and unknown files raise SnapshotError naming the generation and
the file, never return wrong data; leftovers of a crashed writer are ignored and cleaned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import page_aligned

from ntshim import _core
from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, SnapshotError, generations, load, restore


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """Generation 1 (a base of 32 pages) and 2 (a delta of 2 pages)."""
    state = page_aligned((32 * PS,), np.uint8)  # no heap neighbours writing its edge pages
    with Checkpointer(tmp_path, {"state": state}) as c:
        c.save()
        state[3 * PS] = state[20 * PS] = 1
        c.save()
    return tmp_path


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_byte_in_a_data_file(checkpoint: Path) -> None:
    data = checkpoint / "0000000002.delta.data"
    flip(data, PS + 100)  # in the second stored page
    with pytest.raises(SnapshotError, match=f"checksum mismatch in the block at byte {PS}") as error:
        load(checkpoint, 2)
    assert (error.value.generation, error.value.file) == (2, str(data))
    assert str(data) in str(error.value) and "generation 2" in str(error.value)
    assert isinstance(error.value, ValueError)
    assert load(checkpoint, 1)["state"].sum() == 0  # generation 1 does not need the file
    target = np.full(32 * PS, 7, np.uint8)
    with pytest.raises(SnapshotError):
        restore(checkpoint, {"state": target})
    assert np.all(target == 7)  # verified before anything was written


def test_a_flipped_byte_in_a_checksum_table(checkpoint: Path) -> None:
    data = checkpoint / "0000000002.delta.data"
    flip(data, 2 * PS + 1)  # the table follows the two pages
    with pytest.raises(SnapshotError, match="checksum table") as error:
        load(checkpoint)
    assert (error.value.generation, error.value.file) == (2, str(data))


def test_a_truncated_data_file(checkpoint: Path) -> None:
    data = checkpoint / "0000000001.base.data"
    os.truncate(data, 5 * PS)
    for generation in (1, 2):  # 2 is a delta over 1: its load reads generation 1's file
        with pytest.raises(SnapshotError, match="truncated") as error:
            load(checkpoint, generation)
        assert (error.value.generation, error.value.file) == (1, str(data))


def test_a_missing_data_file(checkpoint: Path) -> None:
    data = checkpoint / "0000000001.base.data"
    data.unlink()
    with pytest.raises(SnapshotError, match="missing") as error:
        load(checkpoint)
    assert (error.value.generation, error.value.file) == (1, str(data))


@pytest.mark.parametrize("where", [10, -3])  # in the JSON line, in the checksum line
def test_a_damaged_manifest(checkpoint: Path, where: int) -> None:
    manifest = checkpoint / "0000000002.manifest"
    flip(manifest, where % manifest.stat().st_size)
    with pytest.raises(SnapshotError, match="manifest") as error:
        load(checkpoint)
    assert (error.value.generation, error.value.file) == (2, str(manifest))


def test_a_truncated_manifest(checkpoint: Path) -> None:
    manifest = checkpoint / "0000000002.manifest"
    os.truncate(manifest, manifest.stat().st_size // 2)
    with pytest.raises(SnapshotError, match="manifest"):
        load(checkpoint)


def rewrite_manifest(path: Path, change: dict[str, object]) -> None:
    body = json.loads(path.read_bytes().split(b"\n")[0])
    body.update(change)
    line = json.dumps(body).encode()
    path.write_bytes(line + b"\n" + f"{_core.crc32c(line):08x}\n".encode())


def test_an_unknown_format_version_is_refused(checkpoint: Path) -> None:
    rewrite_manifest(checkpoint / "0000000002.manifest", {"version": 3})
    with pytest.raises(SnapshotError, match="format version 3: this ntshim reads versions 1, 2"):
        load(checkpoint)
    # Version 2 is a compressed generation's: without its compression fields it is refused.
    rewrite_manifest(checkpoint / "0000000002.manifest", {"version": 2})
    with pytest.raises(SnapshotError, match="inconsistent: compression None"):
        load(checkpoint)


def test_an_inconsistent_manifest_is_refused(checkpoint: Path) -> None:
    # A correctly checksummed manifest whose extent points past its buffer: refused before use.
    rewrite_manifest(checkpoint / "0000000002.manifest", {"extents": [[0, 32 * PS - 10, PS, 0], [0, 0, PS, PS]]})
    with pytest.raises(SnapshotError, match="outside its buffer"):
        load(checkpoint)
    rewrite_manifest(checkpoint / "0000000002.manifest", {"data": {"file": "../../etc/passwd"}})
    with pytest.raises(SnapshotError, match="inconsistent"):
        load(checkpoint)


def test_leftovers_of_a_crashed_writer_are_ignored_and_cleaned(checkpoint: Path) -> None:
    leftovers = ["0000000003.manifest.tmp", "0000000003.delta.data", "0000000004.base.data.tmp"]
    for name in leftovers:
        (checkpoint / name).write_bytes(b"half written")
    (checkpoint / "notes.txt").write_text("the user's own file")
    assert generations(checkpoint) == [1, 2]
    assert load(checkpoint)["state"].sum() == 2
    with Checkpointer(checkpoint, {"state": np.zeros(32 * PS, np.uint8)}) as c:
        assert not any((checkpoint / name).exists() for name in leftovers)
        assert (checkpoint / "notes.txt").exists()
        assert c.save().generation == 3
