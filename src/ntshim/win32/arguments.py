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


def store_addresses(pointer: object, addresses: bytes) -> None:
    """Copy ``addresses`` (native uint64 values) into a ``PVOID *`` output array (a ctypes
    array or pointer of pointer-sized elements, or byref of such an array) in one copy.  An
    array too short for them raises IndexError before anything is written; a pointer, as in
    C, is trusted to point at room enough."""
    array = target(pointer, "addresses") if not isinstance(pointer, ctypes._Pointer) else pointer
    if not isinstance(array, (ctypes.Array, ctypes._Pointer)):
        raise TypeError(f"addresses must be a ctypes array or pointer of pointers, not {type(array).__name__}")
    if ctypes.sizeof(array._type_) != ctypes.sizeof(ctypes.c_void_p):
        raise TypeError(f"addresses must hold pointer-sized elements, not {array._type_.__name__}")
    count = len(addresses) // ctypes.sizeof(ctypes.c_void_p)
    if count == 0:
        return
    if isinstance(array, ctypes.Array):
        if count > len(array):
            raise IndexError(f"addresses holds {len(array)} entries, the answer has {count}")
        destination = ctypes.addressof(array)
    else:
        destination = ctypes.cast(array, ctypes.c_void_p).value or 0
        if not destination:
            raise ValueError("NULL pointer access")
    ctypes.memmove(destination, addresses, len(addresses))
