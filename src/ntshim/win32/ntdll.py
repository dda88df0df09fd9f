"""NtAllocateVirtualMemory, and the current-process pseudo handle it takes.

The NT call does what ``VirtualAlloc`` does (both run :func:`virtual.allocate`, so regions
either makes are one bookkeeping) plus what only ntdll offers: ``zero_bits``, which places
the memory below 2 GiB, 4 GiB or another power of two for code that keeps pointers in 32
bits, and the base and size written back through in/out pointers.  It returns an NTSTATUS
and leaves ``GetLastError()`` alone, as ntdll functions do.
"""

from __future__ import annotations

import ctypes
from typing import Any

from . import arguments
from .constants import STATUS_ACCESS_VIOLATION, STATUS_SUCCESS
from .virtual import NtStatusError, allocate

_ULONG_PTR_BITS = (1 << 64) - 1
# The ctypes types a PVOID * or SIZE_T * can point to: 64-bit integers and c_void_p.
_POINTER_SIZED = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ssize_t, ctypes.c_uint64, ctypes.c_int64)


def NtCurrentProcess() -> int:
    """The pseudo handle of the calling process: ``(HANDLE)-1``.  The NT functions here also
    take its unsigned form (``0xFFFFFFFFFFFFFFFF``, what ``ctypes.c_void_p(-1).value`` is)."""
    return -1


def GetCurrentProcess() -> int:
    """The kernel32 name for :func:`NtCurrentProcess`: ``-1``."""
    return -1


def NT_SUCCESS(status: int) -> bool:
    """Whether an NTSTATUS (signed or unsigned form) means success: the severity bit is clear."""
    return not arguments.dword(status, "status") & 0x80000000


def NtAllocateVirtualMemory(
    process: object, base_address: object, zero_bits: int, region_size: object, allocation_type: int, protect: int
) -> int:
    """Reserve, commit or reset pages, as ``VirtualAlloc`` does, optionally below a bound.

    ``process``: the current process (``NtCurrentProcess()``, ``-1``); any other handle is
    STATUS_INVALID_HANDLE.  ``base_address`` (``PVOID *``) and ``region_size``
    (``SIZE_T *``) are in/out: ``ctypes.byref(ctypes.c_void_p(...))`` /
    ``byref(ctypes.c_size_t(...))``, ctypes pointers or the ctypes objects themselves; on
    success they receive the base and the size of what was allocated (the whole 64 KiB
    aligned reservation, or the page-rounded committed range), on failure they are left
    alone.  ``zero_bits`` (ULONG_PTR) bounds where a call without a base address places
    memory: see :func:`ntshim.memory.placement.zero_bits_limit`; invalid values give
    STATUS_INVALID_PARAMETER_3, a valid bound with no room below it STATUS_NO_MEMORY.

    Returns an NTSTATUS as an unsigned 32-bit int (``STATUS_SUCCESS`` is 0).
    """
    process_value = _handle(process)
    base_target = _in_out(base_address, "base_address")
    size_target = _in_out(region_size, "region_size")
    zero_bits = _ulong_ptr(zero_bits, "zero_bits")
    allocation_type = arguments.dword(allocation_type, "allocation_type")
    protect = arguments.dword(protect, "protect")
    if base_target is None or size_target is None:
        return STATUS_ACCESS_VIOLATION  # the kernel cannot read through a NULL pointer
    address = (base_target.value or 0) & _ULONG_PTR_BITS
    size = (size_target.value or 0) & _ULONG_PTR_BITS
    try:
        base, length = allocate(process_value, address, size, allocation_type, protect, zero_bits)
    except NtStatusError as e:
        return e.status
    arguments.write(base_target, base)
    arguments.write(size_target, length)
    return STATUS_SUCCESS


def _handle(value: object) -> int:
    """A HANDLE as its 64-bit value (NULL → 0)."""
    if value is None:
        return 0
    if isinstance(value, ctypes._SimpleCData):
        value = value.value if value.value is not None else 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value & _ULONG_PTR_BITS
    raise TypeError(f"process must be a handle (int, None or ctypes.c_void_p), not {type(value).__name__}")


def _ulong_ptr(value: object, name: str) -> int:
    """A ULONG_PTR: an int, wrapped to 64 bits as a C cast would (so -1 is all ones)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value & _ULONG_PTR_BITS
    raise TypeError(f"{name} must be an int (ULONG_PTR), not {type(value).__name__}")


def _in_out(pointer: object, name: str) -> Any:
    """The ctypes object an in/out ``PVOID *`` / ``SIZE_T *`` points to, or None for NULL."""
    target = arguments.target(pointer, name)
    if target is not None and not isinstance(target, _POINTER_SIZED):
        raise TypeError(
            f"{name} must point to a ctypes.c_void_p or ctypes.c_size_t (a 64-bit integer), not {type(target).__name__}"
        )
    return target
