"""The on-disk format of a checkpoint: manifests, data files, and their verification.

docs/snapshot.md describes it for readers without ntshim.  In short, generation ``g`` is

- ``<g:010d>.manifest``: line 1 is a JSON object (:class:`Manifest`), line 2 the CRC32C of
  line 1's bytes as 8 lowercase hex digits;
- its data file (named in the manifest): the stored bytes, then one little-endian uint32
  CRC32C per ``block_size`` bytes of them (the last block may be partial).

A generation is a base (``parent`` null: every byte of every buffer) or a delta over its
parent (only the extents written since).  Nothing here knows about write watches or
directories: this module turns manifests into bytes and back, and data files into verified
bytes, raising :class:`SnapshotError` for anything damaged.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _core

FORMAT = "ntshim.snapshot"
#: The format version written; a reader refuses manifests of a version it does not know.
VERSION = 1

#: Bytes copied, checksummed and written (or read and verified) at a time: bounds the memory a
#: save or a load needs beside the buffers themselves, whatever their size.
CHUNK_BYTES = 4 << 20

_MANIFEST_NAME = re.compile(r"^(\d{10})\.manifest$")
_DATA_NAME = re.compile(r"^(\d{10})\.(base|delta)\.data$")


class SnapshotError(ValueError):
    """A checkpoint file is damaged, truncated, missing or of an unknown format version.

    ``generation`` is the generation being read, ``file`` the path of the file at fault.
    Never raised for bad arguments (those are TypeError / ValueError naming the argument).
    """

    def __init__(self, message: str, generation: int | None, file: str) -> None:
        self.generation = generation
        self.file = file
        where = f"generation {generation}, " if generation is not None else ""
        super().__init__(f"{message} ({where}{file})")


# ---- file names ------------------------------------------------------------------------


def manifest_name(generation: int) -> str:
    return f"{generation:010d}.manifest"


def data_name(generation: int, base: bool) -> str:
    """A base and a delta of one generation have distinct names: compaction writes the base of
    a generation beside its delta, and the manifest's rename decides which one counts."""
    return f"{generation:010d}.{'base' if base else 'delta'}.data"


def generation_of_manifest(name: str) -> int | None:
    match = _MANIFEST_NAME.match(name)
    return int(match.group(1)) if match else None


def generation_of_data(name: str) -> int | None:
    match = _DATA_NAME.match(name)
    return int(match.group(1)) if match else None


def is_temporary(name: str) -> bool:
    """A file a writer was making when it stopped: ``<a manifest or data name>.tmp``."""
    return name.endswith(".tmp") and (generation_of_manifest(name[:-4]) or generation_of_data(name[:-4])) is not None


# ---- manifests -------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferSpec:
    """What a checkpoint holds for one buffer: ``size`` bytes; for a numpy array also its
    ``dtype`` (numpy's ``.npy`` description: a string such as ``"<f8"``, or a list for a
    structured dtype) and ``shape``, else both None."""

    name: str
    size: int
    dtype: Any = None
    shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "size": self.size}
        if self.shape is not None:
            out["numpy"] = {"dtype": self.dtype, "shape": list(self.shape)}
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> BufferSpec:
        numpy = value.get("numpy")
        name, size = value["name"], value["size"]
        if not isinstance(name, str) or not _is_count(size) or size == 0:
            raise ValueError(f"bad buffer entry {value!r}")
        if numpy is None:
            return cls(name, size)
        shape = tuple(numpy["shape"])
        if not all(_is_count(n) for n in shape):
            raise ValueError(f"bad shape {shape!r}")
        return cls(name, size, _freeze(numpy["dtype"]), shape)


@dataclass(frozen=True)
class Extent:
    """``length`` bytes of buffer number ``buffer`` from byte ``offset``, stored at
    ``file_offset`` of the data file."""

    buffer: int
    offset: int
    length: int
    file_offset: int


