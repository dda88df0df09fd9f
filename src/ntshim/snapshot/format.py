"""The on-disk format of a checkpoint: manifests, data files, and their verification.

docs/snapshot.md describes it for readers without ntshim.  In short, generation ``g`` is

- ``<g:010d>.manifest``: line 1 is a JSON object (:class:`Manifest`), line 2 the CRC32C of
  line 1's bytes as 8 lowercase hex digits;
- its data file (named in the manifest): the stored bytes, then one little-endian uint32
  CRC32C per ``block_size`` bytes of them (the last block may be partial).  A compressed
  data file (manifest version 2, ``"compression": "zstd"``) stores the same byte stream as
  independent zstd frames of ``frame_bytes`` each, then a frame table (length and CRC32C of
  each frame), then the same per-block CRC table, over the uncompressed bytes.

A generation is a base (``parent`` null: every byte of every buffer) or a delta over its
parent (only the extents written since).  Nothing here knows about write watches or
directories: this module turns manifests into bytes and back, and data files into verified
bytes, raising :class:`SnapshotError` for anything damaged.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import _core

FORMAT = "ntshim.snapshot"
#: The format version of an uncompressed generation; a reader refuses manifests of a version
#: it does not know.
VERSION = 1
#: The format version of a compressed generation: version 1 plus the ``compression``,
#: ``stored`` and ``frame_bytes`` fields of ``data`` and the frame table of the data file.
#: Uncompressed generations stay version 1, byte for byte, so that readers of version 1 keep
#: reading them; a version-1 reader refuses a compressed one by its version instead of
#: calling its data file damaged.
VERSION_COMPRESSED = 2
VERSIONS = (VERSION, VERSION_COMPRESSED)

#: The values of ``Checkpointer(compress=...)`` besides None, and of a manifest's
#: ``data.compression``.
COMPRESSIONS = ("zstd",)
#: The zstd compression level of the frames a writer makes (readers need not know it).  Level 1:
#: on smooth float64 data 2.5 times as fast as zstd's default 3 for 5% more bytes (measured
#: here: 390 vs 158 MB/s, ratio 0.87 vs 0.83); a checkpoint is on the program's time.
ZSTD_LEVEL = 1

#: Bytes copied, checksummed and written (or read and verified) at a time: bounds the memory a
#: save or a load needs beside the buffers themselves, whatever their size.
CHUNK_BYTES = 4 << 20

_MANIFEST_NAME = re.compile(r"^(\d{10})\.manifest$")
_DATA_NAME = re.compile(r"^(\d{10})\.(base|delta)\.data$")


def zstandard_module() -> Any:
    """The ``zstandard`` module, or ImportError naming the extra that installs it."""
    try:
        import zstandard
    except ImportError as error:
        raise ImportError(
            "zstd compression needs the zstandard package: pip install 'ntshim[snapshot]' (or zstandard)"
        ) from error
    return zstandard


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
    the epoch.

    ``compression`` is None (the data file holds the ``data_bytes`` as they are) or
    ``"zstd"``: then the data file holds them as independent zstd frames of ``frame_bytes``
    uncompressed bytes each (the last may be shorter), ``stored_bytes`` of frames in all,
    followed by the frame table and the CRC table (over the uncompressed bytes)."""

    generation: int
    parent: int | None
    buffers: tuple[BufferSpec, ...]
    data_file: str
    data_bytes: int
    block_size: int
    table_crc32c: int
    extents: tuple[Extent, ...]
    created: float
    compression: str | None = None
    stored_bytes: int | None = None
    frame_bytes: int | None = None

    @property
    def frames(self) -> int:
        """The zstd frames of a compressed data file (0 for an uncompressed one)."""
        return 0 if self.frame_bytes is None else -(-self.data_bytes // self.frame_bytes)

    @property
    def file_bytes(self) -> int:
        """The exact size of the data file in bytes: the stored bytes and the tables."""
        blocks = -(-self.data_bytes // self.block_size)
        if self.compression is None:
            return self.data_bytes + 4 * blocks
        assert self.stored_bytes is not None
        return self.stored_bytes + 8 * self.frames + 4 * blocks

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "file": self.data_file,
            "bytes": self.data_bytes,
            "block_size": self.block_size,
            "table_crc32c": self.table_crc32c,
        }
        if self.compression is not None:
            data.update(compression=self.compression, stored=self.stored_bytes, frame_bytes=self.frame_bytes)
        body = {
            "format": FORMAT,
            "version": VERSION if self.compression is None else VERSION_COMPRESSED,
            "generation": self.generation,
            "parent": self.parent,
            "created": self.created,
            "buffers": [b.to_json() for b in self.buffers],
            "data": data,
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
        version = body.get("version")
        if version not in VERSIONS or type(version) is not int:
            raise SnapshotError(
                f"format version {version!r}: this ntshim reads versions {', '.join(map(str, VERSIONS))}",
                generation,
                file,
            )
        try:
            manifest = cls._from_body(body)
            manifest._check(generation, version)
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
            compression=data.get("compression"),
            stored_bytes=data.get("stored"),
            frame_bytes=data.get("frame_bytes"),
        )

    def _check(self, generation: int, version: int) -> None:
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
        if version == VERSION:
            if (self.compression, self.stored_bytes, self.frame_bytes) != (None, None, None):
                raise ValueError("a version-1 manifest has no compression")
        else:
            if self.compression not in COMPRESSIONS:
                raise ValueError(f"compression {self.compression!r}: this ntshim knows {list(COMPRESSIONS)}")
            if not _is_count(self.stored_bytes):
                raise ValueError(f"stored bytes {self.stored_bytes!r}")
            frame = self.frame_bytes
            if not (isinstance(frame, int) and _is_count(frame) and 0 < frame <= 1 << 30):
                raise ValueError(f"frame bytes {frame!r}")
            if frame % self.block_size:
                raise ValueError(f"frame bytes {frame!r} are not whole blocks of {self.block_size!r}")
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


class Sink(Protocol):
    """Where a data file goes (a store makes one per file: store.py)."""

    def write(self, data: memoryview | bytes) -> None:
        """Append ``data`` (all of it)."""

    def finish(self) -> None:
        """Make what was written durable (a local file: fsync) or complete (an object: its
        upload ends); the file is then whole under its final name."""

    def abort(self) -> None:
        """Give the file up (delete what was written); after :meth:`finish` too.  Never raises."""


class ReadableFile(Protocol):
    """What :func:`read_data` reads: a seekable binary file (``open(path, "rb")``, or an
    fsspec file)."""

    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def read(self, size: int = ..., /) -> bytes: ...

    def readinto(self, buffer: Any, /) -> int | None: ...


class DataWriter:
    """Writes a data file: bytes copied from the buffers into a staging area *now* (so the
    checksum and the file hold the same bytes even while the buffers keep changing), then
    checksummed per block and written (compressed to one zstd frame per staging chunk when
    ``compression`` is ``"zstd"``), chunk after chunk; :meth:`finish` appends the tables and
    makes the file durable.

    ``bytes``: the data added so far (uncompressed); ``stored``: the bytes the data took in
    the file; ``written``: the file's size once finished (stored bytes and tables)."""

    def __init__(self, sink: Sink, block_size: int, compression: str | None = None) -> None:
        self._sink = sink
        self._block_size = block_size
        self._staging = bytearray(max(1, CHUNK_BYTES // block_size) * block_size)
        self._view = memoryview(self._staging)
        self._filled = 0
        self._crcs: list[bytes] = []
        self._frames: list[bytes] = []
        self._compressor: Any = None
        if compression is not None:  # "zstd": the caller checked the value
            zstd = zstandard_module()
            self._compressor = zstd.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        self.compression = compression
        self.frame_bytes = len(self._staging)  # uncompressed bytes per zstd frame (the last may be shorter)
        self.bytes = 0  # data added so far: the stream offset of the next byte added
        self.stored = 0
        self.written = 0

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
        # Every flush but the last is whole blocks (and one whole frame), so the blocks of the
        # stream are the blocks of the flushes.
        if not self._filled:
            return
        chunk = self._view[: self._filled]
        self._crcs.append(_core.crc32c_pages(chunk, self._block_size))
        if self._compressor is None:
            self._sink.write(chunk)
            self.stored += len(chunk)
        else:
            frame = self._compressor.compress(chunk)
            self._frames.append(struct.pack("<II", len(frame), _core.crc32c(frame)))
            self._sink.write(frame)
            self.stored += len(frame)
        self._filled = 0

    def finish(self) -> int:
        """Write the rest and the tables, make the file durable; return the CRC32C of the
        tables (a compressed file's frame table and CRC table, as one)."""
        self._flush()
        table = b"".join(self._frames) + b"".join(self._crcs)
        self._sink.write(table)
        self._sink.finish()
        self._view.release()
        self.written = self.stored + len(table)
        return _core.crc32c(table)


def read_data(manifest: Manifest, file: ReadableFile, path: str, images: Sequence[memoryview]) -> None:
    """Verify the data file open as ``file`` (a seekable binary file: a local file, or one of
    an fsspec store; ``path`` names it in messages) of ``manifest`` and copy its extents into
    ``images`` (one writable byte view per buffer, in the manifest's order).

    Blocks are verified before any of their bytes is copied (and a compressed frame before it
    is decompressed); memory beyond the images: one chunk (CHUNK_BYTES), one frame and the
    tables.  On SnapshotError the images hold part of the generation, so callers give them
    out only when this returns."""
    g, size, block = manifest.generation, manifest.data_bytes, manifest.block_size
    blocks = -(-size // block)
    actual = file.seek(0, os.SEEK_END)
    if actual != manifest.file_bytes:
        raise SnapshotError(
            f"data file has {actual} bytes, the manifest says {manifest.file_bytes} (truncated?)", g, path
        )
    stored = size if manifest.compression is None else manifest.stored_bytes
    assert stored is not None
    file.seek(stored)
    tables = _read_exact(file, 8 * manifest.frames + 4 * blocks, g, path)
    if _core.crc32c(tables) != manifest.table_crc32c:
        raise SnapshotError("checksum table of the data file is damaged", g, path)
    frames, table = tables[: 8 * manifest.frames], tables[8 * manifest.frames :]
    file.seek(0)
    extents = iter(manifest.extents)
    pending = next(extents, None)
    if manifest.compression is None:
        chunk = bytearray(max(1, CHUNK_BYTES // block) * block)
        for start in range(0, size, len(chunk)):
            view = memoryview(chunk)[: min(len(chunk), size - start)]
            _read_into(file, view, g, path)
            _check_blocks(view, start, table, block, g, path, "")
            pending = _scatter(view, start, pending, extents, images)
        return
    assert manifest.frame_bytes is not None
    lengths = [length for length, _ in struct.iter_unpack("<II", frames)]
    if sum(lengths) != stored:
        raise SnapshotError(f"frame table holds {sum(lengths)} bytes of frames, the manifest {stored}", g, path)
    zstd = zstandard_module()
    decompressor = zstd.ZstdDecompressor()
    at = 0
    for index, (length, crc) in enumerate(struct.iter_unpack("<II", frames)):
        frame = _read_exact(file, length, g, path)
        if _core.crc32c(frame) != crc:
            raise SnapshotError(f"checksum mismatch in zstd frame {index} (at byte {at} of the data file)", g, path)
        start = index * manifest.frame_bytes
        expected = min(manifest.frame_bytes, size - start)
        try:
            data = decompressor.decompress(frame, max_output_size=expected)
        except zstd.ZstdError as error:  # a frame that verified but does not decode
            raise SnapshotError(f"zstd frame {index} does not decompress: {error}", g, path) from None
        if len(data) != expected:
            raise SnapshotError(f"zstd frame {index} holds {len(data)} bytes, not {expected}", g, path)
        view = memoryview(data)
        _check_blocks(view, start, table, block, g, path, " (uncompressed)")
        pending = _scatter(view, start, pending, extents, images)
        at += length


def _check_blocks(view: memoryview, start: int, table: bytes, block: int, g: int, path: str, what: str) -> None:
    """SnapshotError naming the first block of ``view`` (stream bytes from ``start``) whose
    CRC32C is not the table's."""
    crcs = _core.crc32c_pages(view, block)
    expected = table[start // block * 4 : start // block * 4 + len(crcs)]
    if crcs != expected:
        bad = next(i for i in range(0, len(crcs), 4) if crcs[i : i + 4] != expected[i : i + 4])
        offset = start + bad // 4 * block
        raise SnapshotError(f"checksum mismatch in the block at byte {offset} of the data file{what}", g, path)


def _read_exact(file: ReadableFile, n: int, g: int, path: str) -> bytes:
    parts = []
    while n:
        part = file.read(n)
        if not part:
            raise SnapshotError("data file ended early", g, path)
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _read_into(file: ReadableFile, view: memoryview, g: int, path: str) -> None:
    while len(view):
        n = file.readinto(view)
        if not n:
            raise SnapshotError("data file ended early", g, path)
        view = view[n:]


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
