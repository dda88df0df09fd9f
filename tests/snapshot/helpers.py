"""Shared helpers of the snapshot tests."""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from ntshim.memory import PAGE_SIZE as PS


def page_aligned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A writable numpy array at the start of a mapping of its own: every backend watches it
    (a heap array shares its edge pages with malloc, which mprotect refuses)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    memory = mmap.mmap(-1, -(-nbytes // PS) * PS)
    return np.frombuffer(memory, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def directory_bytes(path: str | os.PathLike[str]) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