@dataclass(frozen=True)
class Manifest:
    """One generation.  ``parent`` is None for a base (it holds every byte of every buffer),
    else the generation this one is a delta over.  ``data_bytes`` of stored bytes precede the
    CRC table in ``data_file``; ``table_crc32c`` checksums that table; ``block_size`` is the
    bytes each CRC covers (the system page size of the writer).  ``created``: seconds since
    the epoch."""

    generation: int
    parent: int | None
    buffers: tuple[BufferSpec, ...]
    data_file: str
    data_bytes: int
    block_size: int
    table_crc32c: int
    extents: tuple[Extent, ...]
    created: float

    def encode(self) -> bytes:
        body = {
            "format": FORMAT,
            "version": VERSION,
            "generation": self.generation,
            "parent": self.parent,
            "created": self.created,
            "buffers": [b.to_json() for b in self.buffers],
            "data": {
                "file": self.data_file,
                "bytes": self.data_bytes,
                "block_size": self.block_size,
                "table_crc32c": self.table_crc32c,
            },
            "extents": [[e.buffer, e.offset, e.length, e.file_offset] for e in self.extents],
        }
        line = json.dumps(body, separators=(",", ":")).encode()
        return line + b"\n" + f"{_core.crc32c(line):08x}".encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes, generation: int, file: str) -> Manifest:
        """Parse and check a manifest file's bytes; SnapshotError for anything wrong."""
        line, _, rest = raw.partition(b"\n")
        if rest[-1:] != b"\n" or rest.count(b"\n") != 1:
            raise SnapshotError("manifest is not two lines (truncated or damaged)", generation, file)
        try:
            stored = int(rest[:-1].decode("ascii"), 16)
        except ValueError:
            raise SnapshotError("manifest checksum line is damaged", generation, file) from None
        if _core.crc32c(line) != stored:
            raise SnapshotError("manifest checksum mismatch (damaged)", generation, file)
        try:
            body = json.loads(line)
        except ValueError:
            raise SnapshotError("manifest is not JSON", generation, file) from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise SnapshotError(f"not an {FORMAT} manifest", generation, file)
        if body.get("version") != VERSION:
            raise SnapshotError(
                f"format version {body.get('version')!r}: this ntshim reads version {VERSION} only",
                generation,
                file,
            )
        try:
            manifest = cls._from_body(body)
            manifest._check(generation)
        except (KeyError, TypeError, ValueError) as error:
            raise SnapshotError(f"manifest is inconsistent: {error}", generation, file) from None
        return manifest

    @classmethod
    def _from_body(cls, body: dict[str, Any]) -> Manifest:
        data = body["data"]
        return cls(
            generation=body["generation"],
            parent=body["parent"],
            buffers=tuple(BufferSpec.from_json(b) for b in body["buffers"]),
            data_file=data["file"],
            data_bytes=data["bytes"],
            block_size=data["block_size"],
            table_crc32c=data["table_crc32c"],
            extents=tuple(Extent(*e) for e in body["extents"]),
            created=float(body["created"]),
        )

    def _check(self, generation: int) -> None:
        """Everything a reader relies on before it writes a byte anywhere."""
        if self.generation != generation:
            raise ValueError(f"it says it is generation {self.generation!r}")
        if self.parent is not None and not (_is_count(self.parent) and self.parent < generation):
            raise ValueError(f"parent {self.parent!r} is not an earlier generation")
        if generation_of_data(self.data_file) != generation:  # a plain name: no path can escape the directory
            raise ValueError(f"data file name {self.data_file!r}")
        if not (_is_count(self.block_size) and 0 < self.block_size <= 1 << 30):
            raise ValueError(f"block size {self.block_size!r}")
        if not (_is_count(self.table_crc32c) and self.table_crc32c < 1 << 32):
            raise ValueError(f"table checksum {self.table_crc32c!r}")
        if not self.buffers or len({b.name for b in self.buffers}) != len(self.buffers):
            raise ValueError("no buffers, or a name twice")
        cursor = 0
        for e in self.extents:
            if not all(_is_count(v) for v in (e.buffer, e.offset, e.length, e.file_offset)):
                raise ValueError(f"extent {e}")
            if e.buffer >= len(self.buffers) or e.length == 0 or e.offset + e.length > self.buffers[e.buffer].size:
                raise ValueError(f"extent {e} lies outside its buffer")
            if e.file_offset != cursor:
                raise ValueError(f"extent {e} does not follow the previous one in the data file")
            cursor += e.length
        if cursor != self.data_bytes:
            raise ValueError(f"extents hold {cursor} bytes, the data file {self.data_bytes!r}")
        if self.parent is None:  # a base covers every byte of every buffer exactly once
            covered = [0] * len(self.buffers)
            for e in self.extents:
                if e.offset != covered[e.buffer]:
                    raise ValueError("a base's extents must cover each buffer in order")
                covered[e.buffer] += e.length
            if covered != [b.size for b in self.buffers]:
                raise ValueError("a base must hold every byte of every buffer")


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0  # bool is not a count


