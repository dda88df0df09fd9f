"""Waiting from asyncio: the loop runs on, no thread per wait, cancellation takes nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ntshim.errors import AbandonedWarning
from ntshim.sync import MAX_WAIT_OBJECTS, Event, Lock, RLock, Semaphore, wait_all, wait_all_async, wait_any_async

from .helpers import BOUND, Child, StartWaiter


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 4 * BOUND))


def test_an_event_is_awaited_while_the_loop_runs_on(sync_backend: str) -> None:
    event = Event(backend=sync_backend)

    async def main() -> tuple[bool, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticking = asyncio.create_task(ticker())
        threading.Timer(0.1, event.set).start()
        woken = await event.wait_async()
        ticking.cancel()
        return woken, ticks

    woken, ticks = run(main())
    assert woken and ticks > 1 and event.is_set()  # manual: the wait left it set


def _set_later(event: Event) -> str:
    event.set()
    return "set"


def test_an_event_set_by_another_process(sync_backend: str, children: Callable[..., Child]) -> None:
    event = Event(manual=False, backend=sync_backend)

    async def main() -> bool:
        waiting = asyncio.create_task(event.wait_async(BOUND))
        await asyncio.sleep(0.05)
        child = children("spawn", _set_later, event)
        woken = await waiting
        assert child.result() == "set"
        return woken

    assert run(main()) is True
    assert not event.is_set()  # auto-reset: the wait took it


def test_timeouts_answer_as_the_blocking_forms(sync_backend: str) -> None:
    sem, event = Semaphore(0, backend=sync_backend), Event(backend=sync_backend)

    async def main() -> None:
        assert await sem.acquire_async(0.02) is False
        assert await sem.acquire_async(-1) is False  # a negative timeout polls
        assert await event.wait_async(0) is False
        with pytest.raises(TimeoutError):
            await wait_any_async([sem, event], 0.02)
        alert = Event(signaled=True, backend=sync_backend)
        assert await wait_any_async([sem], 1, alert=alert) == 1  # len(objects): the alert
        assert await wait_any_async([], 1, alert=alert) == 0

    run(main())


def test_many_waits_cost_no_thread_each(sync_backend: str) -> None:
    """More pending waits than one wait can name (64) are served, by one thread."""
    count = 3 * MAX_WAIT_OBJECTS
    events = [Event(manual=False, backend=sync_backend) for _ in range(count)]

    async def main() -> list[bool]:
        before = threading.active_count()
        waits = [asyncio.create_task(event.wait_async(4 * BOUND)) for event in events]
        await asyncio.sleep(0.1)
        assert threading.active_count() <= before + 1  # at most the dispatcher, started now
        for event in reversed(events):
            event.set()
        return list(await asyncio.gather(*waits))

    assert run(main()) == [True] * count
    assert not any(event.is_set() for event in events)
    for event in events:
        event.close()


@pytest.mark.parametrize("kind", ["semaphore", "auto event", "lock", "rlock"])
def test_cancelling_takes_nothing(sync_backend: str, kind: str) -> None:
    """A unit (or an auto-reset event) handed over as the task is cancelled is given back:
    whichever way the race goes, the object ends as it was before the wait."""

    def make() -> Any:
        if kind == "semaphore":
            return Semaphore(0, 1, backend=sync_backend)
        if kind in ("lock", "rlock"):
            lock = Lock(backend=sync_backend) if kind == "lock" else RLock(backend=sync_backend)
            lock.acquire()  # by this thread; released below, as the task waits
            return lock
        return Event(manual=False, backend=sync_backend)

    async def attempt(delay: float) -> tuple[Any, ...]:
        obj = make()
        waiting = asyncio.create_task(obj.wait_async() if isinstance(obj, Event) else obj.acquire_async())
        await asyncio.sleep(delay)
        if isinstance(obj, Event):
            obj.set()
        else:
            obj.release()  # hand-off: if the dispatcher waits already, the unit is its now
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # A wait started after the cancellation is served after whatever was given back.
        barrier = Event(signaled=True, backend=sync_backend)
        assert await barrier.wait_async(BOUND)
        state = (obj.locked(),) if isinstance(obj, Lock) else obj.read()
        obj.close()
        barrier.close()
        return state

    async def main() -> set[tuple[Any, ...]]:
        return {await attempt(delay) for delay in (0, 0, 0.001, 0.002, 0.005, 0.01) * 4}

    expected = {"auto event": (False, True), "rlock": (0, 0), "lock": (False,)}.get(kind, (1, 1))
    assert run(main()) == {expected}


def test_async_with(sync_backend: str) -> None:
    sem, lock, rlock = Semaphore(1, 1, backend=sync_backend), Lock(backend=sync_backend), RLock(backend=sync_backend)

    async def main() -> None:
        async with sem, lock, rlock:
            assert sem.read()[0] == 0 and lock.locked() and rlock.locked()
        assert sem.read()[0] == 1 and not lock.locked() and not rlock.locked()
        with pytest.raises(ValueError):
            await wait_any_async([], 0)

    run(main())


def test_an_rlock_taken_by_a_task_is_the_tasks(sync_backend: str, waiters: StartWaiter) -> None:
    """Owned per task: its recursion counts for it, other tasks and threads wait, and only
    it releases."""
    lock = RLock(backend=sync_backend)

    async def main() -> list[object]:
        seen: list[object] = []
        holding, done = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with lock:
                assert await lock.acquire_async(0)  # recursion: one more level for this task
                lock.release()
                with pytest.raises(ValueError, match="this task holds"):
                    await wait_any_async([Event(backend=sync_backend), lock], 0)
                holding.set()
                await done.wait()
            seen.append("released")

        async def other() -> None:
            await holding.wait()
            seen.append(await lock.acquire_async(0.05))  # held by the other task
            thread = waiters(lambda: lock.acquire(timeout=0.05))  # and by no thread of ours
            seen.append(await asyncio.to_thread(thread.outcome))
            with pytest.raises(RuntimeError):
                await asyncio.to_thread(lock.release)  # a thread does not hold it
            done.set()
            seen.append(await lock.acquire_async(BOUND))  # handed over once the holder lets go
            lock.release()

        await asyncio.gather(holder(), other())
        return seen

    assert run(main()) == [False, False, "released", True]
    assert not lock.locked()


def _hold_in_a_task_and_die(lock: Lock | RLock, holding: Event) -> None:
    async def main() -> None:
        async with lock:
            holding.set()
            await asyncio.Event().wait()  # until SIGKILL

    asyncio.run(main())


@pytest.mark.parametrize("make", [Lock, RLock], ids=lambda c: c.__name__)
def test_a_task_holders_process_killed_abandons_the_lock(
    sync_backend: str, make: Callable[..., Any], children: Callable[..., Child]
) -> None:
    """The dispatcher thread acquires for tasks and lives as long as its process: the
    process's death abandons what its tasks held, and the next acquirer learns it."""
    lock, holding = make(backend=sync_backend), Event(backend=sync_backend)
    holder = children("fork", _hold_in_a_task_and_die, lock, holding)
    assert holding.wait(BOUND)

    async def take() -> tuple[bool, bool]:
        taken = await lock.acquire_async(4 * BOUND)
        abandoned = lock.abandoned
        lock.release()  # by this task, which holds it (another task could not)
        return taken, abandoned

    async def main() -> tuple[bool, bool]:
        waiting = asyncio.create_task(take())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        holder.kill()
        with pytest.warns(AbandonedWarning):
            return await waiting

    assert run(main()) == (True, True)
    assert not lock.locked() and not lock.abandoned


