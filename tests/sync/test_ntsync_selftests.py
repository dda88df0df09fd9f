"""The Linux ntsync driver's selftests, scenario by scenario, on every sync backend.

Source: ``tools/testing/selftests/drivers/ntsync/ntsync.c`` (semaphore_state, mutex_state,
manual_event_state, auto_event_state, test_wait_any, test_wait_all, wake_any, wake_all,
alert_any, alert_all, stress_wait).  Every assertion of the C test is kept, in the same
order, written against the public API:

- errno becomes an exception: EOVERFLOW → OverflowError, EPERM → PermissionError,
  EOWNERDEAD → AbandonedError (the wait still acquired), ETIMEDOUT → TimeoutError,
  EINVAL → ValueError (our argument checks);
- ``check_mutex_state(m, count, owner)`` becomes ``m.read() == (owner, count)`` and
  ``check_event_state(e, signaled, manual)`` becomes ``e.read() == (manual, signaled)``:
  mind the swapped order;
- the C waits pass the current time as their deadline, i.e. they poll: ``timeout=0``;
- the owner ids of the C test (123, 456) are explicit ``owner=`` arguments;
- "a thread waits and the main thread checks that it has not returned yet"
  (``wait_for_thread(thread, 100) == ETIMEDOUT``) is :meth:`WaiterThread.still_waiting`, and
  ``pthread_tryjoin_np == EBUSY`` right after a signal is the same check;
- where the C test reads an object right after the signal that woke a waiter (the driver
  completes the waiter's acquisition inside the signalling ioctl), the signal and the read
  run :func:`sidelined`: the waiter cannot run in between, so the read shows the hand-off
  the backend did, never a race the waiter happened to win.

What the C test does that our API rules out by construction is replaced, with the reason,
where it happens (zero-object waits, a negative object count).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import pytest

from ntshim.sync import AbandonedError, Event, Mutex, Semaphore, wait_all, wait_any

from .helpers import BOUND, StartWaiter, sidelined

U32_MAX = 0xFFFFFFFF


def test_semaphore_state(sync_backend: str) -> None:
    with pytest.raises(ValueError):
        Semaphore(3, 2, backend=sync_backend)

    sem = Semaphore(2, 2, backend=sync_backend)
    assert sem.read() == (2, 2)

    with pytest.raises(ValueError):  # ntsync answers the count; the Python protocol refuses n < 1, as threading does
        sem.release(0)
    assert sem.read() == (2, 2)

    with pytest.raises(OverflowError):
        sem.release(1)
    assert sem.read() == (2, 2)

    assert wait_any([sem], 0, owner=123) == 0
    assert sem.read() == (1, 2)

    assert wait_any([sem], 0, owner=123) == 0
    assert sem.read() == (0, 2)

    with pytest.raises(TimeoutError):
        wait_any([sem], 0, owner=123)

    with pytest.raises(OverflowError):
        sem.release(3)
    assert sem.read() == (0, 2)

    assert sem.release(2) == 0
    assert sem.read() == (2, 2)

    assert wait_any([sem], 0, owner=123) == 0
    assert wait_any([sem], 0, owner=123) == 0

    assert sem.release(1) == 0
    assert sem.read() == (1, 2)

    # count + ~0u overflows 32 bits: refused like any other overflow.
    with pytest.raises(OverflowError):
        sem.release(U32_MAX)
    assert sem.read() == (1, 2)

    sem.close()


def test_mutex_state(sync_backend: str) -> None:
    # An owner without a count, or a count without an owner, is EINVAL.
    with pytest.raises(ValueError):
        Mutex(owner=123, count=0, backend=sync_backend)
    with pytest.raises(ValueError):
        Mutex(owner=0, count=2, backend=sync_backend)

    mutex = Mutex(owner=123, count=2, backend=sync_backend)
    assert mutex.read() == (123, 2)

    with pytest.raises(ValueError):
        mutex.unlock(0)
    assert mutex.read() == (123, 2)  # not checked by the C test; our rule: a refusal changes nothing

    with pytest.raises(PermissionError):
        mutex.unlock(456)
    assert mutex.read() == (123, 2)

    assert mutex.unlock(123) == 2
    assert mutex.read() == (123, 1)

    assert mutex.unlock(123) == 1
    assert mutex.read() == (0, 0)

    with pytest.raises(PermissionError):
        mutex.unlock(123)

    assert wait_any([mutex], 0, owner=456) == 0
    assert mutex.read() == (456, 1)

    assert wait_any([mutex], 0, owner=456) == 0
    assert mutex.read() == (456, 2)

    assert mutex.unlock(456) == 2
    assert mutex.read() == (456, 1)

    with pytest.raises(TimeoutError):
        wait_any([mutex], 0, owner=123)

    with pytest.raises(ValueError):
        mutex.kill(0)

    with pytest.raises(PermissionError):
        mutex.kill(123)
    assert mutex.read() == (456, 1)

    mutex.kill(456)

    # Reading an abandoned mutex is EOWNERDEAD with owner 0, count 0, and does not clear the
    # abandonment (the C test reads twice).  The public read raises; the backend's own read
    # shows the (0, 0) of the C test.
    for _ in range(2):
        with pytest.raises(AbandonedError) as abandoned:
            mutex.read()
        assert abandoned.value.index is None
        assert mutex._handle.mutex_read() == (0, 0, True)

    with pytest.raises(AbandonedError) as abandoned:
        wait_any([mutex], 0, owner=123)
    assert abandoned.value.index == 0
    assert mutex.read() == (123, 1)

    mutex.kill(123)

    with pytest.raises(AbandonedError):
        mutex.read()
    assert mutex._handle.mutex_read() == (0, 0, True)

    with pytest.raises(AbandonedError) as abandoned:
        wait_any([mutex], 0, owner=123)
    assert abandoned.value.index == 0
    assert mutex.read() == (123, 1)

    mutex.close()

    mutex = Mutex(backend=sync_backend)
    assert mutex.read() == (0, 0)

    assert wait_any([mutex], 0, owner=123) == 0
    assert mutex.read() == (123, 1)

    mutex.close()

    # A recursion count at its maximum cannot be taken once more, even by its owner.
    mutex = Mutex(owner=123, count=U32_MAX, backend=sync_backend)
    assert mutex.read() == (123, U32_MAX)

    with pytest.raises(TimeoutError):
        wait_any([mutex], 0, owner=123)

    mutex.close()


def test_manual_event_state(sync_backend: str) -> None:
    event = Event(manual=True, signaled=False, backend=sync_backend)
    assert event.read() == (True, False)

    assert event.set() is False
    assert event.read() == (True, True)

    assert event.set() is True
    assert event.read() == (True, True)

    assert wait_any([event], 0, owner=123) == 0
    assert event.read() == (True, True)

    assert event.reset() is True
    assert event.read() == (True, False)

    assert event.reset() is False
    assert event.read() == (True, False)

    with pytest.raises(TimeoutError):
        wait_any([event], 0, owner=123)

    assert event.set() is False

    assert event.pulse() is True
    assert event.read() == (True, False)

    assert event.pulse() is False
    assert event.read() == (True, False)

    event.close()


def test_auto_event_state(sync_backend: str) -> None:
    event = Event(manual=False, signaled=True, backend=sync_backend)
    assert event.read() == (False, True)

    assert event.set() is True
    assert event.read() == (False, True)

    assert wait_any([event], 0, owner=123) == 0
    assert event.read() == (False, False)

    assert event.reset() is False
    assert event.read() == (False, False)

    with pytest.raises(TimeoutError):
        wait_any([event], 0, owner=123)

    assert event.set() is False

    assert event.pulse() is True
    assert event.read() == (False, False)

    assert event.pulse() is False
    assert event.read() == (False, False)

    event.close()


def test_wait_any(sync_backend: str) -> None:
    sem = Semaphore(2, 3, backend=sync_backend)
    mutex = Mutex(backend=sync_backend)
    objs: list[Any] = [sem, mutex]

    assert wait_any(objs, 0, owner=123) == 0
    assert sem.read() == (1, 3)
    assert mutex.read() == (0, 0)

    assert wait_any(objs, 0, owner=123) == 0
    assert sem.read() == (0, 3)
    assert mutex.read() == (0, 0)

    assert wait_any(objs, 0, owner=123) == 1
    assert sem.read() == (0, 3)
    assert mutex.read() == (123, 1)

    assert sem.release(1) == 0

    assert wait_any(objs, 0, owner=123) == 0
    assert sem.read() == (0, 3)
    assert mutex.read() == (123, 1)

    assert wait_any(objs, 0, owner=123) == 1
    assert sem.read() == (0, 3)
    assert mutex.read() == (123, 2)

    with pytest.raises(TimeoutError):
        wait_any(objs, 0, owner=456)

    mutex.kill(123)

    with pytest.raises(AbandonedError) as abandoned:
        wait_any(objs, 0, owner=456)
    assert abandoned.value.index == 1

    assert wait_any(objs, 0, owner=456) == 1

    mutex.close()

    # the same object twice
    assert sem.release(2) == 0

    objs = [sem, sem]
    assert wait_any(objs, 0, owner=456) == 0
    assert sem.read() == (1, 3)

    # The C test waits on zero objects and times out; our API refuses an empty list outright
    # (a wait that can only time out is a mistake in Python code), before touching anything.
    with pytest.raises(ValueError):
        wait_any([], 0, owner=456)
    assert sem.read() == (1, 3)

    objs = [sem] * 64
    assert wait_any(objs, 0, owner=123) == 0
    assert sem.read() == (0, 3)

    with pytest.raises(ValueError):
        wait_any([sem] * 65, 0, owner=123)
    # The C test's count of -1 has no Python equivalent: a list cannot have a negative length.

    sem.close()


def test_wait_all(sync_backend: str) -> None:
    sem = Semaphore(2, 3, backend=sync_backend)
    mutex = Mutex(backend=sync_backend)
    objs: list[Any] = [sem, mutex]

    assert wait_all(objs, 0, owner=123) == 0
    assert sem.read() == (1, 3)
    assert mutex.read() == (123, 1)

    with pytest.raises(TimeoutError):
        wait_all(objs, 0, owner=456)
    assert sem.read() == (1, 3)
    assert mutex.read() == (123, 1)

    assert wait_all(objs, 0, owner=123) == 0
    assert sem.read() == (0, 3)
    assert mutex.read() == (123, 2)

    with pytest.raises(TimeoutError):
        wait_all(objs, 0, owner=123)
    assert sem.read() == (0, 3)
    assert mutex.read() == (123, 2)

    assert sem.release(3) == 0

    assert wait_all(objs, 0, owner=123) == 0
    assert sem.read() == (2, 3)
    assert mutex.read() == (123, 3)

    mutex.kill(123)

    with pytest.raises(AbandonedError) as abandoned:
        wait_all(objs, 0, owner=123)
    assert abandoned.value.index == 0  # a wait-all answers index 0
    assert sem.read() == (1, 3)
    assert mutex.read() == (123, 1)

    mutex.close()

    event = Event(manual=True, signaled=True, backend=sync_backend)
    objs = [sem, event]

    assert wait_all(objs, 0, owner=123) == 0
    assert sem.read() == (0, 3)
    assert event.read() == (True, True)

    event.close()

    # the same object twice
    with pytest.raises(ValueError):
        wait_all([sem, sem], 0, owner=123)

    sem.close()


def test_wake_any(sync_backend: str, waiters: StartWaiter) -> None:
    sem = Semaphore(0, 3, backend=sync_backend)
    mutex = Mutex(owner=123, count=1, backend=sync_backend)
    objs: list[Any] = [sem, mutex]

    # waking the semaphore
    waiter = waiters(functools.partial(wait_any, objs, BOUND, owner=456))
    assert waiter.still_waiting()

    with sidelined(waiter):
        assert sem.release(1) == 0
        assert sem.read() == (0, 3)  # handed over: taken for the waiter before release returned

    assert waiter.outcome() == 0

    # waking the mutex; first take it again for owner 123
    assert wait_any([mutex], 0, owner=123) == 0

    waiter = waiters(functools.partial(wait_any, objs, BOUND, owner=456))
    assert waiter.still_waiting()

    assert mutex.unlock(123) == 2
    assert waiter.still_waiting()

    with sidelined(waiter):
        assert mutex.unlock(123) == 1
        assert mutex.read() == (456, 1)

    assert waiter.outcome() == 1

    mutex.close()

    # waking an auto-reset event: set and pulse each hand it to the waiter, which resets it
    event = Event(manual=False, signaled=False, backend=sync_backend)
    objs = [sem, event]

    waiter = waiters(functools.partial(wait_any, objs, BOUND, owner=456))
    assert waiter.still_waiting()

    with sidelined(waiter):
        assert event.set() is False
        assert event.read() == (False, False)

    assert waiter.outcome() == 1

    waiter = waiters(functools.partial(wait_any, objs, BOUND, owner=456))
    assert waiter.still_waiting()

    with sidelined(waiter):
        assert event.pulse() is False
        assert event.read() == (False, False)

    assert waiter.outcome() == 1

    event.close()

    # waking a manual-reset event
    event = Event(manual=True, signaled=False, backend=sync_backend)
    objs = [sem, event]

    waiter = waiters(functools.partial(wait_any, objs, BOUND, owner=456))
    assert waiter.still_waiting()

    with sidelined(waiter):
        assert event.set() is False
        assert event.read() == (True, True)

    assert waiter.outcome() == 1

    assert event.reset() is True

    waiter = waiters(functools.partial(wait_any, objs, BOUND, owner=456))
    assert waiter.still_waiting()

    with sidelined(waiter):
        assert event.pulse() is False
        assert event.read() == (True, False)

    assert waiter.outcome() == 1

    # Closing the objects while a wait is on them: the wait keeps them alive and simply times
    # out (the C test gives it 200 ms; any bound will do).
    waiter = waiters(functools.partial(wait_any, objs, 0.5, owner=123))
    assert waiter.still_waiting()

    sem.close()
    event.close()

    with pytest.raises(TimeoutError):
        waiter.outcome()


def test_wake_all(sync_backend: str, waiters: StartWaiter) -> None:
    sem = Semaphore(0, 3, backend=sync_backend)
    mutex = Mutex(owner=123, count=1, backend=sync_backend)
    manual_event = Event(manual=True, signaled=True, backend=sync_backend)
    auto_event = Event(manual=False, signaled=True, backend=sync_backend)
    objs = [sem, mutex, manual_event, auto_event]

    waiter = waiters(functools.partial(wait_all, objs, BOUND, owner=456))
    assert waiter.still_waiting()

    assert sem.release(1) == 0
    assert waiter.still_waiting()
    assert sem.read() == (1, 3)

    assert wait_any([sem], 0, owner=123) == 0

    assert mutex.unlock(123) == 1
    assert waiter.still_waiting()
    assert mutex.read() == (0, 0)

    assert manual_event.reset() is True

    assert sem.release(2) == 0
    assert sem.read() == (2, 3)

    assert auto_event.reset() is True

    assert manual_event.set() is False

    with sidelined(waiter):
        assert auto_event.set() is False

        # the last signal completed the wait-all: everything taken at once, before set returned
        assert sem.read() == (1, 3)
        assert mutex.read() == (456, 1)
        assert manual_event.read() == (True, True)
        assert auto_event.read() == (False, False)

    assert waiter.outcome() == 0

    # Closing the objects while a wait-all is on them: it times out.  (The first waiter stays
    # alive, owning the mutex for 456, so nothing here depends on abandonment.)
    waiter = waiters(functools.partial(wait_all, objs, 0.5, owner=123))
    assert waiter.still_waiting()

    for obj in objs:
        obj.close()

    with pytest.raises(TimeoutError):
        waiter.outcome()


def test_alert_any(sync_backend: str, waiters: StartWaiter) -> None:
    sems = [Semaphore(0, 2, backend=sync_backend), Semaphore(1, 2, backend=sync_backend)]
    alert = Event(manual=True, signaled=True, backend=sync_backend)

    # The C test waits on the alert alone (zero objects), which answers index 0 = the object
    # count.  Our API refuses an empty list, so one unsignaled semaphore stands in: the alert
    # answers len(objects) = 1.
    assert wait_any(sems[:1], 0, owner=123, alert=alert) == 1

    alert.reset()

    with pytest.raises(TimeoutError):
        wait_any(sems[:1], 0, owner=123, alert=alert)

    alert.set()

    assert wait_any(sems, 0, owner=123, alert=alert) == 1  # objects before the alert
    assert wait_any(sems, 0, owner=123, alert=alert) == 2

    # wakeup via the alert
    alert.reset()

    waiter = waiters(functools.partial(wait_any, sems, BOUND, owner=123, alert=alert))
    assert waiter.still_waiting()

    alert.set()

    assert waiter.outcome() == 2

    alert.close()

    # with an auto-reset alert
    alert = Event(manual=False, signaled=True, backend=sync_backend)

    assert sems[0].release(1) == 0

    assert wait_any(sems, 0, owner=123, alert=alert) == 0
    assert wait_any(sems, 0, owner=123, alert=alert) == 2
    assert alert.read() == (False, False)  # taking the alert reset it

    with pytest.raises(TimeoutError):
        wait_any(sems, 0, owner=123, alert=alert)

    alert.close()

    for sem in sems:
        sem.close()


def test_alert_all(sync_backend: str, waiters: StartWaiter) -> None:
    sems = [Semaphore(2, 2, backend=sync_backend), Semaphore(1, 2, backend=sync_backend)]
    alert = Event(manual=True, signaled=True, backend=sync_backend)

    assert wait_all(sems, 0, owner=123, alert=alert) == 0  # the objects win over the alert
    assert wait_all(sems, 0, owner=123, alert=alert) == 2

    # wakeup via the alert
    alert.reset()

    waiter = waiters(functools.partial(wait_all, sems, BOUND, owner=123, alert=alert))
    assert waiter.still_waiting()

    alert.set()

    assert waiter.outcome() == 2

    alert.close()

    # with an auto-reset alert
    alert = Event(manual=False, signaled=True, backend=sync_backend)

    assert sems[1].release(2) == 0

    assert wait_all(sems, 0, owner=123, alert=alert) == 0
    assert wait_all(sems, 0, owner=123, alert=alert) == 2
    assert alert.read() == (False, False)

    with pytest.raises(TimeoutError):
        wait_all(sems, 0, owner=123, alert=alert)

    alert.close()

    for sem in sems:
        sem.close()


# The C test runs 4 threads × 10000 loops; we keep its loop count as a cap and add a time
# budget so that a slow backend (the server's round trips) still ends in about a second.
STRESS_LOOPS = 10000
STRESS_THREADS = 4
STRESS_SECONDS = 1.0


def test_stress_wait(sync_backend: str) -> None:
    mutex = Mutex(backend=sync_backend)
    start = Event(manual=True, signaled=False, backend=sync_backend)
    counter = [0]
    loops = [0] * STRESS_THREADS
    errors: list[BaseException] = []
    deadline = [0.0]

    def stress_thread(slot: int) -> None:
        try:
            # Each thread is its own owner: the default owner is the thread's native id, as
            # the C test passes gettid().
            wait_any([start])
            for _ in range(STRESS_LOOPS):
                if time.monotonic() > deadline[0]:
                    break
                wait_any([mutex], BOUND)
                # A read-modify-write that only the mutex keeps from losing updates.
                value = counter[0]
                counter[0] = value + 1
                loops[slot] += 1
                mutex.unlock()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=stress_thread, args=(slot,)) for slot in range(STRESS_THREADS)]
    for thread in threads:
        thread.start()

    deadline[0] = time.monotonic() + STRESS_SECONDS
    assert start.set() is False

    for thread in threads:
        thread.join(STRESS_SECONDS + 4 * BOUND)
        assert not thread.is_alive()

    assert errors == []
    assert counter[0] == sum(loops)
    assert mutex.read() == (0, 0)

    start.close()
    mutex.close()
