"""ntshim.memory.watch() over memory the user already has."""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
from required import require_backend

import ntshim
from ntshim.errors import BackendUnavailable
from ntshim.memory import PAGE_SIZE as PS
from ntshim.writewatch import registry

PAGES = 16


def pages(dirty: ntshim.DirtyPages) -> list[int]:
    return [offset // PS for offset in dirty]


def check_tracks(watch: ntshim.WriteWatch, view: memoryview) -> None:
    """The watch sees writes made through ``view`` (which starts at the watch's address)."""
    assert len(watch.dirty()) == 0
    for page in (0, 3, PAGES - 1):
        view[page * PS + 17] = (view[page * PS + 17] + 1) % 256
    assert pages(watch.dirty(reset=True)) == [0, 3, PAGES - 1]
    assert len(watch.dirty()) == 0


@pytest.fixture
def file_mapping() -> Iterator[mmap.mmap]:
    with tempfile.TemporaryFile(dir=os.environ.get("TMPDIR", "/var/tmp")) as f:
        f.truncate(PAGES * PS)
        m = mmap.mmap(f.fileno(), PAGES * PS)
        yield m
        m.close()


def shared_mappings() -> Iterator[tuple[str, mmap.mmap]]:
    yield "anonymous shared", mmap.mmap(-1, PAGES * PS)
    fd = os.memfd_create("ntshim-test")
    os.ftruncate(fd, PAGES * PS)
    yield "memfd", mmap.mmap(fd, PAGES * PS)
    os.close(fd)
    path = f"/dev/shm/ntshim-test-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    os.ftruncate(fd, PAGES * PS)
    yield "shm", mmap.mmap(fd, PAGES * PS)
    os.close(fd)


def test_shared_memory_of_every_kind(backend: str) -> None:
    for kind, m in shared_mappings():
        with ntshim.memory.watch(m, backend=backend) as w:
            assert w.backend == backend, kind
            assert w.size == PAGES * PS
            check_tracks(w, memoryview(m))
        m.close()


def test_file_backed_mapping(backend: str, file_mapping: mmap.mmap) -> None:
    if backend == "uffd-sync":
        # Documented limit of classic userfaultfd write-protection.
        with pytest.raises(BackendUnavailable, match="file-backed"):
            ntshim.memory.watch(file_mapping, backend=backend)
        return
    with ntshim.memory.watch(file_mapping, backend=backend) as w:
        check_tracks(w, memoryview(file_mapping))
        file_mapping.flush()


def test_automatic_choice_skips_a_backend_that_cannot_watch_the_memory(
    file_mapping: mmap.mmap, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_backend("uffd-sync")
    # Pretend uffd-async is missing: uffd-sync is next, refuses file mappings, mprotect takes it.
    monkeypatch.setattr(registry.FAMILY, "names", tuple(n for n in registry.FAMILY.names if n != "uffd-async"))
    assert registry.FAMILY.names[0] == "uffd-sync"
    with ntshim.memory.watch(file_mapping) as w:
        assert w.backend == "mprotect"


def test_mapping_cannot_be_closed_while_watched(backend: str) -> None:
    m = mmap.mmap(-1, PAGES * PS)
    w = ntshim.memory.watch(m, backend=backend)
    with pytest.raises(BufferError):
        m.close()
    w.close()
    m.close()


def test_numpy_array_with_partial_first_and_last_page(backend: str) -> None:
    """A buffer that does not start or end on a page boundary: the watch covers every page
    it touches, offsets count from the first page, and a write to another part of one of
    those pages counts for the page."""
    with ntshim.alloc((PAGES + 2) * PS) as backing:
        whole = np.frombuffer(backing, dtype=np.uint8)
        array = whole[100 : 100 + PAGES * PS]  # starts 100 bytes into page 0, ends inside page PAGES
        with ntshim.memory.watch(array, backend=backend) as w:
            assert w.address == backing.address
            assert w.size == (PAGES + 1) * PS
            array[0] += 1  # page 0
            array[PS * 5] += 1  # byte 100 of page 5
            array[-1] += 1  # page PAGES
            whole[10] += 1  # outside the array, but on its first page
            assert pages(w.dirty()) == [0, 5, PAGES]
            with w.writing(0, PS) as window:  # the view holds only the array's bytes
                assert len(window) == PS - 100
        del whole, array


def heap_objects() -> Iterator[object]:
    """Objects whose first or last page malloc and other objects share."""
    yield bytearray(100)
    yield np.zeros(3 * PS + 8, dtype=np.uint8)
    yield (ctypes.c_char * 100)()
    yield array.array("q", range(600))
    yield np.zeros(40 << 20, dtype=np.uint8)  # a mapping of its own, after malloc's chunk header
    yield np.zeros(PAGES * PS, dtype=np.uint8)[PS // 2 :]  # a view of one: the rest of its pages is malloc's


def test_mprotect_refuses_memory_that_shares_pages_with_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """mprotect write-protects whole pages: over a heap object, the kernel's writes to its
    neighbours would fail and a thread that exits (glibc frees its TLS with every signal
    blocked) would die (found by the API fuzz test).  It refuses; nothing is left watched, so
    another backend can watch the object next, and automatic selection passes on to it."""
    require_backend("mprotect")
    require_backend("shadow")
    for obj in heap_objects():
        with pytest.raises(BackendUnavailable, match="shares its first or last page with memory it does not own"):
            ntshim.memory.watch(obj, backend="mprotect")
        with ntshim.memory.watch(obj, backend="shadow") as w:
            assert w.backend == "shadow"
    monkeypatch.setattr(registry.FAMILY, "names", ("mprotect", "shadow"))
    with ntshim.memory.watch(bytearray(100)) as w:
        assert w.backend == "shadow"


def test_whole_pages_are_watched_wherever_they_are(backend: str) -> None:
    """What every backend watches: a slice of a mapping (the rest of its pages is the same
    mapping's) and whole pages of a heap object (nothing else lies on them)."""
    heap = np.zeros((PAGES + 2) * PS, dtype=np.uint8)
    first = -heap.ctypes.data % PS
    inside_the_heap = heap[first : first + PAGES * PS]
    m = mmap.mmap(-1, (PAGES + 1) * PS)
    with ntshim.alloc((PAGES + 1) * PS) as region:
        for obj in (
            memoryview(m)[100 : PAGES * PS],
            np.frombuffer(region, dtype=np.uint8)[PS - 1 :],
            inside_the_heap,
        ):
            with ntshim.memory.watch(obj, backend=backend) as w:
                assert w.backend == backend
                with memoryview(obj).cast("B") as view:
                    view[-1] = 7
                assert pages(w.dirty()) == [w.size // PS - 1]
    m.close()


def test_numpy_fortran_order_and_large_arrays(heap_backend: str) -> None:
    # 64 MiB: numpy may use huge pages.  Above glibc's largest mmap threshold (32 MiB), so
    # the array gets a mapping of its own: a smaller one may come from the heap, where other
    # threads' allocations share its partial edge pages and write them.
    big = np.zeros((8192, 1024), dtype=np.float64, order="F")
    with ntshim.memory.watch(big, backend=heap_backend) as w:
        big[5, 7] = 1.0
        offset = big.ctypes.data + (7 * 8192 + 5) * 8 - w.address  # Fortran order
        assert pages(w.dirty()) == [offset // PS]


def test_ctypes_array(heap_backend: str) -> None:
    # Larger than glibc's largest mmap threshold (32 MiB), so malloc gives it a mapping of
    # its own and the partial edge pages hold nothing that other code writes.
    buf = (ctypes.c_ubyte * (40 << 20))()
    with ntshim.memory.watch(buf, backend=heap_backend) as w:
        buf[20 * PS] = 9
        assert pages(w.dirty()) == [(ctypes.addressof(buf) + 20 * PS - w.address) // PS]


def test_bytearray_cannot_be_resized_while_watched(heap_backend: str) -> None:
    data = bytearray(40 << 20)  # a mapping of its own (see test_ctypes_array)
    with ntshim.memory.watch(data, backend=heap_backend) as w:
        with pytest.raises(BufferError):
            data.extend(b"x" * PS)
        data[5 * PS] = 1
        assert len(w.dirty()) == 1
    data.extend(b"x")  # fine once the watch is closed


def test_close_leaves_memory_untracked_and_writable(backend: str) -> None:
    m = mmap.mmap(-1, PAGES * PS)
    w = ntshim.memory.watch(m, backend=backend)
    w.close()
    m[:] = b"\x01" * (PAGES * PS)  # every page, no fault left behind
    read_end, write_end = os.pipe()
    os.write(write_end, b"kernel")
    assert os.readv(read_end, [memoryview(m)[PS:]]) == 6  # the kernel can write too
    os.close(read_end)
    os.close(write_end)
    m.close()


def test_environment_variable_chooses_the_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NTSHIM_WRITEWATCH_BACKEND", backend)
    with ntshim.memory.watch(mmap.mmap(-1, 4 * PS)) as w:
        assert w.backend == backend
    with ntshim.alloc(PS, watch=True) as r:
        assert r.write_watch.backend == backend


def test_default_is_the_best_available_backend() -> None:
    best = next(b.backend for b in ntshim.backends() if b.available)
    with ntshim.alloc(PS, watch=True) as r:
        assert r.write_watch.backend == best
