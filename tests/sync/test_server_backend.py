"""The server backend's own mechanisms: the model's extras (rollback, holders), starting and
stopping the server, its protocol against malformed and vanishing clients and against
descriptors passed to it, its descriptor limit, per-thread connections, abandonment when a
thread or process ends, fork, pickling, references and names across processes, waits
interrupted by a signal, and asynchronous requests (their connections, doorbell and races).

The ntsync semantics themselves are checked on every backend by the shared tests; here the
subject is how the server backend carries them across threads and processes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from required import require_sync_backend

from ntshim.errors import AbandonedError, NameKindError
from ntshim.sync import Event, Mutex, Semaphore, userdir, wait_all, wait_any
from ntshim.sync.backend import Handle
from ntshim.sync.server import client, protocol
from ntshim.sync.server.model import Model, Waiter

from .helpers import BOUND, StartWaiter


@pytest.fixture(autouse=True)
def _server_available() -> None:
    require_sync_backend("server")


def python(code: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """Run ``code`` in a fresh interpreter; its stdout (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=4 * BOUND,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def until(condition: Callable[[], bool], bound: float = BOUND) -> bool:
    """Poll ``condition`` until it holds or ``bound`` seconds passed."""
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def server_pid(sock: socket.socket) -> int:
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# ----- the model's extras ------------------------------------------------------------------


def test_rollback_gives_back_what_a_wait_took() -> None:
    model = Model()
    sem = model.create("semaphore", (1, 2))
    mutex = model.create("mutex", (0, 0))
    auto = model.create("event", (0, 1))
    waiter = model.wait([sem, mutex, auto], True, owner=7)
    assert waiter.signaled == 0
    assert (sem.count, mutex.owner, mutex.count, auto.signaled) == (0, 7, 1, False)
    given = model.rollback(waiter)
    assert (given.returned, given.kept) == (3, 0)
    assert (sem.count, mutex.owner, mutex.count, auto.signaled) == (1, 0, 0, True)


def test_rollback_of_an_abandoned_mutex_abandons_it_again() -> None:
    model = Model()
    mutex = model.create("mutex", (5, 1))
    model.mutex_kill(mutex, 5)
    waiter = model.wait([mutex], False, owner=7)
    assert waiter.abandoned and not mutex.abandoned
    model.rollback(waiter)
    assert model.mutex_read(mutex) == (0, 0, True)  # the next owner still learns


def test_rollback_hands_over_to_the_next_waiter() -> None:
    woken: list[Waiter] = []
    model = Model(woken.append)
    sem = model.create("semaphore", (1, 1))
    first = model.wait([sem], False, owner=1)
    second = model.wait([sem], False, owner=2)
    assert second.pending
    model.rollback(first)
    assert woken == [first, second] and sem.count == 0


def test_rollback_keeps_a_unit_that_no_longer_fits() -> None:
    model = Model()
    sem = model.create("semaphore", (1, 1))
    waiter = model.wait([sem], False, owner=1)
    model.sem_release(sem, 1)  # refilled to the maximum meanwhile
    given = model.rollback(waiter)
    assert (given.returned, given.kept) == (0, 1) and sem.count == 1


def test_abandon_holder_abandons_only_what_that_holder_took() -> None:
    woken: list[Waiter] = []
    model = Model(woken.append)
    held = model.create("mutex", (3, 2), holder="thread-a")
    other = model.create("mutex", (4, 1), holder="thread-b")
    waiter = model.wait([held], False, owner=9, holder="thread-c")
    assert model.abandon_holder("thread-a") == 1
    assert woken == [waiter] and waiter.abandoned
    assert model.mutex_read(held) == (9, 1, False)
    assert model.mutex_read(other) == (4, 1, False)
    assert model.abandon_holder("thread-a") == 0


def test_a_recursive_acquisition_keeps_the_first_holder() -> None:
    model = Model()
    mutex = model.create("mutex", (0, 0))
    model.wait([mutex], False, owner=5, holder="first")
    model.wait([mutex], False, owner=5, holder="second")
    assert model.abandon_holder("second") == 0
    assert model.abandon_holder("first") == 1
    assert model.mutex_read(mutex) == (0, 0, True)


def test_a_lock_is_not_recursive_and_anyone_releases_it() -> None:
    model = Model()
    lock = model.create("lock", (0, 0))
    first = model.wait([lock], False, owner=5, holder="thread-a", process="process-1")
    assert first.signaled == 0 and not first.abandoned
    assert model.lock_read(lock) == (True, False)
    again = model.wait([lock], False, owner=5, holder="thread-a", process="process-1")
    assert again.pending  # the same owner, thread and process wait like anyone else
    assert model.cancel(again)  # (what the server does at its deadline)
    model.lock_release(lock)  # no owner to name: another thread or process may release
    assert model.lock_read(lock) == (False, False)
    with pytest.raises(PermissionError):
        model.lock_release(lock)
    assert model.lock_read(lock) == (False, False)
    assert model.abandon_holder("process-1") == 0  # released: nothing left to abandon


def test_a_lock_is_abandoned_with_its_process_not_its_thread() -> None:
    woken: list[Waiter] = []
    model = Model(woken.append)
    lock = model.create("lock", (0, 0))
    model.wait([lock], False, owner=5, holder="thread-a", process="process-1")
    following = model.wait([lock], False, owner=6, holder="thread-b", process="process-2")
    assert following.pending
    assert model.abandon_holder("thread-a") == 0  # the acquiring thread ended: still locked
    assert following.pending and model.lock_read(lock) == (True, False)
    assert model.abandon_holder("process-1") == 1
    assert woken[-1] is following and following.signaled == 0 and following.abandoned
    assert model.lock_read(lock) == (True, False)  # handed over, the flag cleared by the taking
    assert model.abandon_holder("process-1") == 0
    assert model.abandon_holder("process-2") == 1
    assert model.lock_read(lock) == (False, True)


def test_a_lock_released_abandoned_tells_the_next_acquirer() -> None:
    model = Model()
    lock = model.create("lock", (0, 0))
    model.wait([lock], False, owner=5, process="process-1")
    model.lock_release(lock, abandon=True)
    assert model.lock_read(lock) == (False, True)
    following = model.wait([lock], False, owner=6, process="process-2")
    assert following.signaled == 0 and following.abandoned
    model.lock_release(lock)
    assert model.lock_read(lock) == (False, False)
    third = model.wait([lock], False, owner=7, process="process-3")
    assert third.signaled == 0 and not third.abandoned


def test_wait_all_takes_a_lock_and_a_semaphore_at_once() -> None:
    model = Model()
    lock = model.create("lock", (0, 0))
    sem = model.create("semaphore", (0, 1))
    model.wait([lock], False, owner=1, process="process-1")
    any_waiter = model.wait([lock], False, owner=2, process="process-2")
    both = model.wait([sem, lock], True, owner=3, process="process-3")
    model.sem_release(sem, 1)
    assert both.pending and sem.count == 1  # the lock is still locked: nothing taken
    model.lock_release(lock)
    # Wait-all first, though the wait-any came earlier; both objects in one step.
    assert both.signaled == 0 and any_waiter.pending
    assert sem.count == 0 and model.lock_read(lock) == (True, False)
    assert model.abandon_holder("process-3") == 1
    assert any_waiter.signaled == 0 and any_waiter.abandoned


def test_rollback_of_an_abandoned_lock_leaves_it_abandoned() -> None:
    model = Model()
    lock = model.create("lock", (0, 0))
    model.wait([lock], False, owner=5, process="process-1")
    model.abandon_holder("process-1")
    waiter = model.wait([lock], False, owner=7, process="process-2")
    assert waiter.abandoned and model.lock_read(lock) == (True, False)
    given = model.rollback(waiter)
    assert (given.returned, given.kept) == (1, 0)
    assert model.lock_read(lock) == (False, True)  # the next acquirer still learns
    assert model.abandon_holder("process-2") == 0


def test_rollback_keeps_a_lock_released_and_taken_again_meanwhile() -> None:
    model = Model()
    lock = model.create("lock", (0, 0))
    waiter = model.wait([lock], False, owner=5, process="process-1")
    model.lock_release(lock)  # by anyone, before the rollback comes
    model.wait([lock], False, owner=6, process="process-2")
    given = model.rollback(waiter)
    assert (given.returned, given.kept) == (0, 1)
    assert model.lock_read(lock) == (True, False)  # still the second taker's
    assert model.abandon_holder("process-2") == 1


# ----- starting and stopping the server ----------------------------------------------------


@pytest.fixture
def private_root() -> Iterator[dict[str, str]]:
    """An environment with its own per-user directory, hence its own server, which leaves
    0.3 s after its last client.  A short path: socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="nts", dir="/tmp") as root:
        env = {userdir.ROOT_ENV_VAR: root, protocol.LINGER_ENV_VAR: "0.3"}
        yield env
        # Let its server leave (it unlinks its socket) before the directory goes.
        until(lambda: not _socket_path(env).exists())


SHOW_SERVER = textwrap.dedent("""
    import socket, struct
    from ntshim.sync.server.client import CLIENT
    pid = struct.unpack("3i", CLIENT.anchor.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    print(CLIENT.server_instance(), pid)
""")


def _socket_path(env: dict[str, str]) -> Path:
    return Path(env[userdir.ROOT_ENV_VAR]) / f"ntshim-{os.geteuid()}" / protocol.SOCKET_NAME


def test_server_starts_on_demand_and_leaves_when_idle(private_root: dict[str, str]) -> None:
    path = _socket_path(private_root)
    assert not path.exists()
    out = python("from ntshim.sync import Event; e = Event(manual=True, name='x', backend='server')" + SHOW_SERVER,
                 private_root)
    instance, pid = map(int, out.split())
    # Its only client exited: it unlinks its socket and exits after the linger time.
    assert until(lambda: not path.exists()), "the idle server kept its socket"
    assert until(lambda: gone(pid)), "the idle server did not exit"
    # The next client starts a new server, which knows nothing of the old one's names.
    out = python(
        textwrap.dedent("""
            from ntshim.sync import Event
            try:
                Event.open('x', backend='server')
            except FileNotFoundError:
                print('gone')
        """) + SHOW_SERVER,
        private_root,
    )
    lines = out.split("\n")
    assert lines[0] == "gone"
    assert int(lines[1].split()[0]) != instance


def test_unavailable_says_why() -> None:
    out = python(
        """
        from ntshim.sync import registry
        availability = registry.backend_class('server').availability()
        print(availability.available, availability.reason)
        """,
        {userdir.ROOT_ENV_VAR: "/nonexistent-ntshim-root"},
    )
    assert out.startswith("False cannot start or reach the sync server:")
    assert "nonexistent-ntshim-root" in out


def test_there_is_no_eventfd_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # It went (docs/sync.md says why): asking for it is an unknown name, like any other.
    with pytest.raises(ValueError, match=r"backend: unknown sync backend 'eventfd'; choose from futex, server$"):
        Event(manual=True, backend="eventfd")
    monkeypatch.setenv("NTSHIM_SYNC_BACKEND", "eventfd")
    with pytest.raises(ValueError, match=r"NTSHIM_SYNC_BACKEND: unknown sync backend 'eventfd'"):
        Semaphore(0, 1)


FORK_WHILE_THREADS_CHURN = textwrap.dedent("""
    import os, sys, threading, time
    from ntshim.sync import Event
    # Live handles (fork prepares an anchor for the child), many, so that walking them takes
    # a while; and frequent thread switches, so that other threads run during the walk.
    keep = [Event(manual=True, backend="server") for _ in range(500)]
    sys.setswitchinterval(1e-6)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            Event(manual=True, backend="server").close()

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    end = time.monotonic() + 3
    forks = 0
    while time.monotonic() < end:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forks += 1
    stop.set()
    for t in threads:
        t.join()
    print("forks", forks)
""")


def test_a_fork_while_the_client_is_first_imported(private_root: dict[str, str]) -> None:
    """The server client is imported on first use of its backend, and its fork hooks are
    registered then: if that happens while another thread forks, the parent runs the
    client's after-fork hook without its before-fork hook.  The hook must not release a
    lock it never took (it raised RuntimeError; found by the API fuzz test under load)."""
    out = python(
        """
        import os, sys
        import ntshim.sync
        seen = []
        sys.unraisablehook = lambda report: seen.append(repr(report.exc_value))
        assert "ntshim.sync.server.client" not in sys.modules
        # The import happens inside the fork (as when another thread's first server object
        # imports the client while this thread forks).
        os.register_at_fork(before=lambda: __import__("ntshim.sync.server.client"))
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        sem = ntshim.sync.Semaphore(1, 1, backend="server")
        pid = os.fork()  # the client's hooks, paired from now on, still work
        if pid == 0:
            os._exit(0 if sem.read() == (1, 1) else 1)
        _, status = os.waitpid(pid, 0)
        print(seen, os.waitstatus_to_exitcode(status))
        """,
        env=private_root,
    )
    assert out.split() == ["[]", "0"], out


def test_fork_while_other_threads_make_and_close_objects(private_root: dict[str, str]) -> None:
    """The fork hook walks this process's handles while other threads add and drop some (it
    raised "Set changed size during iteration", leaving the child without a prepared anchor;
    found by the API fuzz test)."""
    proc = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_THREADS_CHURN], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **private_root},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("forks "), proc.stdout
    assert "Exception ignored" not in proc.stderr and "RuntimeError" not in proc.stderr, proc.stderr


def test_clients_starting_at_once_share_one_server(private_root: dict[str, str]) -> None:
    go = Path(private_root[userdir.ROOT_ENV_VAR]) / "go"
    code = f"""
        import os, time
        from ntshim.sync import Event
        from ntshim.sync.server.client import CLIENT
        e = Event(manual=True, name='shared', backend='server')
        print(CLIENT.server_instance(), e.created, flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
    """
    children = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **private_root},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        lines = [child.stdout.readline().split() for child in children if child.stdout is not None]
    finally:
        go.touch()
        for child in children:
            child.wait(4 * BOUND)
    assert all(child.returncode == 0 for child in children), [c.stderr.read() for c in children if c.stderr]
    assert len({instance for instance, _ in lines}) == 1, "two servers were started"
    assert sorted(created for _, created in lines) == ["False", "False", "False", "True"]


def test_a_killed_server_is_replaced_and_its_objects_report_it(private_root: dict[str, str]) -> None:
    code = """
        import socket, struct, sys
        from ntshim.sync import Semaphore
        from ntshim.sync.server.client import CLIENT, ServerGone
        old = Semaphore(1, 2, backend='server')
        print(struct.unpack("3i", CLIENT.anchor.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0],
              flush=True)
        sys.stdin.readline()   # the test kills the server meanwhile
        try:
            old.read()
        except ServerGone:
            print('old gone')
        new = Semaphore(0, 1, backend='server')   # a new server starts
        assert new.release() == 0 and new.read() == (1, 1)
        try:
            old.release()
        except ServerGone:
            print('old still gone')
    """
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **private_root},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    pid = int(child.stdout.readline())
    os.kill(pid, signal.SIGKILL)
    assert until(lambda: gone(pid))
    out, err = child.communicate("\n", timeout=4 * BOUND)
    assert child.returncode == 0, err
    assert out.split("\n")[:2] == ["old gone", "old still gone"]


# ----- protocol robustness -----------------------------------------------------------------


def process_hello() -> bytes:
    return protocol.frame(protocol.HELLO_PROC, protocol.HELLO_PROC_REQUEST.pack(protocol.PROTOCOL_VERSION, os.getpid(), 0))


def raw_connection(
    hello: bool = True, directory: str | None = None, thread: tuple[int, int] | None = None
) -> socket.socket:
    """A socket to the server of ``directory`` (default: the one this test process uses),
    with a process hello done, or with ``thread=(process token, tid)`` a thread hello."""
    if directory is None:
        client.CLIENT.server_instance()  # make sure it runs
        directory = userdir.user_directory()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.connect(os.path.join(directory, protocol.SOCKET_NAME))
    if thread is not None:
        token, tid = thread
        hello_args = protocol.HELLO_THREAD_REQUEST.pack(protocol.PROTOCOL_VERSION, os.getpid(), tid, token)
        sock.sendall(protocol.frame(protocol.HELLO_THREAD, hello_args))
        assert read_reply(sock)[:2] == (protocol.HELLO_THREAD, protocol.OK)
    elif hello:
        sock.sendall(process_hello())
        assert read_reply(sock)[:2] == (protocol.HELLO_PROC, protocol.OK)
    return sock


def read_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    (length,) = protocol.FRAME_LENGTH.unpack(exactly(4))
    body = exactly(length)
    return body[0], body[1], body[2:]


def dropped(sock: socket.socket) -> bool:
    """The server closed this connection (after whatever replies it sent first)."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\xff\xff\xff\xff" + b"x" * 16, id="huge-length"),
        pytest.param(b"\x00\x00\x00\x00", id="empty-frame"),
        pytest.param(protocol.frame(0x7E, b"abc"), id="unknown-op"),
        pytest.param(protocol.frame(protocol.SEM_READ, b"\x01\x02"), id="short-payload"),
        pytest.param(protocol.frame(protocol.WAIT, protocol.WAIT_REQUEST.pack(0, 1, 0, 200)), id="wait-claims-200-objects"),
        pytest.param(protocol.frame(protocol.HELLO_PROC, protocol.HELLO_PROC_REQUEST.pack(99, 1, 0)), id="second-hello-bad-version"),
        pytest.param(protocol.frame(protocol.CREATE, protocol.CREATE_REQUEST.pack(9, 0, 1)), id="bad-kind"),
    ],
)
def test_a_malformed_client_loses_only_its_connection(garbage: bytes) -> None:
    witness = Semaphore(1, 3, backend="server")
    sock = raw_connection()
    sock.sendall(garbage)
    assert dropped(sock)
    sock.close()
    assert witness.release(1) == 1 and witness.read() == (2, 3)


