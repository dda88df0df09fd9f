"""uffd-sync: classic userfaultfd write-protection with a fault-handling thread (Linux 5.7+).

A write to a protected page stops the writer and queues a message; our thread (C, no
GIL) marks the page dirty and lifts the protection, which wakes the writer.  This is
the mode capture tools use on kernels before 6.7.  Regular-file mappings cannot be
write-protected this way (anonymous, shmem and hugetlbfs only).
"""

from __future__ import annotations

import errno

from .. import _core, _kernel
from ..errors import BackendUnavailable
from .backend import ALREADY_REGISTERED, Availability, Backend, Protections, Tracker

_WANTED = (
    _core.UFFD_FEATURE_PAGEFAULT_FLAG_WP | _core.UFFD_FEATURE_WP_UNPOPULATED | _core.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
)

KERNEL_WRITE_NOTE = (
    "writes the kernel makes into watched memory (os.readv, readinto, recv_into) fail with EFAULT "
    "under this backend; do such I/O inside WriteWatch.writing()"
)


class UffdSync(Backend):
    name = "uffd-sync"
    summary = "userfaultfd synchronous write-protect + fault thread (Linux 5.7+)"
    survives_fork = False

    @classmethod
    def _probe(cls) -> Availability:
        uffd = _kernel.userfaultfd()
        reason = uffd.lacking(_core.UFFD_FEATURE_PAGEFAULT_FLAG_WP, "Linux 5.7+")
        if reason:
            return Availability(cls.name, False, reason)
        notes = []
        if not uffd.kernel_faults:
            notes.append(
                "userfaultfd is limited to user-mode faults here (no CAP_SYS_PTRACE and "
                "vm.unprivileged_userfaultfd=0): " + KERNEL_WRITE_NOTE
            )
        if not uffd.offers(_core.UFFD_FEATURE_WP_UNPOPULATED):
            notes.append("no UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4+): watched pages are mapped up front")
        if not uffd.offers(_core.UFFD_FEATURE_WP_HUGETLBFS_SHMEM):
            notes.append("no UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux 6.1+): anonymous private memory only")
        return Availability(cls.name, True, notes=tuple(notes))

    @classmethod
    def track(cls, address: int, size: int, prots: Protections) -> Tracker:
        uffd = _kernel.userfaultfd()
        try:
            return _core.uffd_sync_tracker(
                address,
                size,
                prots,
                user_mode_only=not uffd.kernel_faults,
                features=_WANTED & uffd.features,
                populate=not uffd.offers(_core.UFFD_FEATURE_WP_UNPOPULATED),
            )
        except OSError as e:
            if e.filename == "UFFDIO_REGISTER" and e.errno in _REFUSALS:
                raise BackendUnavailable(cls.name, _REFUSALS[e.errno]) from e
            raise

    @classmethod
    def shared_page_hazard(cls) -> str:
        if _kernel.userfaultfd().kernel_faults:
            return ""
        return "limited to user-mode faults here, it makes the kernel's writes there fail with EFAULT"


_REFUSALS = {
    errno.EINVAL: "userfaultfd write-protection covers anonymous, shmem (memfd, /dev/shm, shared anonymous) "
    "and hugetlbfs mappings only; this mapping is file-backed or special. "
    "uffd-async, mprotect and shadow can watch it",
    errno.EPERM: "userfaultfd refuses memory that can never be written (a shared mapping of a file opened "
    "read-only, or a read-only alias of one); mprotect and shadow can watch it",
    errno.EBUSY: ALREADY_REGISTERED,
}
