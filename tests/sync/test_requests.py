"""The backends' asynchronous requests (:meth:`ntshim.sync.backend.Backend.request`), on
which the asyncio support builds: queued and served as a thread's wait, with no thread in
them; the maker sleeps on many at once and ends each."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from ntshim.sync import Event, Mutex, Semaphore, registry
from ntshim.sync.backend import Backend

from .helpers import BOUND, StartWaiter


def _backend(name: str) -> type[Backend]:
    return registry.backend_class(name)


def _soon(seconds: float = BOUND) -> int:
    return time.monotonic_ns() + int(seconds * 1e9)


def test_a_request_is_handed_what_it_waits_for(sync_backend: str) -> None:
    backend, me = _backend(sync_backend), threading.get_native_id()
    sem = Semaphore(0, 2, backend=sync_backend)
    request = backend.request([sem._handle], False, me, None)
    assert not request.ready()
    assert sem.release(2) == 0
    assert sem.read() == (1, 2)  # handed over inside the release: one unit is the request's
    backend.sleep([request], _soon(), backend.bell())
    assert request.ready() and request.end() == (0, False)
    assert sem.read() == (1, 2)


def test_a_request_satisfied_at_once(sync_backend: str) -> None:
    backend, me = _backend(sync_backend), threading.get_native_id()
    event = Event(signaled=True, manual=False, backend=sync_backend)
    request = backend.request([Semaphore(0, backend=sync_backend)._handle, event._handle], False, me, None)
    backend.sleep([request], _soon(), backend.bell())  # returns at once: it is ready
    assert request.end() == (1, False) and not event.is_set()


def test_a_request_ended_early_takes_nothing(sync_backend: str) -> None:
    backend, me = _backend(sync_backend), threading.get_native_id()
    sem, event = Semaphore(0, 1, backend=sync_backend), Event(backend=sync_backend)
    request = backend.request([sem._handle, event._handle], True, me, None)
    event.set()
    assert request.end() is None
    sem.release()
    assert sem.read() == (1, 1) and event.is_set()  # nobody took them


def test_a_wait_all_request_takes_all_in_one_step(sync_backend: str) -> None:
    backend, me = _backend(sync_backend), threading.get_native_id()
    other = me + 1  # another owner id: its mutex is not signaled for the request
    sem, mutex = Semaphore(0, 1, backend=sync_backend), Mutex(owner=other, count=1, backend=sync_backend)
    alert = Event(backend=sync_backend)
    request = backend.request([sem._handle, mutex._handle], True, me, alert._handle)
    sem.release()
    assert not request.ready() and sem.read() == (1, 1)  # never a part: the unit stays
    mutex.unlock(other)
    assert mutex.read() == (me, 1)  # handed over inside the unlock, with the unit
    backend.sleep([request], _soon(), backend.bell())
    assert request.end() == (0, False)
    assert sem.read() == (0, 1) and mutex.read() == (me, 1)
    mutex.unlock(me)


def test_sleep_ends_with_the_doorbell_a_request_or_the_deadline(sync_backend: str, waiters: StartWaiter) -> None:
    backend, me = _backend(sync_backend), threading.get_native_id()
    sem = Semaphore(0, backend=sync_backend)
    request = backend.request([sem._handle], False, me, None)
    bell = backend.bell()
    started = time.monotonic()
    backend.sleep([request], time.monotonic_ns() + 50_000_000, bell)
    assert time.monotonic() - started >= 0.045 and not request.ready()  # the deadline
    bell = backend.bell()
    ringer = threading.Timer(0.05, backend.ring)
    ringer.start()
    backend.sleep([request], _soon(), bell)  # the doorbell (or a spurious return: then look again)
    ringer.join()
    assert not request.ready()
    bell = backend.bell()
    backend.ring()  # a ring before the sleep counts
    backend.sleep([request], _soon(), bell)
    releaser = threading.Timer(0.05, sem.release)
    releaser.start()
    deadline = _soon()
    while not request.ready() and time.monotonic_ns() < deadline:
        backend.sleep([request], deadline, backend.bell())
    releaser.join()
    assert request.end() == (0, False)


def test_many_requests_at_once(sync_backend: str) -> None:
    """More requests than a futex_waitv can watch words (128): the maker sleeps on one."""
    backend, me = _backend(sync_backend), threading.get_native_id()
    events = [Event(manual=False, backend=sync_backend) for _ in range(200)]
    requests = [backend.request([event._handle], False, me, None) for event in events]
    for event in events[::7]:
        event.set()
    deadline = _soon()
    wanted = set(range(0, 200, 7))
    while {i for i, r in enumerate(requests) if r.ready()} != wanted and time.monotonic_ns() < deadline:
        backend.sleep(requests, deadline, backend.bell())
    assert {i for i, r in enumerate(requests) if r.ready()} == wanted
    outcomes = [r.end() for r in requests]
    assert [i for i, o in enumerate(outcomes) if o is not None] == sorted(wanted)
    assert not any(event.is_set() for event in events)


def test_a_process_has_a_bounded_number_of_futex_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    from ntshim.sync import futex

    backend, me = _backend("futex"), threading.get_native_id()
    sem = Semaphore(0, backend="futex")
    reused = [backend.request([sem._handle], False, me, None) for _ in range(len(futex._requests.pool))]
    monkeypatch.setattr(futex, "MAX_REQUESTS", futex._requests.made + 1)
    last = backend.request([sem._handle], False, me, None)  # a new block, the last allowed
    with pytest.raises(OSError, match="pending requests") as raised:
        backend.request([sem._handle], False, me, None)
    assert raised.value.errno == errno.ENOSPC  # the caller keeps the wait until one ends
    assert all(request.end() is None for request in (last, *reused))
    assert backend.request([sem._handle], False, me, None).end() is None  # an ended block serves again