#: The op the server once took descriptors with (EFD_CREATE, for the removed eventfd backend).
FORMER_EFD_CREATE = 0x40
#: The thread id the hostile client names in the mutex block it passes.
HOSTILE_TID = 77


def server_descriptors(pid: int) -> list[str]:
    """What the server process has open (the targets of /proc/<pid>/fd)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue  # closed meanwhile
    return targets


def hostile_descriptors(attack: str, stack: contextlib.ExitStack) -> tuple[list[int], Callable[[], None]]:
    """The descriptors of an attack the server once fell for, passed as an eventfd-backend
    mutex (its token eventfd and its shared block, which names thread HOSTILE_TID of this
    process as holder), and what the attacker does once the server has them."""
    block = os.memfd_create("hostile-block")
    stack.callback(os.close, block)
    os.ftruncate(block, 4096)
    os.pwrite(block, struct.pack("<IIIII", 1, 1, 0, os.getpid(), HOSTILE_TID), 0)
    if attack == "truncated-memfd":
        token = os.eventfd(0)
        stack.callback(os.close, token)
        # Shrunk under the server's mapping: its next look at the block was a SIGBUS.
        return [token, block], lambda: os.ftruncate(block, 0)
    # A full pipe, blocking, where the token eventfd belongs: the server's write of the
    # token when the holder's thread ends blocked it for good.
    read_end, write_end = os.pipe()
    stack.callback(os.close, read_end)
    stack.callback(os.close, write_end)
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, True)
    return [write_end, block], lambda: None


def send_with_descriptors(sock: socket.socket, request: bytes, fds: list[int]) -> None:
    sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])


def answered(sock: socket.socket, request: bytes, what: str, pid: int) -> tuple[int, int, bytes]:
    """The reply to ``request``; fails saying whether the server died or froze."""
    try:
        sock.sendall(request)
        return read_reply(sock)
    except TimeoutError:
        pytest.fail(f"{what}: the server froze (no answer in {BOUND} s)")
    except (AssertionError, ConnectionError):
        pytest.fail(f"{what}: the server closed the connection" + (" (it died)" if until(lambda: gone(pid), 1) else ""))


@pytest.mark.parametrize("attack", ["truncated-memfd", "full-blocking-pipe"])
def test_descriptors_a_client_passes_never_reach_the_server(
    private_root: dict[str, str], monkeypatch: pytest.MonkeyPatch, attack: str
) -> None:
    # Issue 11, item 11: a client of the same user could kill the server with SIGBUS or
    # freeze it through descriptors it passed.  The server takes no descriptors any more:
    # the kernel discards what comes with a frame, so none can be used, and none piles up.
    monkeypatch.setenv(protocol.LINGER_ENV_VAR, "0.3")
    directory = _socket_path(private_root).parent
    directory.mkdir(mode=0o700)
    keeper, payload = client.open_connection(process_hello(), str(directory))  # starts a private server
    witness = keeper.sock
    witness.settimeout(BOUND)
    token = protocol.HELLO_PROC_REPLY.unpack_from(payload)[0]
    pid = server_pid(witness)
    with contextlib.ExitStack() as stack:
        stack.callback(keeper.close)
        _, status, created = answered(witness, protocol.frame(protocol.CREATE, protocol.CREATE_REQUEST.pack(0, 1, 5)), "create", pid)
        assert status == protocol.OK
        read_witness = protocol.frame(protocol.SEM_READ, protocol.OBJECT_ID.pack(protocol.CREATE_REPLY.unpack(created)[0]))
        baseline = len(server_descriptors(pid))

        fds, strike = hostile_descriptors(attack, stack)
        hostile = raw_connection(directory=str(directory))
        stack.callback(hostile.close)
        send_with_descriptors(hostile, protocol.frame(FORMER_EFD_CREATE, protocol.CREATE_REQUEST.pack(1, 1, 1)), fds)
        with contextlib.suppress(ConnectionError):
            hostile.recv(4096)  # the old server's answer; now the end of the connection (an unknown op)
        strike()
        # A thread connection of the holder named in the block ends: the old server then
        # read every mutex block it held and wrote the token of the holder's mutexes.
        thread = raw_connection(directory=str(directory), thread=(token, HOSTILE_TID))
        thread.close()
        assert answered(witness, read_witness, f"after the {attack}", pid) == (protocol.SEM_READ, protocol.OK, protocol.SEM_STATE.pack(1, 5))

        # Ordinary requests carrying descriptors are answered as if they carried none, and
        # nothing that was passed stays open in the server.
        stuffer = raw_connection(directory=str(directory))
        stack.callback(stuffer.close)
        for _ in range(16):
            send_with_descriptors(stuffer, read_witness, fds)
            assert read_reply(stuffer) == (protocol.SEM_READ, protocol.OK, protocol.SEM_STATE.pack(1, 5))
        kept = [t for t in server_descriptors(pid) if t.startswith(("memfd:", "pipe:", "anon_inode:[eventfd]"))]
        assert not kept, f"the server holds descriptors a client passed: {kept}"
        hostile.close()
        stuffer.close()
        assert until(lambda: len(server_descriptors(pid)) == baseline), server_descriptors(pid)


def test_a_request_before_hello_is_refused() -> None:
    sock = raw_connection(hello=False)
    sock.sendall(protocol.frame(protocol.SEM_READ, protocol.OBJECT_ID.pack(1)))
    assert dropped(sock)
    sock.close()


def test_a_client_that_vanishes_mid_frame_or_mid_wait_leaves_no_trace() -> None:
    sem = Semaphore(0, 2, backend="server")
    # Half a frame, then gone.
    sock = raw_connection()
    sock.sendall(protocol.frame(protocol.SEM_RELEASE, protocol.OBJECT_ID_AND_ARGUMENT.pack(sem._handle.key, 1))[:7])
    sock.close()
    # A wait that was still pending when its client went: cancelled, so the next unit
    # released is not swallowed by a dead waiter.
    sock = raw_connection()
    sock.sendall(protocol.wait_frame([sem._handle.key], False, None, 77, None))
    sock.sendall(protocol.frame(protocol.SEM_READ, protocol.OBJECT_ID.pack(sem._handle.key)))  # a second request behind it
    time.sleep(0.05)
    sock.close()
    time.sleep(0.05)
    assert sem.release(1) == 0
    assert sem.read() == (1, 2)


def test_invalid_requests_with_good_framing_get_an_error_and_keep_the_connection() -> None:
    sock = raw_connection()
    # A wait_all naming an object twice, and an object id that does not exist.
    sem = Semaphore(1, 1, backend="server")
    key = sem._handle.key
    sock.sendall(protocol.wait_frame([key, key], True, None, 5, None))
    assert read_reply(sock)[:2] == (protocol.WAIT, protocol.E_INVALID)
    sock.sendall(protocol.frame(protocol.SEM_READ, protocol.OBJECT_ID.pack(0xDEAD_BEEF_0000)))
    assert read_reply(sock)[:2] == (protocol.SEM_READ, protocol.E_NOENT)
    sock.sendall(protocol.frame(protocol.MUTEX_READ, protocol.OBJECT_ID.pack(key)))  # a semaphore read as a mutex
    assert read_reply(sock)[:2] == (protocol.MUTEX_READ, protocol.E_NOENT)
    sock.sendall(protocol.frame(protocol.SEM_READ, protocol.OBJECT_ID.pack(key)))
    assert read_reply(sock) == (protocol.SEM_READ, protocol.OK, protocol.SEM_STATE.pack(1, 1))
    sock.close()
    assert sem.read() == (1, 1)


def test_a_client_that_never_reads_is_dropped_not_waited_for() -> None:
    sem = Semaphore(1, 1, backend="server")
    sock = raw_connection()
    sock.setblocking(False)
    request = protocol.frame(protocol.SEM_READ, protocol.OBJECT_ID.pack(sem._handle.key)) * 512
    sent = 0
    end = time.monotonic() + BOUND
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        while time.monotonic() < end:
            try:
                sent += sock.send(request)
            except BlockingIOError:
                time.sleep(0.001)
    assert sent > protocol.MAX_BODY
    sock.close()
    assert sem.read() == (1, 1)  # everyone else was served meanwhile


def test_cancel_gives_back_a_wait_satisfied_before_the_client_read_it() -> None:
    sem = Semaphore(1, 1, backend="server")
    mutex = Mutex(backend="server")
    thread = raw_connection(thread=(client.CLIENT.token, 1))  # attached to this process like a thread's
    thread.sendall(protocol.wait_frame([sem._handle.key, mutex._handle.key], True, None, 42, None))
    # satisfied at once; the reply sits unread
    assert until(lambda: sem.read() == (0, 1) and mutex.read() == (42, 1))
    thread.sendall(protocol.frame(protocol.CANCEL))
    assert read_reply(thread) == (protocol.WAIT, protocol.OK, protocol.WAIT_REPLY.pack(0, 0))
    op, status, payload = read_reply(thread)
    assert (op, status) == (protocol.CANCEL, protocol.OK)
    assert protocol.CANCEL_REPLY.unpack(payload) == (protocol.CANCEL_GIVEN_BACK, 2, 0)
    assert sem.read() == (1, 1) and mutex.read() == (0, 0)
    # Nothing left to cancel.
    thread.sendall(protocol.frame(protocol.CANCEL))
    assert read_reply(thread)[2][0] == protocol.CANCEL_NOTHING
    thread.close()


def test_a_thread_hello_with_an_unknown_process_is_refused() -> None:
    client.CLIENT.server_instance()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(BOUND)
    sock.connect(os.path.join(userdir.user_directory(), protocol.SOCKET_NAME))
    sock.sendall(protocol.frame(protocol.HELLO_THREAD, protocol.HELLO_THREAD_REQUEST.pack(protocol.PROTOCOL_VERSION, 1, 1, 12345)))
    assert read_reply(sock)[:2] == (protocol.HELLO_THREAD, protocol.E_UNKNOWN_PROCESS)
    sock.close()


def test_lock_requests_on_the_wire() -> None:
    lock, _ = client.Server.create("lock", (0, 0), None)
    sem = Semaphore(1, 1, backend="server")
    sock = raw_connection()
    sock.sendall(protocol.frame(protocol.CREATE, protocol.CREATE_REQUEST.pack(protocol.KIND_CODES["lock"], 0, 1)))
    assert read_reply(sock)[:2] == (protocol.CREATE, protocol.E_INVALID)  # created unlocked only
    sock.sendall(protocol.frame(protocol.LOCK_RELEASE, protocol.OBJECT_ID_AND_ARGUMENT.pack(lock.key, 0)))
    assert read_reply(sock) == (protocol.LOCK_RELEASE, protocol.E_PERM, b"")  # not locked
    sock.sendall(protocol.frame(protocol.LOCK_READ, protocol.OBJECT_ID.pack(sem._handle.key)))
    assert read_reply(sock)[:2] == (protocol.LOCK_READ, protocol.E_NOENT)  # a semaphore read as a lock
    sock.sendall(protocol.frame(protocol.LOCK_READ, protocol.OBJECT_ID.pack(lock.key)))
    assert read_reply(sock) == (protocol.LOCK_READ, protocol.OK, protocol.LOCK_STATE.pack(0, 0))
    sock.sendall(protocol.frame(protocol.LOCK_RELEASE, protocol.OBJECT_ID_AND_ARGUMENT.pack(lock.key, 2)))
    assert dropped(sock)  # an abandon that is neither 0 nor 1
    sock.close()
    with pytest.raises(PermissionError):
        lock.lock_release(False)
    assert lock.lock_read() == (False, False)
    lock.close()


def process_known(token: int) -> bool:
    """Whether the server still knows the process of ``token`` (its anchor is open)."""
    probe = raw_connection(hello=False)
    hello = protocol.HELLO_THREAD_REQUEST.pack(protocol.PROTOCOL_VERSION, os.getpid(), 1, token)
    probe.sendall(protocol.frame(protocol.HELLO_THREAD, hello))
    known = read_reply(probe)[1] == protocol.OK
    probe.close()
    return known


def test_a_lock_taken_by_a_thread_of_a_process_already_gone_is_abandoned_with_its_connection() -> None:
    # The kernel closes all of a dead process's connections, but the server may read the
    # anchor's end first; a wait still pending on a thread connection can take a lock in
    # between, for a process that no longer has an anchor to abandon it.
    lock, _ = client.Server.create("lock", (0, 0), None)
    deadline = time.monotonic_ns() + 30_000_000_000
    assert client.Server.wait([lock], False, deadline, 11, None) == (0, False)
    anchor = raw_connection(hello=False)
    anchor.sendall(process_hello())
    token = protocol.HELLO_PROC_REPLY.unpack(read_reply(anchor)[2])[0]
    thread = raw_connection(thread=(token, 2))
    thread.sendall(protocol.wait_frame([lock.key], False, deadline, 22, None))
    anchor.close()
    assert until(lambda: not process_known(token)), "the server kept a process whose anchor closed"
    lock.lock_release(False)  # the pending wait takes it for the process that is gone
    assert read_reply(thread) == (protocol.WAIT, protocol.OK, protocol.WAIT_REPLY.pack(0, 0))
    assert lock.lock_read() == (True, False)
    thread.close()
    assert until(lambda: lock.lock_read() == (False, True)), "the lock outlived its process"
    lock.close()


# ----- the server's descriptor limit -------------------------------------------------------

#: RLIMIT_NOFILE (soft and hard) of the process that starts the server in the test below.
LOW_LIMIT = 64
#: Threads that each open a connection: more than a server with LOW_LIMIT descriptors can take.
FLOOD_THREADS = 80

STARTER = f"""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, ({LOW_LIMIT}, {LOW_LIMIT}))
    from ntshim.sync import Event
    gate = Event(manual=True, name='gate', backend='server')   # starts the server, with this limit
    print('ready', flush=True)
    sys.stdin.readline()
    print(gate.read(), flush=True)