def _freeze(value: Any) -> Any:
    """JSON lists as tuples, so that specs compare and hash (numpy accepts both)."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# ---- data files ------------------------------------------------------------------------


class DataWriter:
    """Writes a data file: bytes copied from the buffers into a staging area *now* (so the
    checksum and the file hold the same bytes even while the buffers keep changing), then
    checksummed per block and written, chunk after chunk; :meth:`finish` appends the CRC
    table and makes the file durable."""

    def __init__(self, fd: int, block_size: int) -> None:
        self._fd = fd
        self._block_size = block_size
        self._staging = bytearray(max(1, CHUNK_BYTES // block_size) * block_size)
        self._view = memoryview(self._staging)
        self._filled = 0
        self._crcs: list[bytes] = []
        self.bytes = 0  # stored so far: the file offset of the next byte added

    def add(self, source: memoryview) -> None:
        """Copy ``source`` (bytes of a buffer) into the file."""
        self.bytes += len(source)
        while len(source):
            n = min(len(source), len(self._staging) - self._filled)
            self._view[self._filled : self._filled + n] = source[:n]
            self._filled += n
            source = source[n:]
            if self._filled == len(self._staging):
                self._flush()

    def _flush(self) -> None:
        # Every flush but the last is whole blocks, so the blocks of the file are the blocks
        # of the flushes.
        chunk = self._view[: self._filled]
        self._crcs.append(_core.crc32c_pages(chunk, self._block_size))
        _write_all(self._fd, chunk)
        self._filled = 0

    def finish(self) -> int:
        """Write the rest and the CRC table, fsync; return the table's CRC32C."""
        self._flush()
        table = b"".join(self._crcs)
        _write_all(self._fd, table)
        os.fsync(self._fd)
        self._view.release()
        return _core.crc32c(table)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


def read_data(manifest: Manifest, file: io.BufferedReader, path: str, images: Sequence[memoryview]) -> None:
    """Verify the data file ``file`` (at ``path``, for messages) of ``manifest`` and copy its
    extents into ``images`` (one writable byte view per buffer, in the manifest's order).

    Blocks are verified before any of their bytes is copied; on SnapshotError the images hold
    part of the generation, so callers give them out only when this returns."""
    g, size, block = manifest.generation, manifest.data_bytes, manifest.block_size
    blocks = -(-size // block)
    actual = os.fstat(file.fileno()).st_size
    if actual != size + 4 * blocks:
        raise SnapshotError(
            f"data file has {actual} bytes, the manifest says {size + 4 * blocks} (truncated?)", g, path
        )
    file.seek(size)
    table = file.read(4 * blocks)
    if _core.crc32c(table) != manifest.table_crc32c:
        raise SnapshotError("checksum table of the data file is damaged", g, path)
    file.seek(0)
    chunk = bytearray(max(1, CHUNK_BYTES // block) * block)
    extents = iter(manifest.extents)
    pending = next(extents, None)
    for start in range(0, size, len(chunk)):
        view = memoryview(chunk)[: min(len(chunk), size - start)]
        if file.readinto(view) != len(view):
            raise SnapshotError("data file ended early", g, path)
        crcs = _core.crc32c_pages(view, block)
        expected = table[start // block * 4 : start // block * 4 + len(crcs)]
        if crcs != expected:
            bad = next(i for i in range(0, len(crcs), 4) if crcs[i : i + 4] != expected[i : i + 4])
            offset = start + bad // 4 * block
            raise SnapshotError(f"checksum mismatch in the block at byte {offset} of the data file", g, path)
        pending = _scatter(view, start, pending, extents, images)


def _scatter(
    view: memoryview, start: int, pending: Extent | None, extents: Iterator[Extent], images: Sequence[memoryview]
) -> Extent | None:
    """Copy the parts of the extents that lie in ``view`` (file bytes from ``start``); return
    the first extent that goes on past it."""
    end = start + len(view)
    while pending is not None and pending.file_offset < end:
        lo = max(pending.file_offset, start)
        hi = min(pending.file_offset + pending.length, end)
        at = pending.offset + lo - pending.file_offset
        images[pending.buffer][at : at + hi - lo] = view[lo - start : hi - start]
        if pending.file_offset + pending.length > end:
            break
        pending = next(extents, None)
    return pending
