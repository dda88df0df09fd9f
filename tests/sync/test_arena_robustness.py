"""The futex arena against hostile bytes and a full file system (issue 11, items 8 and 9).

Any process of the user can write the arena file.  Whatever it writes, another process
using the arena must not crash, hang or write outside the arena: every operation either
works or fails with the documented errors (the damaged-arena error, errno EUCLEAN, naming
the file and how to recover; "arena is full", ENOSPC; or the ordinary ones).  Truncating the
file must not kill its users (SIGBUS), and a nearly full tmpfs gives "arena is full", never
SIGBUS.

Every scenario runs in subprocesses on a private sync root (NTSHIM_SYNC_ROOT under tmp_path)
with timeouts: a crash or hang fails the test, never pytest.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from required import require_sync_backend

pytestmark = pytest.mark.usefixtures("_futex")


@pytest.fixture
def _futex() -> None:
    require_sync_backend("futex")


# What every exerciser script starts with: how to tell a documented outcome from a defect.
PRELUDE = textwrap.dedent("""
    import errno, os, sys, threading, time, traceback
    from ntshim.errors import AbandonedError, NameKindError
    from ntshim.sync import Event, Mutex, Semaphore, wait_all, wait_any

    def documented(e):
        if isinstance(e, OSError) and e.errno == errno.EUCLEAN:
            return "is damaged" in str(e) and "remove" in str(e)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "full" in str(e)
        return isinstance(e, (FileNotFoundError, NameKindError, TimeoutError, AbandonedError, OverflowError,
                              PermissionError))

    outcomes = []

    def attempt(what, call):
        try:
            result = call()
        except BaseException as e:
            if not documented(e):
                raise
            outcomes.append((what, type(e).__name__, getattr(e, "errno", None)))
            return None
        outcomes.append((what, "ok", None))
        return result
""")

# Objects of every kind, by name and not, a held mutex, and threads queued in wait-any and
# wait-all: the process is then killed, so that its wait blocks, queue entries, references and
# tokens stay in the arena for the next process to walk.
POPULATE = PRELUDE + textwrap.dedent("""
    names = [f"fz-{kind}-{i}" for kind in ("ev", "sem", "mtx") for i in range(8)]
    objects = [Event(manual=bool(i % 2), name=f"fz-ev-{i}", backend="futex") for i in range(8)]
    objects += [Semaphore(0, 5, name=f"fz-sem-{i}", backend="futex") for i in range(8)]
    objects += [Mutex(name=f"fz-mtx-{i}", backend="futex") for i in range(8)]
    objects += [Semaphore(1, 3, backend="futex") for _ in range(8)]
    wait_any([objects[8 * 2]], 1)  # this thread holds fz-mtx-0
    started = threading.Barrier(5)

    def waiter(group):
        started.wait()
        try:
            group()
        except TimeoutError:
            pass

    for group in (lambda: wait_any(objects[0:8:2], 60), lambda: wait_all(objects[8:11], 60),
                  lambda: wait_any([objects[16]], 60), lambda: wait_any([objects[1], objects[9]], 60)):
        threading.Thread(target=waiter, args=(group,), daemon=True).start()
    started.wait()
    time.sleep(0.3)  # let them queue
    print("ready", flush=True)
    time.sleep(60)
