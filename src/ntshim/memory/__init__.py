"""Memory: regions you allocate, and write watches over them or over memory you already have."""

from __future__ import annotations

import mmap
import sys
from typing import Any, TypeVar

from .. import _core, _kernel
from .._arguments import as_int
from ..writewatch import WriteWatch, registry
from . import maps, placement, protection
from .alias import Alias, alias
from .limit import AddressSpaceLimit, limit_address_space
from .region import Region, Reservation

__all__ = [
    "PAGE_SIZE",
    "AddressSpaceLimit",
    "Alias",
    "Region",
    "Reservation",
    "WriteWatch",
    "alias",
    "alloc",
    "limit_address_space",
    "reserve",
    "watch",
]

PAGE_SIZE: int = _kernel.PAGE_SIZE
_R = TypeVar("_R", bound=Region)


def alloc(
    size: int,
    *,
    below: int | None = None,
    zero_bits: int | None = None,
    shared: bool = False,
    watch: bool = False,
    protect: str | int = "rw",
    backend: str | None = None,
) -> Region:
    """Allocate ``size`` bytes of zeroed anonymous memory, rounded up to whole pages.

    ``below``: place it so that its last byte lies below this address (e.g. ``4 << 30``
    for 32-bit pointers); MemoryError when no free range fits there.
    ``zero_bits``: the same bound given as ``NtAllocateVirtualMemory`` gives it (1 → below
    2 GiB, ``0xFFFFFFFF`` → below 4 GiB, ...; see :func:`placement.zero_bits_limit`);
    ValueError for values Windows refuses, or together with ``below``.
    ``shared=True`` maps it shared: fork children see the same pages, and
    :func:`alias` can show them a second time at another address.
    ``protect``: ``"rw"`` (default), ``"r"``, ``"rx"``, ``"rwx"`` or ``"none"``, or the same as
    ``mmap.PROT_*`` bits (``mmap.PROT_READ | mmap.PROT_WRITE``).
    ``watch=True`` tracks writes from the start (the watch is ``region.write_watch``:
    ``region.write_watch.dirty()``, ...); ``backend`` forces a write-watch backend by name (default: the
    ``NTSHIM_WRITEWATCH_BACKEND`` environment variable, else the best available).
    """
    below = placement.bound_of(below, zero_bits, size)
    return _map(Region, size, protection.parse(protect), watch, backend, 0, below=below, shared=shared)


def reserve(
    size: int,
    *,
    address: int | None = None,
    below: int | None = None,
    zero_bits: int | None = None,
    align: int = 0,
    shared: bool = False,
    watch: bool = False,
    backend: str | None = None,
) -> Reservation:
    """Reserve ``size`` bytes of address space (rounded up to whole pages) without
    committing memory: the pages are inaccessible and cost nothing until
    :meth:`Reservation.commit` commits them, in whatever parts the program needs.

    ``address`` places the reservation exactly there (page aligned); FileExistsError when
    anything is mapped in the way (nothing is ever replaced).  ``align`` (bytes, a power of
    two; default a page) aligns the start address, as Windows aligns reservations to
    64 KiB.  ``below`` and ``zero_bits`` as for :func:`alloc` (with ``address``, the range
    must end below the bound).  ``shared``, ``watch`` and ``backend`` as for :func:`alloc`;
    committed pages start clean.
    """
    align = as_int(align, "align")
    if align < 0 or align & (align - 1):
        raise ValueError(f"align must be a power of two (or 0 for a page), got {align}")
    at = placement.check_address(address, align)
    below = placement.bound_of(below, zero_bits, size, address)
    return _map(Reservation, size, 0, watch, backend, align, at, below=below, shared=shared)


