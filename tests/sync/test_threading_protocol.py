"""threading's protocol on ntshim's objects, beyond CPython's suite (test_lock_tests.py):
``with`` acquires and never closes, the NT calls keep working beside it, abandonment
surfaces as a flag and a warning, and the objects cross processes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from ntshim.errors import AbandonedError, AbandonedWarning, SemaphoreOverflowError
from ntshim.sync import (
    Barrier,
    BoundedSemaphore,
    BrokenBarrierError,
    Condition,
    Event,
    Lock,
    Mutex,
    RLock,
    Semaphore,
    wait_any,
)

from .helpers import BOUND, Child, StartWaiter

U32_MAX = 0xFFFFFFFF


# ---- with, and the NT calls beside the protocol ---------------------------------------------


@pytest.mark.parametrize("make", [Lock, RLock, Semaphore, BoundedSemaphore], ids=lambda c: c.__name__)
def test_with_acquires_and_releases_and_never_closes(sync_backend: str, make: Callable[..., Any]) -> None:
    obj = make(backend=sync_backend)
    with obj as entered:
        assert entered is obj
        if isinstance(obj, RLock):
            assert obj.acquire(blocking=False)  # recursive: a second level
            obj.release()
        else:
            assert not obj.acquire(blocking=False)  # taken: a second acquire fails
    assert not obj.closed
    assert obj.acquire(timeout=0)  # free again: the with block released it
    obj.release()
    obj.close()


def test_an_event_is_not_a_context_manager(sync_backend: str) -> None:
    event = Event(backend=sync_backend)
    with pytest.raises((TypeError, AttributeError)), event:  # type: ignore[attr-defined]
        pass
    assert not event.closed
    with contextlib.closing(event):
        pass
    assert event.closed


def test_event_defaults_and_threading_names(sync_backend: str) -> None:
    event = Event(backend=sync_backend)
    assert event.read() == (True, False)  # manual, unsignaled: threading.Event
    assert not event.is_set() and event.wait(0) is False
    assert event.set() is False  # the NT call still answers the previous state
    assert event.is_set() and event.wait(0) and event.wait() and event.is_set()  # manual: stays set
    assert event.clear() is None and not event.is_set()
    auto = Event(manual=False, signaled=True, backend=sync_backend)
    assert auto.wait(-1) is True and not auto.is_set()  # a wait resets an auto-reset event
    assert auto.wait(0.01) is False
    event.close()
    auto.close()


def test_semaphore_values_and_bounds(sync_backend: str) -> None:
    assert Semaphore(backend=sync_backend).read() == (1, U32_MAX)
    assert Semaphore(count=2, maximum=5, backend=sync_backend).read() == (2, 5)  # the old keyword
    sem = Semaphore(0, 2, backend=sync_backend)
    assert sem.release(2) == 0  # the previous count
    with pytest.raises(SemaphoreOverflowError) as raised:
        sem.release()
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, OverflowError)
    assert sem.read() == (2, 2)
    assert sem.acquire() and sem.acquire(True, 0.01) and not sem.acquire(False)
    with pytest.raises(ValueError, match="non-blocking"):
        sem.acquire(False, 1)
    bounded = BoundedSemaphore(2, backend=sync_backend)
    with pytest.raises(ValueError, match="released too many times"):
        bounded.release()
    assert bounded.read() == (2, 2)


def test_releases_that_are_not_allowed_change_nothing(sync_backend: str, waiters: StartWaiter) -> None:
    lock, rlock = Lock(backend=sync_backend), RLock(backend=sync_backend)
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(RuntimeError):
        rlock.release()
    assert not lock.locked() and not rlock.locked()
    rlock.acquire()
    other = waiters(rlock.release)  # a thread that does not own it
    with pytest.raises(RuntimeError, match="un-acquired"):
        other.outcome()
    assert rlock.read() == (threading.get_native_id(), 1)
    lock.acquire()
    waiters(lock.release).outcome()  # a Lock is released by any thread, as threading's
    assert not lock.locked()
    rlock.release()
    for bad in (-2, -0.5, float("nan")):
        with pytest.raises(ValueError):
            lock.acquire(timeout=bad)
    with pytest.raises(TypeError):
        lock.acquire(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-blocking"):
        rlock.acquire(False, 1)
    assert not lock.locked() and not rlock.locked()


def test_threading_condition_over_an_rlock(sync_backend: str) -> None:
    """threading.Condition accepts an ntshim RLock (its save/restore of every level)."""
    lock = RLock(backend=sync_backend)
    condition = threading.Condition(lock)
    ready: list[int] = []

    def producer() -> None:
        with condition:
            ready.append(1)
            condition.notify()

    with condition, lock:  # two levels: wait gives both up, and takes both back
        threading.Thread(target=producer).start()
        assert condition.wait_for(lambda: ready, BOUND)
        assert lock.read() == (threading.get_native_id(), 2)
    assert not lock.locked()


def test_wait_any_on_the_alert_alone(sync_backend: str) -> None:
    alert = Event(backend=sync_backend)
    with pytest.raises(TimeoutError):
        wait_any([], 0, alert=alert)
    alert.set()
    assert wait_any([], 0, alert=alert) == 0  # len(objects): the alert
    with pytest.raises(ValueError):
        wait_any([], 0)


# ---- abandonment through the protocol -------------------------------------------------------


#: The locks that survive their holder's death: a Lock its process's, an RLock its thread's too.
ROBUST_LOCKS = pytest.mark.parametrize("make", [Lock, RLock], ids=lambda c: c.__name__)


def _hold_and_die(lock: Lock | RLock) -> None:
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _abandoned(make: Callable[..., Any], backend: str, children: Callable[..., Child]) -> Any:
    """A new lock whose holder, a child process, was killed holding it."""
    lock = make(backend=backend)
    assert children("fork", _hold_and_die, lock).join() == -signal.SIGKILL
    return lock


@ROBUST_LOCKS
def test_a_lock_whose_holder_process_is_killed_goes_to_the_next_acquirer(
    sync_backend: str, make: Callable[..., Any], children: Callable[..., Child]
) -> None:
    lock = _abandoned(make, sync_backend, children)
    with pytest.warns(AbandonedWarning, match="abandoned"), lock:  # acquired, not raised: the with block runs
        assert lock.abandoned and lock.locked()
    assert not lock.abandoned and not lock.locked()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lock:  # an ordinary hold now
            assert not lock.abandoned


@ROBUST_LOCKS
def test_an_abandoned_warning_made_an_error_leaves_the_lock_abandoned(
    sync_backend: str, make: Callable[..., Any], children: Callable[..., Child]
) -> None:
    lock = _abandoned(make, sync_backend, children)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AbandonedWarning)
        with pytest.raises(AbandonedWarning):
            lock.acquire()
    assert not lock.locked() and not lock.abandoned  # not held: abandoned for the next acquirer
    with pytest.warns(AbandonedWarning):
        assert lock.acquire(timeout=BOUND)
    assert lock.abandoned
    lock.release()


@ROBUST_LOCKS
def test_wait_any_reports_an_abandoned_lock_and_holds_it(
    sync_backend: str, make: Callable[..., Any], children: Callable[..., Child]
) -> None:
    lock, other = _abandoned(make, sync_backend, children), Semaphore(0, backend=sync_backend)
    with pytest.raises(AbandonedError) as raised:
        wait_any([other, lock], BOUND)
    assert raised.value.index == 1 and lock.locked()
    lock.release()  # (wait_any's owner is the calling thread, as release's)
    assert not lock.locked()


def test_a_lock_is_held_by_its_process_not_its_thread(sync_backend: str) -> None:
    """A thread that exits holding a Lock abandons nothing (threading.Lock has no owner; any
    thread may release it)."""
    lock = Lock(backend=sync_backend)
    holder = threading.Thread(target=lock.acquire)
    holder.start()
    holder.join()
    assert lock.locked() and not lock.acquire(timeout=0.1)
    lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lock.acquire(timeout=0)
    assert not lock.abandoned
    lock.release()


def _hold_then_end(lock: Lock, holding: Event, end: str) -> None:
    lock.acquire()
    holding.set()
    if end == "exec":  # the process lives on as another program: it is not the holder any more
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.mark.parametrize("end", ["exit", "exec"])
def test_a_lock_whose_holder_process_exits_or_execs_is_abandoned(
    sync_backend: str, children: Callable[..., Child], end: str
) -> None:
    lock, holding = Lock(backend=sync_backend), Event(backend=sync_backend)
    holder = children("fork", _hold_then_end, lock, holding, end)
    try:
        assert holding.wait(BOUND)
        with pytest.warns(AbandonedWarning):
            assert lock.acquire(timeout=4 * BOUND)
        assert lock.abandoned
        lock.release()
        if end == "exec":
            assert holder.process.is_alive()  # abandoned by the exec itself, not by an exit
    finally:
        holder.kill()


def _release(lock: Lock) -> bool:
    was_locked = lock.locked()
    lock.release()
    return was_locked


def test_a_lock_is_released_by_another_process(sync_backend: str, children: Callable[..., Child]) -> None:
    lock = Lock(backend=sync_backend)
    lock.acquire()
    assert children("spawn", _release, lock).result() is True
    assert not lock.locked()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lock.acquire(timeout=0)
    lock.release()


def test_a_thread_that_exits_holding_an_rlock_abandons_it(sync_backend: str) -> None:
    lock = RLock(backend=sync_backend)
    holder = threading.Thread(target=lock.acquire)
    holder.start()
    holder.join()
    with pytest.warns(AbandonedWarning):
        assert lock.acquire(timeout=BOUND)
    assert lock.abandoned
    lock.release()
    assert not lock.abandoned


# ---- across processes --------------------------------------------------------------------------


def _take_turns(lock: Lock, done: Event, sem: Semaphore) -> str:
    with lock, sem:
        done.set()
    return "ran"


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_the_objects_pass_to_children_of_every_start_method(
    sync_backend: str, method: str, children: Callable[..., Child]
) -> None:
    lock, done, sem = Lock(backend=sync_backend), Event(backend=sync_backend), BoundedSemaphore(backend=sync_backend)
    lock.acquire()
    child = children(method, _take_turns, lock, done, sem)
    assert not done.wait(0.2)  # the child waits for the lock
    lock.release()
    assert child.result() == "ran"
    assert done.is_set() and not lock.locked() and sem.read() == (1, 1)
    for obj in (lock, done, sem):
        assert type(pickle.loads(pickle.dumps(obj))) is type(obj)


def test_objects_made_by_the_protocol_are_the_nt_objects(sync_backend: str, unique_name: Callable[..., str]) -> None:
    name = unique_name("rlock")
    lock = RLock(name=name, backend=sync_backend)
    assert isinstance(lock, Mutex)
    same = Mutex.open(name, backend=sync_backend)
    with lock:
        assert same.read() == (threading.get_native_id(), 1)
    same.close()
    lock.close()


def _hold_until_killed(lock: Lock | RLock, holding: Event) -> None:
    with lock:
        holding.set()
        threading.Event().wait()  # until SIGKILL


@ROBUST_LOCKS
def test_waiters_proceed_when_the_holder_is_killed_inside_with(
    sync_backend: str, make: Callable[..., Any], children: Callable[..., Child], waiters: StartWaiter
) -> None:
    lock, holding = make(backend=sync_backend), Event(backend=sync_backend)
    holder = children("fork", _hold_until_killed, lock, holding)
    assert holding.wait(BOUND)

    def take() -> bool:
        with lock:
            return lock.abandoned

    with pytest.warns(AbandonedWarning):  # (the warning machinery is the process's: the thread's is seen)
        waiter = waiters(take)
        assert waiter.still_waiting()
        holder.kill()
        assert waiter.outcome() is True  # it got the lock, learnt it was abandoned, and released it
    assert not lock.locked()


#: What a pool worker's initializer was given.
_pool_objects: tuple[Lock, Semaphore] | None = None


def _init_pool(lock: Lock, done: Semaphore) -> None:
    global _pool_objects
    _pool_objects = (lock, done)


def _pool_task(extra: Event) -> int:
    assert _pool_objects is not None
    lock, done = _pool_objects
    with lock:
        done.release()
    extra.set()
    return os.getpid()


def test_a_process_pool_shares_the_objects(sync_backend: str) -> None:
    """Objects in a ProcessPoolExecutor's initializer arguments and in task arguments."""
    lock, done, extra = Lock(backend=sync_backend), Semaphore(0, backend=sync_backend), Event(backend=sync_backend)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        2, mp_context=context, initializer=_init_pool, initargs=(lock, done)
    ) as pool:
        pids = list(pool.map(_pool_task, [extra] * 8, timeout=4 * BOUND))
    assert len(pids) == 8 and done.read()[0] == 8 and extra.is_set() and not lock.locked()


