"""A barrier across processes, built from the NT objects: :class:`threading.Barrier`'s
algorithm over a cross-process :class:`~ntshim.sync.Condition`, with its two numbers kept in
semaphores any process can read (a semaphore's count is a number every process sees; here
it changes only under the condition's lock, and nobody waits on it).

A party that dies must not strand the others.  Each party holds a *seat*, an RLock, while it
is in :meth:`Barrier.wait`; its death abandons the seat.  Waiting parties look at the seats
of the others every :data:`CHECK_INTERVAL` seconds, and a party that dies inside the
condition's lock leaves that lock abandoned for the next one: either way the barrier breaks
and every party gets ``BrokenBarrierError``, as when a wait times out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from threading import BrokenBarrierError
from typing import Any

from .condition import Condition
from .objects import _POLL, RLock, Semaphore, _checked_seconds, _lock_deadline, _owner

#: How often a waiting party looks whether the others still live (seconds).
CHECK_INTERVAL = 0.1

_FILLING, _DRAINING, _RESETTING, _BROKEN = 2, 3, 1, 0  # threading's 0, 1, -1, -2, kept >= 0


class Barrier:
    """:class:`threading.Barrier` across processes: ``wait()`` returns each party's index
    once ``parties`` have called it; ``reset()``, ``abort()``, ``parties``, ``n_waiting``,
    ``broken``; ``threading.BrokenBarrierError`` when it breaks.  A party that dies (its
    thread or its process) while it waits, or inside the barrier's lock, breaks it.

    ``action`` runs in the process of the party that completes the barrier (each process
    gives its own; a barrier opened by ``name`` runs the action that process gave).
    """

    def __init__(
        self,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        name: str | None = None,
        backend: str | None = None,
    ) -> None:
        if isinstance(parties, bool) or not isinstance(parties, int):
            raise TypeError(f"parties must be an int, not {type(parties).__name__}")
        if parties < 1:
            raise ValueError("parties must be >= 1")

        def named(part: str) -> str | None:
            return None if name is None else f"{name}:{part}"

        lock = RLock(name=named("lock"), backend=backend)
        self._init(
            Condition(_BreakingLock(lock), name=name, backend=backend),
            Semaphore(0, parties, name=named("count"), backend=backend),  # the maximum keeps `parties`
            Semaphore(_FILLING, 3, name=named("state"), backend=backend),
            [RLock(name=named(f"seat{i}"), backend=backend) for i in range(parties)],
            action,
            timeout,
        )
        if self._count.read()[1] != parties:
            raise ValueError(f"the barrier {name!r} exists with {self._count.read()[1]} parties, not {parties}")

    def _init(
        self,
        cond: Condition,
        count: Semaphore,
        state: Semaphore,
        seats: list[RLock],
        action: Callable[[], object] | None,
        timeout: float | None,
    ) -> None:
        self._cond, self._count, self._state, self._seats = cond, count, state, seats
        self._action, self._timeout = action, timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._cond, self._count, self._state, self._seats, self._action, self._timeout))

    def __repr__(self) -> str:
        if self.broken:
            return "<ntshim.sync.Barrier broken>"
        return f"<ntshim.sync.Barrier waiters={self.n_waiting}/{self.parties}>"

    # ---- numbers every process sees (changed under the lock only) ----

    @staticmethod
    def _get(number: Semaphore) -> int:
        return number.read()[0]

    @staticmethod
    def _set(number: Semaphore, value: int) -> None:
        current = number.read()[0]
        if value > current:
            number.release(value - current)
        for _ in range(current - value):
            number.acquire(False)

    # ---- the lock: a party that died inside it broke the barrier ----

    def _locked(self) -> _Locked:
        return _Locked(self)

    def _lock(self) -> _BreakingLock:
        lock = self._cond._lock
        assert isinstance(lock, _BreakingLock)
        return lock

    def _broken_by_a_death(self) -> None:
        """Break the barrier if the lock, just taken, was taken over from a party that died
        inside it (what that party was changing may be half done)."""
        if self._lock().taken_over:
            self._lock().taken_over = False
            self._break()

    # ---- threading.Barrier's algorithm ----

    def wait(self, timeout: float | None = None) -> int:
        """Wait until ``parties`` parties wait; return this one's index (0..parties-1)."""
        if timeout is None:
            timeout = self._timeout
        if timeout is not None:
            _checked_seconds(timeout)
        with self._locked():
            self._enter()
            index = self._get(self._count)
            seat = self._seats[index]
            seat._acquire(None, _owner(None))  # held while this party is inside: its death abandons it
            self._set(self._count, index + 1)
            try:
                if index + 1 == self.parties:
                    self._release()
                else:
                    self._wait(timeout, index)
                return index
            finally:
                self._set(self._count, self._get(self._count) - 1)
                seat.release()
                self._exit()

    def _enter(self) -> None:
        while self._get(self._state) in (_RESETTING, _DRAINING):
            self._cond.wait(CHECK_INTERVAL)
            self._broken_by_a_death()
            if self._get(self._state) in (_RESETTING, _DRAINING) and self._dead_seat(None) is not None:
                # A party died on its way out: it had passed; leave in its place.
                self._set(self._count, self._get(self._count) - 1)
                self._exit()
        if self._get(self._state) == _BROKEN:
            raise BrokenBarrierError

    def _release(self) -> None:
        try:
            if self._action:
                self._action()
            self._set(self._state, _DRAINING)
            self._cond.notify_all()
        except BaseException:
            self._break()
            raise

    def _wait(self, timeout: float | None, index: int) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        while self._get(self._state) == _FILLING:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._break()
                raise BrokenBarrierError
            self._cond.wait(CHECK_INTERVAL if remaining is None else min(remaining, CHECK_INTERVAL))
            self._broken_by_a_death()
            if self._get(self._state) == _FILLING and self._dead_seat(index) is not None:
                self._break()
        if self._get(self._state) != _DRAINING:
            raise BrokenBarrierError

    def _dead_seat(self, mine: int | None) -> int | None:
        """A seat of the parties inside (not ``mine``) whose party died: taken over and given
        back clean here.  None if every party inside lives."""
        for i in range(self._get(self._count)):
            if i == mine:
                continue
            died = self._seats[i]._acquire(_POLL, _owner(None))
            if died is None:
                continue  # held: that party lives
            self._seats[i].release()  # free (its party is leaving), or abandoned
            if died:
                return i
        return None

    def _exit(self) -> None:
        if self._get(self._count) == 0 and self._get(self._state) in (_RESETTING, _DRAINING):
            self._set(self._state, _FILLING)
            self._cond.notify_all()

    def reset(self) -> None:
        """Back to the empty state; parties waiting now get BrokenBarrierError."""
        with self._locked():
            if self._get(self._count) > 0:
                if self._get(self._state) in (_FILLING, _BROKEN):
                    self._set(self._state, _RESETTING)
            else:
                self._set(self._state, _FILLING)
            self._cond.notify_all()

    def abort(self) -> None:
        """Break the barrier: waiting and later parties get BrokenBarrierError."""
        with self._locked():
            self._break()

    def _break(self) -> None:
        self._set(self._state, _BROKEN)
        self._cond.notify_all()

    @property
    def parties(self) -> int:
        return self._count.read()[1]

    @property
    def n_waiting(self) -> int:
        return self._get(self._count) if self._get(self._state) == _FILLING else 0

    @property
    def broken(self) -> bool:
        return self._get(self._state) == _BROKEN

    def close(self) -> None:
        """Drop this process's references to the barrier's objects."""
        for obj in (self._lock().lock, self._count, self._state, *self._seats):
            obj.close()
        self._cond.close()


