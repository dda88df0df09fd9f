"""Where a checkpoint lives: a local directory, or any fsspec URL (an object store).

:class:`Store` is the protocol readers and the writer use: list names, read a small file
whole or open one for (ranged) reading, write a data file (:class:`~.format.Sink`), publish
a manifest, delete.  Two implementations:

- :class:`Directory`, a local directory (a plain path): durable by ``fsync`` and an atomic
  ``rename`` of each manifest after everything it refers to is on disk; one writer by an
  ``flock`` (:class:`WriterLock`).
- :class:`FsspecStore`, an fsspec URL (``memory://``, ``file://``, ``s3://``, ``gs://``, ...):
  objects have no rename and no fsync, so each file is written once, by one upload, data
  first and its manifest last; readers trust only manifests whose checksum verifies.  No
  lock: one writer per checkpoint is the user's responsibility (docs/snapshot.md, "Stores").

Durability (docs/snapshot.md, "Crash safety"): a generation exists for readers when its
manifest is complete under its final name, and it gets there after everything it refers to
is.  So a writer killed at any moment leaves every generation published before intact and
nothing half-made visible; what it left (``*.tmp`` files, data files no manifest names) is
ignored by readers and deleted by the next writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import posixpath
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from .format import (
    CHUNK_BYTES,
    Manifest,
    ReadableFile,
    Sink,
    SnapshotError,
    data_name,
    generation_of_data,
    generation_of_manifest,
    is_temporary,
    manifest_name,
)

LOCK_NAME = "lock"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def open_store(path: object, storage_options: object = None, *, create: bool = False) -> Store:
    """The store at ``path``: a plain path (str) or ``os.PathLike`` is a local directory; a
    str of the form ``scheme://...`` an fsspec URL, opened with ``storage_options`` (a dict
    of keyword arguments for the fsspec file system, e.g. credentials or an endpoint; only
    for URLs).  ``create``: make the directory (for a writer).  TypeError / ValueError
    naming the argument for anything else; ImportError naming the extra when a URL needs
    fsspec and it is missing."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, an os.PathLike or an fsspec URL, not {type(path).__name__}")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise TypeError(f"storage_options must be a dict or None, not {type(storage_options).__name__}")
    if isinstance(path, str) and _URL.match(path):
        return FsspecStore(path, dict(storage_options or {}), create=create)
    result = os.fspath(path)
    if not isinstance(result, str):
        raise TypeError("path must be a text path, not bytes")
    if storage_options:
        raise ValueError(f"storage_options apply to fsspec URLs only, and path {result!r} is a local path")
    if create:
        os.makedirs(result, exist_ok=True)
    return Directory(result)


