"""ntshim: Windows NT memory and synchronization primitives for Python on Linux.

Write watches (``GetWriteWatch``: which pages were written since I last looked) on the
fastest mechanism the running kernel offers, with honest fallbacks::

    import ntshim
    region = ntshim.alloc(1 << 20, watch=True)
    memoryview(region)[8192] = 1
    region.write_watch.dirty(reset=True).offsets     # array('Q', [8192])

NT synchronization objects (events, semaphores, mutexes, wait-any / wait-all across
processes, abandoned mutexes) are in :mod:`ntshim.sync`; the Win32 API itself in
:mod:`ntshim.win32`.  See ``ntshim info`` for what this machine supports; ``ntshim.refresh()``
probes the kernel and every backend again (after changing credentials or a sysctl).
"""

from __future__ import annotations

from ._backends import refresh
from .errors import BackendUnavailable
from .memory import Region, Reservation, alloc, reserve, watch
from .writewatch import DirtyPages, WriteWatch, backends

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "DirtyPages",
    "Region",
    "Reservation",
    "WriteWatch",
    "__version__",
    "alloc",
    "backends",
    "refresh",
    "reserve",
    "watch",
]
