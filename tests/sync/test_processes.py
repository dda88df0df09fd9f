"""Sync objects across processes: by name (create-or-open), by inheritance (fork), by
pickling (spawn children, multiprocessing queues); abandonment when the owning thread or
process dies; names that go with their last reference; the per-user directory."""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import stat
import threading
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest

from ntshim.sync import AbandonedError, Event, Mutex, Semaphore, wait_all, wait_any
from ntshim.sync.userdir import ROOT_ENV_VAR, user_directory

from .helpers import BOUND, Child, StartWaiter

START_METHODS = ["fork", "spawn"]


# --- children -----------------------------------------------------------------------------
# Module-level functions, so that spawn children can import them (see Child in conftest).


def _child_by_name(names: dict[str, str], backend: str) -> dict[str, Any]:
    sem = Semaphore(0, 10, name=names["sem"], backend=backend)  # create-or-open: it exists
    sem.release(2)
    mutex = Mutex.open(names["mutex"], backend=backend)
    try:
        wait_any([mutex], 0)
        took_mutex = True
    except TimeoutError:
        took_mutex = False
    event = Event.open(names["event"], backend=backend)
    result = {"created": sem.created, "sem": sem.read(), "took_mutex": took_mutex, "mutex": mutex.read()}
    event.set()
    return result


def _child_uses(sem: Semaphore, mutex: Mutex, event: Event) -> dict[str, Any]:
    """Release the semaphore (a parent thread waits on it), take and give back the mutex,
    set the event."""
    sem.release(1)
    index = wait_any([mutex], BOUND)
    owner, count = mutex.read()
    assert mutex.unlock() == 1
    event.set()
    return {"index": index, "owner": owner, "count": count, "me": threading.get_native_id()}


def _child_uses_from_queue(inbox: Any) -> dict[str, Any]:
    sem, mutex, event = inbox.get(timeout=BOUND)
    return _child_uses(sem, mutex, event)


def _child_holds(mutex: Mutex, ready: Event, end: str) -> None:
    """Take the mutex and then die holding it: return (normal process exit) or sleep until
    killed."""
    wait_any([mutex], BOUND)
    ready.set()
    if end == "sleep":
        time.sleep(60)


def _child_holds_by_name(mutex_name: str, ready_name: str, backend: str) -> None:
    mutex = Mutex.open(mutex_name, backend=backend)
    ready = Event.open(ready_name, backend=backend)
    _child_holds(mutex, ready, "sleep")


def _child_creates(name: str, backend: str, close: bool) -> bool:
    sem = Semaphore(1, 1, name=name, backend=backend)
    if close:
        sem.close()
    return sem.created  # exits holding the reference unless close


def _child_opens_and_releases(name: str, backend: str) -> tuple[int, int]:
    with closing(Semaphore.open(name, backend=backend)) as sem:
        sem.release(1)
        return sem.read()


def _child_waits_all(sems: list[Semaphore], mutex: Mutex) -> dict[str, Any]:
    index = wait_all([*sems, mutex], BOUND)
    result = {"index": index, "sems": [s.read() for s in sems], "mutex": mutex.read(), "me": threading.get_native_id()}
    mutex.unlock()
    return result


# --- names --------------------------------------------------------------------------------


def test_create_or_open(sync_backend: str, unique_name: Callable[..., str]) -> None:
    name = unique_name("sem")
    first = Semaphore(1, 5, name=name, backend=sync_backend)
    second = Semaphore(3, 9, name=name, backend=sync_backend)  # opens it: the values are ignored
    assert (first.created, second.created) == (True, False)
    assert (first.name, second.name) == (name, name)
    assert second.read() == (1, 5)
    assert second.release(2) == 1
    assert first.read() == (3, 5)
    opened = Semaphore.open(name, backend=sync_backend)
    assert opened.created is False
    assert wait_any([opened], 0) == 0
    assert first.read() == (2, 5)
    for obj in (first, second, opened):
        obj.close()