"""

FLOOD = f"""
    import json, os, subprocess, sys, threading, time
    from ntshim.sync import Event, wait_any
    gate = Event.open('gate', backend='server')
    lock = threading.Lock()
    outcomes, waits = [], []
    reported = threading.Semaphore(0)

    def client():
        try:
            gate.read()   # this thread's first request: it opens the thread's own connection
        except BaseException as exc:
            with lock:
                outcomes.append([type(exc).__name__, getattr(exc, 'errno', None), str(exc)])
            reported.release()
            return
        with lock:
            outcomes.append(['served', None, ''])
        reported.release()
        waits.append(wait_any([gate], timeout={4 * BOUND}))   # holds the connection, blocked in the server

    threads = [threading.Thread(target=client, daemon=True) for _ in range({FLOOD_THREADS})]
    for thread in threads:
        thread.start()
    end = time.monotonic() + {2 * BOUND}
    answered = sum(reported.acquire(timeout=max(0.0, end - time.monotonic())) for _ in threads)
    # A process whose very first connection is refused: the same error, not "unavailable".
    opener = "from ntshim.sync import Event; Event.open('gate', backend='server')"
    newcomer = subprocess.run([sys.executable, '-c', opener], capture_output=True, text=True,
                              timeout={4 * BOUND}).stderr.strip().split(chr(10))[-1]
    gate.set()   # the served threads wake up and exit, and their connections close
    for thread in threads:
        thread.join({2 * BOUND})
    after = []
    late = threading.Thread(target=lambda: after.append(gate.read()))   # a connection once room is back
    late.start()
    late.join({2 * BOUND})
    with lock:
        print(json.dumps(dict(answered=answered, outcomes=outcomes, waits=waits, after=after, newcomer=newcomer)),
              flush=True)
    os._exit(0)