def test_a_task_that_ends_holding_an_rlock_abandons_it(sync_backend: str) -> None:
    """As a thread's exit does: the next acquirer gets it, warned."""
    lock = RLock(backend=sync_backend)

    async def leaky() -> None:
        await lock.acquire_async()  # and never released

    async def main() -> tuple[bool, bool]:
        await asyncio.create_task(leaky())
        await asyncio.sleep(0)  # the task's done callbacks run
        with pytest.warns(AbandonedWarning):
            taken = await lock.acquire_async(BOUND)
        abandoned = lock.abandoned
        lock.release()
        return taken, abandoned

    assert run(main()) == (True, True)
    assert not lock.locked()


def test_a_task_taking_a_lock_in_a_loop_adds_one_end_callback(sync_backend: str) -> None:
    """What abandons a task's locks when it ends is registered once per task, not per
    acquisition (they piled up in a task that takes a lock in a loop)."""
    lock = RLock(backend=sync_backend)
    registered: list[object] = []

    class CountingTask(asyncio.Task):  # type: ignore[type-arg]
        def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
            if getattr(fn, "__name__", "") == "task_ended":
                registered.append(fn)
            super().add_done_callback(fn, context=context)

    async def worker() -> None:
        for _ in range(20):
            async with lock:
                pass

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(lambda loop, coro, **kw: CountingTask(coro, loop=loop, **kw))
        await asyncio.create_task(worker())

    run(main())
    assert len(registered) == 1
    assert not lock.locked()


