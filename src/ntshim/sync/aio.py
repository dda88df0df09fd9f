"""Waiting from asyncio without a thread per wait.

Futexes cannot be polled, so an event loop cannot watch the objects itself.  Instead each
process has one dispatcher thread per backend, which serves every pending asynchronous wait
of the process with the backend's *requests* (:meth:`~ntshim.sync.backend.Backend.request`):
a request is queued on its objects exactly as a thread's wait is (the same order, the same
hand-over, wait-any and wait-all alike), but no thread sleeps in it; the dispatcher sleeps
on all its requests at once and on a doorbell that a new or cancelled wait rings.  What a
request acquires the dispatcher hands to the wait's event loop.

A wait that is cancelled, or whose loop is gone, takes nothing: what was acquired for it is
given back (a semaphore unit released, a lock unlocked, an auto-reset event set again, even
if a pulse handed it over, as the server backend's rollback does).  A manual-reset event's
pulse that woke a wait being cancelled is gone for it, as for any waiter that stops waiting.

Mutexes taken this way are owned by their task.  A request names one owner for all its
objects, so the dispatcher acquires every mutex with its own owner id (its thread's, which
also makes a holder's death the process's: the thread lives as long as the process) and
keeps here which task holds it, at what recursion level.  Since every request has that one
owner, two requests must never wait on one mutex at once (the second would take it again,
recursively, for another task): a wait naming a mutex that a task holds, or that a started
request waits on, is started once that ends.  The holding task's own acquisitions only count
levels.  At most a backend's limit of requests (256 per process) are started at once; later
waits start as earlier ones end.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .backend import Backend, Request

if TYPE_CHECKING:
    from .objects import Event, SyncObject


class _Wait:
    """One asynchronous wait: its objects, alert, deadline, task and the future its loop
    awaits (the index acquired and whether an acquired mutex was abandoned)."""

    __slots__ = ("alert", "deadline", "future", "loop", "objects", "task", "wait_all")

    def __init__(
        self, objects: Sequence[SyncObject], alert: Event | None, wait_all: bool, deadline: int | None
    ) -> None:
        self.objects = list(objects)
        self.alert = alert
        self.wait_all = wait_all
        self.deadline = deadline
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.future: asyncio.Future[tuple[int, bool]] = self.loop.create_future()

    def named(self) -> list[SyncObject]:
        return [*self.objects, self.alert] if self.alert is not None else self.objects

    def acquired(self, index: int) -> list[SyncObject]:
        """What an outcome with ``index`` took: the object, every object (wait-all), or the alert."""
        if index == len(self.objects):
            assert self.alert is not None
            return [self.alert]
        return self.objects if self.wait_all else [self.objects[index]]


class _Hold:
    """A mutex a task of this process holds through the dispatcher."""

    __slots__ = ("level", "mutex", "task")

    def __init__(self, mutex: SyncObject, task: asyncio.Task[object] | None) -> None:
        self.mutex = mutex
        self.task = task
        self.level = 1


def _is_mutex(obj: SyncObject) -> bool:
    return obj.kind == "mutex"


def _give_back(dispatcher: _Dispatcher, objects: list[SyncObject], abandoned: bool) -> None:
    """Undo an acquisition nobody will use (the wait was cancelled or its loop closed).  An
    abandoned mutex stays abandoned for the next; a wait-all that took one abandoned leaves
    every mutex it took so (which of them it was is not known)."""
    from .objects import Event, Lock, Semaphore

    for obj in objects:
        try:
            if _is_mutex(obj):
                dispatcher.end_hold(obj._handle.key, kill=abandoned)
            elif isinstance(obj, Lock):
                obj._live().lock_release(abandoned)
            elif isinstance(obj, Semaphore):
                obj._live().sem_release(1)
            elif isinstance(obj, Event) and not obj.read()[0]:  # an auto-reset event: the wait reset it
                obj._live().event_set()
        except (OverflowError, PermissionError, ValueError, FileNotFoundError):
            # A semaphore others filled meanwhile has no room for the unit, nor need of it; a
            # Lock may have been released by another thread, as a Lock allows; an object closed
            # here (ValueError) or by every process (FileNotFoundError) took what the wait
            # acquired with it.  Nothing may escape: on the dispatcher's thread it would end
            # the thread, and every other pending wait with it.
            pass


def _settle(
    dispatcher: _Dispatcher, wait: _Wait, outcome: tuple[int, bool] | None, error: BaseException | None
) -> None:
    """In the wait's loop: deliver the outcome, or give back what nobody awaits any more."""
    if wait.future.done():  # cancelled meanwhile
        if outcome is not None:
            _give_back(dispatcher, wait.acquired(outcome[0]), outcome[1])
    elif error is not None:
        wait.future.set_exception(error)
    elif outcome is None:
        wait.future.set_exception(TimeoutError("the wait timed out"))
    else:
        wait.future.set_result(outcome)
        if wait.task is not None and any(_is_mutex(obj) for obj in wait.acquired(outcome[0])):
            dispatcher.watch_task(wait.task)


