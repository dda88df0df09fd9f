"""Exceptions ntshim raises beyond the built-in ones."""

from __future__ import annotations

__all__ = ["AbandonedError", "AbandonedWarning", "BackendUnavailable", "NameKindError", "SemaphoreOverflowError"]


class BackendUnavailable(RuntimeError):
    """A backend cannot serve this request: missing on this kernel, or unable to handle this memory.

    ``backend`` names the backend (``None`` when no backend at all could serve the request),
    ``reason`` says why in words a user can act on.
    """

    def __init__(self, backend: str | None, reason: str) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(f"{backend}: {reason}" if backend else reason)


class AbandonedError(Exception):
    """A mutex was abandoned: its owner died, or ``Mutex.kill`` declared it dead, while holding
    it (or a ``Lock``'s holding process ended).

    Raised by a wait that *did* acquire the abandoned mutex (the caller owns it now, as
    ``WAIT_ABANDONED`` on Windows): ``index`` is the position of the mutex in the waited-on
    objects (0 for a single object).  Raised by ``Mutex.read`` while the mutex stays abandoned,
    with ``index`` None.
    """

    def __init__(self, index: int | None, message: str | None = None) -> None:
        self.index = index
        if message is None:
            message = "the mutex was abandoned by its owner" + ("" if index is None else f" (object {index})")
        super().__init__(message)


class NameKindError(FileExistsError):
    """The name is taken by an object of another kind (Windows: ERROR_INVALID_HANDLE)."""


class AbandonedWarning(RuntimeWarning):
    """An ``acquire()`` took over a mutex (RLock) whose holder died holding it.

    The acquisition succeeded: the caller holds the lock, and ``lock.abandoned`` is True for
    this hold, so a ``with`` block runs and releases as usual.  What the dead holder protected
    may be half changed.  Turn the warning into an error (``warnings.simplefilter("error",
    AbandonedWarning)``) to stop there instead: the lock is then left abandoned for the next
    acquirer, not held.
    """


class SemaphoreOverflowError(ValueError, OverflowError):
    """A release would raise a semaphore past its maximum; nothing changed.

    Both the ``ValueError`` that ``threading.BoundedSemaphore`` raises and the
    ``OverflowError`` of the NT API (``ERROR_TOO_MANY_POSTS``)."""