""")

# Every operation on a (possibly scribbled) arena.
EXERCISE = textwrap.dedent("""
    def exercise():
        objects = []
        for i in range(8):
            for cls, kind in ((Event, "ev"), (Semaphore, "sem"), (Mutex, "mtx")):
                obj = attempt("open", lambda: cls.open(f"fz-{kind}-{i}", backend="futex"))
                if obj is not None:
                    objects.append(obj)
        objects += [o for o in (
            attempt("create", lambda: Event(manual=True, name="fz-ev-0", backend="futex")),
            attempt("create", lambda: Semaphore(1, 4, name="fz-new-sem", backend="futex")),
            attempt("create", lambda: Mutex(name="fz-new-mtx", backend="futex")),
            attempt("create", lambda: Event(manual=False, backend="futex")),
            attempt("create", lambda: Semaphore(2, 2, backend="futex")),
            attempt("create", lambda: Mutex(count=1, backend="futex")),
        ) if o is not None]
        for obj in objects:
            attempt("read", obj.read)
            if isinstance(obj, Semaphore):
                attempt("release", obj.release)
            elif isinstance(obj, Event):
                attempt("set", obj.set)
                attempt("pulse", obj.pulse)
                attempt("reset", obj.reset)
            attempt("wait_any", lambda: wait_any([obj], 0.001))
            if isinstance(obj, Mutex):
                attempt("unlock", obj.unlock)
        if len(objects) >= 3:
            attempt("wait_all", lambda: wait_all(objects[-3:], 0.001))
        if objects:
            target = objects[-1]
            helper = threading.Thread(target=lambda: attempt("thread wait", lambda: wait_any([target], 0.02)))
            helper.start()
            helper.join(10)
            if helper.is_alive():
                raise SystemExit("a waiting thread did not return")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for obj in objects[:4]:
                    attempt("read in child", obj.read)
                attempt("create in child", lambda: Event(manual=True, backend="futex").close())
            except BaseException:
                traceback.print_exc()
                code = 3
            os._exit(code)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            raise SystemExit("a forked child hung")
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"a forked child failed: status {status:#x}")
        for obj in objects:
            attempt("close", obj.close)
""")


def _run(script: str, root: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NTSHIM_SYNC_ROOT=str(root))
    env.pop("NTSHIM_SYNC_BACKEND", None)
    try:
        return subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung for {timeout} s:\n{e.stdout!r}\n{e.stderr!r}")


def _root(tmp_path: Path, label: str) -> Path:
    root = tmp_path / label
    root.mkdir(mode=0o755)
    return root


def _populated(tmp_path: Path) -> Path:
    """The arena file left by a process that was killed with objects, waits and a held mutex."""
    root = _root(tmp_path, "pristine")
    proc = subprocess.Popen(
        [sys.executable, "-c", POPULATE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, NTSHIM_SYNC_ROOT=str(root)),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", proc.stderr.read() if proc.stderr else line
    finally:
        proc.kill()
        proc.wait()
    (arena,) = glob.glob(f"{root}/ntshim-{os.geteuid()}/*.arena")
    return Path(arena)


def _data_segments(path: Path) -> list[tuple[int, int]]:
    """Where the file has data: the header, the tables in use, the names, the tokens."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, off, segments = os.fstat(fd).st_size, 0, []
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            off = os.lseek(fd, start, os.SEEK_HOLE)
            segments.append((start, off))
        return segments
    finally:
        os.close(fd)


def _copy(arena: Path, root: Path) -> Path:
    """A sparse copy of the arena in a fresh per-user directory under root."""
    directory = root / f"ntshim-{os.geteuid()}"
    directory.mkdir(mode=0o700)
    target = directory / arena.name
    with open(arena, "rb") as src, open(target, "wb") as dst:
        os.chmod(target, 0o600)
        dst.truncate(os.fstat(src.fileno()).st_size)
        for start, end in _data_segments(arena):
            dst.seek(start)
            src.seek(start)
            dst.write(src.read(end - start))
    return target


# The header of the current layout (src/ntshim/_core/sync/arena.c, "Layout, version 7"): magic u32,
# version u32, size u64, then the high-water marks and free lists (objects at 16, free objects at
# 20, thread blocks 24, references 28, free references 32, processes 36), the lock u32 at 64, the
# spinners at 128.
HEADER_LOCK, HEADER_OBJ_HW, HEADER_SPINNERS = 64, 16, 128

INTERESTING = (0, 1, 2, 3, 0xFFFFFFFF, 0xFFFFFFFE, 0x80000000, 0x7FFFFFFF, 65, 66, 1024, 1025, 4096, 16384, 16385)


def _live_words(arena: Path, segments: list[tuple[int, int]]) -> list[int]:
    """Offsets of the nonzero words of the arena: headers, entries, links, tokens, names."""
    words = []
    with open(arena, "rb") as f:
        for start, end in segments:
            f.seek(start)
            data = f.read(end - start)
            words += [start + i for i in range(0, len(data) - 3, 4) if data[i : i + 4] != b"\0\0\0\0"]
    return words