# ---- wait_all_async ----------------------------------------------------------------------------


def test_wait_all_async_takes_everything_in_one_step(sync_backend: str) -> None:
    sem, event = Semaphore(0, 1, backend=sync_backend), Event(manual=False, backend=sync_backend)
    lock = Lock(backend=sync_backend)

    async def main() -> int:
        waiting = asyncio.create_task(wait_all_async([sem, event, lock], BOUND))
        await asyncio.sleep(0.05)
        sem.release()
        await asyncio.sleep(0.05)
        assert not waiting.done() and sem.read() == (1, 1)  # never a part: the unit stays
        event.set()
        return await waiting

    assert run(main()) == 0
    assert sem.read() == (0, 1) and not event.is_set() and lock.locked()
    lock.release()


def test_wait_all_async_answers_as_wait_all(sync_backend: str) -> None:
    sem, event = Semaphore(0, backend=sync_backend), Event(backend=sync_backend)
    alert = Event(backend=sync_backend)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await wait_all_async([sem, event], 0.02)
        event.set()
        with pytest.raises(TimeoutError):
            await wait_all_async([sem, event], 0)
        alert.set()
        assert await wait_all_async([sem, event], BOUND, alert=alert) == 2  # len(objects): the alert
        with pytest.raises(ValueError, match="twice"):
            await wait_all_async([sem, sem], 0)
        with pytest.raises(ValueError):
            await wait_all_async([], 0, alert=alert)

    run(main())
    assert sem.read()[0] == 0 and event.is_set()  # nothing taken by the waits that failed


def test_an_async_wait_all_takes_its_turn_with_threads(sync_backend: str, waiters: StartWaiter) -> None:
    """The request is queued like a thread's wait: a thread that waited first is served first."""
    sem, event = Semaphore(0, 1, backend=sync_backend), Event(backend=sync_backend)
    first = waiters(lambda: wait_all([sem, event], 4 * BOUND))
    assert first.still_waiting()

    async def main() -> list[Any]:
        waiting = asyncio.create_task(wait_all_async([sem, event], 4 * BOUND))
        await asyncio.sleep(0.05)
        event.set()
        sem.release()  # the thread's: it waited first
        await asyncio.sleep(0.05)
        seen = [first.returned.is_set(), waiting.done()]
        sem.release()
        seen.append(await waiting)
        return seen

    assert run(main()) == [True, False, 0]
    assert first.outcome() == 0


@pytest.mark.parametrize("wait_all", [False, True], ids=["any", "all"])
def test_a_pulse_reaches_pending_async_waits(sync_backend: str, wait_all: bool) -> None:
    event = Event(manual=True, backend=sync_backend)
    wait = wait_all_async if wait_all else wait_any_async

    async def main() -> list[int]:
        waits = [asyncio.create_task(wait([event], BOUND)) for _ in range(3)]
        await asyncio.sleep(0.1)
        event.pulse()
        return list(await asyncio.gather(*waits))

    assert run(main()) == [0, 0, 0]
    assert not event.is_set()