def _map(
    kind: type[_R],
    size: object,
    prot: int,
    watch: object,
    backend: str | None,
    align: int,
    address: int = 0,
    below: object = None,
    shared: object = False,
) -> _R:
    """Map a ``kind`` of region: a Reservation starts with every page only reserved."""
    size = as_int(size, "size")
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be a bool, not {type(shared).__name__}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if not isinstance(watch, bool):
        raise TypeError(f"watch must be a bool, not {type(watch).__name__}")
    if backend is not None and not watch:
        raise ValueError("backend= chooses a write-watch backend: it needs watch=True")
    if watch:
        registry.FAMILY.requested(backend)
    rounded = -(-size // PAGE_SIZE) * PAGE_SIZE
    bound = placement.check_below(below, rounded, address)
    region = placement.map_placed(
        lambda at: kind(rounded, prot, address=at, align=align, shared=shared, committed=kind is not Reservation),
        rounded,
        address,
        align,
        bound,
    )
    if watch:
        try:
            region._start_watch(backend)
        except BaseException:
            region.close()
            raise
    return region


def watch(obj: Any, *, backend: str | None = None) -> WriteWatch:
    """Track writes to memory you already have: any writable, contiguous buffer (numpy
    array, ``mmap.mmap`` of a file or of shared memory, ``bytearray``, ctypes array) or a
    :class:`Region`.

    The watch covers every page the buffer touches: when the buffer does not start or end
    on a page boundary, the rest of its first and last page is watched too (a write there
    counts for that page), and offsets count from the start of the first page
    (``WriteWatch.address``).  The watch holds a buffer export, so the memory can neither
    move nor be freed while it lives (``mmap.close()`` raises BufferError); ``close()``
    stops tracking and leaves the memory as it was.

    The ``mprotect`` backend write-protects whole pages, so it refuses a buffer whose first
    or last page holds bytes it does not own (a small heap object shares them with malloc
    and with other objects); a slice of an ``mmap.mmap`` or :class:`Region` is fine, since
    the rest of its pages belong to the same mapping.  Automatic selection passes over it.
    """
    registry.FAMILY.requested(backend)
    if isinstance(obj, Region):
        return obj._start_watch(backend)
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(
            "watch() needs memory with the buffer protocol (numpy array, mmap.mmap, bytearray, "
            f"ctypes array), not {type(obj).__name__}"
        ) from None
    with view:
        if view.readonly:
            raise TypeError(f"watch() needs writable memory; this {type(obj).__name__} buffer is read-only")
        if not view.contiguous:
            raise ValueError("watch() needs contiguous memory; this buffer is strided (copy it or watch its base)")
        if view.nbytes == 0:
            raise ValueError("watch() needs at least one byte of memory; this buffer is empty")
    pin = _core.Pin(obj)
    try:
        start = pin.address - pin.address % PAGE_SIZE
        end = -(-(pin.address + pin.nbytes) // PAGE_SIZE) * PAGE_SIZE

        def protections() -> bytes:  # read by WriteWatch once the range is claimed
            return maps.protections(start, end, PAGE_SIZE)

        shares_pages = (start, end) != (pin.address, pin.address + pin.nbytes) and not _in_whole_mapping(obj)
        return WriteWatch(
            start, end - start, protections, backend, lambda: pin, pin.address - start, shares_pages=shares_pages
        )
    except BaseException:
        pin.release()  # a refused watch holds no export: the caller may close the memory at once
        raise


def _in_whole_mapping(obj: Any) -> bool:
    """Whether ``obj``'s memory lies in a mapping that its exporter owns page by page (an
    ``mmap.mmap`` or a Region), found through the views and numpy arrays over it: then the
    rest of the pages it touches is that mapping's too, not malloc's or another object's."""
    numpy = sys.modules.get("numpy")
    while True:
        if isinstance(obj, (mmap.mmap, _core.Mapping)):
            return True
        if isinstance(obj, memoryview):
            obj = obj.obj
        elif numpy is not None and isinstance(obj, numpy.ndarray) and obj.base is not None:
            obj = obj.base
        else:
            return False