def _scribble(target: Path, segments: list[tuple[int, int]], live: list[int], rng: random.Random) -> list[str]:
    """A few random writes in the arena's data, mostly on or near its live words: words of
    interesting or random values, or runs of random bytes.  Returns what it did (the failure
    message repeats it)."""
    done = []
    with open(target, "r+b") as f:
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.8:
                offset = rng.choice(live) + rng.choice((0, 0, 0, -8, -4, 4, 8))
            else:
                start, end = rng.choice(segments)
                offset = rng.randrange(start, end - 16)
            offset = max(offset, 0)
            if rng.random() < 0.7:
                offset &= ~3
                value = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.getrandbits(rng.choice((8, 16, 32)))
                data = struct.pack("=I", value)
            else:
                data = rng.randbytes(rng.randint(1, 16))
            f.seek(offset)
            f.write(data)
            done.append(f"{offset:#x}={data.hex()}")
        if rng.random() < 0.25:  # and a lock left by a process that died inside it: the next one mends the arena
            data = struct.pack("=I", rng.randint(1, 1024) << 20)
            f.seek(HEADER_LOCK)
            f.write(data)
            done.append(f"{HEADER_LOCK:#x}={data.hex()}")
    return done


# One parent runs every seed in a forked child of its own (no interpreter start per seed):
# the parent never attaches to an arena, so nothing a child meets can reach it.
FUZZ_DRIVER = PRELUDE + EXERCISE + textwrap.dedent("""
    import json
    results = {}
    for seed, root in json.loads(sys.argv[1]):
        pid = os.fork()
        if pid == 0:
            os.environ["NTSHIM_SYNC_ROOT"] = root
            code = 0
            try:
                exercise()
            except BaseException:
                traceback.print_exc()
                code = 3
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            results[seed] = "hung"
            continue
        if os.WIFSIGNALED(status):
            results[seed] = f"killed by {os.WTERMSIG(status)}"
        elif os.WEXITSTATUS(status) != 0:
            results[seed] = f"exit status {os.WEXITSTATUS(status)}"
    print(json.dumps(results))
""")


#: Seeds of the fuzz test: 48 in CI (a few seconds); FUZZ_SEEDS=<n> runs more for a deeper search.
SEEDS = range(int(os.environ.get("FUZZ_SEEDS", "48")))


def test_random_bytes_in_the_arena_never_crash_or_hang_its_users(tmp_path: Path) -> None:
    arena = _populated(tmp_path)
    segments = [(s, e) for s, e in _data_segments(arena) if e - s > 16]
    live = _live_words(arena, segments)
    plans, scribbles = [], {}
    for seed in SEEDS:
        root = _root(tmp_path, f"seed-{seed}")
        scribbles[seed] = _scribble(_copy(arena, root), segments, live, random.Random(seed))
        plans.append((seed, str(root)))
    env = dict(os.environ)
    env.pop("NTSHIM_SYNC_BACKEND", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FUZZ_DRIVER, json.dumps(plans)],
            capture_output=True, text=True, timeout=600, env=env, check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the fuzz driver hung:\n{e.stderr!r}")
    assert proc.returncode == 0, proc.stderr
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(
        f"seed {seed}: {what} after writing {' '.join(scribbles[int(seed)])}" for seed, what in failures.items()
    ) + f"\n{proc.stderr[-4000:]}"


# --- targeted damage ------------------------------------------------------------------------
# The current layout (src/ntshim/_core/sync/arena.c, "Layout, version 7"): byte offsets of what the
# cases below overwrite (the header's are above).
CHUNK = 0x10000
NPROC, NHASH, NOBJ = 1024, 32768, 16384


def _round(x: int) -> int:
    return (x + CHUNK - 1) & ~(CHUNK - 1)


