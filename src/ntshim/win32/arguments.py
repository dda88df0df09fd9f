"""C-style arguments in Python: addresses, and pointers to write results through.

A pointer argument may be ``None`` (NULL), ``ctypes.byref(x)``, a ctypes pointer
(``ctypes.pointer(x)``, ``POINTER(T)``) or the ctypes object itself; an address may be an
int, ``None`` or a ``ctypes.c_void_p``.
"""

from __future__ import annotations

import ctypes
from typing import Any

_CArgObject = type(ctypes.byref(ctypes.c_int()))


def address(value: object, name: str) -> int:
    """An address argument as an int (NULL → 0)."""
    if value is None:
        return 0
    if isinstance(value, ctypes.c_void_p):
        return value.value or 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{name} must be an address (>= 0), got {value}")
        return value
    raise TypeError(f"{name} must be an int address, None or ctypes.c_void_p, not {type(value).__name__}")


def size(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise TypeError(f"{name} must be a non-negative int (SIZE_T), got {value!r}")


def dword(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value & 0xFFFFFFFF
    raise TypeError(f"{name} must be an int (DWORD), not {type(value).__name__}")


def target(pointer: object, name: str) -> Any:
    """The ctypes object a pointer argument points to, or None for NULL."""
    if pointer is None:
        return None
    if isinstance(pointer, _CArgObject):
        return pointer._obj  # type: ignore[attr-defined]
    if isinstance(pointer, ctypes._Pointer):
        return pointer.contents
    if isinstance(pointer, (ctypes._SimpleCData, ctypes.Array)):
        return pointer
    raise TypeError(f"{name} must be ctypes.byref(...), a ctypes pointer or None, not {type(pointer).__name__}")


def read(pointer_target: Any) -> int:
    return int(pointer_target.value)


def write(pointer_target: Any, value: int) -> None:
    pointer_target.value = value


def store_addresses(pointer: object, values: list[int]) -> None:
    """Write ``values`` into a ``PVOID *`` output array (a ctypes array, pointer or byref)."""
    array = target(pointer, "addresses") if not isinstance(pointer, ctypes._Pointer) else pointer
    element = getattr(array, "_type_", None)
    for i, value in enumerate(values):
        if isinstance(element, type) and issubclass(element, ctypes._Pointer):
            array[i] = ctypes.cast(value, element)
        else:
            array[i] = value
