"""DirtyPages: the answer to "which pages were written", compact however large it is."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

from .. import _core


class DirtyPages:
    """Written pages, ascending, stored as coalesced runs.

    ``len()`` counts pages; ``offsets`` and ``addresses`` are ``array('Q')`` of page starts
    (byte offsets from the watched memory's start, and absolute addresses); ``ranges()``
    gives the runs as half-open ``(start, end)`` byte offsets.  Iterating yields offsets.

    The offsets are exported without a copy, read-only: ``numpy.asarray(dirty)`` is a uint64
    view of ``offsets`` (``__array__``), and on Python 3.12+ ``memoryview(dirty)`` is one too
    (the buffer protocol, PEP 688).  Before 3.12 a Python class cannot export a buffer: use
    ``memoryview(dirty.offsets)``.
    """

    __slots__ = ("_address", "_count", "_granularity", "_offsets", "_pairs", "_runs")

    def __init__(self, runs: bytes, address: int, granularity: int) -> None:
        """``runs``: native uint64 ``(start, end)`` byte-offset pairs, ascending and apart,
        whole multiples of ``granularity`` (bytes per page, positive); ``address``: where
        offset 0 lies (an int in [0, 2**64), with every run's end still below 2**64 once
        added).  Anything else raises ValueError (TypeError for wrong types)."""
        if runs.__class__ is not bytes:  # held as given: it must not change under the checked count
            runs = bytes(memoryview(runs))
        # Checked in C, with overflow-checked arithmetic; it counts the pages as it goes.
        self._count = _core.count_runs(runs, address, granularity)
        # Everything else is derived on demand: a caller that only looks at the ranges, or
        # only resets, pays for nothing else.
        self._runs = runs
        self._address = address
        self._granularity = granularity
        self._pairs: array[int] | None = None
        self._offsets: array[int] | None = None

    @property
    def runs(self) -> bytes:
        """The runs as given: native uint64 ``(start, end)`` byte-offset pairs, what the
        constructor takes back (``DirtyPages(d.runs, d.address, d.granularity) == d``)."""
        return self._runs

    @property
    def address(self) -> int:
        """Address that offsets count from (the watched memory's first page)."""
        return self._address

    @property
    def granularity(self) -> int:
        """Bytes per page."""
        return self._granularity

    @property
    def offsets(self) -> array[int]:
        """Byte offset of every written page, ascending (``array('Q')``)."""
        if self._offsets is None:
            self._offsets = array("Q", _core.expand_runs(self._runs, 0, self._granularity))
        return self._offsets

    @property
    def addresses(self) -> array[int]:
        """Address of every written page, ascending (``array('Q')``)."""
        return array("Q", _core.expand_runs(self._runs, self._address, self._granularity))

    def ranges(self) -> list[tuple[int, int]]:
        """Runs of consecutive written pages as half-open ``(start, end)`` byte offsets."""
        runs = self._run_array()
        return list(zip(runs[0::2], runs[1::2], strict=True))

    def _run_array(self) -> array[int]:
        if self._pairs is None:
            self._pairs = array("Q", self._runs)
        return self._pairs

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        """The offsets as a numpy uint64 array viewing :attr:`offsets` (read-only), or a copy
        when ``copy`` is true or ``dtype`` differs; ``copy=False`` with another dtype raises
        ValueError, as numpy asks.  (numpy 1.x passes no ``copy``.)"""
        import numpy  # ntshim does not depend on numpy: only numpy calls this

        view = numpy.frombuffer(self.offsets, dtype=numpy.uint64)
        view.flags.writeable = False  # an answer, not a buffer: writing would change offsets
        if dtype is not None and numpy.dtype(dtype) != view.dtype:
            if copy is False:
                raise ValueError(f"DirtyPages offsets are uint64: they cannot be {numpy.dtype(dtype)} without a copy")
            return view.astype(dtype)
        return view.copy() if copy else view

    def __buffer__(self, flags: int) -> memoryview:
        """The offsets' memory, read-only, for ``memoryview(dirty)`` (Python 3.12+; a request
        for a writable buffer fails there with BufferError)."""
        return memoryview(self.offsets).toreadonly()

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        return iter(self.offsets)

    def __bool__(self) -> bool:
        return len(self._runs) > 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirtyPages):
            return NotImplemented
        return (self._runs, self._address, self._granularity) == (other._runs, other._address, other._granularity)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{s:#x}-{e:#x}" for s, e in self.ranges()[:4])
        more = ", ..." if len(self._runs) > 64 else ""
        return f"<DirtyPages {len(self)} page(s) in {len(self._runs) // 16} run(s): [{shown}{more}]>"
