"""mprotect: clean pages lose write access; a SIGSEGV handler (C) marks the first write.

Works on every Linux kernel and any mapping, at the price of a signal per first write.
Faults that are not ours go on to the handler installed before (Python's faulthandler,
a debugger's), so real crashes still crash as they would have.  Writes the kernel makes
into protected pages (os.readv, readinto, recv_into) fail with EFAULT: do such I/O inside
``WriteWatch.writing()``, which opens the pages for the duration and counts them written.
"""

from __future__ import annotations

from .. import _core
from .backend import Availability, Backend, Protections, Tracker
from .uffd_sync import KERNEL_WRITE_NOTE


class Mprotect(Backend):
    name = "mprotect"
    summary = "mprotect write-protection + SIGSEGV handler (any kernel)"
    survives_fork = True

    @classmethod
    def _probe(cls) -> Availability:
        if not _core.MPROTECT_SUPPORTED:
            return Availability(cls.name, False, "the fault handler decodes write faults on x86-64 only")
        return Availability(cls.name, True, notes=(KERNEL_WRITE_NOTE,))

    @classmethod
    def track(cls, address: int, size: int, prots: Protections) -> Tracker:
        return _core.mprotect_tracker(address, size, prots)

    @classmethod
    def shared_page_hazard(cls) -> str:
        return (
            "a write there made with every signal blocked (glibc frees an exiting thread's TLS that way) "
            "cannot reach the fault handler and kills the process, and the kernel's writes there fail with EFAULT"
        )
