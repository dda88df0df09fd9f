"""No crash, no hang: write watches on memory shared with the heap, watches ending while
threads write, fork while a tracker is busy, other libraries' SIGSEGV handlers, sent signals,
crafted DirtyPages (issue 11, items 1, 2, 5, 6, 7, 14).

Every scenario that could crash or hang runs in a fresh interpreter with a timeout, so that
a failure is reported as one, never takes pytest down, and a hang is named as a hang.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from required import require_backend

import ntshim
from ntshim import _core
from ntshim.memory import PAGE_SIZE as PS
from ntshim.writewatch import registry


def run_script(script: str, timeout: float, *python_options: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter; fail, naming the hang, if it does not end in time."""
    try:
        return subprocess.run(
            [sys.executable, *python_options, "-c", textwrap.dedent(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")[-2000:]
        pytest.fail(f"the process hung: no exit within {timeout} s; its output so far:\n{out}")


def assert_ran(proc: subprocess.CompletedProcess[str], last_line: str) -> None:
    report = f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    assert proc.stdout.splitlines()[-1:] == [last_line], proc.stdout


THREAD_MASK_SCRIPT = """
import os, signal, sys, time
import ntshim
from ntshim import _bench

def threads():
    return set(map(int, os.listdir("/proc/self/task")))

def blocked(tid):
    line = next(l for l in open(f"/proc/self/task/{tid}/status") if l.startswith("SigBlk:"))
    mask = int(line.split()[1], 16)
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}

def sleeping(tid):
    return open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[0] == "S"

memory = bytearray(64 * 4096)
before = threads()
if sys.argv[1] == "uffd-sync fault thread":
    stop = ntshim.watch(memory, backend="uffd-sync").close
    started = threads() - before
    ran = lambda: all(sleeping(tid) for tid in started)  # in poll(), waiting for faults
else:
    stop = _bench.Writers(memoryview(memory), 1, random=False).stop
    started = threads() - before
    ran = lambda: any(memory)  # it has written
assert started, "no thread was started"
# A new thread starts with every signal blocked until glibc gives it its creator's mask:
# look once it has run.
deadline = time.monotonic() + 10
while not ran():
    assert time.monotonic() < deadline, "the thread never ran"
    time.sleep(0.001)
for tid in started:
    mask = blocked(tid)
    assert not mask & {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}, sorted(mask)
    assert {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD} <= mask  # asynchronous ones stay away
stop()
print("ok")
"""


@pytest.mark.parametrize("kind", ["uffd-sync fault thread", "native writers"])
def test_threads_ntshim_starts_still_take_faults(kind: str) -> None:
    """Threads of ours take no asynchronous signals, but a fault must reach its handler where
    it happens: creating a thread writes heap memory (glibc clears a cached stack's DTV, which
    malloc placed on a page a heap watch may protect), and a fault taken with SIGSEGV blocked
    kills the process without a word (found by the API fuzz test).  In a fresh interpreter:
    no other thread starts meanwhile."""
    if kind == "uffd-sync fault thread":
        require_backend("uffd-sync")
    proc = subprocess.run(
        [sys.executable, "-c", THREAD_MASK_SCRIPT, kind], capture_output=True, text=True, timeout=60, check=False
    )
    assert_ran(proc, "ok")


# ---- item 1: watching memory shared with the heap ---------------------------------------------

HEAP_SCRIPT = """
import ctypes, random, sys, threading
import numpy as np
import ntshim
from ntshim.errors import BackendUnavailable

backend, rounds, PS = sys.argv[1], int(sys.argv[2]), 4096
sys.setswitchinterval(1e-4)  # the main thread waits less for the GIL: more rounds per second
stop = False

def churn():  # the heap changes under the watches: small objects come and go
    junk = []
    while not stop:
        junk.append([bytearray(random.randrange(1, 3 * PS)) for _ in range(8)] + [object() for _ in range(32)])
        del junk[:-16]

def short_lived():  # threads start and exit: glibc frees their TLS with every signal blocked
    while not stop:
        worker = threading.Thread(target=lambda: [bytearray(64) for _ in range(8)])
        worker.start()
        worker.join()

threading.Thread(target=churn, daemon=True).start()
threading.Thread(target=short_lived, daemon=True).start()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
rng = random.Random(11)
kept = []
refused = 0
for i in range(rounds):
    n = rng.randrange(1, 3 * PS)  # 1..3 pages: the buffer shares its first and last page with the heap
    # An arranged heap: small blocks on both sides of the buffer, freed just before the watch
    # starts, so that the next small allocations (anyone's, ntshim's too) land on its pages.
    around = [libc.malloc(size) for size in (16, 512)]
    obj = (bytearray(n), np.zeros(n, dtype=np.uint8), (ctypes.c_char * n)())[i % 3]
    around += [libc.malloc(size) for size in (16, 512)]
    for block in around:
        libc.free(block)
    kept.append(obj)  # freed later, in another order
    del kept[: -rng.randrange(1, 20)]
    try:
        watch = ntshim.watch(obj, backend=backend)
    except BackendUnavailable as e:
        assert "shares its first or last page" in str(e), e
        refused += 1
        continue
    with memoryview(obj).cast("B") as view:
        view[rng.randrange(n)] = 1
        watch.dirty(reset=True)
        view[0] = 2
        written = list(watch.dirty())
    assert written[:1] == [0], (i, written)  # and maybe a page the heap shares, written by another thread
    watch.close()
stop = True
print("rounds", rounds, "refused", refused)
"""


def test_watching_heap_memory_never_hangs(backend: str) -> None:
    """Item 1: a small bytearray, numpy array or ctypes array shares its partial pages with
    the heap; watching it must not hang or crash whatever ntshim or another thread allocates
    or frees there — even a thread that exits, whose TLS glibc frees with every signal
    blocked.  mprotect, which would write-protect those pages, refuses every such buffer (a
    write-protected page there killed the process; found by the API fuzz test)."""
    rounds = 1000
    proc = run_script(
        f"import sys; sys.argv[1:] = [{backend!r}, '{rounds}']\n" + textwrap.dedent(HEAP_SCRIPT), timeout=60
    )
    refused = rounds if registry.backend_class(backend).shared_page_hazard() else 0  # mprotect's: all
    assert_ran(proc, f"rounds {rounds} refused {refused}")


STALE_PROTECTION_SCRIPT = """
import mmap
import ntshim
from ntshim.memory import maps

PS = mmap.PAGESIZE
memory = mmap.mmap(-1, 3 * PS)
view = memoryview(memory)
a, b = view[: PS + 100], view[PS + 200 :]  # two buffers that share page 1
watch_b = ntshim.watch(b, backend="mprotect")  # page 1 is clean: write-protected now

read = maps.protections


def protections_while_the_other_watch_ends(start, end, page):
    # What another thread can do meanwhile: end the watch that protects page 1.
    seen = read(start, end, page)
    watch_b.close()
    return seen


maps.protections = protections_while_the_other_watch_ends
try:
    watch_a = ntshim.watch(a, backend="mprotect")
except ValueError as e:  # refused while the other watch still covered page 1: fine
    print("refused:", e)
    watch_b.close()
    watch_a = ntshim.watch(a, backend="mprotect")
maps.protections = read
view[PS + 50] = 1  # page 1, under watch a: a tracked write, never a crash
assert watch_a.dirty().offsets.tolist() == [PS], watch_a.dirty().offsets
watch_a.close()
view[PS + 60] = 2  # the page has its owner's protection back
print("ok")
"""


def test_a_watch_never_records_a_protection_another_watch_set() -> None:
    """A watch reads the pages' protections only once its range is claimed: read before, it
    could record a page that another watch (ending meanwhile) kept write-protected as the
    owner's read-only page, and then pass every write there on as a crash and leave the page
    read-only when it ends (found by the API fuzz test, on heap pages two buffers share)."""
    require_backend("mprotect")
    assert_ran(run_script(STALE_PROTECTION_SCRIPT, 60), "ok")


FINALIZER_INSIDE_CLAIM_SCRIPT = """
import bisect, mmap
import ntshim

PS = mmap.PAGESIZE
kept, dropped = mmap.mmap(-1, PS), mmap.mmap(-1, PS)
watch = ntshim.watch(kept, backend="shadow")


class Holder:  # a watch that ends in a finalizer, as an object the collector frees does
    def __init__(self):
        self.watch = ntshim.watch(dropped, backend="shadow")

    def __del__(self):
        self.watch.close()


doomed = [Holder()]
real = bisect.bisect_right


def bisect_right_while_a_finalizer_runs(*args):
    doomed.clear()  # the collector picks this moment: inside claim, which holds its lock
    return real(*args)


bisect.bisect_right = bisect_right_while_a_finalizer_runs
try:
    ntshim.watch(kept, backend="shadow")
except ValueError as e:
    assert "overlaps" in str(e), e
bisect.bisect_right = real
again = ntshim.watch(dropped, backend="shadow")  # the finalizer's release took effect
again.close()
watch.close()
print("ok")
"""


def test_a_watch_ending_in_a_finalizer_inside_another_watchs_claim() -> None:
    """Watches end in finalizers (a Region or WriteWatch the collector frees), and the
    collector runs at any allocation, also while a thread claims a range: the release must
    not wait for the lock its own thread holds (found by the API fuzz test: a hang)."""
    assert_ran(run_script(FINALIZER_INSIDE_CLAIM_SCRIPT, 30), "ok")


# ---- item 2: a watch ends while threads write ---------------------------------------------------


@pytest.mark.parametrize("end", ["close", "garbage-collection"])
def test_ending_an_mprotect_watch_while_threads_write(end: str) -> None:
    """Item 2: a writer that faulted on a protected page waits for the lock while the watch
    ends; the page is writable again and the write must simply run, not crash the process."""
    require_backend("mprotect")
    proc = run_script(
        f"""
        import mmap, time
        import ntshim
        from ntshim import _bench

        PS, PAGES = 4096, 16
        memory = mmap.mmap(-1, PAGES * PS)
        writers = _bench.Writers(memoryview(memory), 2, random=True)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            watch = ntshim.watch(memory, backend="mprotect")
            watch.dirty(reset=True)
            if {end!r} == "close":
                watch.close()
            else:
                del watch  # the last reference: the watch closes as it is collected
        writes, _ = writers.stop()
        assert writes > 0
        print("survived")
        """,
        timeout=60,
    )
    assert_ran(proc, "survived")


@pytest.mark.parametrize("next_backend", ["uffd-sync", "uffd-async"])
def test_an_mprotect_watch_followed_by_a_userfaultfd_one_while_threads_write(next_backend: str) -> None:
    """A writer waiting for the lock while an mprotect watch ends may find, once it has it,
    the page write-protected again by a userfaultfd watch started meanwhile: the kernel cannot
    write it, yet the writer can (its write waits for that watch).  It must retry, not crash
    (found by the API fuzz test)."""
    require_backend("mprotect")
    require_backend(next_backend)
    proc = run_script(
        f"""
        import time
        import ntshim
        from ntshim import _bench

        region = ntshim.alloc(256 * 4096)
        writers = _bench.Writers(memoryview(region), 8, random=True)  # many: some always wait for the lock
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for backend in ("mprotect", {next_backend!r}):
                watch = ntshim.watch(region, backend=backend)
                watch.dirty(reset=True)
                watch.close()
        writes, _ = writers.stop()
        assert writes > 0
        print("survived")
        """,
        timeout=60,
    )
    assert_ran(proc, "survived")


def test_an_undone_registration_lets_waiting_writers_run() -> None:
    """Item 2: a registration that fails half way gives the pages back (its undo path); a
    writer that faulted on a page it had protected meanwhile must run again.  The failure is
    real: the range has an unmapped page, which mprotect(2) refuses after protecting the
    pages before it."""
    require_backend("mprotect")
    proc = run_script(
        """
        import ctypes, errno, mmap, time
        from ntshim import _bench, _core

        PS = 4096
        memory = mmap.mmap(-1, 3 * PS)
        base = _core.Pin(memory).address
        libc = ctypes.CDLL(None, use_errno=True)
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        assert libc.munmap(base + PS, PS) == 0  # page 1 is a hole
        writers = _bench.Writers(memoryview(memory)[:PS], 2, random=False)  # they write page 0 only
        refused = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:  # the backend's own entry point: the public API refuses a range with a hole up front
                _core.mprotect_tracker(base, 3 * PS, bytes([3, 3, 3]))
            except OSError as e:
                assert e.errno == errno.ENOMEM, e
                refused += 1
        writes, _ = writers.stop()
        assert refused > 0 and writes > 0
        print("survived")
        """,
        timeout=60,
    )
    assert_ran(proc, "survived")


def test_a_real_write_fault_after_a_watch_ends_still_crashes() -> None:
    """The retry of item 2 is for pages that are writable again: a write to a page that its
    owner made read-only is a real fault, and still reaches the default action."""
    require_backend("mprotect")
    proc = run_script(
        """
        import ctypes
        import ntshim
        region = ntshim.alloc(4 * 4096, watch=True, backend="mprotect")
        address = region.write_watch.address
        region.protect(0, 4096, "r")
        region.write_watch.close()
        print("closed", flush=True)
        ctypes.memset(address, 1, 1)
        print("wrote a read-only page")
        """,
        15,
        "-X",
        "faulthandler=0",
    )
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "closed\n"


# ---- item 5: fork while a tracker's own lock is held ---------------------------------------------


@pytest.mark.parametrize("kind", ["shadow", "mprotect"])
def test_fork_while_another_thread_queries(kind: str) -> None:
    """Item 5: a thread gets and resets a large watch (its lock held most of the time) while
    the main thread forks; each child's first dirty() must return, not wait for ever for a
    lock held by a thread the child does not have."""
    require_backend(kind)
    proc = run_script(
        f"""
        import os, signal, threading, time
        import ntshim
        from ntshim import _bench

        PS, PAGES = 4096, 4096
        region = ntshim.alloc(PAGES * PS, watch=True, backend={kind!r})
        writers = _bench.Writers(memoryview(region), 1, random=True)
        stop = False
        querying = threading.Event()
        def query():
            while not stop:
                region.write_watch.dirty(reset=True)
                querying.set()
        thread = threading.Thread(target=query)
        thread.start()
        querying.wait()
        hung = 0
        for _ in range(40):
            pid = os.fork()
            if pid == 0:
                signal.alarm(5)  # a child that hangs dies of SIGALRM
                region.write_watch.dirty(reset=True)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
                hung += 1
            else:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        stop = True
        thread.join()
        writers.stop()
        print("children that hung:", hung)
        """,
        timeout=240,
    )
    assert_ran(proc, "children that hung: 0")


ATFORK_C = r"""
/* Fork handlers of another library that write to memory a watch covers (glibc's own fork
 * code does the same to malloc's arena headers, which can share a page with a watched
 * heap buffer).  Registered before ntshim's, they run while ntshim holds its locks. */
#include <pthread.h>

static volatile char *target;
static void prepare(void) { if (target) target[0]++; }
static void parent(void) { if (target) target[1]++; }
static void child(void) { if (target) target[2]++; }
int atfork_register(void) { return pthread_atfork(prepare, parent, child); }
void atfork_target(char *at) { target = at; }
"""


def compile_library(directory: Path, name: str, source: str) -> Path:
    path, library = directory / f"{name}.c", directory / f"lib{name}.so"
    path.write_text(source)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(path)], check=True, timeout=120)
    return library


@pytest.mark.parametrize("kind", ["mprotect", "uffd-sync", "shadow"])
def test_writes_to_a_watched_page_inside_fork(kind: str, tmp_path: Path) -> None:
    """The thread inside fork() holds ntshim's locks from its prepare handler to its parent
    and child handlers; a write to a watched page meanwhile (by glibc or by another
    library's fork handlers) must be resolved, not kill the process or hang it."""
    require_backend(kind)
    library = compile_library(tmp_path, "atfork", ATFORK_C)
    proc = run_script(
        f"""
        import ctypes, os
        library = ctypes.CDLL({str(library)!r})
        assert library.atfork_register() == 0  # before ntshim's: they run inside ntshim's
        import ntshim
        region = ntshim.alloc(4 * 4096, watch=True, backend={kind!r})
        library.atfork_target(ctypes.c_void_p(region.write_watch.address))
        for _ in range(20):
            region.write_watch.dirty(reset=True)
            pid = os.fork()
            if pid == 0:
                try:
                    os._exit(0 if list(region.write_watch.dirty()) == [0] else 3)
                except RuntimeError:  # the userfaultfd backends do not track a child
                    os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
            assert list(region.write_watch.dirty()) == [0]
        print("forked")
        """,
        60,
        "-X",
        "faulthandler=0",
    )
    assert_ran(proc, "forked")


def test_a_userfaultfd_tracker_refuses_a_forked_child() -> None:
    """A forked child does not have the parent's userfaultfd registration; even through the
    tracker itself (not only through WriteWatch) an operation there fails cleanly instead of
    acting on the parent's memory or waiting for a lock held at fork."""
    require_backend("uffd-sync")
    proc = run_script(
        """
        import os
        import ntshim
        region = ntshim.alloc(4 * 4096, watch=True, backend="uffd-sync")
        tracker = region.write_watch._tracker
        pid = os.fork()
        if pid == 0:
            messages = []
            for call in (lambda: tracker.dirty(0, 4, True, 0), lambda: tracker.mark(0, 1)):
                try:
                    call()
                except RuntimeError as e:
                    messages.append("forked child" in str(e))
            tracker.close()
            os._exit(0 if messages == [True, True] else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        memoryview(region)[0] = 1
        assert list(region.write_watch.dirty()) == [0]
        print("refused")
        """,
        timeout=60,
    )
    assert_ran(proc, "refused")


# ---- item 7: another library's SIGSEGV handler --------------------------------------------------

BARRIER_C = r"""
/* A garbage collector's write barrier, reduced: it write-protects a page of its own; its
 * SIGSEGV handler unprotects the page and counts the fault, and hands any other fault to
 * the action it found installed. */
#include <signal.h>
#include <string.h>
#include <sys/mman.h>

static struct sigaction prev;
static char *page;
static long faults;

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    char *at = si->si_addr;
    if (page && at >= page && at < page + 4096) {
        mprotect(page, 4096, PROT_READ | PROT_WRITE);
        faults++;
        return;
    }
    if (prev.sa_flags & SA_SIGINFO)
        prev.sa_sigaction(sig, si, ctx);
    else if (prev.sa_handler == SIG_DFL)
        signal(sig, SIG_DFL); /* the fault repeats and kills */
    else if (prev.sa_handler != SIG_IGN)
        prev.sa_handler(sig);
}

int barrier_install(void)
{
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSEGV, &sa, &prev);
}

void barrier_arm(void) { mprotect(page, 4096, PROT_READ); }
void barrier_store(int offset, int value) { ((volatile char *)page)[offset] = (char)value; }
long barrier_faults(void) { return faults; }
"""


@pytest.fixture(scope="module")
def barrier_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_library(tmp_path_factory.mktemp("barrier"), "barrier", BARRIER_C)


@pytest.mark.parametrize("installed", ["before-the-first-watch", "after-a-watch"])
def test_another_librarys_write_barrier_gets_every_fault(barrier_library: Path, installed: str) -> None:
    """Item 7: a fault that is not ntshim's goes to the previous handler every time, also
    many times in a row at one address, and ntshim's own faults keep being tracked."""
    require_backend("mprotect")
    proc = run_script(
        f"""
        import ctypes
        import ntshim

        barrier = ctypes.CDLL({str(barrier_library)!r})
        if {installed!r} == "after-a-watch":
            first = ntshim.alloc(4096, watch=True, backend="mprotect")
        assert barrier.barrier_install() == 0
        # ntshim's handler on top (again, in the second case), the barrier's below it
        region = ntshim.alloc(8 * 4096, watch=True, backend="mprotect")
        for i in range(200):
            barrier.barrier_arm()
            barrier.barrier_store(64, i)  # the same address every time
            assert barrier.barrier_faults() == i + 1, (i, barrier.barrier_faults())
            memoryview(region)[(i % 8) * 4096] = 1
            assert list(region.write_watch.dirty(reset=True)) == [(i % 8) * 4096]
        print("barrier faults:", barrier.barrier_faults())
        """,
        60,
        "-X",
        "faulthandler=0",
    )
    assert_ran(proc, "barrier faults: 200")


PROBE_C = r"""
/* A memory prober, as garbage collectors and runtimes have: it tries a write and, when the
 * write faults, its SIGSEGV handler leaves by siglongjmp instead of returning. */
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>

static struct sigaction prev;
static sigjmp_buf env;
static char *page;

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    char *at = si->si_addr;
    if (page && at >= page && at < page + 4096)
        siglongjmp(env, 1);
    if (prev.sa_flags & SA_SIGINFO)
        prev.sa_sigaction(sig, si, ctx);
    else if (prev.sa_handler == SIG_DFL)
        signal(sig, SIG_DFL);
    else if (prev.sa_handler != SIG_IGN)
        prev.sa_handler(sig);
}

int probe_install(void)
{
    page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSEGV, &sa, &prev);
}

/* 1 if the byte can be written, 0 if the write faulted. */
int probe_writable(int offset)
{
    if (sigsetjmp(env, 1))
        return 0;
    ((volatile char *)page)[offset] = 1;
    return 1;
}
"""


@pytest.mark.parametrize("faulthandler", [False, True])
def test_a_handler_that_leaves_by_siglongjmp_gets_every_fault(tmp_path: Path, faulthandler: bool) -> None:
    """A handler below ntshim's that leaves by siglongjmp (it never returns into ntshim's)
    must still get the next fault of that thread, and every one after it.  faulthandler
    adds an alternate signal stack, on which every delivery starts at the same place."""
    require_backend("mprotect")
    library = compile_library(tmp_path, "probe", PROBE_C)
    proc = run_script(
        f"""
        import ctypes
        import ntshim

        probe = ctypes.CDLL({str(library)!r})
        assert probe.probe_install() == 0
        region = ntshim.alloc(4096, watch=True, backend="mprotect")  # ntshim's handler on top
        faulted = 0
        for i in range(100):
            faulted += probe.probe_writable(i) == 0
            memoryview(region)[i] = 1
        assert list(region.write_watch.dirty()) == [0]
        print("probes that faulted:", faulted)
        """,
        60,
        "-X",
        f"faulthandler={int(faulthandler)}",
    )
    assert_ran(proc, "probes that faulted: 100")


# ---- item 14: a sent SIGSEGV on the thread that holds the mprotect lock ---------------------


@pytest.mark.parametrize("faulthandler", [False, True])
def test_a_sent_sigsegv_terminates_even_on_the_lock_holder(faulthandler: bool) -> None:
    """Item 14: a thread spends nearly all its time holding the mprotect backend's lock
    (protecting and releasing a large watch); SIGSEGV sent to it must terminate the process
    by that signal, not deadlock in the handler."""
    require_backend("mprotect")
    proc = run_script(
        """
        import signal, threading, time
        import ntshim

        PAGES = 32768
        region = ntshim.alloc(PAGES * 4096, watch=True, backend="mprotect")
        watch = region.write_watch
        with memoryview(region) as view:
            for page in range(PAGES):
                view[page * 4096] = 1  # populated: changing the protection takes a while
        started = threading.Event()

        def hold_the_lock():
            while True:
                watch._mark(0, PAGES)  # every page written: the lock held across one long mprotect
                watch.dirty(reset=True)  # every page reset: again
                started.set()  # (in the loop now: most of its time is under the lock)

        thread = threading.Thread(target=hold_the_lock, daemon=True)
        thread.start()
        started.wait()
        print("sending", flush=True)
        signal.pthread_kill(thread.ident, signal.SIGSEGV)
        time.sleep(1)  # the process ends here
        watch.dirty(reset=True)  # and if it did not: is the lock free?
        print("still running")
        """,
        30,
        "-X",
        f"faulthandler={int(faulthandler)}",
    )
    assert proc.returncode == -signal.SIGSEGV, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout == "sending\n"
    if faulthandler:
        assert "Fatal Python error: Segmentation fault" in proc.stderr


# ---- item 6: DirtyPages and expand_runs refuse crafted runs -------------------------------------


def runs(*values: int) -> bytes:
    return struct.pack(f"={len(values)}Q", *values)


CRAFTED = {
    "not pairs": (runs(0, PS, 2 * PS), 0, PS, "ValueError"),
    "ragged bytes": (runs(0, PS) + b"\x00", 0, PS, "ValueError"),
    "reversed": (runs(2 * PS, PS), 0, PS, "ValueError"),
    "huge reversed": (runs(PS, 0), 0, PS, "ValueError"),
    "the last step wraps": (runs(2**64 - 10, 2**64 - 1), 0, PS, "ValueError"),
    "not whole pages": (runs(0, PS + 1), 0, PS, "ValueError"),
    "overlapping": (runs(0, 2 * PS, PS, 3 * PS), 0, PS, "ValueError"),
    "descending": (runs(4 * PS, 5 * PS, 0, PS), 0, PS, "ValueError"),
    "end overflows with the address": (runs(0, PS), 2**64 - PS, PS, "ValueError"),
    "zero granularity": (runs(0, PS), 0, 0, "ValueError"),
    "negative address": (runs(0, PS), -PS, PS, "ValueError"),
    "too many pages for memory": (runs(0, 2**62), 0, 1, "MemoryError"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_runs_are_refused_cleanly(case: str) -> None:
    """Item 6: runs that are not ascending, disjoint runs of whole pages, whose sizes
    overflow, or that cannot fit in memory, are refused with a clean exception by the public
    constructor and by the C expansion.  In a subprocess: before the fix some of them
    overflowed a heap buffer."""
    data, address, granularity, expected = CRAFTED[case]
    proc = run_script(
        f"""
        import ntshim
        from ntshim import _core
        args = ({data!r}, {address}, {granularity})
        outcomes = set()
        for attempt in (lambda: ntshim.DirtyPages(*args).offsets, lambda: ntshim.DirtyPages(*args).addresses,
                        lambda: _core.expand_runs(*args)):
            try:
                attempt()
                outcomes.add("accepted")
            except (ValueError, MemoryError, OverflowError) as e:
                outcomes.add(type(e).__name__)
        print(sorted(outcomes))
        """,
        timeout=60,
    )
    assert_ran(proc, str([expected]))


def test_bad_argument_types_are_refused() -> None:
    with pytest.raises(TypeError):
        ntshim.DirtyPages(runs(0, PS), 0, float(PS))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ntshim.DirtyPages("not bytes", 0, PS)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ntshim.DirtyPages(runs(0, PS), None, PS)  # type: ignore[arg-type]


def test_valid_runs_still_expand() -> None:
    dirty = ntshim.DirtyPages(runs(0, PS, 3 * PS, 5 * PS), 0x10000, PS)
    assert len(dirty) == 3
    assert list(dirty.offsets) == [0, 3 * PS, 4 * PS]
    assert list(dirty.addresses) == [0x10000, 0x10000 + 3 * PS, 0x10000 + 4 * PS]
    assert dirty.ranges() == [(0, PS), (3 * PS, 5 * PS)]
    assert _core.expand_runs(runs(2**64 - 2 * PS, 2**64 - PS), PS - 1, PS) == runs(2**64 - PS - 1)
    assert len(ntshim.DirtyPages(runs(0, 2**62), 0, 1)) == 2**62  # counted without expanding
    assert ntshim.DirtyPages(b"", 0, PS).offsets.tolist() == []