class Store(ABC):
    """A checkpoint's files, by name (``0000000007.manifest``, ``0000000007.base.data``, ...).

    Readers take no lock and trust only complete manifests; the writer (one per checkpoint)
    creates data files, publishes manifests, forgets generations and cleans up."""

    #: The path or URL as given, for messages and :attr:`Checkpointer.path`.
    path: str

    # ---- the protocol: what each kind of store implements ------------------------------

    @abstractmethod
    def file(self, name: str) -> str:
        """The path or URL of the file ``name``, for messages."""

    @abstractmethod
    def names(self) -> list[str]:
        """The names in the store.  FileNotFoundError if there is no checkpoint there."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """A file's bytes, whole (for manifests).  FileNotFoundError if it does not exist."""

    @abstractmethod
    def open(self, name: str) -> contextlib.AbstractContextManager[ReadableFile]:
        """A file open for reading (seek and read: a remote one reads ranges).
        FileNotFoundError if it does not exist."""

    @abstractmethod
    def create(self, name: str) -> Sink:
        """A new file, written once (a leftover of that name no manifest names is replaced)."""

    @abstractmethod
    def put_manifest(self, name: str, raw: bytes) -> None:
        """Publish a manifest's bytes under ``name``, atomically: a reader sees the previous
        state or all of ``raw``; and durably, as far as the store can."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete a file (FileNotFoundError if it does not exist)."""

    @abstractmethod
    def size(self, name: str) -> int:
        """A file's size in bytes (FileNotFoundError if it does not exist)."""

    def sync(self) -> None:
        """Make deletions durable (a local directory: fsync it; objects: nothing to do)."""

    def generations(self) -> list[int]:
        """The published generations, ascending.  FileNotFoundError if there is no
        checkpoint at the store's path."""
        return sorted(g for g in map(generation_of_manifest, self.names()) if g is not None)

    # ---- shared by every store --------------------------------------------------------

    def manifest(self, generation: int) -> Manifest:
        name = manifest_name(generation)
        try:
            raw = self.read(name)
        except FileNotFoundError:
            raise SnapshotError("manifest is missing", generation, self.file(name)) from None
        return Manifest.decode(raw, generation, self.file(name))

    def chain(self, generation: int) -> list[Manifest]:
        """The manifests to apply, base first, to rebuild ``generation``."""
        chain = [self.manifest(generation)]
        while chain[-1].parent is not None:
            parent = self.manifest(chain[-1].parent)
            if parent.buffers != chain[-1].buffers:
                raise SnapshotError(
                    f"its buffers differ from those of generation {chain[-1].generation}, a delta over it",
                    parent.generation,
                    self.file(manifest_name(parent.generation)),
                )
            chain.append(parent)
        return chain[::-1]

    def newest(self) -> int:
        """The highest generation any manifest name has, complete or not (0 if none): the
        writer numbers its next generation above it, so it never writes over a file."""
        return max((g for g in map(generation_of_manifest, self.names()) if g is not None), default=0)

    def create_data(self, generation: int, base: bool) -> tuple[str, Sink]:
        """A new, empty data file: its name and where to write it."""
        name = data_name(generation, base)
        return name, self.create(name)

    def publish(self, manifest: Manifest) -> int:
        """Make ``manifest`` the generation's (its data file must be complete already);
        return the bytes written."""
        raw = manifest.encode()
        self.put_manifest(manifest_name(manifest.generation), raw)
        return len(raw)

    def forget(self, generation: int) -> None:
        """Unpublish a generation (its files stay until :meth:`clean`)."""
        self.delete(manifest_name(generation))

    def clean(self) -> None:
        """Delete what no published generation needs: temporary files, and data files no
        manifest names (from a save or a compaction that stopped half way).  A manifest
        that cannot be read keeps every data file of its generation: it may be repaired."""
        names = self.names()
        needed: set[str] = set()
        unreadable: set[int] = set()
        for name in names:
            g = generation_of_manifest(name)
            if g is None:
                continue
            try:
                needed.add(self.manifest(g).data_file)
            except SnapshotError:
                unreadable.add(g)
        for name in names:
            g = generation_of_data(name)
            if is_temporary(name) or (g is not None and g not in unreadable and name not in needed):
                with contextlib.suppress(FileNotFoundError):
                    self.delete(name)
        self.sync()

    def release(self) -> None:
        """Give up what the writer held (a local directory's lock); idempotent."""


# ---- a local directory ---------------------------------------------------------------------


class Directory(Store):
    """A checkpoint in a local directory.  Writes go through ``os.write`` and ``fsync``; a
    manifest is published by the rename of a temporary file, with the directory fsynced
    around it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock: WriterLock | None = None

    def lock(self) -> None:
        """Take the writer's lock (BlockingIOError if another writer holds it)."""
        self._lock = WriterLock(self.path)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def names(self) -> list[str]:
        return os.listdir(self.path)

    def read(self, name: str) -> bytes:
        with open(self.file(name), "rb") as f:
            return f.read()

    def open(self, name: str) -> contextlib.AbstractContextManager[ReadableFile]:
        return open(self.file(name), "rb")

    def create(self, name: str) -> Sink:
        path = self.file(name)
        return _FileSink(path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))

    def put_manifest(self, name: str, raw: bytes) -> None:
        """The steps, in order: the manifest to a temporary name and fsync; fsync of the
        directory (the data file's and the temporary file's entries); rename over the final
        name; fsync of the directory (the rename).  A crash before the rename leaves the
        previous state, after it the new one."""
        final = self.file(name)
        temporary = final + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.sync()
        os.replace(temporary, final)
        self.sync()

    def delete(self, name: str) -> None:
        os.unlink(self.file(name))

    def size(self, name: str) -> int:
        return os.stat(self.file(name)).st_size

    def sync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _FileSink:
    """A local data file: ``os.write`` straight from the writer's staging buffer, ``fsync``
    at the end."""

    def __init__(self, path: str, fd: int) -> None:
        self._path = path
        self._fd: int | None = fd

    def write(self, data: memoryview | bytes) -> None:
        assert self._fd is not None
        _write_all(self._fd, data)

    def finish(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            os.unlink(self._path)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


class WriterLock:
    """The one-writer rule: an exclusive ``flock`` on ``<dir>/lock``, held while the writer
    lives; the kernel drops it when the process ends, however it ends."""

    def __init__(self, path: str) -> None:
        lock_path = os.path.join(path, LOCK_NAME)
        self._fd: int | None = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._fd)
            self._fd = None
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BlockingIOError(
                    error.errno,
                    f"checkpoint {path} is open by another writer (a Checkpointer in this or another process "
                    "holds its lock file); one writer at a time",
                    lock_path,
                ) from None
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


