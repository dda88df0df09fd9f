"""zstd compression: round trips (compressed, and mixed with uncompressed generations), the
layout docs/snapshot.md gives, damage in a compressed file, that it shrinks what compresses,
that ``bytes`` is what was stored, version-1 files, and the error paths."""

from __future__ import annotations

import json
import re
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from helpers import directory_bytes, page_aligned

from ntshim import _core
from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, SnapshotError, generations, load, restore

N = (9 << 20) // 8 + 123  # int64s: 9 MiB and a bit, so a base has three zstd frames, the last partial


def counters() -> np.ndarray:
    """Realistic, compressible state: slowly growing counters."""
    state = page_aligned((N,), np.int64)
    state[:] = np.arange(N) // 1000
    return state


def manifest_body(path: Path, generation: int) -> dict:
    return json.loads((path / f"{generation:010d}.manifest").read_bytes().split(b"\n")[0])


def test_round_trip_of_many_generations_mixed(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    state = counters()
    states = []
    for compress in ("zstd", None, "zstd"):  # reopened: each Checkpointer chooses for its own saves
        with Checkpointer(tmp_path, {"state": state}, compress=compress) as c:
            for _ in range(5):
                for at in rng.integers(0, N, 20):
                    state[at] = rng.integers(0, 1 << 62)
                c.save()
                states.append(state.copy())
            if compress is None:
                c.compact()  # the newest rebased, uncompressed
    assert generations(tmp_path) == list(range(1, 16))
    for g, expected in enumerate(states, 1):
        assert np.array_equal(load(tmp_path, g)["state"], expected), g
        body = manifest_body(tmp_path, g)
        compressed = g <= 5 or g > 10
        assert body["version"] == (2 if compressed else 1)
        assert body["data"].get("compression") == ("zstd" if compressed else None)
    target = page_aligned((N,), np.int64)
    restore(tmp_path, {"state": target}, 7)
    assert np.array_equal(target, states[6])
    with Checkpointer(tmp_path, {"state": state}, compress="zstd") as c:
        c.compact(keep=4)  # generation 12 (a compressed delta) becomes a compressed base
    assert generations(tmp_path) == [12, 13, 14, 15]
    assert manifest_body(tmp_path, 12)["data"]["compression"] == "zstd"
    assert manifest_body(tmp_path, 12)["parent"] is None
    for g in (12, 13, 14, 15):
        assert np.array_equal(load(tmp_path, g)["state"], states[g - 1])


def test_it_shrinks_what_compresses_and_bytes_is_what_is_stored(tmp_path: Path) -> None:
    state = counters()
    raw = state.nbytes
    with Checkpointer(tmp_path / "z", {"state": state}, compress="zstd") as c:
        base = c.save()
        state[::512] += 1  # one int64 in every page
        delta = c.save()
    assert base.bytes < raw // 20 and delta.bytes < raw // 20
    assert base.bytes + delta.bytes == directory_bytes(tmp_path / "z")
    with Checkpointer(tmp_path / "plain", {"state": state}) as c:
        plain = c.save()
    assert plain.bytes > raw and plain.bytes == directory_bytes(tmp_path / "plain")
    assert np.array_equal(load(tmp_path / "z")["state"], state)


def test_the_documented_layout(tmp_path: Path) -> None:
    """Decode a compressed data file by docs/snapshot.md alone (zstandard and the CRCs)."""
    state = counters()
    with Checkpointer(tmp_path, {"state": state}, compress="zstd") as c:
        c.save()
    body = manifest_body(tmp_path, 1)
    d = body["data"]
    assert (d["compression"], d["frame_bytes"]) == ("zstd", 4 << 20)
    raw = (tmp_path / d["file"]).read_bytes()
    frames, blocks = -(-d["bytes"] // d["frame_bytes"]), -(-d["bytes"] // d["block_size"])
    assert frames == 3 and len(raw) == d["stored"] + 8 * frames + 4 * blocks
    tables = raw[d["stored"] :]
    assert _core.crc32c(tables) == d["table_crc32c"]
    data, at = bytearray(), 0
    for length, crc in struct.iter_unpack("<II", tables[: 8 * frames]):
        frame = raw[at : at + length]
        assert _core.crc32c(frame) == crc
        assert zstandard.get_frame_parameters(frame).content_size == min(d["frame_bytes"], d["bytes"] - len(data))
        data += zstandard.ZstdDecompressor().decompress(frame)
        at += length
    assert at == d["stored"]
    crcs = tables[8 * frames :]
    for i, (crc,) in enumerate(struct.iter_unpack("<I", crcs)):
        assert _core.crc32c(data[i * d["block_size"] : (i + 1) * d["block_size"]]) == crc
    assert bytes(data) == state.tobytes()
    # The frames back to back are one multi-frame zstd stream: `zstd -d` gives the data.
    assert zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(raw[: d["stored"]]) == data


@pytest.fixture
def compressed(tmp_path: Path) -> Path:
    state = counters()
    with Checkpointer(tmp_path, {"state": state}, compress="zstd") as c:
        c.save()
        state[5 * PS // 8] = 99
        c.save()
    return tmp_path


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_compressed_frame(compressed: Path) -> None:
    data = compressed / "0000000001.base.data"
    d = manifest_body(compressed, 1)["data"]
    first = struct.unpack("<I", data.read_bytes()[d["stored"] : d["stored"] + 4])[0]
    flip(data, first + 3)  # inside the second frame
    with pytest.raises(SnapshotError, match=f"checksum mismatch in zstd frame 1 \\(at byte {first} ") as error:
        load(compressed, 1)
    assert (error.value.generation, error.value.file) == (1, str(data))
    with pytest.raises(SnapshotError, match="zstd frame 1"):
        load(compressed)  # generation 2 needs it too
    target = np.full(N, 7, np.int64)
    with pytest.raises(SnapshotError):
        restore(compressed, {"state": target})
    assert np.all(target == 7)


def test_a_frame_table_damaged(compressed: Path) -> None:
    data = compressed / "0000000002.delta.data"
    flip(data, manifest_body(compressed, 2)["data"]["stored"] + 1)
    with pytest.raises(SnapshotError, match="checksum table") as error:
        load(compressed)
    assert (error.value.generation, error.value.file) == (2, str(data))


def test_a_truncated_compressed_file(compressed: Path) -> None:
    data = compressed / "0000000002.delta.data"
    data.write_bytes(data.read_bytes()[:-5])
    with pytest.raises(SnapshotError, match="truncated") as error:
        load(compressed)
    assert (error.value.generation, error.value.file) == (2, str(data))


def test_a_frame_that_verifies_but_holds_other_bytes(compressed: Path) -> None:
    """The per-block CRCs cover the uncompressed bytes: a frame replaced by another valid zstd
    frame, with its frame CRC and the table CRC redone, is still caught."""
    path = compressed / "0000000002.delta.data"
    body = manifest_body(compressed, 2)
    d = body["data"]
    raw = path.read_bytes()
    tables = raw[d["stored"] :]
    other = zstandard.ZstdCompressor().compress(b"\x01" * d["bytes"])
    tables = struct.pack("<II", len(other), _core.crc32c(other)) + tables[8:]
    path.write_bytes(other + tables)
    d["stored"], d["table_crc32c"] = len(other), _core.crc32c(tables)
    line = json.dumps(body).encode()
    (compressed / "0000000002.manifest").write_bytes(line + b"\n" + f"{_core.crc32c(line):08x}\n".encode())
    with pytest.raises(SnapshotError, match=r"block at byte 0 of the data file \(uncompressed\)") as error:
        load(compressed)
    assert error.value.generation == 2


def test_a_version_1_checkpoint_written_by_the_documented_format(tmp_path: Path) -> None:
    """Readers keep reading version-1 files: one written by hand, as docs/snapshot.md says."""
    data = bytes(range(256)) * 20  # 5120 bytes: two blocks of 4096, the last partial
    crcs = b"".join(struct.pack("<I", _core.crc32c(data[i : i + 4096])) for i in range(0, len(data), 4096))
    (tmp_path / "0000000001.base.data").write_bytes(data + crcs)
    body = {
        "format": "ntshim.snapshot",
        "version": 1,
        "generation": 1,
        "parent": None,
        "created": 0.0,
        "buffers": [{"name": "a", "size": 5000}, {"name": "b", "size": 120}],
        "data": {"file": "0000000001.base.data", "bytes": 5120, "block_size": 4096, "table_crc32c": _core.crc32c(crcs)},
        "extents": [[0, 0, 5000, 0], [1, 0, 120, 5000]],
    }
    line = json.dumps(body).encode()
    (tmp_path / "0000000001.manifest").write_bytes(line + b"\n" + f"{_core.crc32c(line):08x}\n".encode())
    loaded = load(tmp_path)
    assert loaded == {"a": bytearray(data[:5000]), "b": bytearray(data[5000:])}


def test_bad_compress_values(tmp_path: Path) -> None:
    state = np.zeros(PS, np.uint8)
    with pytest.raises(ValueError, match="compress must be None or one of \\['zstd'\\], not 'gzip'"):
        Checkpointer(tmp_path / "a", {"s": state}, compress="gzip")
    with pytest.raises(TypeError, match="compress must be None or 'zstd', not bool"):
        Checkpointer(tmp_path / "a", {"s": state}, compress=True)  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()
    with Checkpointer(tmp_path / "a", {"s": state}) as c:  # nothing was held: the path is free
        c.save()


def test_missing_zstandard_names_the_extra(compressed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # `import zstandard` now raises ImportError
    state = np.zeros(PS, np.uint8)
    with pytest.raises(ImportError, match=r"pip install 'ntshim\[snapshot\]'"):
        Checkpointer(tmp_path / "new", {"s": state}, compress="zstd")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ImportError, match=r"ntshim\[snapshot\]"):
        load(compressed)
    with Checkpointer(tmp_path / "new", {"s": state}) as c:  # uncompressed needs no zstandard
        c.save()
    assert load(tmp_path / "new")["s"].sum() == 0


def test_compressed_on_an_fsspec_store() -> None:
    url = f"memory://ntshim-tests/{uuid.uuid4().hex}"
    state = counters()
    with Checkpointer(url, {"state": state}, compress="zstd") as c:
        c.save()
        state[PS // 8 :: 4096] = -1
        info = c.save()
        assert not info.full
    assert np.array_equal(load(url)["state"], state)


def test_the_reader_in_the_docs_reads_mixed_generations(tmp_path: Path) -> None:
    """docs/snapshot.md's reader (stdlib, and zstandard for version 2) against ntshim."""
    text = (Path(__file__).parents[2] / "docs" / "snapshot.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "def crc32c" in block)
    reader: dict[str, Any] = {}
    exec(code, reader)  # noqa: S102 -- the documentation's own reader, on purpose
    state = page_aligned((40000,), np.int64)
    state[:] = np.arange(state.size) // 7
    with Checkpointer(tmp_path, {"state": state, "raw": bytearray(b"xyz" * 999)}, compress="zstd") as c:
        c.save()
        state[5000] = -1
        c.save()
    with Checkpointer(tmp_path, {"state": state, "raw": bytearray(b"xyz" * 999)}) as c:
        state[30000] = 3
        c.save()
        state[7] = 9
        c.save()
    for g in (1, 2, 3, 4):
        ours = load(tmp_path, g)
        theirs = reader["load"](str(tmp_path), g)
        assert bytes(theirs["state"]) == ours["state"].tobytes() and theirs["raw"] == ours["raw"]