"""


def test_a_server_out_of_descriptors_refuses_clearly_and_serves_the_others(private_root: dict[str, str]) -> None:
    # Issue 11, item 15: the server inherits RLIMIT_NOFILE from whichever client starts it.
    # Beyond its limit, a new connection gets a clear EMFILE error saying so (not a hang
    # in the accept backlog, nor ServerGone), and every connection it has keeps being served.
    env = {**os.environ, **private_root}
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STARTER)], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None and starter.stdin is not None
        assert starter.stdout.readline().strip() == "ready", starter.stderr.read() if starter.stderr else ""
        flood = subprocess.run([sys.executable, "-c", textwrap.dedent(FLOOD)], env=env, capture_output=True,
                               text=True, timeout=12 * BOUND, check=False)
        assert flood.returncode == 0, flood.stderr
        report = json.loads(flood.stdout)
        out, err = starter.communicate("\n", timeout=4 * BOUND)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
    assert report["answered"] == FLOOD_THREADS, (
        f"{FLOOD_THREADS - report['answered']} of {FLOOD_THREADS} clients got no answer in {2 * BOUND} s"
    )
    served = [o for o in report["outcomes"] if o[0] == "served"]
    refused = [o for o in report["outcomes"] if o[0] != "served"]
    assert served and refused, report["outcomes"]
    for kind, number, message in refused:
        assert (kind, number) == ("OSError", errno.EMFILE), message
        assert f"descriptor limit of {LOW_LIMIT}" in message and "RLIMIT_NOFILE" in message, message
    assert report["newcomer"].startswith("OSError: [Errno 24]"), report["newcomer"]
    assert f"descriptor limit of {LOW_LIMIT}" in report["newcomer"]
    assert report["waits"] == [0] * len(served)  # the connections it took were served to the end
    assert report["after"] == [[True, True]]  # once they closed, a new connection was taken
    assert starter.returncode == 0, err
    assert out.strip() == "(True, True)"


# ----- threads -----------------------------------------------------------------------------


def test_each_thread_has_its_own_connection(waiters: StartWaiter) -> None:
    event = Event(manual=True, backend="server")
    sem = Semaphore(0, 10, backend="server")
    blocked = waiters(lambda: wait_any([event]))
    assert blocked.still_waiting()
    # The blocked wait holds its thread's connection only: this thread carries on.
    for _ in range(5):
        sem.release(1)
    assert sem.read() == (5, 10)
    event.set()
    assert blocked.outcome() == 0
    blocked.finish()


def test_a_thread_exit_closes_its_connection_and_abandons_its_mutex() -> None:
    mutex = Mutex(backend="server")
    created = []

    def take() -> None:
        assert wait_any([mutex], 0) == 0
        created.append(Mutex(count=2, backend="server"))  # owned from birth by this thread

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(BOUND)
    with pytest.raises(AbandonedError) as caught:
        wait_any([mutex], BOUND)
    assert caught.value.index == 0
    assert mutex.read() == (threading.get_native_id(), 1)
    with pytest.raises(AbandonedError):
        created[0].read()


def test_a_thread_exit_closes_its_connections_at_once() -> None:
    event = Event(manual=True, backend="server")
    seen: list[client.ServerConnection] = []

    def use() -> None:
        event.read()
        seen.append(client.CLIENT.connection())

    thread = threading.Thread(target=use)
    thread.start()
    thread.join(BOUND)
    # Closed by the thread-local cleanup as the thread ended, not by a later collection.
    assert seen[0].closed and seen[0].sock.fileno() == -1


def test_a_mutex_released_before_the_thread_exits_is_not_abandoned() -> None:
    mutex = Mutex(backend="server")

    def take_and_release() -> None:
        wait_any([mutex])
        mutex.unlock()

    thread = threading.Thread(target=take_and_release)
    thread.start()
    thread.join(BOUND)
    assert wait_any([mutex], 0) == 0  # no AbandonedError
    mutex.unlock()


# ----- deadlines and interruptions ---------------------------------------------------------


def test_the_server_ends_a_wait_at_its_deadline() -> None:
    event = Event(manual=False, backend="server")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_any([event], 0.2)
    assert time.monotonic() - start >= 0.2
    # A deadline already past still tries once.
    event.set()
    assert wait_any([event], 0) == 0
    assert event.read() == (False, False)


class Interrupt(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[Callable[[float], None]]:
    """Raise Interrupt in the main thread after a delay (as Ctrl-C would, with SIGALRM)."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupt

    previous = signal.signal(signal.SIGALRM, handler)

    def arm(delay: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, delay)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_an_interrupted_wait_is_cancelled_and_the_connection_stays_usable(alarm: Callable[[float], None]) -> None:
    sem = Semaphore(0, 2, backend="server")
    mutex = Mutex(owner=5, count=1, backend="server")
    alarm(0.1)
    with pytest.raises(Interrupt) as caught:
        wait_all([sem, mutex], BOUND)
    assert any("cancelled" in note for note in getattr(caught.value, "__notes__", []))
    # Nothing was taken, and no late acquisition happens once the objects come free.
    sem.release(1)
    mutex.unlock(5)
    time.sleep(0.05)
    assert sem.read() == (1, 2) and mutex.read() == (0, 0)
    assert wait_all([sem, mutex], 0) == 0


