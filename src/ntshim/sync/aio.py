"""Waiting from asyncio without a thread per wait.

Futexes cannot be polled, so an event loop cannot watch the objects itself.  Instead each
process has one dispatcher thread per backend, which waits on behalf of every pending
asynchronous request at once: one ``wait_any`` over the objects of all of them (the oldest
first, at most :data:`~ntshim.sync.backend.MAX_WAIT_OBJECTS`), with a private auto-reset
event as its alert, which a new or cancelled request sets so that the dispatcher waits again
on the new set.  What the dispatcher acquires it hands to the request's event loop.

A request that is cancelled, or whose loop is gone, takes nothing: what was acquired for it
is given back (a semaphore unit released, a lock unlocked, an auto-reset event set again,
as the server backend's rollback does).  A pulse that woke a request being cancelled is gone for it, as
for any waiter that stops waiting.

Mutexes taken this way are owned by their task.  A wait names one owner for all its
objects, so the dispatcher acquires every mutex with its own owner id (its thread's, which
also makes a holder's death the process's: the thread lives as long as the process) and
keeps here which task holds it, at what recursion level.  A mutex some task of this process
holds is left out of the dispatcher's waits until that task releases it (it would be
acquired again, recursively, for another task); the holding task's own acquisitions only
count levels.
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
    """One asynchronous wait-any: its objects, deadline, task and the future its loop awaits
    (the index acquired and whether it was an abandoned mutex)."""

    __slots__ = ("deadline", "future", "loop", "objects", "task")

    def __init__(self, objects: Sequence[SyncObject], deadline: int | None) -> None:
        self.objects = list(objects)
        self.deadline = deadline
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.future: asyncio.Future[tuple[int, bool]] = self.loop.create_future()


class _Hold:
    """A mutex a task of this process holds through the dispatcher."""

    __slots__ = ("level", "mutex", "task")

    def __init__(self, mutex: SyncObject, task: asyncio.Task[object] | None) -> None:
        self.mutex = mutex
        self.task = task
        self.level = 1


def _give_back(dispatcher: _Dispatcher, obj: SyncObject, abandoned: bool) -> None:
    """Undo an acquisition nobody will use (the request was cancelled or its loop closed)."""
    from .objects import Event, Lock, Mutex, Semaphore

    if isinstance(obj, Mutex):
        dispatcher.end_hold(obj._handle.key, kill=abandoned)  # an abandoned mutex stays abandoned for the next
    elif isinstance(obj, Lock):
        try:
            obj._live().lock_release(abandoned)  # (abandoned: it stays so for the next)
        except PermissionError:  # another thread released it meanwhile, as a Lock allows
            pass
    elif isinstance(obj, Semaphore):
        try:
            obj._live().sem_release(1)
        except OverflowError:  # others filled it meanwhile: there is no room for the unit, nor need
            pass
    elif isinstance(obj, Event) and not obj.read()[0]:  # an auto-reset event: the wait reset it
        obj._live().event_set()


def _settle(
    dispatcher: _Dispatcher, request: _Request, index: int | None, abandoned: bool, error: BaseException | None
) -> None:
    """In the request's loop: deliver the outcome, or give back what nobody awaits any more."""
    if request.future.done():  # cancelled meanwhile
        if index is not None:
            _give_back(dispatcher, request.objects[index], abandoned)
    elif error is not None:
        request.future.set_exception(error)
    elif index is None:
        request.future.set_exception(TimeoutError("the wait timed out"))
    else:
        request.future.set_result((index, abandoned))
        if request.task is not None and request.objects[index]._handle.key in dispatcher.held:
            dispatcher.watch_task(request.task)