def test_cancelling_a_wait_all_takes_nothing(sync_backend: str) -> None:
    async def attempt(delay: float) -> tuple[Any, ...]:
        sem, event = Semaphore(0, 1, backend=sync_backend), Event(manual=False, backend=sync_backend)
        waiting = asyncio.create_task(wait_all_async([sem, event]))
        await asyncio.sleep(delay)
        event.set()
        sem.release()  # hand-off: if the request is queued, both are its now
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        barrier = Event(signaled=True, backend=sync_backend)
        assert await barrier.wait_async(BOUND)  # served after whatever was given back
        state = sem.read(), event.read()
        for obj in (sem, event, barrier):
            obj.close()
        return state

    async def main() -> set[tuple[Any, ...]]:
        return {await attempt(delay) for delay in (0, 0, 0.001, 0.002, 0.005, 0.01) * 4}

    assert run(main()) == {((1, 1), (False, True))}


def test_many_wait_alls_cost_no_thread_each(sync_backend: str) -> None:
    count = 2 * MAX_WAIT_OBJECTS
    pairs = [(Semaphore(0, 1, backend=sync_backend), Event(backend=sync_backend)) for _ in range(count)]

    async def main() -> list[int]:
        before = threading.active_count()
        waits = [asyncio.create_task(wait_all_async(list(pair), 4 * BOUND)) for pair in pairs]
        await asyncio.sleep(0.1)
        assert threading.active_count() <= before + 1  # at most the dispatcher, started now
        for sem, event in reversed(pairs):
            event.set()
            sem.release()
        return list(await asyncio.gather(*waits))

    assert run(main()) == [0] * count
    assert all(sem.read()[0] == 0 for sem, _ in pairs)


def test_a_task_owns_the_mutexes_its_wait_all_took(sync_backend: str) -> None:
    first, second = RLock(backend=sync_backend), RLock(backend=sync_backend)

    async def main() -> list[bool]:
        assert await wait_all_async([first, second], BOUND) == 0
        other = asyncio.create_task(first.acquire_async(0.05))  # another task: not the owner
        seen = [first.locked(), second.locked(), not await other]
        first.release()
        second.release()
        return seen

    assert run(main()) == [True, True, True]
    assert not first.locked() and not second.locked()


ROOMLESS = """
import asyncio, sys
from ntshim.sync import Event, futex
from ntshim.sync.server import client

futex.MAX_REQUESTS = client.MAX_REQUEST_CONNECTIONS = 2  # room for 2 started requests


async def main():
    events = [Event(backend=sys.argv[1]) for _ in range(6)]
    waits = [asyncio.create_task(event.wait_async(10)) for event in events]
    await asyncio.sleep(0.1)
    for event in events:
        event.set()
    print(await asyncio.wait_for(asyncio.gather(*waits), 20))


asyncio.run(main())
"""


def test_waits_beyond_the_backends_room_start_as_room_is_made(sync_backend: str) -> None:
    """More waits than the backend has room for requests: the rest wait, in order, and all
    are served (the waits after the first that found no room were once dropped)."""
    proc = subprocess.run(
        [sys.executable, "-c", ROOMLESS, sync_backend], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([True] * 6)


def test_giving_back_what_closed_objects_took_raises_nothing(sync_backend: str) -> None:
    """What a wait took is given back when nobody awaits it (its loop closed, its task
    cancelled), on the dispatcher's thread; by then the objects may be closed, here or by
    every process.  Nothing is left to give back then, and nothing may escape: it would end
    the dispatcher's thread and hang every other pending wait (the fuzz walk found this)."""
    from ntshim.sync import aio

    mutex, lock = RLock(backend=sync_backend), Lock(backend=sync_backend)
    semaphore, event = Semaphore(0, backend=sync_backend), Event(manual=False, backend=sync_backend)
    dispatcher = aio._dispatcher(mutex._backend)
    key = mutex._handle.key
    with dispatcher.lock:
        dispatcher.held[key] = aio._Hold(mutex, None)  # as a task's hold the wait took
    for obj in (mutex, lock, semaphore, event):
        obj.close()
    aio._give_back(dispatcher, [mutex, lock, semaphore, event], False)
    assert key not in dispatcher.held
    assert dispatcher.thread.is_alive()
    assert run(wait_any_async([Semaphore(1, backend=sync_backend)], BOUND)) == 0  # it still serves waits