class _BreakingLock:
    """The barrier's RLock as its Condition takes it: a take-over from a party that died
    inside it is noted (``taken_over``) for the barrier to break, not warned about."""

    def __init__(self, lock: RLock) -> None:
        self.lock = lock
        self.taken_over = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (_BreakingLock, (self.lock,))

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        # Acquired without RLock.acquire's warning: the barrier answers a take-over by breaking.
        died = self.lock._acquire(_lock_deadline(blocking, timeout), _owner(None))
        if died is None:
            return False
        self.taken_over = self.taken_over or died
        return True

    def release(self) -> None:
        self.lock.release()

    def _is_owned(self) -> bool:
        return self.lock._is_owned()

    def _release_save(self) -> tuple[int, int]:
        return self.lock._release_save()

    def _acquire_restore(self, state: tuple[int, int]) -> None:
        for _ in range(state[0]):
            self.acquire()

    def __enter__(self) -> _BreakingLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Locked:
    """``with`` on the barrier's lock, breaking the barrier if it was taken over from a
    party that died inside it."""

    def __init__(self, barrier: Barrier) -> None:
        self.barrier = barrier

    def __enter__(self) -> None:
        self.barrier._lock().acquire()
        self.barrier._broken_by_a_death()

    def __exit__(self, *exc: object) -> None:
        self.barrier._lock().release()


def _rebuild(*parts: Any) -> Barrier:
    """A barrier from the parts :meth:`Barrier.__reduce__` pickled (see :meth:`Barrier._init`)."""
    barrier = Barrier.__new__(Barrier)
    barrier._init(*parts)
    return barrier
