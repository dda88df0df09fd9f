"""Threads racing over one region: protection changes against buffer exports, write watches
against free, and fork against both.  Each race runs in a child process with a timeout, so
that a crash (SIGSEGV) or a hang fails the test instead of taking pytest down; switches are
made frequent (``sys.setswitchinterval(1e-6)``) so that the windows are hit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from required import require_backend

from ntshim import _core
from ntshim.memory import PAGE_SIZE, alloc

P = PAGE_SIZE

# Run in the child first: threads whose exceptions end the child with a message, a clock.
PRELUDE = r"""
import os, random, sys, threading, time, traceback
sys.setswitchinterval(1e-6)
import ntshim
from ntshim.memory import PAGE_SIZE as P, alloc, reserve

failures = []

def run_threads(*targets):
    def guarded(target):
        try:
            target()
        except BaseException:
            failures.append(traceback.format_exc())
    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit("a thread failed:\n" + failures[0])
"""


def run_child(script: str, *args: object, timeout: float = 60) -> str:
    """Run ``PRELUDE + script`` in a fresh interpreter; fail on a crash, a hang or a non-zero
    exit, showing what the child printed; return its stdout."""
    code = PRELUDE + textwrap.dedent(script)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child hung (no exit within {timeout} s); its output: {e.stdout!r} {e.stderr!r}")
    assert proc.returncode == 0, f"the child ended with status {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


# ---- protection changes against buffer exports (issue 11, item 3) ------------------------

# One thread takes access away and gives it back (protect "none"/"r"/"rw", decommit/commit)
# over the whole region or half of it; two threads take buffers (Region.view() of the whole
# region or a half, memoryview(region)) and touch every page they got.  A BufferError is a
# legitimate answer to either side; a buffer over pages without access is a SIGSEGV.
PROTECT_RACE = r"""
backend = sys.argv[1] if sys.argv[1] != "-" else None
npages, seconds = int(sys.argv[2]), float(sys.argv[3])
region = reserve(npages * P, watch=backend is not None, backend=backend)  # decommitted below: a Reservation
region.commit(0, npages * P)
half = npages // 2 * P
spans = [(0, npages * P), (0, half), (half, npages * P - half)]
deadline = time.monotonic() + seconds
buffers = [0, 0]

def changer():
    rng = random.Random(1)
    while time.monotonic() < deadline:
        offset, size = rng.choice(spans)
        for step in ("none", "rw", "r", "decommit", "commit"):
            try:
                if step == "decommit":
                    region.decommit(offset, size)
                elif step == "commit":
                    region.commit(offset, size, "rw")
                else:
                    region.protect(offset, size, step)
            except BufferError:
                pass
            except ValueError:  # protect of pages a failed commit left decommitted
                region.commit(offset, size, "rw")

def reader(seed):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        offset, size = rng.choice(spans)
        try:
            view = memoryview(region) if rng.random() < 0.5 else region.view(offset, size)
        except BufferError:
            continue
        with view:
            total = sum(view[i] for i in range(0, len(view), P))
            if not view.readonly:
                view[len(view) - 1] = total & 0xFF
        buffers[seed - 1] += 1

