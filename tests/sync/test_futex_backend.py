"""The futex backend's own mechanisms: the shared arena's bookkeeping (references across
fork, reclaiming what dead processes and exited threads leave), the name table, and
waits interrupted by signals.  The shared semantics are tested on every backend elsewhere."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import closing

import pytest
from required import require_sync_backend

from ntshim import _core
from ntshim.sync import AbandonedError, Event, Mutex, Semaphore, futex, wait_any

pytestmark = pytest.mark.usefixtures("_futex")


@pytest.fixture
def _futex() -> None:
    require_sync_backend("futex")


def unique(label: str) -> str:
    # Other test runs may share this user's arena: names of their own.
    return f"futex-test-{uuid.uuid4().hex[:12]}-{label}"


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )


def test_arena_file_is_private_to_the_user() -> None:
    info = os.stat(futex.arena_path())
    assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(futex.arena_path())).st_mode) == 0o700


def test_closing_the_last_handle_frees_the_object_and_its_name() -> None:
    name = unique("free")
    event = Event(manual=True, name=name, backend="futex")
    again = Event.open(name, backend="futex")
    state = event._handle.state()
    event.close()
    assert not again.set()  # `again` still holds it
    futex.Futex.from_state("event", state).close()
    again.close()
    with pytest.raises(FileNotFoundError):
        futex.Futex.from_state("event", state)
    with pytest.raises(FileNotFoundError):
        Event.open(name, backend="futex")


def test_name_table_survives_many_inserts_and_removals() -> None:
    # Enough names that linear-probing clusters form; removing every other one moves
    # later cluster members back, and each survivor must still be found by name.
    stem = unique("name")
    events = [Event(manual=False, name=f"{stem}-{i}", backend="futex") for i in range(3000)]
    for e in events[::2]:
        e.close()
    for i in range(1, 3000, 2):
        with closing(Event.open(f"{stem}-{i}", backend="futex")) as e:
            assert not e.created
    for i in range(0, 3000, 2):
        with pytest.raises(FileNotFoundError):
            Event.open(f"{stem}-{i}", backend="futex")
    for e in events[1::2]:
        e.close()


def test_a_forked_child_keeps_what_it_inherited_after_the_parent_closes_it() -> None:
    sem = Semaphore(0, 5, backend="futex")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: wait until the parent has closed, then use the inherited handle
        os.close(w)
        os.read(r, 1)
        try:
            sem.release(3)
            os._exit(0 if sem.read() == (3, 5) else 1)
        finally:  # whatever happened, never return into pytest in the child
            os._exit(2)
    os.close(r)
    state = sem._handle.state()
    sem.close()
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child exited: the next process to register reclaims its reference, and with
    # it the object.
    proc = run_child("""
        from ntshim.sync import Event
        Event(manual=True, backend="futex").close()
    """)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(FileNotFoundError):
        futex.Futex.from_state("semaphore", state)


def test_a_killed_process_gives_back_its_references_and_abandons_its_mutexes() -> None:
    stem = unique("killed")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from ntshim.sync import Event, Mutex, wait_any
            objects = [Event(manual=True, name=f"{stem}-{{i}}", backend="futex") for i in range(50)]
            m = Mutex(name="{stem}-mutex", backend="futex")
            wait_any([m])
            print("ready", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    mutex = Mutex.open(f"{stem}-mutex", backend="futex")
    Event.open(f"{stem}-0", backend="futex").close()
    proc.kill()
    proc.wait()
    with pytest.raises(AbandonedError):
        wait_any([mutex], 5)
    assert mutex.unlock() == 1
    mutex.close()
    # Another process registering sweeps the dead one: its 50 events (ours was closed) go.
    child = run_child("""
        from ntshim.sync import Event
        Event(manual=True, backend="futex").close()
    """)
    assert child.returncode == 0, child.stderr
    for i in range(50):
        with pytest.raises(FileNotFoundError):
            Event.open(f"{stem}-{i}", backend="futex")


def test_thread_blocks_are_given_back_when_threads_exit() -> None:
    sem = Semaphore(100, 100, backend="futex")
    never = Event(backend="futex")
    leave = threading.Event()
    ids: list[int] = []

    def take_one_and_stay() -> None:
        ids.append(threading.get_native_id())
        # A wait on two objects goes through the arena's lock, which gives the thread its
        # block (taking a unit alone is lock-free and needs none).
        wait_any([sem, never])
        leave.wait()

    threads = [threading.Thread(target=take_one_and_stay) for _ in range(20)]
    for t in threads:
        t.start()
    while sem.read()[0] > 80:
        time.sleep(0.01)
    assert set(ids) <= set(_core.sync_usage()["thread_ids_here"])  # each live thread has a block
    leave.set()
    for t in threads:
        t.join()
    assert sem.read() == (80, 100)
    # join() returns when the Python side of a thread is done; the thread gives its block
    # back a moment later, as it really exits (thread-specific-data destructors).
    deadline = time.monotonic() + 5
    while set(ids) & set(_core.sync_usage()["thread_ids_here"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(ids) & set(_core.sync_usage()["thread_ids_here"])  # and gave it back on exit


def test_a_signal_during_a_wait_acquires_nothing() -> None:
    sem = Semaphore(0, 1, backend="futex")

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            wait_any([sem], 30)
        assert time.monotonic() - start < 30  # the signal ended the wait, not the timeout
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert sem.release() == 0
    assert sem.read() == (1, 1)  # the interrupted waiter was no longer queued


def test_a_signal_whose_handler_returns_lets_the_wait_go_on() -> None:
    sem = Semaphore(0, 1, backend="futex")
    calls = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: calls.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        threading.Timer(0.3, sem.release).start()
        assert wait_any([sem], 30) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert calls == [signal.SIGALRM]
    assert sem.read() == (0, 1)


def test_the_c_wait_serves_the_common_call_and_declines_the_rest() -> None:
    """``wait_any``/``wait_all`` go to C (``_core.sync_wait_hot``) for open futex objects, the
    calling thread as owner and no alert: it answers as the Python path does, and declines
    (None, nothing taken) whatever the Python path must check or explain."""
    sem, other = Semaphore(2, 2, backend="futex"), Semaphore(1, 1, backend="futex")
    assert _core.sync_wait_hot([sem], None, False) == (0, False)
    assert _core.sync_wait_hot((other, sem), 0.5, True) == (0, False)  # both taken
    assert sem.read() == (0, 2) and other.read() == (0, 1)
    with pytest.raises(TimeoutError):
        _core.sync_wait_hot([sem], 0, False)
    closed = Semaphore(1, 1, backend="futex")
    closed.close()
    sem.release(1)
    declined = [
        ([closed], None, False),  # closed: Python raises
        ([sem, sem], None, True),  # wait_all names it twice: Python raises
        ([sem], "1", False),  # a timeout Python refuses
        ([sem], -1, False),
        ([sem], float("nan"), False),
        (iter([sem]), None, False),  # not a list or tuple
        ([], None, False),
        ([sem] * 65, None, False),  # more than a wait takes
        ([sem, "x"], None, False),
    ]
    for objects, timeout, all_ in declined:
        assert _core.sync_wait_hot(objects, timeout, all_) is None, (objects, timeout, all_)
    assert sem.read() == (1, 2)  # nothing was taken
    mutex = Mutex(backend="futex")
    wait_any([mutex])
    mutex.kill(threading.get_native_id())
    with pytest.raises(AbandonedError) as raised:
        wait_any([mutex])
    assert raised.value.index == 0 and mutex.read() == (threading.get_native_id(), 1)


def test_a_poll_of_one_object_answers_from_its_lock_free_attempt() -> None:
    """``wait_any([x], 0)`` on an unsignaled semaphore or event is answered by its first,
    lock-free attempt: the deadline has passed, so there is no second attempt through the
    arena's lock (which would also give the thread a wait block it never needs)."""
    sem, event = Semaphore(0, 1, backend="futex"), Event(backend="futex")
    outcomes: list[str] = []

    def poll() -> None:
        for obj in (sem, event):
            try:
                wait_any([obj], 0)
            except TimeoutError:
                outcomes.append("timed out")
        outcomes.append(str(threading.get_native_id() in _core.sync_usage()["thread_ids_here"]))

    thread = threading.Thread(target=poll)
    thread.start()
    thread.join()
    assert outcomes == ["timed out", "timed out", "False"]


def test_the_spins_are_lengths_of_time_measured_in_pauses_of_this_cpu() -> None:
    """The look (1 µs), the spin for the arena's lock (6 µs) and a queued waiter's spin
    (45 µs) are counted in pauses, whose length differs from CPU to CPU: all three come from
    one measured cost of a pause, once per process (so they keep the ratios of their
    lengths), and there is nothing to spin for with one CPU."""
    look, lock, queued = _core.sync_spins()
    assert _core.sync_spins() == (look, lock, queued)
    if os.cpu_count() == 1:
        assert (look, lock, queued) == (0, 0, 0)
    else:
        assert look >= 1
        assert 6 * look <= lock < 6 * (look + 1)
        assert 45 * look <= queued < 45 * (look + 1)
