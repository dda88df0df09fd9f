"""A refused ``alias()`` or ``watch()`` holds no buffer export of its source once the exception
leaves it: the caller can close the source (``mmap.close()``) in its ``except`` block, while the
exception and its traceback are still alive (issue 11: a pin kept by the traceback's frame
made ``mmap.close()`` raise BufferError there)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Callable

import pytest

import ntshim
from ntshim import _core
from ntshim.memory import PAGE_SIZE, alias

P = PAGE_SIZE


def address_of(mm: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mm))  # the ctypes export dies on return


def refuse_then_close(
    mm: mmap.mmap, call: Callable[[], object], exception: type[BaseException], match: str, *buffers: memoryview
) -> None:
    """``call()`` must raise ``exception``; inside the except block, release the caller's own
    ``buffers`` and close ``mm``: nothing the refused call made may still hold it."""
    try:
        call()
    except exception as e:
        assert match in str(e), e
        for view in buffers:
            view.release()
        mm.close()  # BufferError here if the refused call left an export alive
    else:
        pytest.fail(f"expected {exception.__name__}")
    assert mm.closed


def test_alias_of_private_memory_releases_the_source() -> None:
    mm = mmap.mmap(-1, 2 * P, flags=mmap.MAP_PRIVATE)
    refuse_then_close(mm, lambda: alias(mm), ValueError, "private memory")


def test_alias_of_a_buffer_off_a_page_boundary_releases_the_source() -> None:
    mm = mmap.mmap(-1, 2 * P)
    off = memoryview(mm)[1:]
    refuse_then_close(mm, lambda: alias(off), ValueError, "page boundary", off)


def test_alias_of_a_buffer_over_several_mappings_releases_the_source() -> None:
    mm = mmap.mmap(-1, 2 * P)
    other = os.memfd_create("other")
    try:
        os.ftruncate(other, P)
        # The second page now shows another object: two mappings under one buffer.  (A mapping
        # split by protections alone is still one, and is aliased.)
        _core.map_fd_onto(other, 0, P, _core.PROT_READ | _core.PROT_WRITE, address_of(mm) + P)
    finally:
        os.close(other)
    refuse_then_close(mm, lambda: alias(mm), ValueError, "several mappings")


def test_alias_placement_refused_releases_the_source() -> None:
    mm = mmap.mmap(-1, P)
    refuse_then_close(mm, lambda: alias(mm, below=P), ValueError, "no room")
    mm = mmap.mmap(-1, P)
    taken = address_of(mm)
    refuse_then_close(mm, lambda: alias(mm, address=taken), FileExistsError, "already in use")


def test_alias_the_kernel_refuses_releases_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise OSError(errno.EFAULT, "Bad address")  # as mremap answers for VM_PFNMAP memory

    monkeypatch.setattr(_core, "alias_onto", refuse)
    mm = mmap.mmap(-1, P)
    refuse_then_close(mm, lambda: alias(mm), ValueError, "cannot duplicate")


def test_watch_refused_releases_the_source() -> None:
    mm = mmap.mmap(-1, 2 * P)
    first_page = (ctypes.c_char * P).from_address(address_of(mm))  # no export of mm
    with ntshim.watch(first_page) as watching:
        try:
            ntshim.watch(mm)  # overlaps the watched page
        except ValueError as e:
            assert "already watched" in str(e)
            watching.close()
            mm.close()  # BufferError here if the refused watch kept its pin
        else:
            pytest.fail("expected ValueError")
    assert mm.closed