class _Dispatcher:
    """The thread that serves every asynchronous wait of one backend in this process."""

    def __init__(self, backend: type[Backend]) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.pending: list[_Wait] = []  # submitted, not started (oldest first)
        self.withdrawn: list[_Wait] = []  # cancelled by their task: to end
        self.held: dict[object, _Hold] = {}  # by handle key: the mutexes tasks hold
        self.watched_tasks: set[object] = set()  # tasks whose end abandons what they hold
        self.owner = 0  # the thread's native id: the owner of every mutex it acquires
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ntshim-sync-aio-{backend.name}", daemon=True)
        self.thread.start()
        self.started.wait()

    def submit(self, wait: _Wait) -> None:
        with self.lock:
            self.pending.append(wait)
        self.backend.ring()

    def withdraw(self, wait: _Wait) -> None:
        with self.lock:
            if wait in self.pending:
                self.pending.remove(wait)
            else:
                self.withdrawn.append(wait)
        self.backend.ring()

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
            # Unlocked while the hold still keeps it out of the requests: a request naming it
            # before would take it again for the dispatcher's owner, recursively.
            try:
                if kill:
                    hold.mutex._live().mutex_kill(self.owner)
                else:
                    hold.mutex._live().mutex_unlock(self.owner)
            finally:
                del self.held[key]
        self.backend.ring()

    def _deliver(self, wait: _Wait, outcome: tuple[int, bool] | None, error: BaseException | None = None) -> None:
        """Hand the outcome to the wait's loop (the dispatcher thread)."""
        if outcome is not None:
            with self.lock:
                for obj in wait.acquired(outcome[0]):
                    if _is_mutex(obj):
                        self.held[obj._handle.key] = _Hold(obj, wait.task)
        try:
            wait.loop.call_soon_threadsafe(_settle, self, wait, outcome, error)
        except RuntimeError:  # the loop is closed: nobody will take it
            if outcome is not None:
                _give_back(self, wait.acquired(outcome[0]), outcome[1])

    def _startable(self, busy: set[object]) -> list[_Wait]:
        """The pending waits that may start now, oldest first, taken off the pending list:
        none naming a mutex a task holds or a started request waits on (``busy``, updated)."""
        chosen = []
        with self.lock:
            busy |= self.held.keys()
            for wait in list(self.pending):
                mutexes = {obj._handle.key for obj in wait.named() if _is_mutex(obj) and not obj.closed}
                if mutexes & busy:
                    continue
                busy |= mutexes
                chosen.append(wait)
                self.pending.remove(wait)
        return chosen

    def _run(self) -> None:
        self.owner = threading.get_native_id()
        self.started.set()
        backend = self.backend
        running: dict[_Wait, Request] = {}
        while True:
            bell = backend.bell()  # (before looking: a ring from now on cuts the sleep short)
            with self.lock:
                withdrawn, self.withdrawn = self.withdrawn, []
            for wait in withdrawn:
                if wait in running:
                    self._end(wait, running.pop(wait), timed_out=False)
            busy = {obj._handle.key for wait in running for obj in wait.named() if _is_mutex(obj)}
            chosen, no_room = self._startable(busy), False
            for i, wait in enumerate(chosen):
                if not self._start(wait, running):
                    # No room for another request now: these wait, first in line, for one to end.
                    with self.lock:
                        self.pending[:0] = chosen[i:]
                    no_room = True
                    break
            now, ended = time.monotonic_ns(), False
            for wait, request in list(running.items()):
                expired = wait.deadline is not None and wait.deadline <= now
                if request.ready() or expired:
                    del running[wait]
                    self._end(wait, request, timed_out=True)
                    ended = True
            if no_room and ended:
                continue  # room now: start the waits that had none
            self._expire_pending(now)
            with self.lock:
                deadlines = [w.deadline for w in (*running, *self.pending) if w.deadline is not None]
            if no_room and not running:  # (no request of ours to end: the room is others' to give back)
                deadlines.append(now + _RETRY_NS)
            try:
                backend.sleep(list(running.values()), min(deadlines, default=None), bell)
            except Exception as error:  # noqa: BLE001 (a damaged arena, a killed server: tell every wait)
                for wait, request in running.items():
                    try:
                        request.end()
                    except Exception:  # noqa: BLE001, S110 (the error below says it)
                        pass
                    self._deliver(wait, None, error)
                running.clear()
                time.sleep(0.1)  # do not spin on a failing backend

    def _start(self, wait: _Wait, running: dict[_Wait, Request]) -> bool:
        """Start a wait's request; False when the backend has no room for it now."""
        if any(obj.closed for obj in wait.named()):
            self._deliver(wait, None, ValueError("an object of the wait was closed before it started"))
            return True
        handles = [obj._handle for obj in wait.objects]
        alert = wait.alert._handle if wait.alert is not None else None
        try:
            running[wait] = self.backend.request(handles, wait.wait_all, self.owner, alert)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                self._deliver(wait, None, error)
                return True
            return False
        except Exception as error:  # noqa: BLE001 (told to the wait)
            self._deliver(wait, None, error)
        return True

    def _end(self, wait: _Wait, request: Request, timed_out: bool) -> None:
        """End a started request and deliver what it took (None: a timeout, or nothing for a
        withdrawn wait, whose future is cancelled already)."""
        try:
            outcome = request.end()
        except Exception as error:  # noqa: BLE001 (told to the wait)
            self._deliver(wait, None, error)
            return
        if outcome is not None or timed_out:
            self._deliver(wait, outcome)

    def _expire_pending(self, now: int) -> None:
        """Waits that never started (their mutex busy, or no room) time out at their deadline."""
        with self.lock:
            expired = [w for w in self.pending if w.deadline is not None and w.deadline <= now]
            for wait in expired:
                self.pending.remove(wait)
        for wait in expired:
            self._deliver(wait, None)


