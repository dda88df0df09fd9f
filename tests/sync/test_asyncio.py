"""Waiting from asyncio: the loop runs on, no thread per wait, cancellation takes nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ntshim.sync import MAX_WAIT_OBJECTS, Event, Lock, Mutex, RLock, Semaphore, wait_any_async

from .helpers import BOUND, Child


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


@pytest.mark.parametrize("kind", ["semaphore", "auto event", "lock"])
def test_cancelling_takes_nothing(sync_backend: str, kind: str) -> None:
    """A unit (or an auto-reset event) handed over as the task is cancelled is given back:
    whichever way the race goes, the object ends as it was before the wait."""

    def make() -> Any:
        if kind == "semaphore":
            return Semaphore(0, 1, backend=sync_backend)
        if kind == "lock":
            lock = Lock(backend=sync_backend)
            lock.acquire()
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
        state = obj.read()
        obj.close()
        barrier.close()
        return state

    async def main() -> set[tuple[Any, ...]]:
        return {await attempt(delay) for delay in (0, 0, 0.001, 0.002, 0.005, 0.01) * 4}

    expected = (False, True) if kind == "auto event" else (1, 1)
    assert run(main()) == {expected}


def test_async_with_and_what_is_not_served(sync_backend: str) -> None:
    sem, lock = Semaphore(1, 1, backend=sync_backend), Lock(backend=sync_backend)

    async def main() -> None:
        async with sem, lock:
            assert sem.read()[0] == 0 and lock.locked()
        assert sem.read()[0] == 1 and not lock.locked()
        for mutex in (Mutex(backend=sync_backend), RLock(backend=sync_backend)):
            with pytest.raises(TypeError, match="mutex"):
                await wait_any_async([sem, mutex], 0)
            assert not hasattr(mutex, "acquire_async")
        with pytest.raises(ValueError):
            await wait_any_async([], 0)

    run(main())
    assert sem.read()[0] == 1  # the refused waits took nothing
