"""The contract every synchronization backend implements.

The semantics are those of the Linux ntsync driver (``include/uapi/linux/ntsync.h``): the
public layer (:mod:`ntshim.sync.objects`) validates every argument, turns timeouts into
deadlines and raises the public exceptions; a backend only carries operations out, on
arguments that are already known to be good.

Rules every backend keeps (the tests check them on each):

- A signal is handed over: when a release, unlock, set or pulse satisfies a waiter, the
  waiter's acquisition is done *before* the signalling call returns (reading the object right
  after a release shows the count already taken by the woken waiter).
- Waiters are served wait-all first, then wait-any, each in the order they started waiting.
- ``wait_any`` takes the lowest signaled index; an alert is checked after the objects and
  answers ``len(handles)``; ``wait_all`` acquires every object in one atomic step, never a
  partial set.
- A mutex is signaled for a waiter when it is unowned or owned by the waiter's owner id
  with a count below 0xFFFFFFFF.  Killing it (or its owner's death) leaves it unowned,
  count 0, *abandoned*; the next acquisition clears that and reports it.
- A lock (``threading.Lock`` across processes) is signaled when unlocked, whoever asks; it
  is held by the acquiring thread's *process*, and released by anyone.  When that process
  ends (SIGKILL and exec included) it is abandoned exactly as a mutex whose owner died.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from .. import _core
from .._backends import Availability, ProbedBackend

__all__ = [
    "KINDS",
    "MAX_NAME_BYTES",
    "MAX_WAIT_OBJECTS",
    "U32_MAX",
    "Availability",
    "Backend",
    "Handle",
    "InitialState",
    "Kind",
    "Request",
]

Kind = Literal["semaphore", "mutex", "event", "lock"]
KINDS: tuple[Kind, ...] = ("semaphore", "mutex", "event", "lock")
#: A new object's state, two unsigned 32-bit numbers whose meaning depends on the kind:
#: semaphore ``(count, maximum)``; mutex ``(owner, count)`` (both 0: unowned); event
#: ``(manual, signaled)`` as 0/1; lock ``(0, 0)`` (a lock is created unlocked).
InitialState = tuple[int, int]

# The limits every backend enforces, defined once, in the C core (sync/sync.h), whose arena is sized by them.
#: Most objects one wait may name (Windows' MAXIMUM_WAIT_OBJECTS, ntsync's NTSYNC_MAX_WAIT_COUNT).
MAX_WAIT_OBJECTS: int = _core.SYNC_MAX_WAIT
#: Longest object name, in bytes of UTF-8.
MAX_NAME_BYTES: int = _core.SYNC_MAX_NAME
#: Mutex and semaphore counts are unsigned 32-bit.
U32_MAX = 0xFFFFFFFF


class Handle(Protocol):
    """One open reference to a synchronization object.  Only the methods of the object's
    kind are called.  Arguments are already validated: ints in range, owners nonzero."""

    kind: Kind

    @property
    def closed(self) -> bool: ...

    @property
    def key(self) -> Any:
        """Hashable, equal for every handle of the same object in this process (two opens of
        one name included): how ``wait_all`` finds duplicates."""

    def close(self) -> None:
        """Drop this reference; the object (and its name) go when the last one goes."""

    def state(self) -> Any:
        """A picklable value from which :meth:`Backend.from_state` reopens the object in
        another process of the same user (for ``spawn`` children and ``multiprocessing``)."""

    # semaphore
    def sem_release(self, count: int) -> int:
        """Add ``count``; return the previous count.  OverflowError, no change, if the
        result would exceed the maximum."""

    def sem_read(self) -> tuple[int, int]:
        """(count, maximum)"""

    # mutex
    def mutex_unlock(self, owner: int) -> int:
        """Decrement the recursion count; return the previous count.  PermissionError, no
        change, if ``owner`` does not own the mutex (an unowned mutex included)."""

    def mutex_kill(self, owner: int) -> None:
        """Abandon the mutex as if ``owner`` died: unowned, count 0, abandoned.
        PermissionError, no change, if ``owner`` does not own it."""

    def mutex_read(self) -> tuple[int, int, bool]:
        """(owner, count, abandoned); an abandoned mutex reads (0, 0, True)."""

    # lock
    def lock_release(self, abandon: bool) -> None:
        """Unlock, from any thread or process; with ``abandon``, leave it abandoned as if
        its holder had died (the next acquisition reports it).  PermissionError, no change,
        if it is not locked."""

    def lock_read(self) -> tuple[bool, bool]:
        """(locked, abandoned)"""

    # event
    def event_set(self) -> bool:
        """Signal; hand over to waiters (an auto-reset event to at most one, which resets
        it).  Return the previous state."""

    def event_reset(self) -> bool:
        """Unsignal; return the previous state."""

    def event_pulse(self) -> bool:
        """Set, hand over to the current waiters (auto: at most one; manual: all), and reset,
        in one atomic step.  Return the previous state."""

    def event_read(self) -> tuple[bool, bool]:
        """(manual, signaled)"""


class Request(Protocol):
    """An asynchronous wait (:meth:`Backend.request`): queued on its objects exactly as a
    thread's wait is, served in the same order and handed what it acquires, while no thread
    sleeps in it."""

    def ready(self) -> bool:
        """Whether it was satisfied, as far as a cheap look can tell: the futex backend reads
        the request's word; the server backend reads only sockets its last :meth:`Backend.sleep`
        found readable (a reply that came since makes the next sleep return at once)."""

    def end(self) -> tuple[int, bool] | None:
        """Stop it: ``(index, abandoned)`` as :meth:`Backend.wait` answers if it was satisfied
        (the caller holds what it acquired), else None (it acquired nothing, and is off the
        queues).  A request is used once."""


class Backend(ProbedBackend):
    """One synchronization mechanism.  Subclasses live one per module in this package."""

    @classmethod
    @abc.abstractmethod
    def create(cls, kind: Kind, initial: InitialState, name: bytes | None) -> tuple[Handle, bool]:
        """Create an object in the state ``initial`` (see :data:`InitialState`), or with a
        name open the existing one of that name.

        ``name`` is UTF-8, at most :data:`~ntshim.sync.objects.MAX_NAME_BYTES` bytes.
        Returns the handle and whether it was created (False: the name existed, ``initial``
        ignored).  Raises
        NameKindError if the name belongs to another kind of object.
        """

    @classmethod
    @abc.abstractmethod
    def open(cls, kind: Kind, name: bytes) -> Handle:
        """Open the existing object of that name: FileNotFoundError if there is none,
        NameKindError if it is another kind."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, kind: Kind, state: Any) -> Handle:
        """Reopen an object from :meth:`Handle.state` (FileNotFoundError if it is gone)."""

    @classmethod
    @abc.abstractmethod
    def wait(
        cls,
        handles: Sequence[Handle],
        wait_all: bool,
        deadline: int | None,
        owner: int,
        alert: Handle | None,
    ) -> tuple[int, bool]:
        """Wait for any (lowest index) or all of ``handles`` to be signaled for ``owner`` and
        acquire it/them; or for ``alert`` (an event) to be signaled, acquiring it.

        ``deadline``: CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``), ``None`` for no
        limit; a deadline in the past still tries once.  Returns ``(index, abandoned)``:
        ``index`` is the acquired object (wait-any), 0 (wait-all) or ``len(handles)`` (alert);
        ``abandoned`` tells that an acquired mutex was abandoned.  Raises TimeoutError.
        ``wait_all`` handles are distinct (the alert included); all handles belong to this
        backend.  Must release the GIL while blocked.
        """

    # Asynchronous waits: what asyncio's dispatcher (ntshim.sync.aio) builds on.  One thread
    # per process makes the requests, sleeps on them and ends them (bell() and sleep() are
    # its alone: a doorbell may be drained by bell()); it lives as long as the process,
    # because what its requests acquire is held as that thread's would be (a mutex whose
    # owner id is the thread's; abandoned when the thread, or the process, dies).

    @classmethod
    @abc.abstractmethod
    def request(cls, handles: Sequence[Handle], wait_all: bool, owner: int, alert: Handle | None) -> Request:
        """Start a wait with :meth:`wait`'s arguments and rules, but no deadline: it is
        satisfied at once or queued, and the caller ends it.  OSError(ENOSPC) when the backend
        has no room for another pending request now (the caller keeps it until one ends)."""

    @classmethod
    @abc.abstractmethod
    def bell(cls) -> int:
        """The doorbell's state now, for :meth:`sleep`: a :meth:`ring` after this call makes
        that sleep return."""

    @classmethod
    @abc.abstractmethod
    def ring(cls) -> None:
        """Wake the request thread's :meth:`sleep` (from any thread of the process)."""

    @classmethod
    @abc.abstractmethod
    def sleep(cls, requests: Sequence[Request], deadline: int | None, bell: int) -> None:
        """Block, the GIL released, until one of ``requests`` may be ready, the doorbell rings
        after :meth:`bell` returned ``bell``, or ``deadline`` (CLOCK_MONOTONIC ns, None: none)
        passes; no TimeoutError, and a return may be spurious: the caller looks."""