#: How often the dispatcher tries again to start a wait the backend had no room for, when
#: none of its own requests is pending (whose end would make room).
_RETRY_NS = 10_000_000

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


async def wait(
    objects: Sequence[SyncObject], alert: Event | None, wait_all: bool, deadline: int | None
) -> tuple[int, bool] | None:
    """Wait, from the running event loop, until one of ``objects`` (or all, ``wait_all``) or
    the alert is signaled, and acquire for the running task (objects and alert of one
    backend, already checked): ``(index, abandoned)``, or None on timeout."""
    wait = _Wait(objects, alert, wait_all, deadline)
    dispatcher = _dispatcher((objects[0] if objects else alert)._backend)  # type: ignore[union-attr]
    for i, obj in enumerate(wait.objects):
        hold = dispatcher.hold_of(obj, wait.task)
        if hold is not None:
            if len(wait.objects) > 1 or alert is not None:
                raise ValueError(f"objects[{i}] is a mutex this task holds; acquire it again with acquire_async")
            hold.level += 1  # recursion: counted here, the dispatcher already holds it
            return 0, False
    dispatcher.submit(wait)
    try:
        return await wait.future
    except TimeoutError:
        return None
    except asyncio.CancelledError:
        dispatcher.withdraw(wait)  # what it took meanwhile, _settle gives back
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
