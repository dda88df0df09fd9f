"""The eventfd backend's own mechanisms: descriptors brokered by the server (names, pickling,
fork), abandonment of mutexes through the broker when a thread or process ends, descriptor
lifetime, the wait loop's put-back and retry.

Its semantic gaps against ntsync (module docstring of ntshim.sync.eventfd) are marked in the
shared tests; here everything tested is something the design does guarantee.
"""

from __future__ import annotations

import gc
import inspect
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import pytest
from required import require_sync_backend

from ntshim.errors import AbandonedError, NameKindError
from ntshim.sync import Event, Mutex, Semaphore, wait_all, wait_any
from ntshim.sync import eventfd as efd

from .conftest import BOUND, Waiter

StartWaiter = Callable[[Callable[[], Any]], Waiter]
B = "eventfd"


@pytest.fixture(autouse=True)
def _eventfd_available() -> None:
    require_sync_backend(B)


def python(code: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], input=stdin, capture_output=True, text=True, timeout=4 * BOUND,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def object_fds() -> int:
    """Descriptors of eventfd-backend objects open in the calling process (eventfds and
    mutex blocks; not the sockets to the server, which come and go with threads).  A count
    over the whole process: only meaningful where nothing else runs (its source is run in a
    fresh interpreter, see test_closing_returns_every_descriptor)."""
    gc.collect()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        count += target == "anon_inode:[eventfd]" or target.startswith("/memfd:ntshim-mutex")
    return count


def test_the_counter_is_read_without_being_consumed() -> None:
    fd = os.eventfd(20, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        assert efd._counter(fd) == 20  # fdinfo shows it in hex: 0x14
        assert efd._counter(fd) == 20
        assert efd._take(fd) and efd._counter(fd) == 19
    finally:
        os.close(fd)


# ----- the broker --------------------------------------------------------------------------


def test_names_reach_other_processes_through_the_broker(unique_name: Callable[[str], str]) -> None:
    name = unique_name("efd-name")
    sem = Semaphore(1, 5, name=name, backend=B)
    mutex = Mutex(name=name + "-m", backend=B)
    assert sem.created and mutex.created
    out = python(f"""
        from ntshim.errors import NameKindError
        from ntshim.sync import Event, Mutex, Semaphore, wait_any
        sem = Semaphore(0, 1, name={name!r}, backend='eventfd')      # opens: parameters ignored
        print(sem.created, sem.read())
        sem.release(3)
        m = Mutex.open({name + "-m"!r}, backend='eventfd')
        wait_any([m], 0, owner=77)
        m.unlock(77)
        wait_any([m], 0, owner=88)
        try:
            Event(manual=True, name={name!r}, backend='eventfd')
        except NameKindError:
            print('kind refused')
        m.kill(88)
    """)
    assert out.split("\n")[:2] == ["False (1, 5)", "kind refused"]
    assert sem.read() == (4, 5)  # the same eventfd: the other process's release is here
    with pytest.raises(AbandonedError):  # and the same shared block
        mutex.read()
    with pytest.raises(NameKindError):
        Event.open(name, backend=B)
    sem.close()
    with pytest.raises(FileNotFoundError):
        Semaphore.open(name, backend=B)


def test_pickled_objects_get_their_descriptors_from_the_broker() -> None:
    sem = Semaphore(0, 3, backend=B)
    event = Event(manual=True, backend=B)
    out = python(
        """
        import pickle, sys
        sem, event = pickle.loads(bytes.fromhex(sys.stdin.readline()))
        sem.release(2)
        event.set()
        print(event.read())
        """,
        stdin=pickle.dumps((sem, event)).hex() + "\n",
    )
    assert out.strip() == "(True, True)"
    assert sem.read() == (2, 3) and event.read() == (True, True)
    data = pickle.dumps(sem)
    sem.close()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)


def test_a_fork_child_keeps_the_name_alive_after_the_parent_closes(unique_name: Callable[[str], str]) -> None:
    name = unique_name("efd-fork")
    event = Event(manual=False, name=name, backend=B)
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.read(go_read, 1)
            again = Event.open(name, backend=B)  # still named: the child's reference
            again.set()
            assert wait_any([event], 0) == 0  # the inherited descriptor, same object
            code = 0
        finally:
            os._exit(code)
    event.close()
    os.write(go_write, b"x")
    _, status = os.waitpid(pid, 0)
    os.close(go_read)
    os.close(go_write)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(FileNotFoundError):
        Event.open(name, backend=B)


# ----- abandonment through the broker ------------------------------------------------------


def test_kill_abandons_and_wakes_a_waiter(waiters: StartWaiter) -> None:
    mutex = Mutex(owner=5, count=2, backend=B)
    blocked = waiters(lambda: wait_any([mutex], owner=6))
    assert blocked.still_waiting()
    with pytest.raises(PermissionError):
        mutex.kill(6)
    mutex.kill(5)
    with pytest.raises(AbandonedError):
        blocked.outcome()
    assert mutex.read() == (6, 1)
    blocked.finish()


# ----- descriptors -------------------------------------------------------------------------


