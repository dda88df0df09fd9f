"""Win32-exact virtual memory and write watches, through ctypes conventions.

The functions take what the C API takes, in the same order, and return what it returns:
addresses are ints (``None`` is NULL), pointer parameters are ``ctypes.byref(...)``, a
ctypes pointer or ``None``; failures return the Win32 failure value and set the calling
thread's ``GetLastError()``.  Everything runs on :mod:`ntshim.memory` and the write-watch
backends (``NTSHIM_WRITEWATCH_BACKEND`` chooses one).  Wrong Python types raise TypeError,
as ctypes does.
"""

from . import constants
from .constants import *
from .lasterror import GetLastError, SetLastError
from .virtual import MEMORY_BASIC_INFORMATION, VirtualAlloc, VirtualFree, VirtualProtect, VirtualQuery
from .writewatch import GetWriteWatch, ResetWriteWatch

__all__ = [  # noqa: PLE0604 - the constants' names come from constants.__all__
    "GetLastError",
    "SetLastError",
    "VirtualAlloc",
    "VirtualFree",
    "VirtualProtect",
    "VirtualQuery",
    "GetWriteWatch",
    "ResetWriteWatch",
    "MEMORY_BASIC_INFORMATION",
    *constants.__all__,
]