OFF_HASH = _round(4096 + 16 * (NPROC + 1))
OFF_OBJ = OFF_HASH + _round(4 * NHASH)
OBJ_SIZE = 64  # kind, gen, refs, name, x, y, abandoned, holder, holder_gen, heads and tails, next_free, word (u64)
OBJ_ANY_HEAD = 36
OBJ_WORD = 56  # the lock-free word (u64): W_SLOW, or the state
W_SLOW = 1 << 63
NAME_SIZE = 8 + 256  # hash, len, bytes
OFF_THR = OFF_OBJ + _round(OBJ_SIZE * (NOBJ + 1)) + _round(NAME_SIZE * (NOBJ + 1))
ENTRY_SIZE = 16  # obj, prev, next, linked


# A thread block: pthread_mutex_t (40 bytes); gen, in_use, proc, tid, signaled, poke, sleeping,
# owner, all, count, alert, abandoned, held, queued, anchor, notify, spinning, fast; then its 65 entries.
THR_ENTRIES_AT = 40 + 18 * 4


def _thread_block_size() -> int:
    block = THR_ENTRIES_AT + 65 * ENTRY_SIZE
    return block + -block % 8


def _check_layout() -> None:
    """The offsets above are those of the C layer (the test is a reader of a documented format)."""
    from ntshim import _core

    off_ref = OFF_THR + _round(_thread_block_size() * 4097)
    assert off_ref + _round(16 * 65537) == _core.SYNC_ARENA_SIZE, "the arena layout changed: update this test"


def _arena_of(root: Path) -> Path:
    _check_layout()
    path = root / f"ntshim-{os.geteuid()}" / "sync.arena"
    assert path.exists(), f"no arena of the current layout under {root}"
    return path


def _poke(path: Path, offset: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("=I", value))