@pytest.mark.parametrize("method", START_METHODS)
def test_open_by_name_in_a_child(
    sync_backend: str, unique_name: Callable[..., str], children: Callable[..., Child], method: str
) -> None:
    names = {kind: unique_name(kind) for kind in ("sem", "mutex", "event")}
    sem = Semaphore(1, 10, name=names["sem"], backend=sync_backend)
    mutex = Mutex(count=1, name=names["mutex"], backend=sync_backend)  # owned by this thread
    event = Event(manual=False, name=names["event"], backend=sync_backend)
    child = children(method, _child_by_name, names, sync_backend)
    assert wait_any([event], 4 * BOUND) == 0
    result = child.result()
    assert result == {"created": False, "sem": (3, 10), "took_mutex": False, "mutex": (threading.get_native_id(), 1)}
    assert sem.read() == (3, 10)
    assert event.read() == (False, False)
    assert mutex.read() == (threading.get_native_id(), 1)
    assert child.join() == 0
    for obj in (sem, mutex, event):
        obj.close()


# --- inheritance and pickling -------------------------------------------------------------


def check_child_uses(
    sync_backend: str, waiters: StartWaiter, start: Callable[[Semaphore, Mutex, Event], Child]
) -> None:
    sem = Semaphore(0, 5, backend=sync_backend)
    mutex = Mutex(backend=sync_backend)
    event = Event(manual=True, backend=sync_backend)
    waiter = waiters(functools.partial(wait_any, [sem], 4 * BOUND))
    child = start(sem, mutex, event)
    assert waiter.outcome(4 * BOUND) == 0  # woken by the child's release
    assert sem.read() == (0, 5)  # and the count is taken
    assert wait_any([event], BOUND) == 0
    result = child.result()
    assert result["index"] == 0
    assert (result["owner"], result["count"]) == (result["me"], 1)
    assert result["me"] != threading.get_native_id()
    assert mutex.read() == (0, 0)
    assert event.read() == (True, True)
    assert child.join() == 0
    for obj in (sem, mutex, event):
        obj.close()


def test_inherited_by_fork(sync_backend: str, waiters: StartWaiter, children: Callable[..., Child]) -> None:
    check_child_uses(sync_backend, waiters, lambda *objs: children("fork", _child_uses, *objs))


def test_inherited_by_bare_fork(sync_backend: str) -> None:
    """os.fork without multiprocessing: the child uses the objects it inherited."""
    sem = Semaphore(0, 5, backend=sync_backend)
    event = Event(manual=False, backend=sync_backend)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert wait_any([event], BOUND) == 0
            sem.release(3)
            code = 0
        finally:
            os._exit(code)
    assert event.set() is False
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sem.read() == (3, 5)
    assert event.read() == (False, False)
    sem.close()
    event.close()


def test_pickled_to_spawn_child(sync_backend: str, waiters: StartWaiter, children: Callable[..., Child]) -> None:
    check_child_uses(sync_backend, waiters, lambda *objs: children("spawn", _child_uses, *objs))


@pytest.mark.parametrize("method", START_METHODS)
def test_through_a_queue(sync_backend: str, waiters: StartWaiter, children: Callable[..., Child], method: str) -> None:
    inbox = multiprocessing.get_context(method).Queue()

    def start(sem: Semaphore, mutex: Mutex, event: Event) -> Child:
        child = children(method, _child_uses_from_queue, inbox)
        inbox.put((sem, mutex, event))  # the child is already running: it gets them by pickle
        return child

    check_child_uses(sync_backend, waiters, start)


def test_pickle_round_trip(sync_backend: str, unique_name: Callable[..., str]) -> None:
    sem = Semaphore(0, 3, backend=sync_backend)
    copy = pickle.loads(pickle.dumps(sem))
    copy.release(2)
    assert sem.read() == (2, 3)
    copy.close()
    assert sem.read() == (2, 3)  # closing one reference leaves the other
    named = Event(manual=True, name=unique_name("event"), backend=sync_backend)
    named_copy = pickle.loads(pickle.dumps(named))
    assert named_copy.name == named.name
    assert named_copy.backend == sync_backend
    named_copy.set()
    assert named.read() == (True, True)
    for obj in (sem, named, named_copy):
        obj.close()