def test_an_interruption_after_the_wait_was_satisfied_gives_it_back(alarm: Callable[[float], None]) -> None:
    # The interruption lands when the wait has been satisfied but its reply is not read:
    # the handler runs on the way out of the blocking receive.
    sem = Semaphore(0, 1, backend="server")
    original = client.ServerConnection.receive

    def late_receive(self: client.ServerConnection) -> bytes:
        body = original(self)
        if body[:1] == bytes((protocol.WAIT,)) and body[1] == protocol.OK and not hasattr(late_receive, "done"):
            late_receive.done = True  # type: ignore[attr-defined]
            self._buffer[:0] = protocol.FRAME_LENGTH.pack(len(body)) + body  # unread again
            raise Interrupt
        return body

    releaser = threading.Timer(0.1, lambda: sem.release(1))
    releaser.start()
    try:
        client.ServerConnection.receive = late_receive  # type: ignore[method-assign]
        with pytest.raises(Interrupt) as caught:
            wait_any([sem], BOUND)
    finally:
        client.ServerConnection.receive = original  # type: ignore[method-assign]
        releaser.join()
    assert any("given back" in note for note in getattr(caught.value, "__notes__", []))
    assert sem.read() == (1, 1)
    assert wait_any([sem], 0) == 0


def test_a_signal_handler_can_signal_the_object_its_thread_waits_on() -> None:
    # The handler runs inside the main thread's blocking receive: its request must go on
    # another connection, or the frames of the two requests would interleave.
    stop = Event(manual=True, backend="server")
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: stop.set())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        assert wait_any([stop], BOUND) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert stop.read() == (True, True)


