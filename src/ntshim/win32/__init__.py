"""Win32-exact virtual memory, write watches and synchronization objects, through ctypes
conventions.

The functions take what the C API takes, in the same order, and return what it returns:
addresses and handles are ints (``None`` is NULL), pointer parameters are
``ctypes.byref(...)``, a ctypes pointer or ``None``; failures return the Win32 failure value
and set the calling thread's ``GetLastError()``.  Everything runs on :mod:`ntshim.memory`,
the write-watch backends (``NTSHIM_WRITEWATCH_BACKEND`` chooses one) and :mod:`ntshim.sync`
(``NTSHIM_SYNC_BACKEND`` chooses one).  Wrong Python types raise TypeError, as ctypes does.
The ntdll functions (``NtAllocateVirtualMemory``) return an NTSTATUS instead and leave the
last error alone, as on Windows.
"""

from . import constants
from .constants import *
from .lasterror import GetLastError, SetLastError
from .ntdll import NT_SUCCESS, GetCurrentProcess, NtAllocateVirtualMemory, NtCurrentProcess
from .sync import (
    CloseHandle,
    CreateEventW,
    CreateMutexW,
    CreateSemaphoreW,
    OpenEventW,
    OpenMutexW,
    OpenSemaphoreW,
    PulseEvent,
    ReleaseMutex,
    ReleaseSemaphore,
    ResetEvent,
    SetEvent,
    WaitForMultipleObjects,
    WaitForSingleObject,
)
from .virtual import MEMORY_BASIC_INFORMATION, VirtualAlloc, VirtualFree, VirtualProtect, VirtualQuery
from .writewatch import GetWriteWatch, ResetWriteWatch

__all__ = [  # noqa: PLE0604 - the constants' names come from constants.__all__
    "GetLastError",
    "SetLastError",
    "VirtualAlloc",
    "VirtualFree",
    "VirtualProtect",
    "VirtualQuery",
    "NtAllocateVirtualMemory",
    "NtCurrentProcess",
    "GetCurrentProcess",
    "NT_SUCCESS",
    "GetWriteWatch",
    "ResetWriteWatch",
    "MEMORY_BASIC_INFORMATION",
    "CreateEventW",
    "CreateMutexW",
    "CreateSemaphoreW",
    "OpenEventW",
    "OpenMutexW",
    "OpenSemaphoreW",
    "SetEvent",
    "ResetEvent",
    "PulseEvent",
    "ReleaseMutex",
    "ReleaseSemaphore",
    "WaitForSingleObject",
    "WaitForMultipleObjects",
    "CloseHandle",
    *constants.__all__,
]