def test_unpickling_a_vanished_object(sync_backend: str) -> None:
    sem = Semaphore(0, 3, backend=sync_backend)
    data = pickle.dumps(sem)
    sem.close()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)


def test_wait_all_in_child_across_processes(sync_backend: str, children: Callable[..., Child]) -> None:
    """A child's wait-all completes when the parent supplies the last object, and takes
    everything at once."""
    sems = [Semaphore(0, 2, backend=sync_backend), Semaphore(1, 2, backend=sync_backend)]
    mutex = Mutex(count=1, backend=sync_backend)  # owned by this thread
    child = children("fork", _child_waits_all, sems, mutex)
    time.sleep(0.1)  # let it block: both the count and the mutex are missing
    sems[0].release(1)
    assert sems[1].read() == (1, 2)  # the child still waits for the mutex; nothing taken
    assert mutex.unlock() == 1
    result = child.result()
    assert result["index"] == 0
    assert result["sems"] == [(0, 2), (0, 2)]
    assert result["mutex"] == (result["me"], 1)
    assert child.join() == 0
    assert mutex.read() == (0, 0)
    for obj in (*sems, mutex):
        obj.close()


# --- abandonment --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "end"), [("fork", "sleep"), ("fork", "return"), ("spawn", "sleep")])
def test_child_dies_holding_a_mutex(
    sync_backend: str, waiters: StartWaiter, children: Callable[..., Child], method: str, end: str
) -> None:
    mutex = Mutex(backend=sync_backend)
    ready = Event(manual=True, backend=sync_backend)
    other = Semaphore(0, 1, backend=sync_backend)
    child = children(method, _child_holds, mutex, ready, end)
    assert wait_any([ready], 4 * BOUND) == 0
    # Blocked before the child dies (for "return", perhaps after: either must work).
    waiter = waiters(functools.partial(wait_any, [other, mutex], 60))
    if end == "sleep":
        assert waiter.still_waiting()
        child.process.kill()  # SIGKILL: no chance to clean up
    child.join()
    # The waiter wakes with the mutex abandoned, and owns it.  5 s is a bound, not a speed claim.
    with pytest.raises(AbandonedError) as abandoned:
        waiter.outcome(BOUND)
    assert abandoned.value.index == 1
    assert mutex.read() == (waiter.native_id, 1)
    assert mutex.unlock(waiter.native_id) == 1
    assert mutex.read() == (0, 0)
    for obj in (mutex, ready, other):
        obj.close()


def test_child_killed_before_anyone_waits(sync_backend: str, children: Callable[..., Child]) -> None:
    mutex = Mutex(backend=sync_backend)
    ready = Event(manual=True, backend=sync_backend)
    child = children("fork", _child_holds, mutex, ready, "sleep")
    assert wait_any([ready], BOUND) == 0
    child.kill()
    with pytest.raises(AbandonedError) as abandoned:
        wait_all([ready, mutex], BOUND)
    assert abandoned.value.index == 0
    assert mutex.read() == (threading.get_native_id(), 1)
    mutex.unlock()
    for obj in (mutex, ready):
        obj.close()


def test_child_killed_holding_a_named_mutex(
    sync_backend: str, waiters: StartWaiter, children: Callable[..., Child], unique_name: Callable[..., str]
) -> None:
    mutex = Mutex(name=unique_name("mutex"), backend=sync_backend)
    ready = Event(manual=True, name=unique_name("ready"), backend=sync_backend)
    child = children("spawn", _child_holds_by_name, mutex.name, ready.name, sync_backend)
    assert wait_any([ready], 4 * BOUND) == 0
    waiter = waiters(functools.partial(wait_any, [mutex], 60))
    assert waiter.still_waiting()
    child.process.kill()
    with pytest.raises(AbandonedError) as abandoned:
        waiter.outcome(BOUND)
    assert abandoned.value.index == 0
    assert mutex.read() == (waiter.native_id, 1)
    for obj in (mutex, ready):
        obj.close()