class SendThenFail:
    """Make the next request's send raise right after the frame went out: the exception
    lands between the request and its reply."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.original = client.ServerConnection.send
        monkeypatch.setattr(client.ServerConnection, "send", self)

    def __get__(self, connection: client.ServerConnection, owner: type) -> Callable[..., None]:
        def send(data: bytes) -> None:
            self.original(connection, data)
            client.ServerConnection.send = self.original  # type: ignore[method-assign]
            raise Interrupt

        return send


def test_a_request_cut_short_is_settled_before_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    sem = Semaphore(0, 5, backend="server")
    SendThenFail(monkeypatch)
    with pytest.raises(Interrupt):
        sem.release(2)  # done by the server; its reply left unread
    assert sem.read() == (2, 5)  # not the stale release reply: the connection was settled
    assert client.CLIENT.connection() is client.CLIENT.local.pool[0]


def test_a_wait_cut_short_after_its_send_gives_back_what_it_took(monkeypatch: pytest.MonkeyPatch) -> None:
    sem = Semaphore(1, 5, backend="server")
    mutex = Mutex(backend="server")
    SendThenFail(monkeypatch)
    with pytest.raises(Interrupt):
        wait_all([sem, mutex], BOUND)  # satisfied at once by the server, never read
    assert sem.read() == (1, 5) and mutex.read() == (0, 0)


# ----- processes: names, references, fork, pickling ----------------------------------------


def test_names_live_while_any_process_references_them(unique_name: Callable[[str], str]) -> None:
    name = unique_name("lifetime")
    code = f"""
        import sys
        from ntshim.sync import Semaphore
        s = Semaphore(0, 9, name={name!r}, backend='server')
        print(s.created, flush=True)
        sys.stdin.readline()
        s.release(4)
    """
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "True"
    mine = Semaphore(1, 1, name=name, backend="server")  # opens: parameters ignored
    assert not mine.created and mine.read() == (0, 9)
    with pytest.raises(NameKindError):
        Event(manual=True, name=name, backend="server")
    _, err = child.communicate("\n", timeout=4 * BOUND)
    assert child.returncode == 0, err
    assert mine.read() == (4, 9)  # the creator is gone; our reference keeps it
    mine.close()
    with pytest.raises(FileNotFoundError):
        Semaphore.open(name, backend="server")


def test_closing_one_handle_from_many_threads_drops_one_reference(unique_name: Callable[[str], str]) -> None:
    name = unique_name("closers")
    keeper = Semaphore(0, 1, name=name, backend="server")
    doomed = Semaphore.open(name, backend="server")
    start = threading.Barrier(8)

    def close() -> None:
        start.wait(BOUND)
        doomed.close()

    closers = [threading.Thread(target=close) for _ in range(8)]
    for thread in closers:
        thread.start()
    for thread in closers:
        thread.join(BOUND)
    assert Semaphore.open(name, backend="server").read() == (0, 1)  # the keeper's reference holds
    keeper.close()


def test_a_dropped_handle_releases_its_reference(unique_name: Callable[[str], str]) -> None:
    name = unique_name("collected")
    event = Event(manual=True, name=name, backend="server")
    del event
    gc.collect()
    # The reference goes out ahead of this process's next request.
    with pytest.raises(FileNotFoundError):
        Event.open(name, backend="server")


def test_a_fork_child_keeps_what_it_inherited_even_if_the_parent_closes_at_once(
    unique_name: Callable[[str], str],
) -> None:
    name = unique_name("forked")
    sem = Semaphore(0, 5, name=name, backend="server")
    ready = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.read(ready[0], 1)  # the parent has closed its handle by now
            assert sem.read() == (0, 5)
            assert client.CLIENT.anchor is not None and client.CLIENT.pid == os.getpid()
            sem.release(2)
            again = Semaphore.open(name, backend="server")
            assert again.read() == (2, 5)
            code = 0
        finally:
            os._exit(code)
    sem.close()
    os.write(ready[1], b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(FileNotFoundError):  # the child's reference went with the child
        Semaphore.open(name, backend="server")


def test_a_fork_child_uses_connections_of_its_own() -> None:
    event = Event(manual=True, backend="server")
    event.read()  # this thread's connection exists
    parent_connection = client.CLIENT.local.pool[0]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            assert parent_connection.closed  # its copy was closed at once
            event.set()
            assert client.CLIENT.connection() is not parent_connection
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    os.close(read_end)
    os.close(write_end)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection was untouched by the child closing its copy.
    assert not parent_connection.closed and event.read() == (True, True)


def test_a_fork_without_the_hooks_repairs_itself() -> None:
    # A fork made by C code (no os.fork hooks): the child notices the pid change, opens
    # its own connections and takes a reference per handle it has.
    out = python(
        """
        import ctypes, os
        from ntshim.sync import Semaphore
        sem = Semaphore(0, 5, name=None, backend='server')
        sem.read()
        pid = ctypes.CDLL(None).fork()
        if pid == 0:
            try:
                sem.release(3)
                print('child', sem.read(), flush=True)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        print('parent', sem.read())
        """
    )
    assert out.split("\n")[:2] == ["child (3, 5)", "parent (3, 5)"]


def test_pickled_objects_reopen_by_id_in_another_process() -> None:
    sem = Semaphore(1, 7, backend="server")
    event = Event(manual=False, backend="server")
    out = python(
        """
        import pickle, sys
        from ntshim.sync import wait_all
        sem, event = pickle.loads(bytes.fromhex(sys.stdin.readline()))
        event.set()
        print(sem.release(2), wait_all([sem, event], 0), sem.read())
        """,
        stdin=pickle.dumps((sem, event)).hex() + "\n",
    )
    assert out.strip() == "1 0 (2, 7)"
    assert sem.read() == (2, 7) and event.read() == (False, False)


def test_a_pickled_object_closed_since_is_gone() -> None:
    sem = Semaphore(1, 7, backend="server")
    data = pickle.dumps(sem)
    sem.close()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)
    instance, oid = client.CLIENT.server_instance(), 1
    with pytest.raises(FileNotFoundError):  # a state from another server
        client.Server.from_state("semaphore", (instance ^ 1, oid))


def test_a_wait_keeps_its_objects_alive_when_their_last_handle_closes(waiters: StartWaiter) -> None:
    event = Event(manual=True, backend="server")
    sem = Semaphore(0, 1, backend="server")
    blocked = waiters(lambda: wait_any([event, sem]))
    assert blocked.still_waiting()
    event.close()  # the server keeps the object for the wait
    sem.release(1)
    assert blocked.outcome() == 1
    blocked.finish()


LOCK_HOLDER = """
    import sys, threading, time
    from ntshim.sync.server import client
    lock = client.Server.from_state("lock", (int(sys.argv[1]), int(sys.argv[2])))

    def take():  # from a thread that ends: the lock stays with the process
        print(*client.Server.wait([lock], False, time.monotonic_ns() + 30_000_000_000, 1234, None), flush=True)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    print("held", flush=True)
    sys.stdin.readline()  # until killed
