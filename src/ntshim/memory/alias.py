"""A second view of the same pages at a chosen or constrained address (low aliases for
32-bit pointers).

Shared pages can be mapped twice: ``mremap(old_size=0)`` duplicates a shared mapping
(``mmap.mmap`` of a file or of shared memory, a memfd) without copying anything, and a
descriptor can simply be mapped again.  Both views show the same pages, both ways, and the
alias outlives the source's closing (it holds its own reference to the pages).  Private
memory (malloc, numpy's own arrays, :func:`~ntshim.memory.alloc` without ``shared``) cannot be aliased: its
pages belong to one mapping and the kernel copies them on write.

The alias is placed as :func:`~ntshim.memory.reserve` places memory: an inaccessible
placeholder is reserved first (never replacing anything), then the second view is moved
onto it — so the only range ever replaced is our own.
"""

from __future__ import annotations

import fcntl
import os
import stat as stat_module
from collections.abc import Callable
from typing import Any

from .. import _core, _kernel
from . import maps, placement
from .region import Region

PAGE_SIZE = _kernel.PAGE_SIZE


class Alias(Region):
    """A second view of another mapping's pages (see :func:`alias`).  Reading, writing,
    ``protect`` (of this view only), write watches and ``close`` work as on any region; it
    has no ``commit``, ``decommit`` or ``discard`` (it is no :class:`~ntshim.memory.Reservation`): the pages
    belong to the source."""


def _placeholder(size: int, below: int | None, address: int | None) -> Alias:
    at = placement.check_address(address, 0)
    bound = placement.check_below(below, size, at)
    return placement.map_placed(lambda where: Alias(size, 0, address=where), size, at, 0, bound)


