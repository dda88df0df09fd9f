"""Bad arguments raise TypeError / ValueError naming the argument or buffer, and leave nothing
behind: no lock held, no memory watched."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ntshim
from ntshim.snapshot import Checkpointer, generations, load, restore


@pytest.mark.parametrize(
    ("buffers", "error", "message"),
    [
        ([bytearray(10)], TypeError, "buffers must be a mapping"),
        ({}, ValueError, "buffers is empty"),
        ({1: bytearray(10)}, TypeError, "names must be str"),
        ({"": bytearray(10)}, ValueError, "a name is empty"),
        ({"x": b"read only"}, TypeError, r"buffers\['x'\] is read-only"),
        ({"x": 42}, TypeError, r"buffers\['x'\] must be a buffer .* not int"),
        ({"x": np.array([object()] * 4)}, TypeError, r"buffers\['x'\] is a numpy array of dtype object"),
        ({"x": np.zeros((10, 10))[:, ::2]}, ValueError, r"buffers\['x'\] is not C-contiguous"),
        ({"x": np.zeros((10, 10), order="F")}, ValueError, "not C-contiguous"),
        ({"x": np.zeros(0)}, ValueError, r"buffers\['x'\] is empty"),
        ({"x": bytearray()}, ValueError, r"buffers\['x'\] is empty"),
        ({"x": memoryview(bytearray(100))[::2]}, ValueError, r"buffers\['x'\] is not contiguous"),
    ],
)
def test_bad_buffers(tmp_path: Path, buffers: Any, error: type[Exception], message: str) -> None:
    good = bytearray(300_000)
    if isinstance(buffers, dict) and buffers:
        buffers = {"good": good, **buffers}  # the good one must be left unwatched
    with pytest.raises(error, match=message):
        Checkpointer(tmp_path, buffers)
    with Checkpointer(tmp_path, {"good": good}) as checkpoint:  # lock free, memory not watched
        checkpoint.save()


def test_read_only_numpy_array(tmp_path: Path) -> None:
    array = np.zeros(100)
    array.flags.writeable = False
    with pytest.raises(TypeError, match=r"buffers\['a'\] is read-only"):
        Checkpointer(tmp_path, {"a": array})


def test_the_same_memory_twice(tmp_path: Path) -> None:
    memory = mmap.mmap(-1, 8192)
    with pytest.raises(ValueError, match=r"buffers\['second'\]: .*already watched"):
        Checkpointer(tmp_path, {"first": memory, "second": memoryview(memory)[4096:]})
    with ntshim.watch(memory):  # nothing left watching it
        pass


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        Checkpointer(42, {"a": bytearray(1)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        Checkpointer(tmp_path, {"a": bytearray(1)}, backend="no-such-backend")
    with pytest.raises(TypeError, match="backend"):
        Checkpointer(tmp_path, {"a": bytearray(1)}, backend=3)  # type: ignore[arg-type]
    with Checkpointer(tmp_path, {"a": bytearray(1)}) as checkpoint:
        checkpoint.save()
        with pytest.raises(ValueError, match="keep must be at least 1"):
            checkpoint.compact(keep=0)
        with pytest.raises(TypeError, match="keep"):
            checkpoint.compact(keep="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"generation 5 is not in .*: it has \[1\]"):
        load(tmp_path, 5)
    with pytest.raises(TypeError, match="generation"):
        load(tmp_path, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path"):
        load(None)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        generations(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert generations(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError, match="no generation"):
        load(tmp_path / "empty")
    with pytest.raises(TypeError, match=r"buffers\['a'\] is read-only"):
        restore(tmp_path, {"a": b"x"})