def test_closing_returns_every_descriptor(unique_name: Callable[[str], str]) -> None:
    # Counted in a fresh interpreter, where these objects are all there is.  The count takes
    # in the whole process, and the pytest process may have more going on: a thread that an
    # earlier test left waiting keeps the descriptors of the handles it waits on (closed or
    # not) until its wait ends, which can fall between the two counts.
    out = python(
        "import gc, os, pickle\n"
        "from ntshim.sync import Event, Mutex, Semaphore\n"
        + inspect.getsource(object_fds)
        + textwrap.dedent(f"""
            before = object_fds()
            for i in range(20):
                name = {unique_name("fds")!r} + str(i)
                objects = [Semaphore(0, 1, name=name, backend={B!r}), Mutex(name=name + "m", backend={B!r}),
                           Event(manual=True, backend={B!r})]
                objects += [Semaphore.open(name, backend={B!r}), Mutex.open(name + "m", backend={B!r})]
                objects.append(pickle.loads(pickle.dumps(objects[2])))
                if i == 0:
                    during = object_fds()
                for obj in objects:
                    obj.close()
            print(before, during, object_fds())
        """)
    )
    before, during, after = map(int, out.split())
    assert during >= before + 6  # the count sees them: at least one descriptor per open object
    assert after == before


def test_a_handle_closed_during_a_wait_keeps_its_descriptor_until_the_wait_ends(
    unique_name: Callable[[str], str], waiters: StartWaiter
) -> None:
    name = unique_name("efd-busy")
    mine = Event(manual=False, name=name, backend=B)
    other = Event.open(name, backend=B)
    handle = mine._handle
    assert isinstance(handle, efd.EventfdHandle)
    fd = handle.fd
    blocked = waiters(lambda: wait_any([mine]))
    assert blocked.still_waiting()
    mine.close()
    assert os.fstat(fd)  # still open: the wait uses it
    other.set()
    assert blocked.outcome() == 0
    blocked.finish()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the wait on its way out
    assert other.read() == (False, False)


# ----- the wait loop -----------------------------------------------------------------------


def test_wait_all_puts_back_and_retries_after_losing_a_race(monkeypatch: pytest.MonkeyPatch) -> None:
    sem = Semaphore(1, 1, backend=B)
    auto = Event(manual=False, signaled=True, backend=B)
    mutex = Mutex(backend=B)
    abandoned_mutex = Mutex(owner=3, count=1, backend=B)
    abandoned_mutex.kill(3)
    contested = Semaphore(1, 1, backend=B)
    real_grab = efd._grab
    calls: list[efd.EventfdHandle] = []

    def grab(handle: efd.EventfdHandle, owner: int) -> tuple[bool, bool]:
        calls.append(handle)
        if len(calls) == 5:
            return False, False  # another thread took it between the poll and the read
        return real_grab(handle, owner)

    monkeypatch.setattr(efd, "_grab", grab)
    # Round one takes four objects, loses the fifth and puts the four back (the abandoned
    # flag included); round two takes all five, and reports the abandoned mutex.
    with pytest.raises(AbandonedError):
        wait_all([sem, auto, mutex, abandoned_mutex, contested], BOUND, owner=8)
    monkeypatch.undo()
    assert [h.key for h in calls] == [o._handle.key for o in (sem, auto, mutex, abandoned_mutex, contested)] * 2
    assert sem.read() == (0, 1) and auto.read() == (False, False) and contested.read() == (0, 1)
    assert mutex.read() == (8, 1) and abandoned_mutex.read() == (8, 1)


def test_wait_all_put_back_restores_state_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    sem = Semaphore(2, 2, backend=B)
    auto = Event(manual=False, signaled=True, backend=B)
    owned = Mutex(owner=8, count=1, backend=B)
    abandoned_mutex = Mutex(owner=3, count=1, backend=B)
    abandoned_mutex.kill(3)
    never = Event(manual=True, signaled=True, backend=B)
    real_grab = efd._grab

    def grab(handle: efd.EventfdHandle, owner: int) -> tuple[bool, bool]:
        if handle is never._handle:
            return False, False
        return real_grab(handle, owner)

    monkeypatch.setattr(efd, "_grab", grab)
    with pytest.raises(TimeoutError):
        wait_all([sem, auto, owned, abandoned_mutex, never], 0.05, owner=8)
    monkeypatch.undo()
    assert sem.read() == (2, 2)
    assert auto.read() == (False, True)
    assert owned.read() == (8, 1)
    with pytest.raises(AbandonedError):
        abandoned_mutex.read()


def test_no_wake_up_is_lost_among_racing_waiters() -> None:
    # Every waiter is woken by each release and they race; the losers must go back to sleep
    # and still get a later unit.  Bounded: 4 threads x 50 units.
    sem = Semaphore(0, 1000, backend=B)
    threads, per_thread = 4, 50
    got = [0] * threads

    def take(i: int) -> None:
        for _ in range(per_thread):
            wait_any([sem], BOUND)
            got[i] += 1

    workers = [threading.Thread(target=take, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for _ in range(threads * per_thread):
        sem.release(1)
    for worker in workers:
        worker.join(4 * BOUND)
    assert got == [per_thread] * threads
    assert sem.read() == (0, 1000)
