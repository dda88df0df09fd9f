"""DirtyPages exports its offsets without a copy: numpy's ``__array__`` and, on Python
3.12+, the buffer protocol (PEP 688)."""

from __future__ import annotations

import ctypes
import sys
from array import array

import numpy as np
import pytest

import ntshim
from ntshim.memory import PAGE_SIZE as PS


def _dirty(*bounds: int) -> ntshim.DirtyPages:
    return ntshim.DirtyPages(array("Q", bounds).tobytes(), 0x10000, PS)


def _address(a: array[int]) -> int:
    return a.buffer_info()[0]


def test_numpy_views_the_offsets_without_a_copy() -> None:
    dirty = _dirty(0, PS, 3 * PS, 5 * PS)
    view = np.asarray(dirty)
    assert view.dtype == np.uint64
    assert view.tolist() == [0, 3 * PS, 4 * PS] == dirty.offsets.tolist()
    assert view.ctypes.data == _address(dirty.offsets)  # the same memory, not an equal copy
    assert np.shares_memory(view, np.frombuffer(dirty.offsets, dtype=np.uint64))
    assert np.asarray(dirty, copy=False).ctypes.data == _address(dirty.offsets)
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1  # an answer, not a buffer: writing would change dirty.offsets


def test_numpy_copies_only_when_asked_or_converting() -> None:
    dirty = _dirty(PS, 3 * PS)
    copied = np.array(dirty)  # numpy 2: copy=True
    assert copied.tolist() == [PS, 2 * PS] and copied.ctypes.data != _address(dirty.offsets)
    copied[0] = 7  # a copy is the caller's own
    assert dirty.offsets.tolist() == [PS, 2 * PS]
    converted = np.asarray(dirty, dtype=np.int64)
    assert converted.dtype == np.int64 and converted.tolist() == [PS, 2 * PS]
    assert np.asarray(dirty, dtype=np.uint64).ctypes.data == _address(dirty.offsets)  # same dtype: no copy
    with pytest.raises(ValueError, match="without a copy"):
        np.asarray(dirty, dtype=np.int64, copy=False)


def test_an_empty_answer_is_an_empty_uint64_array() -> None:
    empty = np.asarray(ntshim.DirtyPages(b"", 0, PS))
    assert empty.dtype == np.uint64 and empty.shape == (0,)


def test_numpy_views_a_real_watch_answer() -> None:
    with ntshim.alloc(64 * PS, watch=True) as region:
        with memoryview(region) as memory:
            for page in (1, 2, 40):
                memory[page * PS] = 1
        dirty = region.write_watch.dirty(reset=True)
        assert (np.asarray(dirty) // PS).tolist() == [1, 2, 40]


def test_memoryview_views_the_offsets_without_a_copy() -> None:
    """From Python 3.12 (PEP 688) DirtyPages itself exports the buffer; before, a Python class
    cannot, and ``dirty.offsets`` (an ``array('Q')``) is the buffer to view."""
    dirty = _dirty(0, PS, 3 * PS, 5 * PS)
    if sys.version_info < (3, 12):
        with pytest.raises(TypeError):
            memoryview(dirty)
        with memoryview(dirty.offsets) as view:
            assert view.format == "Q" and view.tolist() == [0, 3 * PS, 4 * PS]
        return
    with memoryview(dirty) as view:
        assert view.format == "Q" and view.itemsize == 8 and view.readonly
        assert view.tolist() == [0, 3 * PS, 4 * PS]
        assert np.frombuffer(view, dtype=np.uint64).ctypes.data == _address(dirty.offsets)
    with memoryview(ntshim.DirtyPages(b"", 0, PS)) as view:
        assert view.tolist() == []
    with pytest.raises(TypeError, match="not writable"):
        (ctypes.c_char * 8).from_buffer(dirty)


def test_the_runs_rebuild_an_equal_answer() -> None:
    dirty = _dirty(0, PS, 3 * PS, 5 * PS)
    assert dirty.runs == array("Q", [0, PS, 3 * PS, 5 * PS]).tobytes()
    assert ntshim.DirtyPages(dirty.runs, dirty.address, dirty.granularity) == dirty