def _peek(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return int(struct.unpack("=I", f.read(4))[0])


def _expect_damaged(root: Path, script: str) -> None:
    """Run script after PRELUDE: it must end with the damaged error, cleanly."""
    proc = _run(PRELUDE + textwrap.dedent(script) + textwrap.dedent("""
        assert any(o[2] == errno.EUCLEAN for o in outcomes), outcomes
        # every later call fails the same way
        try:
            Event(manual=True, backend="futex")
        except OSError as e:
            assert e.errno == errno.EUCLEAN and "is damaged" in str(e), e
        else:
            raise AssertionError("a call after the damage worked")
    """), root, timeout=30)
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@contextlib.contextmanager
def _live(root: Path, script: str) -> Iterator[subprocess.Popen[str]]:
    """A process that runs script (after PRELUDE), says ready and stays, until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script) + "\nprint('ready', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, NTSHIM_SYNC_ROOT=str(root)),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _named_event(root: Path, name: str) -> None:
    """A process creates the named event and dies holding it (killed, so nothing is tidied)."""
    proc = _run(PRELUDE + textwrap.dedent(f"""
        e = Event(manual=True, name={name!r}, backend="futex")
        sys.stdout.flush()
        os.kill(os.getpid(), 9)
    """), root)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_garbage_name_index_entry_is_a_clean_error(tmp_path: Path) -> None:
    root = _root(tmp_path, "names")
    with _live(root, 'e = Event(manual=True, name="target", backend="futex")'):
        arena = _arena_of(root)
        with open(arena, "r+b") as f:  # every used slot of the name index now names a huge object index
            f.seek(OFF_HASH)
            index = bytearray(f.read(4 * NHASH))
            for i in range(0, len(index), 4):
                if struct.unpack_from("=I", index, i)[0]:
                    struct.pack_into("=I", index, i, 0x7FFFFFF0)
            f.seek(OFF_HASH)
            f.write(index)
        _expect_damaged(root, """
            attempt("open", lambda: Event.open("target", backend="futex"))
        """)


def test_a_cyclic_wait_queue_is_a_clean_error(tmp_path: Path) -> None:
    root = _root(tmp_path, "cycle")
    # A live process waits on a named semaphore; we make its queue entry point to itself.
    with _live(root, """
        s = Semaphore(0, 1, name="loop", backend="futex")
        threading.Thread(target=lambda: attempt("wait", lambda: wait_any([s], 60)), daemon=True).start()
        time.sleep(0.3)
    """):
        arena = _arena_of(root)
        slot = 1  # the only object
        head = _peek(arena, OFF_OBJ + slot * OBJ_SIZE + OBJ_ANY_HEAD)
        assert head, "the waiter is not queued"
        entry = _entry_offset(head)
        _poke(arena, entry + 8, head)  # next: itself
        _expect_damaged(root, """
            s = Semaphore.open("loop", backend="futex")
            attempt("release", s.release)
        """)


def _entry_offset(entry_id: int) -> int:
    """Byte offset of wait-queue entry `entry_id` (entries are numbered from 1 across the
    thread blocks, 65 per block, after each block's fields)."""
    thr, i = (entry_id - 1) // 65 + 1, (entry_id - 1) % 65
    return OFF_THR + thr * _thread_block_size() + THR_ENTRIES_AT + i * ENTRY_SIZE


def test_a_queue_left_half_unlinked_by_a_process_killed_in_the_lock_is_mended(tmp_path: Path) -> None:
    """A process killed between the two halves of an unlink leaves the next entry's back
    link stale and its own entry off the list; the process that takes the lock over from
    it mends the queues, and both waiters are served (no damage, nobody lost)."""
    root = _root(tmp_path, "mend")
    with _live(root, """
        s = Semaphore(0, 2, name="s", backend="futex")
        served = []
        def waiter(tag):
            wait_any([s], 60)
            served.append(tag)
            if len(served) == 2:
                print("served", flush=True)
        threading.Thread(target=waiter, args=("first",), daemon=True).start()
        time.sleep(0.2)
        threading.Thread(target=waiter, args=("second",), daemon=True).start()
        time.sleep(0.2)
    """) as live:
        arena = _arena_of(root)
        head = OFF_OBJ + 1 * OBJ_SIZE + OBJ_ANY_HEAD
        first = _peek(arena, head)
        second = _peek(arena, _entry_offset(first) + 8)
        assert first and second and _peek(arena, _entry_offset(second) + 4) == first
        _poke(arena, head, second)  # *head = first->next; second->prev not yet updated
        _poke(arena, HEADER_LOCK, 1000 << 20)  # ... by a holder that is gone (slot 1000, never claimed)
        proc = _run(PRELUDE + textwrap.dedent("""
            s = Semaphore.open("s", backend="futex")
            s.release(2)
            print(s.read())
        """), root, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "(0, 2)"  # both units handed over, at once
        assert live.stdout is not None and live.stdout.readline() == "served\n"


def _word(path: Path, slot: int) -> int:
    with open(path, "rb") as f:
        f.seek(OFF_OBJ + slot * OBJ_SIZE + OBJ_WORD)
        return int(struct.unpack("=Q", f.read(8))[0])


def test_an_object_is_slow_while_queued_and_lock_free_again_after(tmp_path: Path) -> None:
    """Issue 14's word, as the arena shows it: W_SLOW while a waiter is queued (so that no
    lock-free grab overtakes it), the state back in the word once the queue is empty, a
    lock-free release then changing the word alone; a mutex taken without contention holds
    its holder's block in the word."""
    root = _root(tmp_path, "word")
    with _live(root, """
        s = Semaphore(0, 5, name="s", backend="futex")  # slot 1
        m = Mutex(backend="futex")  # slot 2
        wait_any([m])  # taken lock-free: nobody waits
        served = threading.Event()
        def waiter():
            wait_any([s], 60)
            served.set()
        threading.Thread(target=waiter, daemon=True).start()
        time.sleep(0.2)
        threading.Thread(target=lambda: (served.wait(60), print("served", flush=True)), daemon=True).start()
    """) as live:
        arena = _arena_of(root)
        assert _word(arena, 1) & W_SLOW  # a waiter is queued
        held = _word(arena, 2)
        assert not held & W_SLOW and held & 0xFFFFFF == 1 and (held >> 24) & 0x1FFF  # count 1, a block
        proc = _run(PRELUDE + 'Semaphore.open("s", backend="futex").release(1)', root, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert live.stdout is not None and live.stdout.readline() == "served\n"
        assert _word(arena, 1) == 0  # handed over, nobody queued: the count, 0, back in the word
        proc = _run(PRELUDE + 's = Semaphore.open("s", backend="futex"); s.release(3); print(s.read())', root,
                    timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "(3, 5)" and _word(arena, 1) == 3


def test_a_huge_high_water_mark_is_a_clean_error(tmp_path: Path) -> None:
    root = _root(tmp_path, "hw")
    _named_event(root, "x")
    _poke(_arena_of(root), HEADER_OBJ_HW, 0xFFFFFFFF)
    _expect_damaged(root, """
        attempt("create", lambda: Event(manual=True, backend="futex"))
    """)


# Two threads pass a semaphore back and forth (each handing over to the other, which may spin).
PING_PONG = PRELUDE + textwrap.dedent("""
    sems = [Semaphore(0, 1, backend="futex"), Semaphore(0, 1, backend="futex")]
    def side(me):
        for _ in range(2000):
            wait_any([sems[me]], 30)
            sems[1 - me].release()
    threads = [threading.Thread(target=side, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    sems[0].release()
    for t in threads:
        t.join()
    print("done")
""")


def test_the_count_of_spinners_is_given_back(tmp_path: Path) -> None:
    """Every waiter that spun has left the count (a waiter spins only while fewer than the
    CPUs - 1 do, across processes)."""
    root = _root(tmp_path, "spin")
    proc = _run(PING_PONG, root)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
    assert _peek(_arena_of(root), HEADER_SPINNERS) == 0


def test_garbage_in_the_count_of_spinners_only_stops_spinning(tmp_path: Path) -> None:
    root = _root(tmp_path, "spin-garbage")
    _named_event(root, "x")
    _poke(_arena_of(root), HEADER_SPINNERS, 0xFFFFFFFF)
    proc = _run(PING_PONG, root)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr  # no damage, no hang
    assert _peek(_arena_of(root), HEADER_SPINNERS) == 0xFFFFFFFF  # nobody took a place, nobody gave one


def test_garbage_in_the_arena_lock_is_a_clean_error(tmp_path: Path) -> None:
    root = _root(tmp_path, "lock")
    _named_event(root, "x")
    _poke(_arena_of(root), HEADER_LOCK, 0xDEADBEEF)
    _expect_damaged(root, """
        attempt("create", lambda: Event(manual=True, backend="futex"))
    """)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    """Not damage: a process killed inside the lock leaves its identity in the lock word;
    the next one finds that process gone and carries on."""
    root = _root(tmp_path, "dead-holder")
    _named_event(root, "x")
    arena = _arena_of(root)
    _poke(arena, HEADER_LOCK, (1 << 20) | (_peek(arena, 4096 + 16 + 4) & 0xFFFFF))  # slot 1, its generation
    proc = _run(PRELUDE + textwrap.dedent("""
        e = Event(manual=True, backend="futex")
        assert not e.set() and e.read() == (True, True)
        try:
            Event.open("x", backend="futex")
        except FileNotFoundError:
            pass  # swept with its dead creator: right
        print("ok")
    """), root, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_closing_the_arena_descriptor_behind_ntshims_back_gives_clean_errors(tmp_path: Path) -> None:
    """A process whose arena descriptor is closed looks gone: another process reclaims what it
    held, and its own later calls fail with the damaged error instead of acting on objects
    that now belong to others."""
    root = _root(tmp_path, "closed")
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent("""
            e = Event(manual=True, name="mine", backend="futex")
            os.closerange(3, 4096)  # what a careless daemonizer does
            print("closed", flush=True)
            sys.stdin.readline()
            attempt("set", e.set)
            print(outcomes, flush=True)
            assert outcomes[-1][2] == errno.EUCLEAN, outcomes
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, NTSHIM_SYNC_ROOT=str(root)),
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "closed\n"
    other = _run(PRELUDE + textwrap.dedent("""
        Event(manual=True, backend="futex").close()  # registering sweeps the process that looks gone
        try:
            Event.open("mine", backend="futex")
        except FileNotFoundError:
            print("reclaimed")
    """), root)
    assert other.stdout.strip() == "reclaimed", other.stderr
    _out, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0, err


# --- truncation -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 4096, 1 << 20])
def test_truncating_the_arena_gives_clean_errors_not_sigbus(tmp_path: Path, size: int) -> None:
    root = _root(tmp_path, "truncate")
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent("""
            objs = [Event(manual=True, name=f"t{i}", backend="futex") for i in range(100)]
            sem = Semaphore(0, 1, backend="futex")
            waiting = []
            def wait_forever():
                try:
                    wait_any([sem])
                except BaseException as e:
                    waiting.append(e)
            t = threading.Thread(target=wait_forever, daemon=True)
            t.start()
            time.sleep(0.2)
            print("ready", flush=True)
            sys.stdin.readline()
            for o in objs:
                attempt("set", o.set)
                attempt("read", o.read)
            attempt("create", lambda: Mutex(backend="futex"))
            t.join(10)  # the sleeping waiter wakes with the damage too
            assert not t.is_alive(), "the waiter still sleeps"
            assert isinstance(waiting[0], OSError) and waiting[0].errno == errno.EUCLEAN, waiting
            assert any(o[2] == errno.EUCLEAN for o in outcomes), outcomes
            for o in objs:
                o.close()
            print("clean", flush=True)
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, NTSHIM_SYNC_ROOT=str(root)),
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        (arena,) = glob.glob(f"{root}/ntshim-{os.geteuid()}/*.arena")
        os.truncate(arena, size)
        out, err = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, f"status {proc.returncode}\n{err}"
    assert out.strip().endswith("clean")


# --- a full tmpfs ---------------------------------------------------------------------------

FILL_THE_TMPFS = PRELUDE + textwrap.dedent("""
    import subprocess
    mount = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", mount], check=True)
    os.environ["NTSHIM_SYNC_ROOT"] = mount
    filler = os.path.join(mount, "filler")
    with open(filler, "wb") as f:  # leave ~600 KiB: the new arena's first chunks (448 KiB) and a little more
        f.write(b"x" * (1024 * 1024 - 600 * 1024))
    objects = []
    while True:
        try:
            objects.append(Event(manual=True, name=f"e{len(objects)}", backend="futex"))
        except OSError as e:
            assert e.errno == errno.ENOSPC and "arena is full" in str(e), e
            break
        assert len(objects) < 16384, "the tmpfs never filled"
    refused, leave = [], threading.Event()
    def wait_in_a_thread():  # each live thread that waits holds a thread block, which needs storage too
        try:
            wait_any([objects[0], objects[1]], 0)  # (two objects: a lone poll is lock-free, and needs none)
        except TimeoutError:
            leave.wait()
        except OSError as e:
            assert e.errno == errno.ENOSPC and "arena is full" in str(e), e
            refused.append(e)
    threads = [threading.Thread(target=wait_in_a_thread) for _ in range(150)]
    for t in threads:
        t.start()
    while len(refused) + sum(not t.is_alive() for t in threads) < 1 and any(t.is_alive() for t in threads):
        time.sleep(0.01)
    leave.set()
    for t in threads:
        t.join()
    full_at = len(objects)
    os.unlink(filler)
    for i in range(200):  # room again: work resumes
        objects.append(Event(manual=True, name=f"more{i}", backend="futex"))
    assert Event.open("e0", backend="futex").read() == (True, False)
    print(full_at, len(refused), flush=True)
""")


def test_a_full_tmpfs_gives_arena_full_not_sigbus(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs in a private mount namespace")
    mount = _root(tmp_path, "small")
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", FILL_THE_TMPFS, str(mount)],
            capture_output=True, text=True, timeout=120, check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung:\n{e.stderr!r}")
    assert proc.returncode == 0, f"status {proc.returncode} (-7 is SIGBUS)\n{proc.stderr}"
    full_at, threads_refused = map(int, proc.stdout.split())
    assert 0 < full_at < 16384
    assert threads_refused > 0