"""


def test_a_lock_held_by_a_killed_process_is_abandoned_to_the_next_waiter(waiters: StartWaiter) -> None:
    lock, _ = client.Server.create("lock", (0, 0), None)
    instance, oid = lock.state()
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOCK_HOLDER), str(instance), str(oid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        try:
            for expected in ("0 False\n", "held\n"):
                line = child.stdout.readline()
                assert line == expected, line or child.stderr.read()
            assert lock.lock_read() == (True, False)
            deadline = time.monotonic_ns() + 30_000_000_000
            waiter = waiters(lambda: client.Server.wait([lock], False, deadline, 4321, None))
            assert waiter.still_waiting()  # the child's thread ended; its process holds the lock
            child.kill()
            assert waiter.outcome(30) == (0, True)
        finally:
            child.kill()
    assert lock.lock_read() == (True, False)  # this process took it, and the flag with it
    lock.lock_release(False)
    assert lock.lock_read() == (False, False)
    waiter.finish()
    lock.close()


# ----- asynchronous requests (Backend.request) ---------------------------------------------

Server = client.Server
#: BOUND in CLOCK_MONOTONIC nanoseconds, for deadlines.
BOUND_NS = int(BOUND * 1e9)


def ready_within(request: client.ServerRequest, bound: float = BOUND) -> bool:
    """Sleep on ``request`` until it is ready, as asyncio's dispatcher does; False if it is not
    within ``bound`` seconds."""
    deadline = time.monotonic_ns() + int(bound * 1e9)
    while not request.ready():
        if time.monotonic_ns() >= deadline:
            return False
        Server.sleep([request], deadline, Server.bell())
    return True


def start(handles: list[Handle], wait_all: bool = False, owner: int = 1) -> client.ServerRequest:
    request = Server.request(handles, wait_all, owner, None)
    assert isinstance(request, client.ServerRequest)
    return request


@pytest.fixture
def own_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test starts with no request connections (earlier tests left idle ones), and those
    it opens are closed after it (their mutexes are the test's)."""
    monkeypatch.setattr(client.CLIENT, "request_connections", [])
    monkeypatch.setattr(client.CLIENT, "idle_requests", collections.deque())
    yield
    for connection in client.CLIENT.request_connections:
        connection.close()


def test_a_request_on_a_signaled_semaphore_is_ready_and_takes_a_unit() -> None:
    sem, _ = Server.create("semaphore", (1, 3), None)
    request = start([sem])
    assert ready_within(request)
    assert request.end() == (0, False)
    assert sem.sem_read() == (0, 3)
    with pytest.raises(RuntimeError):
        request.end()  # used once


def test_a_pending_request_ended_early_takes_nothing_then_or_later() -> None:
    sem, _ = Server.create("semaphore", (0, 3), None)
    mutex, _ = Server.create("mutex", (5, 1), None)
    request = start([sem, mutex], wait_all=True, owner=9)
    assert not ready_within(request, 0.1)
    assert request.end() is None
    # It is off the queues: what comes free now goes to nobody.
    sem.sem_release(1)
    mutex.mutex_unlock(5)
    assert sem.sem_read() == (1, 3) and mutex.mutex_read() == (0, 0, False)


