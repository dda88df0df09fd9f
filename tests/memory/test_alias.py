"""``alias``: a second view of shared pages at a chosen or constrained address."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from required import require_backend

import ntshim
from ntshim.memory import PAGE_SIZE, Alias, alias, placement

GiB = 1 << 30


def coherent(a: memoryview, b: memoryview) -> None:
    a[0] = 11
    assert b[0] == 11
    b[len(b) - 1] = 22
    assert a[len(a) - 1] == 22


def test_anonymous_shared_mmap_aliased_below_4_gib_is_coherent_both_ways() -> None:
    source = mmap.mmap(-1, 1 << 20)
    with alias(source, below=4 * GiB) as view:
        assert isinstance(view, Alias)
        assert view.address + view.size <= 4 * GiB
        assert view.size == 1 << 20
        coherent(memoryview(source), memoryview(view))
    source.close()


def test_alias_at_an_exact_address() -> None:
    source = mmap.mmap(-1, 4 * PAGE_SIZE)
    at = placement.highest_fit(4 * PAGE_SIZE, 2 * GiB, PAGE_SIZE)
    assert at is not None
    with alias(source, address=at) as view:
        assert view.address == at
        coherent(memoryview(source), memoryview(view))
    source.close()


def test_a_shared_region_aliased_low_sees_writes_and_outlives_the_region() -> None:
    region = ntshim.alloc(4 * PAGE_SIZE, shared=True)
    view = alias(region, below=2 * GiB)
    assert view.address + view.size <= 2 * GiB
    coherent(memoryview(region), memoryview(view))
    region.free()
    assert memoryview(view)[0] == 11  # the pages live on in the alias
    view.free()


def test_a_shared_region_decommits_to_zero_and_is_seen_by_a_fork_child() -> None:
    import os as _os

    with ntshim.reserve(2 * PAGE_SIZE, shared=True) as region:
        region.commit(0, PAGE_SIZE)
        with region.view(0, PAGE_SIZE) as v:
            v[0] = 9
        region.decommit(0, PAGE_SIZE)
        region.commit(0, PAGE_SIZE)
        with region.view(0, PAGE_SIZE) as v:
            assert v[0] == 0  # decommitted shared pages are removed, not just unmapped
        pid = _os.fork()
        if pid == 0:
            with region.view(0, PAGE_SIZE) as v:
                v[1] = 5
            _os._exit(0)
        _os.waitpid(pid, 0)
        with region.view(0, PAGE_SIZE) as v:
            assert v[1] == 5


def test_file_mapping_alias_survives_closing_the_source(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    with open(path, "r+b") as f:
        source = mmap.mmap(f.fileno(), 0)
    view = alias(source, below=4 * GiB)
    source.close()
    assert bytes(memoryview(view)[:4]) == b"\x00\x01\x02\x03"
    memoryview(view)[0] = 0xFF
    view.free()
    assert path.read_bytes()[0] == 0xFF  # written through to the file


def test_memfd_and_numpy_over_shared_memory() -> None:
    fd = os.memfd_create("ntshim-alias-test")
    os.ftruncate(fd, 3 * PAGE_SIZE)
    try:
        with alias(fd, below=2 * GiB) as low, alias(fd) as anywhere:
            assert low.address + low.size <= 2 * GiB
            coherent(memoryview(low), memoryview(anywhere))
            source = mmap.mmap(fd, 0)
            array = np.frombuffer(source, dtype=np.uint8)
            with alias(array, below=4 * GiB) as from_numpy:
                coherent(memoryview(source), memoryview(from_numpy))
            del array
            source.close()
    finally:
        os.close(fd)


def test_write_watch_on_an_alias(backend: str) -> None:
    source = mmap.mmap(-1, 8 * PAGE_SIZE)
    with alias(source, below=4 * GiB) as view, ntshim.watch(view, backend=backend) as w:
        memoryview(view)[3 * PAGE_SIZE] = 1
        assert list(w.dirty().offsets) == [3 * PAGE_SIZE]
    source.close()


@pytest.mark.parametrize("written", [False, True], ids=["clean", "written"])
def test_an_alias_of_watched_memory_gets_the_owners_access(backend: str, written: bool) -> None:
    """A watch of the source may have taken write access from its pages (mprotect: every
    clean page; and a written page splits the mapping): the alias is still the owner's
    writable view, and it is made whole, not refused as several mappings (found by the API
    fuzz test: the alias came out read-only, or writable in ntshim's books over read-only
    pages, and the first write through it was a crash)."""
    source = mmap.mmap(-1, 4 * PAGE_SIZE)
    with ntshim.watch(source, backend=backend) as w:
        if written:
            source[PAGE_SIZE] = 1
        with alias(source) as view:
            assert [view.protection(page * PAGE_SIZE) for page in range(4)] == ["rw"] * 4
            memoryview(view)[2 * PAGE_SIZE] = 7
            assert source[2 * PAGE_SIZE] == 7
        # A watch sees writes through its own mapping; shadow compares bytes, so it sees all.
        expected = {PAGE_SIZE} if written else set()
        if backend == "shadow":
            expected.add(2 * PAGE_SIZE)
        assert set(w.dirty().offsets) == expected
    source.close()


def test_private_memory_is_refused_with_the_reason() -> None:
    private = np.zeros(64 * PAGE_SIZE + PAGE_SIZE, np.uint8)
    start = (-private.ctypes.data) % PAGE_SIZE
    with pytest.raises(ValueError, match="private memory"):
        alias(private[start : start + 16 * PAGE_SIZE])
    with ntshim.alloc(PAGE_SIZE) as region, pytest.raises(ValueError, match="shared=True"):
        alias(region)
    source = mmap.mmap(-1, 2 * PAGE_SIZE)
    with pytest.raises(ValueError, match="page boundary"):
        alias(memoryview(source)[1:])
    source.close()


def test_bad_sources_and_placements_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        alias(True)
    with pytest.raises(TypeError):
        alias("memory")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with open(empty, "rb") as f, pytest.raises(ValueError, match="empty"):
        alias(f.fileno())
    source = mmap.mmap(-1, PAGE_SIZE)
    with pytest.raises(ValueError, match="address"):
        alias(source, address=PAGE_SIZE + 1)
    with pytest.raises(ValueError, match="no room"):
        alias(source, below=PAGE_SIZE)
    source.close()


def test_an_alias_has_no_commit_or_decommit() -> None:
    source = mmap.mmap(-1, PAGE_SIZE)
    with alias(source) as view:
        # The pages belong to the source: an alias is a Region, not a Reservation.
        assert isinstance(view, ntshim.Region) and not isinstance(view, ntshim.Reservation)
        for name in ("commit", "decommit", "discard"):
            assert not hasattr(view, name)
        view.protect(0, PAGE_SIZE, "r")  # this view only
        source[0] = 5
        assert memoryview(view)[0] == 5
    source.close()


def _read_only_file(tmp_path: Path) -> int:
    path = tmp_path / "data"
    path.write_bytes(b"x" * PAGE_SIZE)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("watched", [None, "mprotect", "shadow"])
def test_an_alias_of_a_read_only_descriptor_cannot_be_made_writable(tmp_path: Path, watched: str | None) -> None:
    """The source decides the most an alias can be.  Under an mprotect watch the kernel is
    asked for write access only once a page is written, so the alias must know the limit
    itself: protect("rw") is refused up front, as mprotect(2) refuses it without a watch, and
    nothing changes (it was accepted, and the first write, or the watch's end, crashed: found
    by the API fuzz test)."""
    if watched is not None:
        require_backend(watched)
    fd = _read_only_file(tmp_path)
    try:
        with alias(fd) as view:
            watch = ntshim.watch(view, backend=watched) if watched else None
            with pytest.raises(PermissionError, match="does not allow writing"):
                view.protect(0, PAGE_SIZE, "rw")
            assert view.protection(0) == "r"
            with memoryview(view) as buffer:
                assert buffer.readonly and buffer[0] == ord("x")
            view.protect(0, PAGE_SIZE, "none")  # less than the source allows works
            view.protect(0, PAGE_SIZE, "r")
            if watch is not None:
                watch.close()
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", ["uffd-async", "uffd-sync"])
def test_userfaultfd_refuses_memory_that_can_never_be_written(tmp_path: Path, backend: str) -> None:
    """A shared memory object opened read-only (shmem: userfaultfd's kind of memory otherwise):
    a clean refusal that names the backends that can watch it, not a bare EPERM."""
    require_backend(backend)
    writer = os.memfd_create("ntshim-read-only")
    os.ftruncate(writer, PAGE_SIZE)
    fd = os.open(f"/proc/self/fd/{writer}", os.O_RDONLY)
    try:
        with alias(fd) as view:
            with pytest.raises(ntshim.BackendUnavailable, match="can never be written.*mprotect and shadow"):
                ntshim.watch(view, backend=backend)
    finally:
        os.close(fd)
        os.close(writer)