# ---- Condition across processes -----------------------------------------------------------------


def _wait_on(condition: Condition, ready: Semaphore, woken: Semaphore) -> bool:
    with condition:
        ready.release()
        notified = condition.wait(4 * BOUND)
    woken.release()
    return notified


def test_a_condition_wakes_waiters_in_other_processes(sync_backend: str, children: Callable[..., Child]) -> None:
    condition = Condition(backend=sync_backend)
    ready, woken = Semaphore(0, backend=sync_backend), Semaphore(0, backend=sync_backend)
    sleepers = [children(method, _wait_on, condition, ready, woken) for method in ("fork", "spawn", "fork")]
    for _ in sleepers:
        assert ready.acquire(timeout=4 * BOUND)
    with condition:  # every sleeper is inside wait() once it has given the lock up
        condition.notify()
    assert woken.acquire(timeout=BOUND) and not woken.acquire(timeout=0.2)  # exactly one
    with condition:
        condition.notify_all()
    assert woken.acquire(timeout=BOUND) and woken.acquire(timeout=BOUND)
    assert [sleeper.result() for sleeper in sleepers] == [True] * 3


def test_a_sleeper_killed_while_it_waits_does_not_block_notify(
    sync_backend: str, children: Callable[..., Child], waiters: StartWaiter
) -> None:
    condition = Condition(backend=sync_backend)
    ready, woken = Semaphore(0, backend=sync_backend), Semaphore(0, backend=sync_backend)
    dead = children("fork", _wait_on, condition, ready, woken)
    assert ready.acquire(timeout=4 * BOUND)
    with condition:
        pass  # it holds the lock no more: it sleeps
    dead.kill()
    live = waiters(lambda: _wait_on(condition, ready, woken))
    assert ready.acquire(timeout=BOUND)
    with condition:
        condition.notify_all()  # returns at once: nobody must acknowledge
    assert live.outcome() is True
    assert woken.read()[0] == 1