def _take(objects: list[Any], times: int) -> None:
    for _ in range(times):
        wait_all(objects, BOUND)


@pytest.mark.parametrize(
    "how",
    ["wait_any", "recursive", "wait_all"],
)
def test_thread_exits_holding_a_mutex(sync_backend: str, waiters: StartWaiter, how: str) -> None:
    mutex = Mutex(backend=sync_backend)
    # signaled only for the wait-all, which takes it; the wait below then finds it empty
    sem = Semaphore(1 if how == "wait_all" else 0, 1, backend=sync_backend)
    choices: dict[str, list[Any]] = {"wait_any": [mutex], "recursive": [mutex], "wait_all": [sem, mutex]}
    objects = choices[how]
    thread = threading.Thread(target=_take, args=(objects, 2 if how == "recursive" else 1))
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive()
    with pytest.raises(AbandonedError) as abandoned:
        wait_any([sem, mutex], BOUND)
    assert abandoned.value.index == 1
    assert sem.read() == (0, 1)
    assert mutex.read() == (threading.get_native_id(), 1)
    assert mutex.unlock() == 1
    mutex.close()
    sem.close()


def test_thread_exit_wakes_a_blocked_waiter(sync_backend: str, waiters: StartWaiter) -> None:
    mutex = Mutex(backend=sync_backend)
    taken = threading.Event()
    leave = threading.Event()

    def owner() -> None:
        wait_any([mutex], BOUND)
        taken.set()
        leave.wait(BOUND)

    thread = threading.Thread(target=owner)
    thread.start()
    assert taken.wait(BOUND)
    waiter = waiters(functools.partial(wait_any, [mutex], 60))
    assert waiter.still_waiting()
    leave.set()
    thread.join(BOUND)
    with pytest.raises(AbandonedError) as abandoned:
        waiter.outcome(BOUND)
    assert abandoned.value.index == 0
    assert mutex.read() == (waiter.native_id, 1)
    mutex.close()


def test_thread_exits_owning_a_mutex_it_created(sync_backend: str) -> None:
    """Mutex(count=1) is owned by the creating thread, as CreateMutex(bInitialOwner=TRUE)."""
    made: list[Mutex] = []
    thread = threading.Thread(target=lambda: made.append(Mutex(count=1, backend=sync_backend)))
    thread.start()
    thread.join(BOUND)
    (mutex,) = made
    with pytest.raises(AbandonedError):
        wait_any([mutex], BOUND)
    assert mutex.read() == (threading.get_native_id(), 1)
    mutex.close()


def test_thread_exit_after_unlock_abandons_nothing(sync_backend: str) -> None:
    mutex = Mutex(backend=sync_backend)

    def borrow() -> None:
        wait_any([mutex], BOUND)
        wait_any([mutex], BOUND)
        mutex.unlock()
        mutex.unlock()

    thread = threading.Thread(target=borrow)
    thread.start()
    thread.join(BOUND)
    assert mutex.read() == (0, 0)
    assert wait_any([mutex], 0) == 0
    assert mutex.read() == (threading.get_native_id(), 1)
    mutex.close()


# --- names go with their last reference ---------------------------------------------------


def test_name_goes_with_last_close(sync_backend: str, unique_name: Callable[..., str]) -> None:
    name = unique_name("last")
    first = Event(manual=True, signaled=True, name=name, backend=sync_backend)
    second = Event.open(name, backend=sync_backend)
    first.close()
    assert second.read() == (True, True)  # alive while a reference is
    with closing(Event.open(name, backend=sync_backend)) as third:
        assert third.read() == (True, True)
    second.close()
    with pytest.raises(FileNotFoundError):
        Event.open(name, backend=sync_backend)
    # a new object of that name (of any kind) starts afresh
    with closing(Semaphore(0, 1, name=name, backend=sync_backend)) as fresh:
        assert fresh.created
        assert fresh.read() == (0, 1)


def wait_until_absent(name: str, backend: str) -> None:
    """The name disappears once the dead process's references are dropped.  A backend may
    notice the death a little later (a server reading EOF): poll, within a bound."""
    deadline = time.monotonic() + BOUND
    while True:
        try:
            Semaphore.open(name, backend=backend).close()
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"{name!r} still exists {BOUND} s after its last holder died"
        time.sleep(0.01)


