"""A condition variable across processes, built from the NT objects.

:class:`threading.Condition` keeps its sleepers in a list of locks of one process.  This one
keeps them in two semaphores any process can open: ``sleep``, on which waiters sleep and to
which ``notify`` releases one unit per waiter it wakes, and ``waiters``, whose count is the
number of waiters ``notify`` may still wake.  Both change only under the condition's lock,
except that a release of ``sleep`` hands its unit to a sleeping waiter at once (NT
hand-off), so ``notify`` never waits for anyone: a sleeper that died cannot block it (it can
in ``multiprocessing.Condition``, which waits for the woken to acknowledge).

A waiter whose timeout ended takes, once it holds the lock again, a unit that ``notify``
released meanwhile with nobody asleep to take it: it was notified (True), as
:class:`threading.Condition` would answer.  Else it takes itself off the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from .objects import RLock, Semaphore, SyncObject

T = TypeVar("T")


class Condition:
    """:class:`threading.Condition` across processes: ``wait``, ``wait_for``, ``notify``,
    ``notify_all``, ``with`` and the lock's ``acquire``/``release``.

    ``lock`` defaults to a new :class:`RLock`; for waiters in several processes give an
    ntshim lock (a :class:`Lock` or :class:`RLock`; a :mod:`threading` lock serves one process).
    The condition pickles for child processes with its lock.  A sleeper killed while it
    waits is still counted: a later ``notify`` may spend a wake-up on it, and then a later
    waiter may find that wake-up unclaimed and return True at once (use ``wait_for``, as
    with any condition variable).
    """

    def __init__(self, lock: Any = None, *, name: str | None = None, backend: str | None = None) -> None:
        if lock is None:
            lock = RLock(name=None if name is None else f"{name}:lock", backend=backend)
        for method in ("acquire", "release"):
            if not callable(getattr(lock, method, None)):
                raise TypeError(f"lock must have acquire() and release(), not be a {type(lock).__name__}")
        if backend is None and isinstance(lock, SyncObject):
            backend = lock.backend  # the semaphores live where the lock does
        self._init(
            lock,
            Semaphore(0, name=None if name is None else f"{name}:sleep", backend=backend),
            Semaphore(0, name=None if name is None else f"{name}:waiters", backend=backend),
        )

    def _init(self, lock: Any, sleep: Semaphore, waiters: Semaphore) -> None:
        self._lock, self._sleep, self._waiters = lock, sleep, waiters
        self.acquire = lock.acquire
        self.release = lock.release

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._lock, self._sleep, self._waiters))

    def __enter__(self) -> bool:
        return bool(self._lock.__enter__())

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<ntshim.sync.Condition({self._lock!r}, {self._waiters.read()[0]} waiting)>"

    def close(self) -> None:
        """Drop this process's references to the two semaphores (the lock is the caller's)."""
        self._sleep.close()
        self._waiters.close()

    # ---- the lock, as threading.Condition uses it ----

    def _is_owned(self) -> bool:
        if hasattr(self._lock, "_is_owned"):
            return bool(self._lock._is_owned())
        if self._lock.acquire(False):  # a lock without owners: held if it cannot be taken now
            self._lock.release()
            return False
        return True

    def _release_save(self) -> Any:
        if hasattr(self._lock, "_release_save"):
            return self._lock._release_save()
        self._lock.release()
        return None

    def _acquire_restore(self, state: Any) -> None:
        if hasattr(self._lock, "_acquire_restore"):
            self._lock._acquire_restore(state)
        else:
            self._lock.acquire()

    # ---- the protocol ----

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, sleep until notified (at most ``timeout`` seconds; None: for
        ever), take the lock again; whether it was notified."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        self._waiters.release()
        saved = self._release_save()
        notified = False
        try:
            notified = self._sleep.acquire(True, timeout)  # (0 or less: a poll, as threading's)
        finally:  # (interrupted too: the lock is held again and the count put right)
            self._acquire_restore(saved)
            if not notified:
                # A unit released with nobody asleep to take it: this waiter was counted, so it was notified.
                notified = self._sleep.acquire(False)
                if not notified:
                    self._waiters.acquire(False)
        return notified

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true (at most ``timeout`` seconds); its last value."""
        end = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self.wait(remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake at most ``n`` waiters (the longest waiting first); the lock must be held."""
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        woken = 0
        while woken < n and self._waiters.acquire(False):
            woken += 1
        if woken:
            self._sleep.release(woken)

    def notify_all(self) -> None:
        """Wake every waiter; the lock must be held."""
        self.notify(self._waiters.read()[0])


def _rebuild(lock: Any, sleep: Semaphore, waiters: Semaphore) -> Condition:
    condition = Condition.__new__(Condition)
    condition._init(lock, sleep, waiters)
    return condition
