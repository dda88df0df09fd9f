"""What the running kernel offers, probed once per process, with reasons a user can act on.

Backends ask here instead of probing on their own, so that ``ntshim info`` and the
backends always agree.  Results are kept per process id, so a forked child probes again
by itself; ``ntshim.refresh()`` forgets them (after changing credentials, for instance).
"""

from __future__ import annotations

import errno
import functools
import os
import platform
from dataclasses import dataclass

from . import _core

PAGE_SIZE: int = _core.PAGE_SIZE

#: This process's id, kept current across fork() without a system call per read.
pid: int = os.getpid()


def _after_fork_in_child() -> None:
    global pid
    pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)

FEATURE_NAMES = {
    _core.UFFD_FEATURE_PAGEFAULT_FLAG_WP: "PAGEFAULT_FLAG_WP",
    _core.UFFD_FEATURE_WP_HUGETLBFS_SHMEM: "WP_HUGETLBFS_SHMEM",
    _core.UFFD_FEATURE_WP_UNPOPULATED: "WP_UNPOPULATED",
    _core.UFFD_FEATURE_WP_ASYNC: "WP_ASYNC",
}


@dataclass(frozen=True)
class Userfaultfd:
    """Whether this process can use userfaultfd, and how.

    ``kernel_faults``: the fd may resolve faults the kernel takes while copying into user
    memory (read(2) into a protected page); without privilege only user-mode faults can be
    handled (``UFFD_USER_MODE_ONLY``).  ``features``: the UFFD_FEATURE_* bits the kernel offers.
    """

    usable: bool
    reason: str
    kernel_faults: bool = False
    features: int = 0

    def offers(self, feature: int) -> bool:
        return bool(self.features & feature)

    def feature_names(self) -> list[str]:
        return [name for bit, name in FEATURE_NAMES.items() if self.features & bit]

    def lacking(self, features: int, kernel: str) -> str:
        """Why this process cannot use userfaultfd with ``features`` (which ``kernel``
        versions offer); "" when it can."""
        if not self.usable:
            return self.reason
        missing = [f"UFFD_FEATURE_{name}" for bit, name in FEATURE_NAMES.items() if features & bit & ~self.features]
        if missing:
            return f"userfaultfd: this kernel does not offer {' and '.join(missing)} ({kernel})"
        return ""


def release() -> str:
    """The kernel release string, e.g. ``6.18.44``."""
    return platform.release()


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


@functools.cache
def _userfaultfd(pid: int) -> Userfaultfd:
    failures: dict[bool, OSError] = {}
    for user_mode_only in (False, True):  # full mode first: it also handles kernel-mode faults
        try:
            fd = _core.uffd_open(user_mode_only)
        except OSError as e:
            failures[user_mode_only] = e
            continue
        try:
            features, _ioctls = _core.uffd_api(fd, 0)
        except OSError as e:
            return Userfaultfd(False, f"userfaultfd: UFFDIO_API failed: {_errno_name(e)}: {e.strerror}")
        finally:
            os.close(fd)
        return Userfaultfd(True, "", kernel_faults=not user_mode_only, features=features)
    full, limited = failures[False], failures[True]
    if full.errno == errno.ENOSYS:
        reason = "userfaultfd: ENOSYS: this kernel was built without CONFIG_USERFAULTFD"
    elif full.errno == errno.EPERM and limited.errno == errno.EINVAL:
        reason = (
            f"userfaultfd: EPERM: vm.unprivileged_userfaultfd={_sysctl('vm.unprivileged_userfaultfd')} "
            "and this kernel lacks UFFD_USER_MODE_ONLY (Linux 5.11+); set the sysctl to 1 "
            "or run with CAP_SYS_PTRACE"
        )
    elif full.errno == errno.EPERM:
        reason = (
            "userfaultfd: EPERM even with UFFD_USER_MODE_ONLY: a seccomp filter or security module "
            "blocks the system call (container runtimes' default profiles do); allow userfaultfd there"
        )
    else:
        reason = f"userfaultfd: {_errno_name(full)}: {full.strerror}"
    return Userfaultfd(False, reason)


def userfaultfd() -> Userfaultfd:
    """userfaultfd support for this process (probed once per process)."""
    return _userfaultfd(pid)


@functools.cache
def _pagemap_fd(pid: int) -> int:
    # The file is bound to the address space that opened it: a forked child needs its own.
    return os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)


def pagemap_fd() -> int:
    """A descriptor of this process's ``/proc/self/pagemap``, opened once per process."""
    return _pagemap_fd(pid)


@functools.cache
def futex_waitv() -> tuple[bool, str]:
    """Whether futex_waitv(2) (Linux 5.16) exists: (usable, reason if not)."""
    err = _core.futex_waitv_errno()
    if err == errno.EINVAL:
        return True, ""
    if err == errno.ENOSYS:
        return False, f"futex_waitv is missing (Linux 5.16+ has it; this is {release()})"
    return False, f"futex_waitv probe failed: {os.strerror(err)}"


def forget_probes() -> None:
    """Forget the probe results; the next question probes again (:func:`ntshim.refresh`)."""
    _userfaultfd.cache_clear()
    futex_waitv.cache_clear()


def machine() -> dict[str, object]:
    """The facts about this machine and process every report starts with."""
    from . import __version__

    uffd = userfaultfd()
    return {
        "ntshim": __version__,
        "python": platform.python_version(),
        "kernel": {
            "release": release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "page_size": PAGE_SIZE,
        },
        "userfaultfd": {
            "usable": uffd.usable,
            "reason": uffd.reason,
            "kernel_faults": uffd.kernel_faults,
            "features": uffd.feature_names(),
        },
        "futex_waitv": futex_waitv()[0],
    }
