"""NT synchronization objects across threads and processes: events, semaphores and
mutexes with wait-any / wait-all, names, and abandoned-mutex detection, on the semantics of
the Linux ntsync driver; each also follows :mod:`threading`'s protocol (``Lock``, ``RLock``,
``Semaphore``, ``BoundedSemaphore``, ``Event``).

    from ntshim.sync import Event, RLock, wait_any, wait_all

    ready = Event(name="ready")                    # create, or open if it exists
    lock = RLock()
    with lock:                                     # its holder's death does not strand it
        ...
    index = wait_any([ready, lock], timeout=1.0)   # lowest signaled index

Backends (``ntshim info``; force with ``backend=`` or ``NTSHIM_SYNC_BACKEND``): ``futex``
(state in shared memory, futex_waitv) and ``server`` (a server process owning all state).
docs/sync.md says why there is no eventfd (esync) backend.
"""

from __future__ import annotations

from ..errors import AbandonedError, AbandonedWarning, BackendUnavailable, NameKindError, SemaphoreOverflowError
from .backend import MAX_WAIT_OBJECTS, Availability
from .barrier import Barrier, BrokenBarrierError
from .condition import Condition
from .objects import (
    MAX_NAME_BYTES,
    BoundedSemaphore,
    Event,
    Lock,
    Mutex,
    RLock,
    Semaphore,
    SyncObject,
    wait_all,
    wait_all_async,
    wait_any,
    wait_any_async,
)
from .registry import ENV_VAR, backends

__all__ = [
    "ENV_VAR",
    "MAX_NAME_BYTES",
    "MAX_WAIT_OBJECTS",
    "AbandonedError",
    "AbandonedWarning",
    "Availability",
    "BackendUnavailable",
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "Lock",
    "Mutex",
    "NameKindError",
    "RLock",
    "Semaphore",
    "SemaphoreOverflowError",
    "SyncObject",
    "backends",
    "wait_all",
    "wait_any",
    "wait_all_async",
    "wait_any_async",
]