def _wait_on_named(name: str, backend: str) -> bool:
    condition = Condition(name=name, backend=backend)  # opens what the parent made
    ready = Semaphore.open(f"{name}-ready", backend=backend)
    with condition:
        ready.release()
        return condition.wait(4 * BOUND)


def test_a_named_condition_is_shared_by_unrelated_processes(
    sync_backend: str, children: Callable[..., Child], unique_name: Callable[..., str]
) -> None:
    name = unique_name("cond")
    condition = Condition(name=name, backend=sync_backend)
    ready = Semaphore(0, name=f"{name}-ready", backend=sync_backend)
    sleeper = children("spawn", _wait_on_named, name, sync_backend)
    assert ready.acquire(timeout=4 * BOUND)
    with condition:
        condition.notify()
    assert sleeper.result() is True


# ---- Barrier across processes ---------------------------------------------------------------------


def _meet(barrier: Barrier) -> int:
    return barrier.wait(4 * BOUND)


def test_a_barrier_across_processes(sync_backend: str, children: Callable[..., Child]) -> None:
    barrier = Barrier(3, backend=sync_backend)
    parties = [children(method, _meet, barrier) for method in ("fork", "spawn")]
    mine = barrier.wait(4 * BOUND)
    assert sorted([mine, *(party.result() for party in parties)]) == [0, 1, 2]
    assert barrier.n_waiting == 0 and not barrier.broken


