"""Rules of the backend contract (:mod:`ntshim.sync.backend`) that the ntsync selftests do
not exercise on their own: pulse wakes exactly the current waiters, waiters are served in
order (wait-all before wait-any, each first come first served), a release of N serves up to
N waiters, and every signal is handed over before the signalling call returns."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from ntshim.sync import AbandonedError, Event, Mutex, Semaphore, wait_all, wait_any

from .helpers import SETTLE, StartWaiter, WaiterThread, sidelined

#: Timeout of the waits a signal must satisfy.  A backend that hands signals over satisfies
#: them when the signal comes, long before this; one that loses the signal fails after it.
MISSED = 1.0


def blocked(waiters: StartWaiter, count: int, call: Callable[[], Any]) -> list[WaiterThread]:
    """``count`` waiters running ``call``, queued in order: each is seen blocked before the
    next starts (so their order in the object's queue is known)."""
    started = []
    for _ in range(count):
        waiter = waiters(call)
        assert waiter.still_waiting()
        started.append(waiter)
    return started


def returned(group: list[WaiterThread]) -> list[bool]:
    return [w.returned.is_set() for w in group]


def all_waiting(group: list[WaiterThread]) -> bool:
    """Every waiter of ``group`` (all started before this call) still blocked after one
    settling time."""
    return group[0].still_waiting() and not any(returned(group))


def test_pulse_manual_wakes_every_current_waiter(sync_backend: str, waiters: StartWaiter) -> None:
    event = Event(manual=True, backend=sync_backend)
    group = [waiters(functools.partial(wait_any, [event], MISSED)) for _ in range(3)]
    assert all_waiting(group)
    with sidelined(*group):  # the waiters cannot run between the set and the reset of the pulse
        assert event.pulse() is False
        assert event.read() == (True, False)
    assert [w.outcome() for w in group] == [0, 0, 0]
    with pytest.raises(TimeoutError):  # and nobody after the pulse
        wait_any([event], 0)
    event.close()


def test_pulse_auto_wakes_exactly_one(sync_backend: str, waiters: StartWaiter) -> None:
    event = Event(manual=False, backend=sync_backend)
    first, second = blocked(waiters, 2, functools.partial(wait_any, [event], MISSED))
    with sidelined(first, second):
        assert event.pulse() is False
        assert event.read() == (False, False)
    assert first.outcome() == 0  # the first in the queue
    assert second.still_waiting()
    with sidelined(second):
        assert event.set() is False
        assert event.read() == (False, False)  # set handed over to the second, which reset it
    assert second.outcome() == 0
    event.close()


def test_set_manual_wakes_every_waiter_and_stays_set(sync_backend: str, waiters: StartWaiter) -> None:
    event = Event(manual=True, backend=sync_backend)
    group = [waiters(functools.partial(wait_any, [event], MISSED)) for _ in range(3)]
    assert all_waiting(group)
    with sidelined(*group):
        assert event.set() is False
        assert event.read() == (True, True)
    assert [w.outcome() for w in group] == [0, 0, 0]
    assert event.read() == (True, True)
    event.close()


def test_semaphore_serves_waiters_in_order(sync_backend: str, waiters: StartWaiter) -> None:
    sem = Semaphore(0, 3, backend=sync_backend)
    group = blocked(waiters, 3, functools.partial(wait_any, [sem], MISSED))
    for served in range(3):
        with sidelined(*group[served:]):
            assert sem.release(1) == 0
            assert sem.read() == (0, 3)  # handed over
        assert group[served].outcome() == 0
        assert not any(returned(group[served + 1 :]))
    sem.close()


def test_release_of_n_serves_n_waiters(sync_backend: str, waiters: StartWaiter) -> None:
    sem = Semaphore(0, 5, backend=sync_backend)
    group = blocked(waiters, 3, functools.partial(wait_any, [sem], MISSED))
    with sidelined(*group):
        assert sem.release(2) == 0
        assert sem.read() == (0, 5)
    assert [group[0].outcome(), group[1].outcome()] == [0, 0]
    assert group[2].still_waiting()
    with sidelined(group[2]):
        assert sem.release(3) == 0
        assert sem.read() == (2, 5)  # one for the last waiter, two left
    assert group[2].outcome() == 0
    sem.close()


def test_wait_all_waiters_are_served_first(sync_backend: str, waiters: StartWaiter) -> None:
    a = Semaphore(0, 2, backend=sync_backend)
    b = Semaphore(1, 1, backend=sync_backend)
    (any_waiter,) = blocked(waiters, 1, functools.partial(wait_any, [a], MISSED))
    (all_waiter,) = blocked(waiters, 1, functools.partial(wait_all, [a, b], MISSED))
    with sidelined(any_waiter, all_waiter):
        assert a.release(1) == 0  # the wait-any came first, but the wait-all is served first
        assert (a.read(), b.read()) == ((0, 2), (0, 1))
    assert all_waiter.outcome() == 0
    assert any_waiter.still_waiting()
    assert a.release(1) == 0
    assert any_waiter.outcome() == 0
    for sem in (a, b):
        sem.close()


def test_mutex_passes_to_waiters_in_order(sync_backend: str, waiters: StartWaiter) -> None:
    mutex = Mutex(owner=1, count=1, backend=sync_backend)
    second = waiters(functools.partial(wait_any, [mutex], MISSED, owner=2))
    assert second.still_waiting()
    third = waiters(functools.partial(wait_any, [mutex], MISSED, owner=3))
    assert third.still_waiting()
    with sidelined(second, third):
        assert mutex.unlock(1) == 1
        assert mutex.read() == (2, 1)  # handed over to the first waiter
    assert second.outcome() == 0
    assert third.still_waiting()
    with sidelined(third):
        assert mutex.unlock(2) == 1
        assert mutex.read() == (3, 1)
    assert third.outcome() == 0
    mutex.close()  # before the waiter threads exit: nothing here is about abandonment


def test_kill_hands_the_mutex_over(sync_backend: str, waiters: StartWaiter) -> None:
    mutex = Mutex(owner=123, count=3, backend=sync_backend)
    (waiter,) = blocked(waiters, 1, functools.partial(wait_any, [mutex], MISSED, owner=456))
    with sidelined(waiter):
        mutex.kill(123)
        assert mutex.read() == (456, 1)  # taken, so no longer abandoned
    with pytest.raises(AbandonedError) as abandoned:
        waiter.outcome()
    assert abandoned.value.index == 0
    mutex.close()


def test_signal_not_handed_to_a_waiter_that_timed_out(sync_backend: str, waiters: StartWaiter) -> None:
    sem = Semaphore(0, 1, backend=sync_backend)
    waiter = waiters(functools.partial(wait_any, [sem], SETTLE / 2))
    with pytest.raises(TimeoutError):
        waiter.outcome()
    assert sem.release(1) == 0
    assert sem.read() == (1, 1)  # nobody took it
    sem.close()