def alias(source: Any, *, below: int | None = None, address: int | None = None) -> Alias:
    """A second view of ``source``'s pages, placed at ``address`` or ending below ``below``
    (default: anywhere).

    ``source``: a region allocated with ``shared=True``, a file descriptor (a memfd, a
    shared-memory or regular file: its whole length), or a buffer over shared memory
    starting on a page boundary (``mmap.mmap`` of a
    file, of ``/dev/shm`` or anonymous ``mmap.mmap(-1, n)``; a numpy array or memoryview over
    one).  Writes through either view are seen through the other.  The alias stays valid
    after the source is closed.

    ValueError, saying why and what to do instead, for private memory (malloc'd buffers,
    numpy arrays of their own, regions allocated without ``shared``) and for mappings the kernel cannot
    duplicate (device memory mapped by a driver).
    """
    if isinstance(source, bool):
        raise TypeError("source must be a file descriptor or a buffer over shared memory, not bool")
    if isinstance(source, int):
        return _alias_fd(source, below, address)
    if isinstance(source, Region) and not source._shared:
        raise ValueError(
            "this ntshim region is private memory: its pages cannot be shown twice. "
            "Allocate it with shared=True (ntshim.alloc(size, shared=True)) and alias that"
        )
    try:
        pin = _core.Pin(source)
    except TypeError:
        raise TypeError(
            f"source must be a file descriptor or a buffer over shared memory, not {type(source).__name__}"
        ) from None
    # The pin keeps the source mapped while it is duplicated.  Leaving the block gives the
    # export back before any exception leaves alias(): the caller may close the source in its
    # except block (a pin kept alive by the traceback's frame would make mmap.close() fail).
    with pin:
        start, nbytes = pin.address, pin.nbytes
        if start % PAGE_SIZE:
            raise ValueError(
                f"the buffer starts at {start:#x}, not on a page boundary: alias the whole mapping instead"
            )
        size = -(-nbytes // PAGE_SIZE) * PAGE_SIZE
        path, prot = _shared_pages(start, start + size)
        view = _placeholder(size, below, address)
        try:
            _core.alias_onto(start, size, view.address)
        except OSError as e:
            view.close()
            raise ValueError(
                f"the kernel cannot duplicate this mapping ({path or 'anonymous'}: {e.strerror}); device memory "
                "mapped by a driver (VM_PFNMAP) cannot be aliased: ask the driver to map it at the address you need "
                "(as VK_EXT_map_memory_placed does)"
            ) from None
    try:
        _adopt(view, prot, None)  # None: mprotect, the duplicate has the first piece's access
    except BaseException:
        view.close()
        raise
    return view


def _shared_pages(start: int, end: int) -> tuple[str, int]:
    """The file (a path, "" when anonymous) whose pages ``[start, end)`` map, shared and in
    order, and the access their owner gives them; ValueError saying why they cannot be
    aliased.

    The range may be several mappings in /proc/self/maps and still be one: ``protect()`` and
    an ``mprotect`` write watch split a mapping wherever protections differ, and
    ``mremap(old_size=0)`` duplicates from the first piece onwards, through the same file.
    The kernel's protections are no guide to the owner's: a write watch may have taken write
    access from any page, at any moment.  The owner's access is what the source's writable
    export promises — reading and writing every page — plus execution where all of it has it.
    """
    pieces: list[maps.MapsEntry] = []
    cursor = start  # where the next piece must begin: the range has no holes
    for mapping in maps.mappings():
        if mapping.end <= cursor:
            continue
        if mapping.start > cursor or cursor >= end:
            break
        pieces.append(mapping)
        cursor = mapping.end
    if not pieces:
        raise ValueError(f"nothing is mapped at {start:#x}")
    first = pieces[0]
    if not first.shared:
        raise ValueError(
            f"the buffer is private memory ({first.path or 'anonymous'}): private pages belong to one mapping and are "
            "copied on write, so they cannot be shown twice. Put the data in shared memory (mmap.mmap(-1, size), "
            "a memfd, a file mapped with MAP_SHARED) and alias that"
        )
    one_object = all(
        piece.shared and piece.file == first.file and piece.offset - first.offset == piece.start - first.start
        for piece in pieces
    )
    if not one_object or pieces[-1].end < end:
        raise ValueError("the buffer spans several mappings; alias each mapping on its own")
    executable = all(piece.prot & _core.PROT_EXEC for piece in pieces)
    return first.path, _core.PROT_READ | _core.PROT_WRITE | (_core.PROT_EXEC if executable else 0)


def _alias_fd(fd: int, below: int | None, address: int | None) -> Alias:
    info = os.fstat(fd)
    if not stat_module.S_ISREG(info.st_mode):
        raise ValueError("the descriptor is not a regular file, memfd or shared-memory object: it cannot be mapped")
    if info.st_size <= 0:
        raise ValueError("the file is empty: give it a size (os.ftruncate) before aliasing it")
    size = -(-info.st_size // PAGE_SIZE) * PAGE_SIZE
    access = os.O_ACCMODE & fcntl.fcntl(fd, fcntl.F_GETFL)
    prot = _core.PROT_READ | (_core.PROT_WRITE if access == os.O_RDWR else 0)
    view = _placeholder(size, below, address)
    try:
        _core.map_fd_onto(fd, 0, size, prot, view.address)
    except OSError:
        view.close()
        raise
    _adopt(view, prot, _mapped_so_already)
    # A descriptor opened read-only can never give write access (mprotect(2) says EACCES);
    # the view must know it, since a write watch may not ask the kernel before a write does.
    view._limit_protection(prot | _core.PROT_EXEC)
    return view


def _adopt(view: Alias, prot: int, apply: Callable[[int, int, int], None] | None) -> None:
    """The placeholder is now the alias: every page with the owner's access ``prot``, which
    ``apply`` gives them (None: ``mprotect``)."""
    view._change_protection(0, view.size // PAGE_SIZE, prot, apply)


def _mapped_so_already(first: int, count: int, prot: int) -> None:
    """Nothing to ask the kernel: it mapped the alias with the source's access."""
