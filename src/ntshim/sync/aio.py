"""Waiting from asyncio without a thread per wait.

Futexes cannot be polled, so an event loop cannot watch the objects itself.  Instead each
process has one dispatcher thread per backend, which waits on behalf of every pending
asynchronous request at once: one ``wait_any`` over the objects of all of them (the oldest
first, at most :data:`~ntshim.sync.backend.MAX_WAIT_OBJECTS`), with a private auto-reset
event as its alert, which a new or cancelled request sets so that the dispatcher waits again
on the new set.  What the dispatcher acquires it hands to the request's event loop.

A request that is cancelled, or whose loop is gone, takes nothing: what was acquired for it
is given back (a semaphore unit released, an auto-reset event set again, as the server
backend's rollback does).  A pulse that woke a request being cancelled is gone for it, as
for any waiter that stops waiting.

Mutexes are not served here yet: a wait names one owner for all its objects, and an
asynchronous mutex wait is owned by its task, so one dispatcher wait cannot serve several
tasks' mutexes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .backend import MAX_WAIT_OBJECTS, Backend, Handle

if TYPE_CHECKING:
    from .objects import Event, SyncObject


class _Request:
    """One asynchronous wait-any: its objects, deadline and the future its loop awaits."""

    __slots__ = ("deadline", "future", "loop", "objects")

    def __init__(self, objects: Sequence[SyncObject], deadline: int | None, loop: asyncio.AbstractEventLoop) -> None:
        self.objects = list(objects)
        self.deadline = deadline
        self.loop = loop
        self.future: asyncio.Future[int] = loop.create_future()


def _give_back(obj: SyncObject) -> None:
    """Undo an acquisition nobody will use (the request was cancelled or its loop closed)."""
    from .objects import Event, Semaphore

    if isinstance(obj, Semaphore):
        try:
            obj._live().sem_release(1)
        except OverflowError:  # others filled it meanwhile: there is no room for the unit, nor need
            pass
    elif isinstance(obj, Event) and not obj.read()[0]:  # an auto-reset event: the wait reset it
        obj._live().event_set()


def _settle(request: _Request, index: int | None, error: BaseException | None) -> None:
    """In the request's loop: deliver the outcome, or give back what nobody awaits any more."""
    if request.future.done():  # cancelled meanwhile
        if index is not None:
            _give_back(request.objects[index])
    elif error is not None:
        request.future.set_exception(error)
    elif index is None:
        request.future.set_exception(TimeoutError("the wait timed out"))
    else:
        request.future.set_result(index)


class _Dispatcher:
    """The thread that waits for every pending request of one backend in this process."""

    def __init__(self, backend: type[Backend]) -> None:
        from .objects import Event

        self.backend = backend
        self.wake: Event = Event(manual=False, backend=backend.name)
        self.lock = threading.Lock()
        self.pending: list[_Request] = []
        self.thread = threading.Thread(target=self._run, name=f"ntshim-sync-aio-{backend.name}", daemon=True)
        self.thread.start()

    def submit(self, request: _Request) -> None:
        with self.lock:
            self.pending.append(request)
        self.wake.set()

    def withdraw(self, request: _Request) -> None:
        with self.lock:
            if request in self.pending:
                self.pending.remove(request)
        self.wake.set()

    def _deliver(self, request: _Request, index: int | None, error: BaseException | None = None) -> None:
        with self.lock:
            if request in self.pending:
                self.pending.remove(request)
        try:
            request.loop.call_soon_threadsafe(_settle, request, index, error)
        except RuntimeError:  # the loop is closed: nobody will take it
            if index is not None:
                _give_back(request.objects[index])

    def _round(self) -> tuple[list[tuple[_Request, int]], list[Handle], int | None]:
        """This round's requests (the oldest first, as many as fit) and their handles."""
        slots: list[tuple[_Request, int]] = []
        handles: list[Handle] = []
        deadline: int | None = None
        with self.lock:
            requests = list(self.pending)
        for request in requests:
            if len(handles) + len(request.objects) > MAX_WAIT_OBJECTS:
                break
            if any(obj.closed for obj in request.objects):
                self._deliver(request, None, ValueError("an object of the wait was closed while it waited"))
                continue
            for position, obj in enumerate(request.objects):
                slots.append((request, position))
                handles.append(obj._handle)
            if request.deadline is not None and (deadline is None or request.deadline < deadline):
                deadline = request.deadline
        return slots, handles, deadline

    def _run(self) -> None:
        owner = threading.get_native_id()
        wake = self.wake._handle
        while True:
            slots, handles, deadline = self._round()
            try:
                index, _ = self.backend.wait(handles, False, deadline, owner, wake)
            except TimeoutError:
                now = time.monotonic_ns()
                for request, position in slots:
                    if position == 0 and request.deadline is not None and request.deadline <= now:
                        self._deliver(request, None)
                continue
            except Exception as error:  # the backend failed (a damaged arena, a killed server): tell them all
                for request, position in slots:
                    if position == 0:
                        self._deliver(request, None, error)
                if not slots:
                    time.sleep(0.1)  # nothing to tell; do not spin on a failing backend
                continue
            if index < len(slots):  # else the wake event: the requests changed
                request, position = slots[index]
                self._deliver(request, position)


_dispatchers: dict[str, _Dispatcher] = {}
_dispatchers_lock = threading.Lock()


def _forget_dispatchers() -> None:
    _dispatchers.clear()  # a forked child has none of the threads; it starts its own


os.register_at_fork(after_in_child=_forget_dispatchers)


def _dispatcher(backend: type[Backend]) -> _Dispatcher:
    with _dispatchers_lock:
        dispatcher = _dispatchers.get(backend.name)
        if dispatcher is None:
            dispatcher = _dispatchers[backend.name] = _Dispatcher(backend)
        return dispatcher


async def wait_any(objects: Sequence[SyncObject], deadline: int | None) -> int | None:
    """Wait, from the running event loop, until one of ``objects`` (events and semaphores of
    one backend, already checked) is signaled and acquire it; its index, or None on timeout."""
    request = _Request(objects, deadline, asyncio.get_running_loop())
    dispatcher = _dispatcher(objects[0]._backend)
    dispatcher.submit(request)
    try:
        return await request.future
    except TimeoutError:
        return None
    except asyncio.CancelledError:
        dispatcher.withdraw(request)  # what it took meanwhile, _settle gives back
        raise