class _Dispatcher:
    """The thread that waits for every pending request of one backend in this process."""

    def __init__(self, backend: type[Backend]) -> None:
        from .objects import Event

        self.backend = backend
        self.wake: Event = Event(manual=False, backend=backend.name)
        self.lock = threading.Lock()
        self.pending: list[_Request] = []
        self.held: dict[object, _Hold] = {}  # by handle key: the mutexes tasks hold
        self.watched_tasks: set[object] = set()  # tasks whose end abandons what they hold
        self.owner = 0  # the thread's native id: the owner of every mutex it acquires
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ntshim-sync-aio-{backend.name}", daemon=True)
        self.thread.start()
        self.started.wait()

    def submit(self, request: _Request) -> None:
        with self.lock:
            self.pending.append(request)
        self.wake.set()

    def withdraw(self, request: _Request) -> None:
        with self.lock:
            if request in self.pending:
                self.pending.remove(request)
        self.wake.set()

    def hold_of(self, obj: SyncObject, task: object) -> _Hold | None:
        """The hold ``task`` has of ``obj`` (a mutex), if any.  Levels change only in the
        holding task's loop, so the caller may count them without the lock."""
        if not self.held:  # (the common case, threads only: no lock taken)
            return None
        with self.lock:
            hold = self.held.get(obj._handle.key)
        return hold if hold is not None and hold.task is task else None

    def release_level(self, mutex: SyncObject, task: object) -> int | None:
        """Release one level that ``task`` holds (the previous level), or None if it holds none."""
        hold = self.hold_of(mutex, task)
        if hold is None:
            return None
        hold.level -= 1
        if not hold.level:
            self.end_hold(mutex._handle.key, kill=False)
        return hold.level + 1

    def watch_task(self, task: asyncio.Task[object]) -> None:
        """In the task's loop: abandon what it still holds when it ends (once per task, not
        per acquisition: a task that takes a lock in a loop adds one callback)."""
        if task not in self.watched_tasks:
            self.watched_tasks.add(task)
            task.add_done_callback(self.task_ended)

    def task_ended(self, task: object) -> None:
        """A task ended holding mutexes: abandon them, as a thread's exit does."""
        self.watched_tasks.discard(task)
        with self.lock:
            left = [key for key, hold in self.held.items() if hold.task is task]
        for key in left:
            self.end_hold(key, kill=True)

    def end_hold(self, key: object, kill: bool) -> None:
        """Give a held mutex up (unlocked, or killed: left abandoned), then let waits name it again."""
        with self.lock:
            hold = self.held.get(key)
            if hold is None:
                return
            # Unlocked while the hold still keeps it out of the waits: a wait naming it
            # before would take it again for the dispatcher's owner, recursively.
            try:
                if kill:
                    hold.mutex._live().mutex_kill(self.owner)
                else:
                    hold.mutex._live().mutex_unlock(self.owner)
            finally:
                del self.held[key]
        self.wake.set()

    def _deliver(
        self, request: _Request, index: int | None, error: BaseException | None = None, abandoned: bool = False
    ) -> None:
        from .objects import Mutex

        with self.lock:
            if request in self.pending:
                self.pending.remove(request)
            if index is not None and isinstance(request.objects[index], Mutex):
                self.held[request.objects[index]._handle.key] = _Hold(request.objects[index], request.task)
        try:
            request.loop.call_soon_threadsafe(_settle, self, request, index, abandoned, error)
        except RuntimeError:  # the loop is closed: nobody will take it
            if index is not None:
                _give_back(self, request.objects[index], abandoned)

    def _round(self) -> tuple[list[tuple[_Request, int]], list[Handle], int | None]:
        """This round's objects (the oldest requests' first, as many as one wait names), what
        request and position each is, and the earliest deadline of all pending requests."""
        slots: list[tuple[_Request, int]] = []
        handles: list[Handle] = []
        with self.lock:
            requests = list(self.pending)
            held = set(self.held)
        deadlines = [r.deadline for r in requests if r.deadline is not None]
        for request in requests:
            if any(obj.closed for obj in request.objects):
                self._deliver(request, None, ValueError("an object of the wait was closed while it waited"))
                continue
            # A mutex some task here holds waits until it is released (it would be taken again, recursively).
            named = [(p, obj) for p, obj in enumerate(request.objects) if obj._handle.key not in held]
            if len(handles) + len(named) > MAX_WAIT_OBJECTS:
                break
            for position, obj in named:
                slots.append((request, position))
                handles.append(obj._handle)
        return slots, handles, min(deadlines, default=None)

    def _run(self) -> None:
        owner = self.owner = threading.get_native_id()
        self.started.set()
        wake = self.wake._handle
        while True:
            slots, handles, deadline = self._round()
            try:
                index, abandoned = self.backend.wait(handles, False, deadline, owner, wake)
            except TimeoutError:
                now = time.monotonic_ns()
                with self.lock:
                    expired = [r for r in self.pending if r.deadline is not None and r.deadline <= now]
                for request in expired:
                    self._deliver(request, None)
                continue
            except Exception as error:  # noqa: BLE001 (a damaged arena, a killed server: tell every request)
                for request in {request for request, _ in slots}:
                    self._deliver(request, None, error)
                if not slots:
                    time.sleep(0.1)  # nothing to tell; do not spin on a failing backend
                continue
            if index < len(slots):  # else the wake event: the requests changed
                request, position = slots[index]
                self._deliver(request, position, abandoned=abandoned)


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


async def wait_any(objects: Sequence[SyncObject], deadline: int | None) -> tuple[int, bool] | None:
    """Wait, from the running event loop, until one of ``objects`` (of one backend, already
    checked) is signaled and acquire it for the running task: ``(index, abandoned)``, or None
    on timeout."""
    request = _Request(objects, deadline)
    dispatcher = _dispatcher(objects[0]._backend)
    for i, obj in enumerate(request.objects):
        hold = dispatcher.hold_of(obj, request.task)
        if hold is not None:
            if len(request.objects) > 1:
                raise ValueError(f"objects[{i}] is a mutex this task holds; acquire it again with acquire_async")
            hold.level += 1  # recursion: counted here, the dispatcher already holds it
            return 0, False
    dispatcher.submit(request)
    try:
        return await request.future
    except TimeoutError:
        return None
    except asyncio.CancelledError:
        dispatcher.withdraw(request)  # what it took meanwhile, _settle gives back
        raise


def release(mutex: SyncObject) -> int | None:
    """Release one level of ``mutex`` if the running task holds it through the dispatcher:
    the previous level; None if it does not (a thread's hold, or none)."""
    dispatcher = _dispatchers.get(mutex._backend.name)
    if dispatcher is None or not dispatcher.held:  # no task holds anything: a thread's release
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop
        return None
    return dispatcher.release_level(mutex, task)


def abandon(mutex: SyncObject) -> None:
    """Give up the running task's hold of ``mutex`` leaving it abandoned (the AbandonedWarning
    of its acquisition was made an error)."""
    _dispatchers[mutex._backend.name].end_hold(mutex._handle.key, kill=True)