@pytest.mark.parametrize("end", ["exit", "close", "sigkill"])
def test_name_goes_with_the_process_holding_it(
    sync_backend: str, unique_name: Callable[..., str], children: Callable[..., Child], end: str
) -> None:
    kept = Semaphore(0, 1, name=unique_name("kept"), backend=sync_backend)
    name = unique_name("child")
    if end == "sigkill":
        ready = Event(manual=True, backend=sync_backend)
        child = children("fork", _create_then_sleep, name, sync_backend, ready)
        assert wait_any([ready], BOUND) == 0
        child.kill()
        ready.close()
    else:
        child = children("fork", _child_creates, name, sync_backend, end == "close")
        assert child.result() is True
        child.join()
    wait_until_absent(name, sync_backend)
    # what the parent holds is untouched by the child's end (it inherited the reference)
    with closing(Semaphore.open(kept.name or "", backend=sync_backend)) as again:
        assert again.read() == (0, 1)
    kept.close()


def _create_then_sleep(name: str, backend: str, ready: Event) -> None:
    Semaphore(1, 1, name=name, backend=backend)
    ready.set()
    time.sleep(60)


def test_name_outlives_a_child_that_opened_it(
    sync_backend: str, unique_name: Callable[..., str], children: Callable[..., Child]
) -> None:
    sem = Semaphore(0, 5, name=unique_name("shared"), backend=sync_backend)
    child = children("spawn", _child_opens_and_releases, sem.name, sync_backend)
    assert child.result() == (1, 5)
    assert child.join() == 0
    with closing(Semaphore.open(sem.name or "", backend=sync_backend)) as again:
        assert again.read() == (1, 5)
    sem.close()


# --- the per-user directory ---------------------------------------------------------------


@pytest.fixture
def sync_root(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    root = str(tmp_path)
    os.chmod(root, 0o755)  # like /dev/shm: others may look at the root, not into our directory
    monkeypatch.setenv(ROOT_ENV_VAR, root)
    return root


def test_user_directory_is_ours_alone(sync_root: str) -> None:
    path = user_directory()
    assert path == os.path.join(sync_root, f"ntshim-{os.geteuid()}")
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    assert user_directory() == path  # found again, not recreated


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o777])
def test_user_directory_with_access_for_others_is_refused(sync_root: str, mode: int) -> None:
    path = os.path.join(sync_root, f"ntshim-{os.geteuid()}")
    os.mkdir(path)
    os.chmod(path, mode)
    with pytest.raises(PermissionError, match="chmod 700"):
        user_directory()
    assert stat.S_IMODE(os.lstat(path).st_mode) == mode  # refused, not "fixed" behind our back


def test_user_directory_of_another_owner_is_refused(sync_root: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can make a directory that belongs to someone else")
    path = os.path.join(sync_root, f"ntshim-{os.geteuid()}")
    os.mkdir(path, 0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        user_directory()


@pytest.mark.parametrize("impostor", ["file", "symlink"])
def test_user_directory_impostor_is_refused(sync_root: str, tmp_path: Any, impostor: str) -> None:
    path = os.path.join(sync_root, f"ntshim-{os.geteuid()}")
    if impostor == "file":
        with open(path, "w"):
            pass
    else:
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        os.symlink(target, path)  # a good directory, but reached through someone's link
    with pytest.raises(PermissionError, match="not a directory"):
        user_directory()


def test_other_users_cannot_look_inside(sync_backend: str, unique_name: Callable[..., str]) -> None:
    """Whatever a backend keeps for named objects stays in the per-user directory, which
    another user can neither list nor enter."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    sem = Semaphore(0, 1, name=unique_name("private"), backend=sync_backend)
    path = user_directory()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            for attempt in (lambda: os.listdir(path), lambda: os.stat(os.path.join(path, "anything"))):
                try:
                    attempt()
                except PermissionError:
                    continue
                os._exit(2)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sem.close()
