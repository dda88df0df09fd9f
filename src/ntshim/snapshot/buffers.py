"""Which buffers a checkpoint takes, how it describes them (:class:`BufferSpec`), and the
images a load returns.

numpy is imported only when a numpy array is among the buffers, or a checkpoint holds one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .format import BufferSpec

_KINDS = "numpy array, mmap.mmap, ntshim Region, ctypes array or bytearray"


@dataclass
class Buffer:
    """A buffer the user named: ``obj`` as given, ``watchable`` the object to watch (numpy
    arrays as bytes: numpy cannot export every dtype through the buffer protocol),
    ``view`` a writable byte view of its memory."""

    spec: BufferSpec
    obj: Any
    watchable: Any
    view: memoryview


def describe(buffers: object, argument: str = "buffers") -> list[Buffer]:
    """Check ``buffers`` (a mapping of names to writable, contiguous, non-empty buffers) and
    describe each; TypeError or ValueError naming the buffer for anything else."""
    if not isinstance(buffers, Mapping):
        raise TypeError(f"{argument} must be a mapping of names to buffers ({_KINDS}), not {type(buffers).__name__}")
    if not buffers:
        raise ValueError(f"{argument} is empty: name at least one buffer")
    described = []
    try:
        for name, obj in buffers.items():
            described.append(_describe_one(name, obj, argument))
    except BaseException:
        for buffer in described:
            buffer.view.release()
        raise
    return described


def _describe_one(name: object, obj: Any, argument: str) -> Buffer:
    if not isinstance(name, str):
        raise TypeError(f"{argument}: names must be str, not {type(name).__name__} ({name!r})")
    if not name:
        raise ValueError(f"{argument}: a name is empty")
    what = f"{argument}[{name!r}]"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(
                f"{what} is a numpy array of dtype {obj.dtype}: it holds pointers to Python objects, not data"
            )
        if not obj.flags.c_contiguous:
            raise ValueError(f"{what} is not C-contiguous (strided or Fortran order): checkpoint its base, or a copy")
        if not obj.flags.writeable:
            raise TypeError(f"{what} is read-only: a checkpoint restores into writable memory")
        if obj.size == 0:
            raise ValueError(f"{what} is empty")
        from numpy.lib import format as npy

        spec = BufferSpec(name, obj.nbytes, _freeze(npy.dtype_to_descr(obj.dtype)), tuple(obj.shape))
        as_bytes: Any = obj.reshape(-1).view(numpy.uint8)  # numpy cannot export every dtype (datetime64)
        return Buffer(spec, obj, as_bytes, memoryview(as_bytes))
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{what} must be a buffer ({_KINDS}), not {type(obj).__name__}") from None
    if view.readonly:
        view.release()
        raise TypeError(f"{what} is read-only ({type(obj).__name__}): a checkpoint restores into writable memory")
    if not view.c_contiguous:
        view.release()
        raise ValueError(f"{what} is not contiguous: checkpoint the memory it views, or a copy")
    if view.nbytes == 0:
        view.release()
        raise ValueError(f"{what} is empty")
    return Buffer(BufferSpec(name, view.nbytes), obj, obj, view.cast("B"))


def _freeze(value: Any) -> Any:
    """numpy's dtype description with tuples for lists (specs compare equal once read back)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def new_image(spec: BufferSpec) -> tuple[Any, memoryview]:
    """A fresh object to load ``spec`` into (a numpy array of its dtype and shape, else a
    bytearray) and a writable byte view of it."""
    if spec.shape is None:
        image = bytearray(spec.size)
        return image, memoryview(image)
    import numpy
    from numpy.lib import format as npy

    dtype = npy.descr_to_dtype(_thaw(spec.dtype))
    array: Any = numpy.empty(spec.shape, dtype)
    if array.nbytes != spec.size:
        raise ValueError(
            f"{spec.name}: dtype {dtype} and shape {spec.shape} make {array.nbytes} bytes, not {spec.size}"
        )
    return array, memoryview(array.reshape(-1).view(numpy.uint8))


def _thaw(descr: Any) -> Any:
    """The frozen (or JSON) description as numpy wants it: a string, or a list of field
    tuples ``(name, description[, shape])``, a name being a string or a ``(title, name)``."""
    if isinstance(descr, str):
        return descr
    fields = []
    for name, field, *shape in descr:
        fields.append((tuple(name) if isinstance(name, (list, tuple)) else name, _thaw(field), *map(tuple, shape)))
    return fields