run_threads(changer, lambda: reader(1), lambda: reader(2))
region.free()
print("ok", buffers)
"""


def test_protect_and_decommit_never_leave_a_buffer_over_inaccessible_pages() -> None:
    out = run_child(PROTECT_RACE, "-", 8, 3.0)
    assert out.startswith("ok")


def test_protect_of_a_watched_region_never_leaves_a_buffer_over_inaccessible_pages(backend: str) -> None:
    # More than 1024 pages: the tracker changes their protection with the GIL released.
    out = run_child(PROTECT_RACE, backend, 2048, 2.0)
    assert out.startswith("ok")


def test_a_protection_change_is_one_transaction() -> None:
    # Deterministic view of the mechanism: while the kernel changes the pages (here: the
    # apply callback), buffers over them get only the access both protections grant; a
    # change that fails leaves everything as it was.
    with alloc(4 * P) as region:
        seen = []

        def apply(first: int, count: int, prot: int) -> None:
            with pytest.raises(BufferError, match="read access"):
                memoryview(region)
            with pytest.raises(BufferError, match="read access"):
                region.view(P, P)
            with region.view(0, P) as untouched:  # pages outside the change keep their access
                seen.append(untouched.readonly)
            raise OSError(12, "injected")

        with pytest.raises(OSError, match="injected"):
            region._change_protection(1, 2, 0, apply)
        assert seen == [False]
        assert [region.protection(i * P) for i in range(4)] == ["rw"] * 4
        with memoryview(region) as mv:
            assert not mv.readonly
            mv[P] = 1

        def narrowing(first: int, count: int, prot: int) -> None:
            with memoryview(region) as mv:  # read-only: "rw" -> "r" grants reading only
                seen.append(mv.readonly)

        region._change_protection(1, 2, _core.PROT_READ, narrowing)
        assert seen == [False, True]
        assert region.protection(P) == "r"


def test_a_watch_shares_the_regions_protections_and_the_change_stays_one_transaction(backend: str) -> None:
    # The protection of each page is kept once: the watch changes the table it shares with
    # the region, under its lock, before the kernel has changed every page (with the GIL
    # released for a large range).  Until the change is done, buffers over the pages still
    # get only what the old protection granted too.
    with alloc(4 * P, watch=True, backend=backend) as region:
        region.protect(0, 4 * P, "r")
        watch = region.write_watch
        assert watch is not None
        seen = []

        def widening(first: int, count: int, prot: int) -> None:
            watch._protect(first, count, prot)
            seen.append(region.protection(P))  # the region reads what the watch wrote: one record
            with region.view(P, P) as view:
                seen.append(view.readonly)

        region._change_protection(1, 2, _core.PROT_READ | _core.PROT_WRITE, widening)
        assert seen == ["rw", True]
        assert [region.protection(i * P) for i in range(4)] == ["r", "rw", "rw", "r"]
        with region.view(P, 2 * P) as view:
            assert not view.readonly
            view[0] = 1
        assert [offset // P for offset in watch.dirty()] == [1]


# ---- watch() against free() (issue 11, item 4) ------------------------------------------

# One thread watches a region while another frees it, many times over.  Either the free
# comes first and the watch is refused ("region is freed"), or the watch comes first and the
# free closes it; nothing keeps tracking the unmapped range: fresh memory mapped at the same
# address can be watched again.  The region's pages are populated so that the shadow
# backend's copy takes a while (it copies without the GIL).
WATCH_FREE_RACE = r"""
import ctypes
backend, rounds, npages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
outcomes = {"refused": 0, "closed by free": 0, "address reused": 0}
rng = random.Random(1)
for _ in range(rounds):
    region = alloc(npages * P)
    address = region.address
    ctypes.memset(address, 1, npages * P)
    barrier = threading.Barrier(2)
    result = []

    def watcher():
        barrier.wait()
        try:
            result.append(ntshim.watch(region, backend=backend))
        except ValueError as e:
            assert "freed" in str(e), e
            result.append(None)

    def freer():
        barrier.wait()
        pause = time.perf_counter() + rng.uniform(0, 0.002)  # somewhere in the watch's creation
        while time.perf_counter() < pause:
            pass
        region.free()

    run_threads(watcher, freer)
    assert region.closed
    watch = result[0]
    if watch is None:
        outcomes["refused"] += 1
    else:
        assert watch.closed, "the watch that came first was left open over freed memory"
        assert region.write_watch is None
        outcomes["closed by free"] += 1
    try:
        fresh = reserve(npages * P, address=address)
    except FileExistsError:  # something else of this process took the address meanwhile
        continue
    fresh.commit(0, npages * P)
    with ntshim.watch(fresh, backend=backend) as again:
        ctypes.memset(address, 2, P)
        assert list(again.dirty().offsets) == [0]
    fresh.free()
    outcomes["address reused"] += 1
print("ok", outcomes)
"""


def test_watch_racing_free_is_refused_or_closed(backend: str) -> None:
    out = run_child(WATCH_FREE_RACE, backend, 150, 1024)
    assert out.startswith("ok")


# ---- free() against new exports ----------------------------------------------------------

# free() of a watched region closes the watch (without the GIL) and then unmaps; a buffer
# exported in between used to make the free fail after the watch was gone.  Now free either
# succeeds, or fails with BufferError before changing anything: the watch still watches.
FREE_EXPORT_RACE = r"""
backend, rounds = sys.argv[1], int(sys.argv[2])
outcomes = {"freed": 0, "refused": 0}
for _ in range(rounds):
    region = alloc(2048 * P, watch=True, backend=backend)
    barrier = threading.Barrier(2)
    stop = []

    def freer():
        barrier.wait()
        try:
            region.free()
        except BufferError:
            assert region.write_watch is not None and not region.write_watch.closed, "free failed half done"
            outcomes["refused"] += 1
        finally:
            stop.append(1)

    def exporter():
        barrier.wait()
        while not stop:
            try:
                with memoryview(region) as mv:
                    mv[0] = 1
            except ValueError:  # freed (or being freed)
                pass

    run_threads(freer, exporter)
    if not region.closed:
        region.free()
    else:
        outcomes["freed"] += 1
print("ok", outcomes)
"""


def test_free_is_all_or_nothing_against_new_exports(backend: str) -> None:
    out = run_child(FREE_EXPORT_RACE, backend, 100)
    assert out.startswith("ok")


# ---- fork() while another thread changes a region ----------------------------------------

# The per-region lock must not be inherited held: fork() waits until no thread is halfway
# through a change, and the child can change the region at once.
FORK_RACE = r"""
backend = sys.argv[1]
region = alloc(2048 * P, watch=True, backend=backend)
stop = []

def changer():
    while not stop:
        region.protect(0, region.size, "r")
        region.protect(0, region.size, "rw")

thread = threading.Thread(target=changer)
thread.start()
try:
    for _ in range(20):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                region.protect(0, region.size, "r")
                region.protect(0, region.size, "rw")
                with memoryview(region) as mv:
                    mv[0] = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                sys.exit("a forked child hung on the region")
            time.sleep(0.001)
        assert os.waitstatus_to_exitcode(status) == 0, status
finally:
    stop.append(1)
    thread.join()
region.free()
print("ok")
"""


@pytest.mark.parametrize("watch_backend", ["mprotect", "shadow"])
def test_fork_while_another_thread_changes_a_region(watch_backend: str) -> None:
    # (Only the backends whose watches survive fork: the child uses the watched region.)
    require_backend(watch_backend)
    out = run_child(FORK_RACE, watch_backend)
    assert out.startswith("ok")
