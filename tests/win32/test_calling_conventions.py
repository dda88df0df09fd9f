"""How Win32 functions are called from Python: the last error per thread, and the forms ctypes
arguments take (pointers, byref, arrays of typed pointers, c_void_p addresses)."""

from __future__ import annotations

import ctypes
import threading

import pytest
from win32_calls import P, write_byte

from ntshim import win32
from ntshim.win32 import (
    ERROR_INVALID_PARAMETER,
    MEM_COMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    MEM_WRITE_WATCH,
    PAGE_READONLY,
    PAGE_READWRITE,
)


def test_last_error_is_per_thread() -> None:
    win32.SetLastError(11)
    seen = []

    def other() -> None:
        seen.append(win32.GetLastError())
        win32.SetLastError(22)
        seen.append(win32.GetLastError())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [0, 22] and win32.GetLastError() == 11
    assert win32.VirtualFree(None, 0, MEM_RELEASE) is False
    assert win32.GetLastError() == ERROR_INVALID_PARAMETER


def test_the_forms_ctypes_arguments_take(watch_backend: str) -> None:
    base = win32.VirtualAlloc(ctypes.c_void_p(None), 4 * P, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    write_byte(base + P)
    count64 = ctypes.c_uint64(16)
    granularity = ctypes.c_uint32()
    results = (ctypes.c_void_p * 16)()
    # A ctypes pointer, the object itself, a POINTER made by cast, a c_void_p base.
    as_pointer = ctypes.cast(results, ctypes.POINTER(ctypes.c_void_p))
    assert win32.GetWriteWatch(0, ctypes.c_void_p(base), 4 * P, as_pointer, ctypes.pointer(count64), granularity) == 0
    assert (count64.value, granularity.value, results[0]) == (1, P, base + P)
    # byref of the array, and an array of typed pointers.
    typed = (ctypes.POINTER(ctypes.c_char) * 4)()
    count64.value = 4
    assert win32.GetWriteWatch(0, base, 4 * P, ctypes.byref(typed), ctypes.byref(count64), ctypes.byref(granularity)) == 0
    assert ctypes.cast(typed[0], ctypes.c_void_p).value == base + P
    for wrong in ("0", 1.5, [1]):
        with pytest.raises(TypeError):
            win32.VirtualAlloc(wrong, P, MEM_COMMIT, PAGE_READWRITE)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        win32.VirtualProtect(base, P, PAGE_READONLY, 5)
    assert win32.VirtualFree(base, 0, MEM_RELEASE)


def test_an_address_array_that_cannot_hold_the_answer_is_refused_untouched(watch_backend: str) -> None:
    base = win32.VirtualAlloc(None, 4 * P, MEM_RESERVE | MEM_COMMIT | MEM_WRITE_WATCH, PAGE_READWRITE)
    write_byte(base)
    write_byte(base + 2 * P)
    count = ctypes.c_size_t(4)
    granularity = ctypes.c_ulong()
    short = (ctypes.c_void_p * 1)(0xDEADBEEF)
    with pytest.raises(IndexError):  # *count promised room for 4; Python will not write past 1
        win32.GetWriteWatch(0, base, 4 * P, short, ctypes.byref(count), ctypes.byref(granularity))
    assert short[0] == 0xDEADBEEF
    narrow = (ctypes.c_uint32 * 4)()
    with pytest.raises(TypeError, match="pointer-sized"):
        win32.GetWriteWatch(0, base, 4 * P, narrow, ctypes.byref(count), ctypes.byref(granularity))
    null = ctypes.POINTER(ctypes.c_void_p)()
    with pytest.raises(ValueError, match="NULL pointer"):
        win32.GetWriteWatch(0, base, 4 * P, null, ctypes.byref(count), ctypes.byref(granularity))
    assert win32.VirtualFree(base, 0, MEM_RELEASE)
