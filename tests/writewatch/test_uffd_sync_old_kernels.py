"""uffd-sync on kernels without UFFD_FEATURE_WP_UNPOPULATED (before Linux 6.4).

Such kernels cannot write-protect a page that is not mapped yet: the first write maps a
fresh page without protection and goes unseen.  The backend then maps the pages up front
(at the start, and when a page gains access later).  This kernel has the feature, so the
tests take it away from the backend's view of the kernel."""

from __future__ import annotations

import dataclasses

import pytest
from required import require_backend

import ntshim
from ntshim import _core, _kernel
from ntshim.memory import PAGE_SIZE as PS

RW = _core.PROT_READ | _core.PROT_WRITE
WITHOUT_UNPOPULATED = _core.UFFD_FEATURE_PAGEFAULT_FLAG_WP | _core.UFFD_FEATURE_WP_HUGETLBFS_SHMEM


@pytest.fixture
def old_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    require_backend("uffd-sync")
    real = _kernel.userfaultfd()
    old = dataclasses.replace(real, features=real.features & ~_core.UFFD_FEATURE_WP_UNPOPULATED)
    monkeypatch.setattr(_kernel, "userfaultfd", lambda: old)


def test_without_mapping_up_front_a_first_write_would_be_lost() -> None:
    """Why the backend maps pages up front: shown on the raw mechanism."""
    require_backend("uffd-sync")
    memory = _core.Mapping(8 * PS, RW)
    tracker = _core.uffd_sync_tracker(
        memory.address, 8 * PS, bytes([RW]) * 8, user_mode_only=False, features=WITHOUT_UNPOPULATED, populate=False
    )
    with memoryview(memory) as view:
        view[3 * PS] = 1  # a never-touched page: not protected, so not seen
    assert tracker.dirty(0, 8, False, 0) == b""
    tracker.close()
    memory._unmap()


def test_never_touched_pages_are_tracked(old_kernel: None) -> None:
    with ntshim.alloc(64 * PS, watch=True, backend="uffd-sync") as region:
        with memoryview(region) as view:
            view[3 * PS] = 1
            view[40 * PS] = 1
        assert [o // PS for o in region.write_watch.dirty(reset=True)] == [3, 40]
        with memoryview(region) as view:
            view[3 * PS] = 2
        assert [o // PS for o in region.write_watch.dirty()] == [3]


def test_pages_gaining_access_later_are_tracked(old_kernel: None) -> None:
    with ntshim.alloc(16 * PS, watch=True, protect="none", backend="uffd-sync") as region:
        region.protect(0, 8 * PS, "r")
        region.protect(0, 16 * PS, "rw")
        with memoryview(region) as view:
            view[2 * PS] = 1  # gained read first, then write
            view[12 * PS] = 1  # gained read and write at once
        assert [o // PS for o in region.write_watch.dirty()] == [2, 12]
