"""The contract every write-watch backend implements, and how it reports availability."""

from __future__ import annotations

import abc
from typing import ClassVar, Protocol, Union

from .. import _core
from .._backends import Availability, ProbedBackend

__all__ = ["ALREADY_REGISTERED", "Availability", "Backend", "Protections", "Tracker"]

#: The owner's protection of each page of the memory to track: the Mapping (a Region) whose
#: protection table the tracker then shares, or one PROT_* byte per page of other memory.
Protections = Union[bytes, _core.Mapping]


class Tracker(Protocol):
    """The per-memory object a backend hands out.  Pages are counted from the start of the
    tracked memory; runs are returned as bytes of native uint64 ``[start, end)`` byte-offset
    pairs (see :class:`~ntshim.writewatch.DirtyPages`)."""

    @property
    def closed(self) -> bool:
        """Whether close() was called."""

    @property
    def kernel_writes_tracked(self) -> bool:
        """Whether writes the kernel makes into the memory work and are tracked without a window."""

    def dirty(self, first: int, count: int, reset: bool, limit: int) -> bytes:
        """Written pages of the range, ascending, at most ``limit`` (0: all); with ``reset``
        exactly those are reset in the same atomic step."""

    def protect(self, first: int, count: int, prot: int) -> None:
        """Change the owner's protection of the pages without losing or inventing dirty state."""

    def kernel_write(self, first: int, count: int, open: bool) -> None:
        """Open or close a window in which the kernel may write into the pages; the pages
        count as written while it is open and once more when it closes."""

    def mark(self, first: int, count: int) -> None:
        """Count the pages as written."""

    def discard(self, first: int, count: int) -> None:
        """Drop the pages' contents (they read as zero afterwards) and their write state."""

    def close(self) -> None:
        """Stop tracking and leave the memory as it was before."""


#: Why the userfaultfd backends refuse memory another userfaultfd has registered (EBUSY).
ALREADY_REGISTERED = "this memory is already registered with another userfaultfd (another library watches it)"


class Backend(ProbedBackend):
    """One write-watch mechanism.  Subclasses live one per module in this package."""

    #: Whether a forked child keeps a working, independent watch.  The userfaultfd
    #: backends do not: the kernel drops their registration in the child.
    survives_fork: ClassVar[bool]

    @classmethod
    @abc.abstractmethod
    def track(cls, address: int, size: int, prots: Protections) -> Tracker:
        """Start tracking ``size`` bytes at ``address`` (whole pages) with the owner's
        protections ``prots``.  Raises BackendUnavailable when this mechanism cannot
        track this kind of memory."""

    @classmethod
    def shared_page_hazard(cls) -> str:
        """Why it must not watch a page that also holds bytes the watched buffer does not
        own (malloc's bookkeeping, other objects): what write-protecting such a page whole
        would break.  Empty when it can."""
        return ""
