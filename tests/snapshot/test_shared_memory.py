"""The shared-memory rule (docs/snapshot.md): shared file mappings, which other processes can
write, are watched by comparison (shadow) or refused with another backend; anonymous shared
memory is this process's and keeps the requested backend."""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import ntshim
from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, load

SIZE = 8 * PS


def file_descriptors() -> Iterator[tuple[str, int]]:
    fd = os.memfd_create("ntshim-snapshot-test")
    os.ftruncate(fd, SIZE)
    yield "memfd", fd
    path = f"/dev/shm/ntshim-snapshot-test-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.ftruncate(fd, SIZE)
    yield "shm", fd
    file = tempfile.TemporaryFile(dir=os.environ.get("TMPDIR", "/var/tmp"))
    file.truncate(SIZE)
    yield "regular file", os.dup(file.fileno())
    file.close()


def test_shared_file_mappings_are_watched_by_comparison(tmp_path: Path) -> None:
    for kind, fd in file_descriptors():
        watched = mmap.mmap(fd, SIZE)
        other = mmap.mmap(fd, SIZE)  # another mapping of the same file: as another process writes
        os.close(fd)
        with Checkpointer(tmp_path / kind, {"shared": watched}) as checkpoint:
            assert checkpoint.backends == {"shared": "shadow"}, kind
            checkpoint.save()
            other[5 * PS + 3] = 0x5A  # invisible to write protection of `watched`
            info = checkpoint.save()
            assert info.pages == 1, kind
        assert load(tmp_path / kind)["shared"][5 * PS + 3] == 0x5A, kind
        watched.close()
        other.close()


@pytest.mark.parametrize("backend", ["uffd-async", "mprotect"])
def test_shared_file_mappings_are_refused_with_write_protection(tmp_path: Path, backend: str) -> None:
    for kind, fd in file_descriptors():
        memory = mmap.mmap(fd, SIZE)
        os.close(fd)
        with pytest.raises(ValueError, match=r"buffers\['shared'\] lies in a shared mapping of .*other processes"):
            Checkpointer(tmp_path, {"shared": memory}, backend=backend)
        with Checkpointer(tmp_path / kind, {"shared": memory}, backend="shadow") as checkpoint:
            assert checkpoint.backends == {"shared": "shadow"}
        memory.close()


def test_anonymous_shared_memory_keeps_the_requested_backend(backend: str, tmp_path: Path) -> None:
    anonymous = mmap.mmap(-1, SIZE)  # MAP_SHARED | MAP_ANONYMOUS
    region = ntshim.alloc(SIZE, shared=True)
    with Checkpointer(tmp_path, {"mmap": anonymous, "region": region}, backend=backend) as checkpoint:
        assert checkpoint.backends == {"mmap": backend, "region": backend}
        checkpoint.save()
        anonymous[PS] = 1
        assert checkpoint.save().pages == 1
    with Checkpointer(tmp_path, {"mmap": anonymous, "region": region}) as checkpoint:
        assert "shadow" not in checkpoint.backends.values()  # ntshim's choice: write protection
    region.close()