@pytest.mark.parametrize("seen", ["as-it-comes", "not-yet"])
def test_a_request_satisfied_as_it_ends_leaks_nothing(seen: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Satisfied just before end(): whether end() sees the reply (and the caller holds what it
    # took) or cancels (and the server gives it back), once the caller gives back what end()
    # says it holds, the objects are as before the request.  "not-yet": end() does not see
    # the reply that is already on its way, which forces the give-back.
    if seen == "not-yet":
        monkeypatch.setattr(client.ServerConnection, "reply_in", lambda self: False)
    outcomes = set()
    for _ in range(20):
        sem, _ = Server.create("semaphore", (0, 1), None)
        mutex, _ = Server.create("mutex", (0, 0), None)
        request = start([sem, mutex], wait_all=True, owner=7)
        sem.sem_release(1)  # satisfies it (the server may read the request after this)
        outcome = request.end()
        outcomes.add(outcome)
        if outcome is not None:
            assert outcome == (0, False)
            assert sem.sem_read() == (0, 1) and mutex.mutex_read() == (7, 1, False)
            sem.sem_release(1)
            mutex.mutex_unlock(7)
        assert sem.sem_read() == (1, 1) and mutex.mutex_read() == (0, 0, False)
        assert Server.wait([sem, mutex], True, 0, 8, None) == (0, False)  # nobody else took them
        sem.close()
        mutex.close()
    if seen == "not-yet":
        assert outcomes == {None}


RINGS = """
    import threading, time
    from ntshim.sync.server import client
    Server = client.Server
    event, _ = Server.create("event", (1, 0), None)
    request = Server.request([event], False, 1, None)

    def slept(bell, pause):  # whether sleep() returned before its deadline
        deadline = time.monotonic_ns() + int(pause * 1e9)
        Server.sleep([request], deadline, bell)
        return time.monotonic_ns() < deadline

    bell = Server.bell()
    ringer = threading.Timer(0.1, Server.ring)  # from another thread, while this one sleeps
    ringer.start()
    print(slept(bell, 20), flush=True)
    ringer.join()
    bell = Server.bell()
    Server.ring()  # between bell() and sleep()
    print(slept(bell, 20), flush=True)
    Server.ring()  # before bell(): drained by it
    print(slept(Server.bell(), 0.2), flush=True)
    print(request.ready(), request.end())
"""


def test_sleep_returns_on_a_ring() -> None:
    # In a fresh interpreter: the doorbell is the process's, and the asyncio dispatcher that
    # other tests leave running in this one would take the rings (its bell() drains them).
    assert python(RINGS).split("\n")[:4] == ["True", "True", "False", "False None"]


def test_sleep_returns_when_a_request_becomes_ready() -> None:
    sem, _ = Server.create("semaphore", (0, 1), None)
    other, _ = Server.create("semaphore", (0, 1), None)
    idle = start([other])
    request = start([sem])
    releaser = threading.Timer(0.1, lambda: sem.sem_release(1))
    releaser.start()
    try:
        deadline = time.monotonic_ns() + 4 * BOUND_NS
        while not request.ready() and time.monotonic_ns() < deadline:
            Server.sleep([idle, request], deadline, Server.bell())
    finally:
        releaser.join()
    assert request.ready() and request.end() == (0, False)
    assert not idle.ready() and idle.end() is None
    assert sem.sem_read() == (0, 1) and other.sem_read() == (0, 1)


def test_sleep_ends_at_its_deadline() -> None:
    event, _ = Server.create("event", (0, 0), None)
    request = start([event])
    for pause in (0, 1_000_000, 200_000_000):  # (rounded up to whole milliseconds)
        deadline = time.monotonic_ns() + pause
        Server.sleep([request], deadline, Server.bell())
        assert time.monotonic_ns() >= deadline
    Server.sleep([], time.monotonic_ns() - 1, Server.bell())  # a deadline past: at once
    assert request.end() is None


@pytest.mark.usefixtures("own_requests")
def test_requests_beyond_the_connection_cap_wait_for_one_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "MAX_REQUEST_CONNECTIONS", 2)
    event, _ = Server.create("event", (1, 0), None)
    first, second = start([event]), start([event])
    with pytest.raises(OSError) as caught:
        start([event])
    assert caught.value.errno == errno.ENOSPC
    connection = first._connection
    assert first.end() is None
    third = start([event])
    assert third._connection is connection  # reused, not a third connection
    event.event_set()
    assert ready_within(second) and ready_within(third)
    assert second.end() == third.end() == (0, False)
    assert len(client.CLIENT.request_connections) == 2


@pytest.mark.usefixtures("own_requests")
def test_a_mutex_a_request_took_stays_held_when_its_connection_is_reused() -> None:
    mutex, _ = Server.create("mutex", (0, 0), None)
    request = start([mutex], owner=4242)
    assert ready_within(request)
    connection = request._connection
    assert request.end() == (0, False)
    del request
    gc.collect()
    # Its connection is idle now, and open: the mutex is held, not abandoned.
    assert connection is not None and not connection.closed
    assert mutex.mutex_read() == (4242, 1, False)
    again = start([mutex], owner=4242)  # the same connection: a recursive acquisition
    assert again._connection is connection
    assert ready_within(again) and again.end() == (0, False)
    assert mutex.mutex_read() == (4242, 2, False)
    assert mutex.mutex_unlock(4242) == 2 and mutex.mutex_unlock(4242) == 1
    assert mutex.mutex_read() == (0, 0, False)


@pytest.mark.usefixtures("own_requests")
def test_a_request_dropped_unended_is_given_back_before_its_connection_is_reused() -> None:
    sem, _ = Server.create("semaphore", (1, 1), None)
    request = start([sem])
    assert ready_within(request)
    connection = request._connection
    del request  # nobody knows of the unit it took
    gc.collect()
    other, _ = Server.create("semaphore", (0, 1), None)
    again = start([other])
    assert again._connection is connection
    assert sem.sem_read() == (1, 1)
    assert again.end() is None


NAMED_REQUEST = """
    import time
    from ntshim.sync.server import client
    Server = client.Server
    event, _ = Server.create("event", (1, 1), b"asked")
    request = Server.request([event], False, 1, None)
    deadline = time.monotonic_ns() + 20_000_000_000
    while not request.ready() and time.monotonic_ns() < deadline:
        Server.sleep([request], deadline, Server.bell())
    print(request.end(), flush=True)
    event.close()  # the last handle; the request's connection stays open, idle
    while time.monotonic_ns() < deadline:
        try:
            Server.open("event", b"asked").close()
        except FileNotFoundError:
            print("gone")
            break
        time.sleep(0.01)
"""


def test_a_named_object_a_request_took_goes_with_its_last_handle(private_root: dict[str, str]) -> None:
    # The server keeps a satisfied wait (to give it back on CANCEL) until the connection moves
    # on; an idle request connection must not keep its objects, and their names, alive.
    assert python(NAMED_REQUEST, private_root).split("\n")[:2] == ["(0, False)", "gone"]


def test_a_fork_child_has_neither_the_requests_nor_the_doorbell_of_its_parent() -> None:
    sem, _ = Server.create("semaphore", (0, 1), None)
    request = start([sem])
    bell = Server.bell()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            assert client.CLIENT.request_connections == [] and not client.CLIENT.idle_requests
            assert not request.ready() and request.end() is None  # the parent's, not ours
            Server.ring()  # our own doorbell: the parent's sleep below does not hear it
            mine, _ = Server.create("semaphore", (1, 1), None)
            own = start([mine])
            assert ready_within(own) and own.end() == (0, False)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    deadline = time.monotonic_ns() + 200_000_000
    Server.sleep([request], deadline, bell)
    assert time.monotonic_ns() >= deadline
    # The parent's request is still queued on the server (the child's copy closed, not shut down).
    sem.sem_release(1)
    assert ready_within(request) and request.end() == (0, False)
    assert sem.sem_read() == (0, 1)