def _meet_and_die(barrier: Barrier, waiting: Event) -> None:
    waiting.set()
    barrier.wait()  # killed while it waits


@pytest.mark.filterwarnings("error::ntshim.errors.AbandonedWarning")  # the barrier answers by breaking, silently
@pytest.mark.parametrize("where", ["waiting", "inside the lock", "inside the lock while another waits"])
def test_a_party_that_dies_breaks_the_barrier(
    sync_backend: str, where: str, children: Callable[..., Child], waiters: StartWaiter
) -> None:
    """Instead of leaving the others waiting for ever: BrokenBarrierError for every party."""
    barrier = Barrier(3, backend=sync_backend)
    if where == "waiting":
        waiting = Event(backend=sync_backend)
        doomed = children("fork", _meet_and_die, barrier, waiting)
        assert waiting.wait(4 * BOUND)
        other = waiters(barrier.wait)
        assert other.still_waiting()
        doomed.kill()
    elif where == "inside the lock":
        doomed = children("fork", _hold_until_killed, barrier._cond._lock, waiting := Event(backend=sync_backend))
        assert waiting.wait(4 * BOUND)
        other = waiters(barrier.wait)
        doomed.kill()
    else:  # the waiting party finds the lock abandoned as it takes it back inside the condition's wait
        other = waiters(barrier.wait)
        assert other.still_waiting()
        doomed = children("fork", _hold_until_killed, barrier._cond._lock, waiting := Event(backend=sync_backend))
        assert waiting.wait(4 * BOUND)
        doomed.kill()
    with pytest.raises(BrokenBarrierError):
        other.outcome()
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken and barrier.n_waiting == 0