# ---- an fsspec URL ---------------------------------------------------------------------------


def fsspec_module() -> Any:
    """The ``fsspec`` module, or ImportError naming the extra that installs it."""
    try:
        import fsspec
    except ImportError as error:
        raise ImportError(
            "a checkpoint at a URL needs the fsspec package: pip install 'ntshim[remote]' "
            "(and the file system's own package, e.g. s3fs for s3://)"
        ) from error
    return fsspec


class FsspecStore(Store):
    """A checkpoint under an fsspec URL: each file is one object, written once by one upload
    (data files streamed in parts, a manifest in one ``pipe``); there is no rename and no
    fsync.  Readers list the manifests, read them all (one batch) and trust only those whose
    checksum line verifies: a manifest is complete when it does, and a generation is listed
    only then.

    Object stores replace an object atomically (a reader gets the old or the new one, whole),
    and that is what republishing a generation (compaction) relies on; on ``file://`` the
    manifest goes through a temporary file and a rename for the same reason."""

    def __init__(self, url: str, storage_options: dict[str, Any], *, create: bool = False) -> None:
        fsspec = fsspec_module()
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.path = url
        self.fs: Any = fs
        self._root = root.rstrip("/")
        self._writer = create
        self._complete: dict[int, Manifest] = {}  # manifests read by the last listing, verified
        self._local = "file" in _protocols(fs)
        if create:
            fs.makedirs(self._root, exist_ok=True)

    def file(self, name: str) -> str:
        return self.path.rstrip("/") + "/" + name

    def _key(self, name: str) -> str:
        return self._root + "/" + name

    def names(self) -> list[str]:
        self.fs.invalidate_cache(self._root)  # listings are cached by some file systems (s3fs)
        try:
            entries = self.fs.ls(self._root, detail=False)
        except FileNotFoundError:
            if self._writer:  # an object store has no empty directories: nothing saved yet
                return []
            raise
        return [posixpath.basename(entry.rstrip("/")) for entry in entries]

    def generations(self) -> list[int]:
        """The generations whose manifest is complete (its checksum verifies), ascending;
        all manifests are read in one batch (concurrently where the file system can)."""
        listed = sorted(g for g in map(generation_of_manifest, self.names()) if g is not None)
        keys = {self._key(manifest_name(g)): g for g in listed}
        raws = self.fs.cat(list(keys), on_error="return") if keys else {}
        self._complete = {}
        for key, raw in raws.items():
            g = keys.get(key)
            if g is None or not isinstance(raw, bytes):
                continue  # deleted since the listing (compaction), or unreadable
            with contextlib.suppress(SnapshotError):
                self._complete[g] = Manifest.decode(raw, g, self.file(manifest_name(g)))
        return sorted(self._complete)

    def manifest(self, generation: int) -> Manifest:
        cached = self._complete.get(generation)
        return cached if cached is not None else super().manifest(generation)

    def read(self, name: str) -> bytes:
        data: bytes = self.fs.cat_file(self._key(name))
        return data

    def open(self, name: str) -> contextlib.AbstractContextManager[ReadableFile]:
        # Read-ahead of one chunk: a load's memory stays bounded whatever the file system's
        # default block size (s3fs: 50 MiB).
        file: contextlib.AbstractContextManager[ReadableFile] = self.fs.open(
            self._key(name), "rb", block_size=CHUNK_BYTES
        )
        return file

    def create(self, name: str) -> Sink:
        return _ObjectSink(self, name)

    def put_manifest(self, name: str, raw: bytes) -> None:
        self._complete.clear()
        key = self._key(name)
        if self._local:  # a file system, not an object store: no atomic put, but a rename
            self.fs.pipe_file(key + ".tmp", raw)
            self.fs.mv(key + ".tmp", key)
        else:
            self.fs.pipe_file(key, raw)

    def delete(self, name: str) -> None:
        self._complete.clear()
        self.fs.rm_file(self._key(name))

    def size(self, name: str) -> int:
        return int(self.fs.size(self._key(name)))  # (names() refreshed the listing it is asked after)


class _ObjectSink:
    """A data object, uploaded as it is written (by the file system's writer: s3fs sends a
    multipart upload that completes, atomically, at :meth:`finish`)."""

    def __init__(self, store: FsspecStore, name: str) -> None:
        self._store = store
        self._name = name
        self._file: Any = store.fs.open(store._key(name), "wb")

    def write(self, data: memoryview | bytes) -> None:
        self._file.write(data)

    def finish(self) -> None:
        self._file.close()

    def abort(self) -> None:
        # Closing may complete the upload; the object is then deleted (and, had the deletion
        # failed, no manifest names it: readers ignore it and the next writer deletes it).
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(Exception):
            self._store.delete(self._name)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
