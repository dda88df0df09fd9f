"""The C reports which step failed as data (``OSError.filename``: the system call or ioctl),
with the errno; the backends branch on those two, never on the message text."""

from __future__ import annotations

import errno
import mmap
import os
import tempfile

import pytest
from required import require_backend

import ntshim
from ntshim import _core, _kernel
from ntshim.errors import BackendUnavailable
from ntshim.memory import PAGE_SIZE as PS
from ntshim.writewatch import uffd_async


def test_a_refused_registration_names_UFFDIO_REGISTER() -> None:
    require_backend("uffd-sync")
    with tempfile.TemporaryFile(dir=os.environ.get("TMPDIR", "/var/tmp")) as f:
        f.truncate(4 * PS)
        with mmap.mmap(f.fileno(), 4 * PS) as file_mapping:
            with pytest.raises(BackendUnavailable, match="file-backed") as info:
                ntshim.memory.watch(file_mapping, backend="uffd-sync")
    cause = info.value.__cause__
    assert isinstance(cause, OSError), cause
    assert (cause.errno, cause.filename) == (errno.EINVAL, "UFFDIO_REGISTER")
    assert str(cause).startswith(f"[Errno {errno.EINVAL}] uffd-sync: "), cause  # still readable


def test_a_failed_pagemap_scan_names_PAGEMAP_SCAN() -> None:
    """A uffd-async tracker whose pagemap descriptor cannot scan (here /dev/null: ENOTTY, as on a
    kernel without PAGEMAP_SCAN) fails its queries with the step the backend's self-test reads."""
    require_backend("uffd-async")
    memory = _core.Mapping(2 * PS, _core.PROT_READ | _core.PROT_WRITE)
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        tracker = _core.uffd_async_tracker(
            memory.address, 2 * PS, bytes([_core.PROT_READ | _core.PROT_WRITE] * 2),
            features=uffd_async._WANTED & _kernel.userfaultfd().features, pagemap_fd=fd,
        )  # fmt: skip
        with pytest.raises(OSError) as info:
            tracker.dirty(0, 2, True, 0)
        tracker.close()
    finally:
        os.close(fd)
        memory._unmap()
    assert (info.value.errno, info.value.filename) == (errno.ENOTTY, "PAGEMAP_SCAN")
