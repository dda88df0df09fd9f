"""A checkpoint's directory: listing and reading generations, and, for the one writer, the
lock, durable publication and cleaning up.

Durability (docs/snapshot.md, "Crash safety"): a generation exists for readers when its
manifest has its final name, and it gets that name by one ``rename`` after everything it
refers to is on disk.  So a writer killed at any moment leaves every generation published
before intact and nothing half-made visible; what it left (``*.tmp`` files, data files no
manifest names) is ignored by readers and deleted by the next writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from .format import (
    Manifest,
    SnapshotError,
    data_name,
    generation_of_data,
    generation_of_manifest,
    is_temporary,
    manifest_name,
)

LOCK_NAME = "lock"


class Directory:
    """The generations in a checkpoint directory, for reading (no lock: readers trust only
    complete manifests)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def generations(self) -> list[int]:
        """The published generations, ascending.  FileNotFoundError if the directory does
        not exist."""
        return sorted(g for g in map(generation_of_manifest, os.listdir(self.path)) if g is not None)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def manifest(self, generation: int) -> Manifest:
        path = self.file(manifest_name(generation))
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise SnapshotError("manifest is missing", generation, path) from None
        return Manifest.decode(raw, generation, path)

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


class Store(Directory):
    """The writer's side of a directory; the caller holds its :class:`WriterLock`."""

    def create_data(self, generation: int, base: bool) -> tuple[str, int]:
        """A new, empty data file: its name and a descriptor open for writing.  A file of that
        name may exist only as a leftover no manifest names: it is replaced."""
        name = data_name(generation, base)
        return name, os.open(self.file(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def publish(self, manifest: Manifest) -> int:
        """Make ``manifest`` the generation's (its data file must be durable already); return
        the bytes written.  The steps, in order: the manifest to a temporary name and fsync;
        fsync of the directory (the data file's and the temporary file's entries); rename
        over the final name; fsync of the directory (the rename).  A crash before the rename
        leaves the previous state, after it the new one."""
        raw = manifest.encode()
        final = self.file(manifest_name(manifest.generation))
        temporary = final + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(raw)
            while len(view):
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.sync()
        os.replace(temporary, final)
        self.sync()
        return len(raw)

    def forget(self, generation: int) -> None:
        """Unpublish a generation (its files stay until :meth:`clean`)."""
        os.unlink(self.file(manifest_name(generation)))

    def sync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def clean(self) -> None:
        """Delete what no published generation needs: temporary files, and data files no
        manifest names (from a save or a compaction that stopped half way).  A manifest
        that cannot be read keeps every data file of its generation: it may be repaired."""
        names = os.listdir(self.path)
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
            stale = is_temporary(name) or (g is not None and g not in unreadable and name not in needed)
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.file(name))
        self.sync()
