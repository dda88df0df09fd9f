"""Who is alive, for the futex arena (issue 11, items 10, 13 and 16).

A process is alive while it holds the OFD lock of its process slot, through a descriptor
of its own: the kernel drops it when the process dies, in any PID namespace, and when it
execs.  Processes in different PID namespaces sharing the arena must not sweep each other;
a forked child that execs must not keep its parent's objects alive; a forked child that
gets no process slot keeps nothing of its parent's.

Every scenario runs in subprocesses on a private sync root, with timeouts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from required import require_sync_backend

pytestmark = pytest.mark.usefixtures("_futex")

BOUND = 60


@pytest.fixture
def _futex() -> None:
    require_sync_backend("futex")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir(mode=0o755)
    return path


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, NTSHIM_SYNC_ROOT=str(root))
    env.pop("NTSHIM_SYNC_BACKEND", None)
    return env


def _python(root: Path, code: str) -> str:
    """Run code in a fresh process on the root; its stdout (it must exit 0)."""
    script = "from contextlib import closing\nfrom ntshim.sync import Event, Mutex, Semaphore, wait_any\n" + textwrap.dedent(code)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=BOUND,
            env=_env(root),
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung:\n{e.stderr!r}")
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stderr}"
    return proc.stdout.strip()


LOOK = """
    try:
        with closing(Semaphore.open("ns-sem", backend="futex")) as s, closing(Event.open("ns-ev", backend="futex")) as e, \\
                closing(Mutex.open("ns-mtx", backend="futex")) as m:
            print(s.read(), e.read(), m.read()[1])
    except FileNotFoundError:
        print("gone")
"""


def test_a_process_in_another_pid_namespace_is_not_swept(root: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to start a process in a new PID namespace")
    inner = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            sys.executable,
            "-c",
            textwrap.dedent("""
            import os, time
            from ntshim.sync import Event, Mutex, Semaphore
            s = Semaphore(2, 5, name="ns-sem", backend="futex")
            e = Event(manual=True, signaled=True, name="ns-ev", backend="futex")
            m = Mutex(count=1, name="ns-mtx", backend="futex")  # held by this thread
            print(os.getpid(), flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(root),
    )
    try:
        assert inner.stdout is not None
        pid_inside = inner.stdout.readline().strip()
        assert pid_inside == "1", f"not in its own PID namespace: {pid_inside!r} {inner.stderr}"
        # Processes outside register (each registration sweeps the dead), create and close.
        for _ in range(3):
            _python(
                root,
                """
                objects = [Event(manual=True, backend="futex") for _ in range(20)]
                for o in objects:
                    o.close()
            """,
            )
        assert _python(root, LOOK) == "(2, 5) (True, True) 1"  # intact, its mutex still held
    finally:
        inner.kill()  # unshare takes the namespace's processes with it (--kill-child)
        inner.wait()
    assert _python(root, LOOK) == "gone"  # now it is dead: reclaimed by the next process


def test_a_forked_child_that_execs_keeps_nothing_of_its_parent(root: Path) -> None:
    out = _python(
        root,
        """
        import os, subprocess, sys, time
        e = Event(manual=True, name="inherited", backend="futex")
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", "30"])
        try:
            e.close()
            time.sleep(0.2)  # the child has exec'd
            probe = "from ntshim.sync import Event\\ntry:\\n  Event.open('inherited', backend='futex')\\n" \\
                    "  print('still there')\\nexcept FileNotFoundError:\\n  print('gone')"
            seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout
            alive = os.waitpid(pid, os.WNOHANG) == (0, 0)
            print(seen.strip(), "child running" if alive else "child exited")
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    """,
    )
    assert out == "gone child running"


def test_a_forked_child_without_a_process_slot_keeps_nothing_of_its_parent(root: Path) -> None:
    """Every free process slot is held (by descriptors this process opens on the arena,
    as a thousand other live processes would): the forked child gets no slot, so it is
    given no references, and the parent's close frees the object."""
    out = _python(
        root,
        """
        import errno, fcntl, os, struct, time
        from ntshim import _core
        from ntshim.sync import futex
        e = Event(manual=True, name="given", backend="futex")
        nproc = _core.sync_usage()["processes"][1]
        blocker = os.open(futex.arena_path(), os.O_RDWR | os.O_CLOEXEC)
        held = 0
        for slot in range(1, nproc + 1):  # the liveness lock of every slot but ours
            try:
                fcntl.fcntl(blocker, fcntl.F_OFD_SETLK, struct.pack("hh4xqqi4x", fcntl.F_WRLCK, 0, slot, 1, 0))
                held += 1
            except OSError:
                pass
        assert held == nproc - 1, held
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                e.set()
            except OSError as err:  # nothing was passed to it
                code = 0 if err.errno == errno.EBADF else 2
            finally:
                os.write(w, bytes([code]))
                time.sleep(30)
                os._exit(0)
        try:
            code = os.read(r, 1)[0]
            e.close()
            try:
                Event.open("given", backend="futex")
                print(code, "still there")
            except FileNotFoundError:
                print(code, "gone")
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    """,
    )
    assert out == "0 gone"


def test_a_dead_parent_is_seen_while_its_forked_child_lives(root: Path) -> None:
    """The child's copy of the arena mapping must not keep the parent looking alive: the
    parent's own references and held mutexes are reclaimed when it dies, while what the
    child inherited stays."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            import os, sys, time
            from ntshim.sync import Event, Mutex, wait_any
            mine = Event(manual=True, name="parent-only", backend="futex")
            shared = Event(manual=True, name="shared", backend="futex")
            held = Mutex(count=1, name="held", backend="futex")
            pid = os.fork()
            if pid == 0:
                mine.close()
                time.sleep(60)
                os._exit(0)
            print(pid, flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(root),
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    try:
        held = _python(
            root,
            """
            print(Mutex.open("held", backend="futex").read()[1])
        """,
        )
        assert held == "1"
        proc.kill()
        proc.wait()
        out = _python(
            root,
            """
            from ntshim.errors import AbandonedError
            try:
                Event.open("parent-only", backend="futex")
                print("parent-only still there")
            except FileNotFoundError:
                print("parent-only gone")
            Event.open("shared", backend="futex").close()
            try:
                wait_any([Mutex.open("held", backend="futex")], 5)
                print("held free")
            except AbandonedError:
                print("held abandoned")
        """,
        )
        assert out.splitlines() == ["parent-only gone", "held abandoned"]
    finally:
        os.kill(child, signal.SIGKILL)
