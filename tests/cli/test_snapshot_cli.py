"""``ntshim snapshot info`` and ``ntshim snapshot verify``, run as a user would run them, on
a real checkpoint: intact, then damaged one way at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, verify


def ntshim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ntshim", "snapshot", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}, check=False,
    )  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """Generation 1 (a base of 32 pages of "state", a numpy array, and one of "raw", an mmap),
    2 (a delta of 2 pages) and 3 (a delta of 1 page, over 2).  Both are mappings of their own:
    no heap neighbour writes their pages, so the deltas hold exactly the pages written."""
    import mmap

    state = np.frombuffer(mmap.mmap(-1, 32 * PS), dtype=np.uint8)  # page aligned: edge pages its own
    raw = mmap.mmap(-1, PS)
    path = tmp_path / "ckpt"
    with Checkpointer(path, {"state": state, "raw": raw}) as c:
        c.save()
        state[3 * PS] = state[20 * PS] = 1
        c.save()
        state[7 * PS] = 2
        c.save()
    return path


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_info_lists_every_generation_with_sizes_pages_and_the_ratio(checkpoint: Path) -> None:
    proc = ntshim("info", str(checkpoint), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = report["generations"]
    assert [(g["generation"], g["parent"]) for g in rows] == [(1, None), (2, 1), (3, 2)]
    assert [g["data_bytes"] for g in rows] == [33 * PS, 2 * PS, PS]
    assert [g["pages"] for g in rows] == [33, 2, 1]
    assert all(g["buffers"] == [["state", 32 * PS], ["raw", PS]] for g in rows)
    on_disk = sum(f.stat().st_size for f in checkpoint.iterdir() if f.name != "lock")
    totals = report["totals"]
    assert totals["disk_bytes"] == on_disk and totals["state_bytes"] == 3 * (33 * PS)
    assert totals["ratio"] == pytest.approx(3 * (33 * PS) / on_disk)
    assert 2.5 < totals["ratio"] < 3  # three full copies against one base and two small deltas

    table = ntshim("info", str(checkpoint))
    assert table.returncode == 0, table.stderr
    for text in ("3 generation(s)", "base", "delta", f"{33 * PS:,}", f"{2 * PS:,}", "state (131,072), raw (4,096)",
                 f"ratio: {totals['ratio']:.2f}x"):  # fmt: skip
        assert text in table.stdout, text


def test_verify_passes_an_intact_checkpoint(checkpoint: Path) -> None:
    proc = ntshim("verify", str(checkpoint))
    assert proc.returncode == 0, proc.stderr
    assert f"ok: 3 generation(s) in {checkpoint}" in proc.stdout
    assert f"{33 * PS + 3 * PS:,} bytes of data verified" in proc.stdout
    assert verify(checkpoint) == []


def test_verify_names_the_generation_and_file_of_a_flipped_byte(checkpoint: Path) -> None:
    flip(checkpoint / "0000000002.delta.data", PS + 100)  # the second stored page
    proc = ntshim("verify", str(checkpoint))
    assert proc.returncode == 1
    assert "generation 2" in proc.stderr and "0000000002.delta.data" in proc.stderr
    assert "checksum mismatch in the block at byte 4096" in proc.stderr
    # Generation 3 is intact but is a delta over 2: it cannot be loaded either.
    assert "generation 3" in proc.stderr and "builds on damaged generation 2" in proc.stderr
    assert "2 problem(s) found" in proc.stderr
    assert [(p.generation, Path(p.file).name) for p in verify(checkpoint)] == [
        (2, "0000000002.delta.data"), (3, "0000000003.manifest"),
    ]  # fmt: skip


def test_verify_reads_the_whole_base(checkpoint: Path) -> None:
    flip(checkpoint / "0000000001.base.data", 31 * PS + 5)  # the last page of "state": read in full
    proc = ntshim("verify", str(checkpoint))
    assert proc.returncode == 1
    assert "0000000001.base.data" in proc.stderr and "3 problem(s) found" in proc.stderr


@pytest.mark.parametrize("damage", ["truncated data", "missing data", "damaged manifest", "missing parent"])
def test_verify_reports_other_damage(checkpoint: Path, damage: str) -> None:
    if damage == "truncated data":
        with open(checkpoint / "0000000003.delta.data", "r+b") as f:
            f.truncate(PS)
        where, what = "0000000003.delta.data", "truncated"
    elif damage == "missing data":
        (checkpoint / "0000000003.delta.data").unlink()
        where, what = "0000000003.delta.data", "missing"
    elif damage == "damaged manifest":
        flip(checkpoint / "0000000003.manifest", 20)
        where, what = "0000000003.manifest", "damaged"
    else:  # the base's manifest gone: 1 is no longer a generation, 2 and 3 cannot be rebuilt
        (checkpoint / "0000000001.manifest").unlink()
        where, what = "0000000002.manifest", "cannot be loaded: manifest is missing (generation 1"
    proc = ntshim("verify", str(checkpoint))
    assert proc.returncode == 1, proc.stdout
    assert where in proc.stderr and what in proc.stderr, proc.stderr


def test_a_path_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    for action in ("info", "verify"):
        proc = ntshim(action, str(tmp_path / "nope"))
        assert proc.returncode == 2
        assert f"{tmp_path / 'nope'} is not a checkpoint: No such file or directory" in proc.stderr
    proc = ntshim("verify", str(tmp_path))  # a directory without generations
    assert proc.returncode == 2 and "has no generation yet" in proc.stderr
    (tmp_path / "file").write_text("x")
    proc = ntshim("verify", str(tmp_path / "file"))
    assert proc.returncode == 2 and "Not a directory" in proc.stderr
    assert ntshim("info").returncode == 2  # PATH is required (argparse)
