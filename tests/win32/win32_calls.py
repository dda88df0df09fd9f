"""C-style Win32 calls made readable, for the Win32 tests."""

from __future__ import annotations

import ctypes
import os

from ntshim import win32
from ntshim.memory import PAGE_SIZE

P = PAGE_SIZE


#: Generous bound for "this happens now" waits on a shared, noisy 2-core machine.
SOON_MS = 5000


def unique(name: str) -> str:
    """An object name of this test process's own."""
    return f"ntshim-test-{os.getpid()}-{name}"


def fails(result: object, error: int) -> bool:
    """The Win32 call failed, with ``error`` as the last error."""
    return not result and win32.GetLastError() == error


def write_byte(address: int) -> None:
    """Store a byte that differs from the one there (the shadow backend sees only changes)."""
    cell = ctypes.c_ubyte.from_address(address)
    cell.value = (cell.value + 1) % 256


class WatchResult:
    def __init__(self, ret: int, count: int, addresses: list[int], granularity: int, last_error: int) -> None:
        self.ret, self.count, self.addresses, self.granularity, self.last_error = (
            ret,
            count,
            addresses,
            granularity,
            last_error,
        )


def get_write_watch(flags: int, base: int | None, size: int, count: int = 64, buffer_size: int = 2048) -> WatchResult:
    """GetWriteWatch with a results array of ``buffer_size`` entries preset to 0xdeadbeef."""
    results = (ctypes.c_void_p * buffer_size)(*([0xDEADBEEF] * buffer_size))
    n = ctypes.c_size_t(count)
    granularity = ctypes.c_ulong(0)
    win32.SetLastError(0xDEADBEEF)
    ret = win32.GetWriteWatch(flags, base, size, results, ctypes.byref(n), ctypes.byref(granularity))
    returned = [results[i] for i in range(min(n.value, buffer_size))] if ret == 0 else []
    # Entries beyond what was returned must be untouched.
    untouched = all(results[i] == 0xDEADBEEF for i in range(len(returned), buffer_size))
    assert untouched, "GetWriteWatch wrote past the entries it returned"
    return WatchResult(ret, n.value, returned, granularity.value, win32.GetLastError())


def offsets(result: WatchResult, base: int) -> list[int]:
    """The pages a GetWriteWatch answer returned, as byte offsets from ``base``."""
    return [a - base for a in result.addresses]


def query(address: int) -> win32.MEMORY_BASIC_INFORMATION:
    info = win32.VirtualQuery(address)
    assert info is not None, f"VirtualQuery({address:#x}) failed: {win32.GetLastError()}"
    return info


def protect(address: int, size: int, new: int) -> int:
    """VirtualProtect that must succeed; returns the old protection."""
    old = ctypes.c_ulong(0xDEADBEEF)
    assert win32.VirtualProtect(address, size, new, ctypes.byref(old)), win32.GetLastError()
    return old.value