def test_a_named_barrier_knows_its_parties(sync_backend: str, unique_name: Callable[..., str]) -> None:
    name = unique_name("barrier")
    barrier = Barrier(2, name=name, backend=sync_backend)
    again = Barrier(2, name=name, backend=sync_backend)
    assert again.parties == 2
    with pytest.raises(ValueError, match="2 parties"):
        Barrier(3, name=name, backend=sync_backend)
    for bad, error in ((0, ValueError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(error):
            Barrier(bad, backend=sync_backend)  # type: ignore[arg-type]
    again.close()
    barrier.close()


def test_a_barriers_parts_live_on_its_backend(sync_backend: str) -> None:
    barrier = Barrier(2, backend=sync_backend)
    condition = barrier._cond
    parts = [
        condition._lock.lock,
        condition._sleep,
        condition._waiters,
        barrier._count,
        barrier._state,
        *barrier._seats,
    ]
    assert {part.backend for part in parts} == {sync_backend}


@pytest.mark.parametrize("make", [Lock, RLock, Semaphore, BoundedSemaphore], ids=lambda c: c.__name__)
def test_the_hot_methods_answer_alike_in_c_and_python(sync_backend: str, make: Callable[..., Any]) -> None:
    """On futex an open object's acquire, release, locked and with come from C
    (_core/sync/hot.c), which hands every other call to the Python forms: the same results
    and exceptions, open or closed."""
    lock = make(backend=sync_backend)
    assert (lock._slot != 0) is (sync_backend == "futex")
    assert "acquire" not in vars(type(lock)) and "release" not in vars(type(lock))  # the C type's
    recursive = make is RLock
    assert lock.acquire()
    assert lock.acquire(False) is recursive and lock.acquire(blocking=False) is recursive
    if recursive:
        lock.release()
        lock.release()
    else:
        assert not lock.acquire(timeout=0.01)  # a timeout: Python's checks, then the same wait
    if make in (Lock, RLock):
        assert lock.locked()
    lock.release()
    with pytest.raises((RuntimeError, ValueError)):  # unheld lock, or a semaphore past its bound
        (lock.release if make is not Semaphore else functools.partial(lock.release, U32_MAX))()
    with pytest.raises(TypeError, match="at most 2 arguments"):
        lock.acquire(True, -1, 3)
    with pytest.raises(TypeError):
        lock.acquire(bogus=1)
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(False, 1)
    with lock as entered:
        assert entered is lock
    lock.close()
    assert lock._slot == 0
    for call in (lock.acquire, lock.release, lock.__enter__):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_an_events_hot_methods_answer_alike_in_c_and_python(sync_backend: str) -> None:
    event, auto = Event(backend=sync_backend), Event(manual=False, backend=sync_backend)
    assert "wait" not in vars(Event)  # the C type's
    assert event.set() is False and event.set() is True and event.is_set()
    assert event.wait() and event.wait(0) and event.wait(0.0) and event.wait(timeout=0.01)
    event.clear()
    assert not event.is_set() and event.wait(0) is False and event.wait(-1) is False
    with pytest.raises(TypeError):
        event.wait("0")  # type: ignore[arg-type]
    auto.set()
    assert auto.wait(0) and not auto.is_set()  # the wait took it
    event.close()
    for call in (event.set, event.is_set, event.clear, event.wait):
        with pytest.raises(ValueError, match="closed"):
            call()


@pytest.mark.parametrize("make", [Lock, RLock], ids=lambda c: c.__name__)
def test_the_abandoned_warning_names_the_callers_line(
    sync_backend: str, make: Callable[..., Any], children: Callable[..., Child]
) -> None:
    """Whether the call came through C or Python, the warning points at the caller."""
    for take in (lambda lock: lock.acquire(), lambda lock: lock.acquire(timeout=BOUND)):
        lock = _abandoned(make, sync_backend, children)
        with pytest.warns(AbandonedWarning) as caught:
            assert take(lock)
        assert caught[0].filename == __file__
        lock.release()
