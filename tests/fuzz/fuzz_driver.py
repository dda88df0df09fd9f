"""A seeded random walk through ntshim's public API, run as a script in its own process.

Several threads call ``ntshim.alloc/reserve/watch``, ``Region`` and ``WriteWatch`` methods
(every write-watch backend; regions, numpy arrays, bytearrays, mmaps, ctypes and array
buffers), ``DirtyPages`` built from crafted runs, ``ntshim.memory.alias``, ``ntshim.sync``
objects and waits (futex and server backends, named and unnamed), and ``ntshim.win32``
memory, write-watch and synchronization functions, with arguments that are often wrong
(wrong types, negative, huge or unaligned numbers, bools where ints go, NaN timeouts) on
objects that are often closed, freed, exported or shared with the other threads.  Now and
then two threads *duel* on one large region (the same race-prone call over and over with
the GIL released: writes, reads, protect, watch and close, reset, free, fork) so that races
meet within seconds; a fork child queries what it inherited; late in some runs the futex
arena file is damaged the way another process of the user could.

Every call must return or raise one of the documented exception types (:data:`ALLOWED`), a
failing Win32 function must have set the last error, and cheap invariants hold on objects
only one thread uses (bytes written read back, a page just written is reported dirty,
nothing is dirty right after a reset, protections read back as set, sync objects answer as
the ntsync rules say).  Anything else -- another exception, also from a finalizer, a broken
invariant, a crash, a hang -- ends the run with exit status 1 (or the signal), the seed,
every thread's stack (crash, hang) and the last calls of every thread.

A run is reproducible in what each thread calls (thread ``t`` draws from
``random.Random(f"{seed}:{t}")``), not in how the threads interleave::

    python3 tests/fuzz/fuzz_driver.py --seed 12345 [--seconds 4] [--exclude heap-watch,fork]

``--exclude`` leaves out the operations that reach a known defect (:data:`EXCLUSIONS`) so
that the rest can be explored while that defect is open.  tests/fuzz/test_fuzz_api.py runs
this script for a few seeds (``NTSHIM_FUZZ_SEED`` replays one, ``NTSHIM_FUZZ_EXCLUDE``
passes exclusions).

The last calls of each thread are kept in a ring of fixed-size records in a file (``--ring``)
that the test reads after the process ended, however it ended: a record is written before
its call starts, and its outcome is filled in when the call ends, so a call that crashed or
hung is the one without an outcome.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import atexit
import contextlib
import ctypes
import faulthandler
import glob
import itertools
import json
import mmap
import os
import pickle
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy

import ntshim
import ntshim.sync
import ntshim.win32 as w32
from ntshim import DirtyPages
from ntshim.errors import AbandonedError, AbandonedWarning, BackendUnavailable
from ntshim.memory import PAGE_SIZE as P
from ntshim.memory import alias
from ntshim.sync.registry import ENV_VAR as SYNC_ENV_VAR
from ntshim.sync.server.protocol import LINGER_ENV_VAR
from ntshim.sync.userdir import ROOT_ENV_VAR
from ntshim.writewatch.registry import ENV_VAR as WW_ENV_VAR
from ntshim.writewatch.registry import backend_class

#: What a call may raise.  Everything else is a failure of the run.
ALLOWED: tuple[type[BaseException], ...] = (
    ValueError,  # UnicodeError included (a name with a lone surrogate)
    TypeError,
    OSError,  # TimeoutError, FileNotFoundError, PermissionError, NameKindError, ...
    BufferError,
    MemoryError,
    OverflowError,
    AbandonedError,
    AbandonedWarning,  # an RLock or Lock acquired abandoned, in runs that make the warning an error
    BackendUnavailable,  # a RuntimeError: a backend that cannot watch this memory
)


def _release_unless_unheld(obj: Any) -> Any:
    """``obj.release()``; threading's RuntimeError for a lock this thread does not hold (or
    that is not locked) is an answer, any other RuntimeError a failure."""
    try:
        return obj.release()
    except RuntimeError as e:
        if "un-acquired" in str(e) or "release unlocked" in str(e):
            return "not held"
        raise


#: The defects of issue 11 (all fixed, each with its regression test) whose operations
#: ``--exclude`` can still leave out, by item: to bisect a regression to one of them.
EXCLUSIONS = {
    "heap-watch": "1: watch() of heap buffers (bytearray, numpy, ctypes, array) under uffd-sync or mprotect (which refuses them)",
    "close-while-writing": "2: mprotect watches on memory other threads write (closed, freed or collected meanwhile)",
    "protect-vs-view": "3: protect/commit/decommit of a region other threads export (view, memoryview)",
    "watch-vs-free": "4: free() of a region other threads may be watching",
    "fork": "5, 13, 16: fork() while other threads work",
    "dirtypages-overflow": "6: DirtyPages whose size arithmetic overflows (start > end, runs near 2**64, "
    "a granularity of 2**63 or more, or negative)",
    "arena-garbage": "8: bytes of garbage written into, or truncation of, the futex arena file",
    "refused-export": "'Also': closing the source of a refused alias() or watch() in the except block",
    "dirtypages-granularity": "new: DirtyPages(runs, address, 0) answers len() with ZeroDivisionError",
    "server-huge-timeout": "new: a server-backend wait with a timeout past 2**64 ns raises struct.error",
    "fork-hook-race": "new: the sync server client's before-fork hook raises RuntimeError (a WeakSet changed "
    "size) when another thread makes or closes objects (reported from fork, not by it: this ignores the report)",
}

WW_BACKENDS = ("uffd-async", "uffd-sync", "mprotect", "shadow")
SYNC_BACKENDS = tuple(ntshim.sync.registry.FAMILY.names)
U32 = 0xFFFFFFFF
RING_SLOTS = 64  # records kept per thread
RECORD = 240  # bytes per record: "seq thread text", outcome in the last OUTCOME bytes
OUTCOME = 28
#: What the two threads of a duel repeat on the hot region (Walker.duel), and the pairs
#: that half of the duels play: the races of issue 11 (a write faulting while its watch
#: closes or its region is freed, a read through an export while protect() runs, a watch
#: starting while the region is freed, fork while a watch's lock is held).
DUEL_ACTIONS = ("write", "read", "protect", "watch", "reset", "free", "fork")
RACE_PAIRS = (
    ("write", "watch"),
    ("write", "free"),
    ("read", "protect"),
    ("watch", "free"),
    ("fork", "reset"),
    ("fork", "watch"),
)
#: Pages of a region large enough that tracker calls on it release the GIL (more than
#: tracker.c's KEEP_GIL_PAGES): then two threads can be in C on the same watch at once.
BIG = 2048
FORKS_PER_RUN = 16  # children that query everything
DUEL_FORKS_PER_RUN = 160  # children of duels, that query the hot region
#: Seconds a fork child may take for its calls, and that the whole run may overrun its
#: budget, before they count as hung.
FORK_BOUND = 6.0
HANG_BOUND = 12.0


class Stop(Exception):
    """Raised inside a thread to end its walk after a failure was recorded."""


class Broken(Exception):
    """A documented promise was broken (raised inside a call: reported as a failure)."""


class Failed:
    """The result of a call that raised an allowed exception."""

    def __bool__(self) -> bool:
        return False


FAILED = Failed()


# ---- the ring of last calls -------------------------------------------------------------


class Ring:
    """Fixed-size records in a shared file mapping: they survive a crash of the process."""

    def __init__(self, path: str, threads: int) -> None:
        size = (threads + 1) * RING_SLOTS * RECORD
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def start(self, thread: int, seq: int, text: str) -> int:
        at = (thread * RING_SLOTS + seq % RING_SLOTS) * RECORD
        line = f"{seq} {thread} {text}".encode("utf-8", "replace")[: RECORD - OUTCOME - 1]
        self.map[at : at + RECORD] = line.ljust(RECORD - OUTCOME) + b" ... in flight".ljust(OUTCOME - 1) + b"\n"
        return at

    def finish(self, at: int, outcome: str) -> None:
        self.map[at + RECORD - OUTCOME : at + RECORD - 1] = f" -> {outcome}".encode()[: OUTCOME - 1].ljust(OUTCOME - 1)


def read_ring(path: str) -> list[tuple[int, int, str]]:
    """Every record of a ring file as ``(seq, thread, text)``, oldest first."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    for at in range(0, len(data) - RECORD + 1, RECORD):
        record = data[at : at + RECORD].rstrip(b"\0\n ").decode("utf-8", "replace")
        if not record:
            continue
        seq, thread, text = record.split(" ", 2)
        out.append((int(seq), int(thread), " ".join(text.split())))
    out.sort()
    return out


def short(value: object) -> str:
    """A call argument in a few characters."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    label, kind = LABELS.get(id(value), (None, None))
    if label is not None and kind is type(value):
        return label
    if isinstance(value, (list, tuple)):
        inner = ", ".join(short(v) for v in value[:4])
        return f"[{inner}{', ...' if len(value) > 4 else ''}]"
    return f"<{type(value).__name__}>"


def operation(label: str) -> str:
    """What a call label says was called, without the objects' labels: "R1.7.protect" ->
    "protect", "S0.3=Mutex" -> "Mutex"."""
    return re.sub(r"[A-Z]\d+\.\d+", "", label).strip("=.")


#: id(object) -> the label it was created under, and its type (ids of dead objects are
#: reused: labels are for reading the log, nothing depends on them).
LABELS: dict[int, tuple[str, type]] = {}


# ---- the objects the threads share or keep -----------------------------------------------


class Item:
    """An object under test, with what the walk needs to know about it."""

    __slots__ = ("backend", "kind", "label", "obj", "watch")

    def __init__(self, label: str, obj: Any, kind: str) -> None:
        self.label = label
        self.obj = obj
        self.kind = kind  # "region", "bytearray", "numpy", "mmap-shared", ...
        self.watch: Any = None  # the WriteWatch over a buffer
        self.backend: str | None = None  # the backend of that watch
        LABELS[id(obj)] = label, type(obj)


class Pool:
    """A few slots of items; putting an item into a slot drops the one there (collected
    if nothing else holds it: watches and regions are closed by their finalizers).  The
    first ``reserved`` slots are only picked from, never put into (the hot region)."""

    def __init__(self, slots: int, reserved: int = 0) -> None:
        self.slots: list[Item | None] = [None] * slots
        self.reserved = reserved

    def pick(self, rng: random.Random) -> Item | None:
        return self.slots[rng.randrange(len(self.slots))]

    def put(self, rng: random.Random, item: Item) -> None:
        self.slots[rng.randrange(self.reserved, len(self.slots))] = item

    def items(self) -> list[Item]:
        return [item for item in self.slots if item is not None]


class Pools:
    def __init__(self, shared: bool) -> None:
        self.shared = shared
        self.regions = Pool(7, reserved=1 if shared else 0)  # shared: slot 0 holds the hot region
        self.buffers = Pool(6)
        self.exports = Pool(6)
        self.sync = Pool(8)


# ---- one run ---------------------------------------------------------------------------


class Run:
    """State of the whole run: shared pools, the ring, what went wrong, counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.seed = args.seed
        self.exclude = set(args.exclude)
        plan = random.Random(f"{args.seed}:plan")
        self.threads = args.threads or plan.choice((2, 3, 3, 4))
        self.switch_interval = plan.choice((1e-6, 1e-5, 1e-4))
        # (Every choice is drawn whatever is excluded, so that exclusions leave the others alone.)
        self.damage_arena = plan.random() < 0.35 and "arena-garbage" not in self.exclude
        self.forks = 0 if "fork" in self.exclude else FORKS_PER_RUN
        # An RLock or Lock acquired abandoned warns; half the runs make that an error (the lock is then
        # left abandoned, not held).  Drawn apart, so that the plan's other draws stay as they were.
        abandoned_is_error = random.Random(f"{args.seed}:warnings").random() < 0.5
        warnings.simplefilter("error" if abandoned_is_error else "ignore", AbandonedWarning)
        self.duel_forks = 0 if "fork" in self.exclude else DUEL_FORKS_PER_RUN
        # The defaults that backend=None (and ntshim.win32) use, by environment variable.
        self.ww_default = plan.choice((None, None, *WW_BACKENDS))
        self.sync_default = plan.choice(SYNC_BACKENDS)
        self.seconds = args.seconds
        self.max_calls = args.max_calls
        self.ring = Ring(args.ring, 2 * self.threads)  # the walkers, then their duel partners
        self.shared = Pools(shared=True)
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.lock = threading.Lock()  # for the lists and counters below
        self.win32_memory = threading.Lock()  # see Walker.win32_*
        self.win32_allocations: list[int] = []
        self.win32_handles: list[int] = []
        self.arena_damaged = False
        self.walkers: list[Walker] = []
        self.seq = itertools.count()
        self.outcomes: Counter[str] = Counter()
        self.watches: Counter[str] = Counter()  # backend -> watches started
        self.sync_objects: Counter[str] = Counter()  # backend -> objects created
        # Files the walk maps (regular files: not in /dev/shm), next to the ring.
        self.tmp = tempfile.mkdtemp(prefix="files-", dir=os.path.dirname(os.path.abspath(args.ring)))
        atexit.register(shutil.rmtree, self.tmp, True)
        self.stem = f"fz{args.seed % 100000}-{os.getpid()}"
        self.start = time.monotonic()
        self.deadline = self.start + self.seconds

    def fail(self, thread: int, text: str) -> None:
        message = f"FUZZ FAILURE (seed {self.seed}, thread {thread}): {text}"
        self.failures.append(message)  # (no lock: this runs in finalizers too, wherever they run)
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        self.stop.set()

    def late(self) -> bool:
        """Whether the run is in its last 40 % (arena damage waits until then)."""
        return time.monotonic() > self.start + 0.6 * self.seconds


class Walker:
    """One thread's random walk."""

    def __init__(self, run: Run, thread: int) -> None:
        self.run = run
        self.thread = thread
        self.rng = random.Random(f"{run.seed}:{thread}")
        self.own = Pools(shared=False)
        self.made = itertools.count()
        self.ops: list[Callable[[], None]] = [getattr(self, name) for name, _ in OPS]
        self.cum_weights = list(itertools.accumulate(weight for _, weight in OPS))
        self.partner: Walker | None = None  # the second thread of this walker's duels

    # ---- calling and checking ----------------------------------------------------------

    def call(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, logged in the ring; FAILED if it raised an allowed
        exception, a recorded failure (and Stop) for anything else."""
        run = self.run
        if run.stop.is_set():
            raise Stop
        shown = ", ".join([*(short(a) for a in args), *(f"{k}={short(v)}" for k, v in kwargs.items())])
        at = run.ring.start(self.thread, next(run.seq), f"{label}({shown})")
        try:
            result = fn(*args, **kwargs)
        except ALLOWED as e:
            run.ring.finish(at, type(e).__name__)
            run.outcomes[f"{operation(label)} {type(e).__name__}"] += 1
            return FAILED
        except Stop:
            raise
        except BaseException as e:
            run.ring.finish(at, "!! " + type(e).__name__)
            run.fail(self.thread, f"{label}({shown}) raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
            raise Stop from None
        run.ring.finish(at, "ok")
        run.outcomes[f"{operation(label)} ok"] += 1
        return result

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.run.fail(self.thread, f"invariant broken: {what}")
            raise Stop

    def label(self, prefix: str) -> str:
        return f"{prefix}{self.thread}.{next(self.made)}"

    def pools(self) -> Pools:
        """The shared pools most of the time, this thread's own otherwise."""
        return self.own if self.rng.random() < 0.35 else self.run.shared

    def excluded(self, name: str) -> bool:
        return name in self.run.exclude

    def walk(self) -> None:
        run = self.run
        calls = 0
        try:
            while not run.stop.is_set() and calls < run.max_calls and time.monotonic() < run.deadline:
                self.rng.choices(self.ops, cum_weights=self.cum_weights)[0]()
                calls += 1
        except Stop:
            pass
        except BaseException:  # a bug of the driver itself: report it as such
            run.fail(self.thread, "the fuzz driver itself failed:\n" + traceback.format_exc())

    # ---- argument makers -----------------------------------------------------------------

    def junk(self) -> Any:
        """A value of a type no size, offset or count accepts, or a boundary value."""
        return self.rng.choice(
            (
                None,
                True,
                False,
                1.5,
                float("nan"),
                float("inf"),
                "4096",
                b"\x00",
                [P],
                -1,
                -P,
                2**63,
                2**64,
                -(2**63),
                2**200,
                numpy.int64(P),
                numpy.float64(P),
                object(),
            )
        )

    def offset(self, size: int) -> Any:
        """A page offset inside ``size`` bytes most of the time, something wrong otherwise."""
        rng = self.rng
        if rng.random() < 0.75:
            return rng.randrange(max(size // P, 1)) * P
        return rng.choice((size, size + P, 1, P - 1, P + 1, self.junk()))

    def length(self, size: int, offset: Any) -> Any:
        rng = self.rng
        if rng.random() < 0.75 and isinstance(offset, int) and 0 <= offset < size:
            if rng.random() < 0.2:
                return None
            if rng.random() < 0.5:
                return rng.randint(1, size - offset)
            return P * rng.randint(1, max((size - offset) // P, 1))
        return rng.choice((0, 1, size, size + 1, None, self.junk()))

    def protection(self) -> Any:
        rng = self.rng
        if rng.random() < 0.85:
            return rng.choice(("rw", "rw", "r", "rx", "rwx", "none", "", "RW", "r-x"))
        return rng.choice(("w", "wx", "rr", "q", "read", None, 3, b"rw", True))

    def ww_backend(self) -> Any:
        rng = self.rng
        if rng.random() < 0.9:
            return rng.choice((*WW_BACKENDS, None))
        return rng.choice(("", "bogus", "eventfd", 3, b"mprotect"))

    def protecting(self, backend: Any, heap: bool, shared: bool) -> bool:
        """Whether a watch with this backend argument reaches a defect ``--exclude`` leaves out:
        heap memory under a backend that protects it (1), or mprotect on memory other threads
        write (2).  Automatic selection picks uffd-async on this kernel."""
        effective = (backend if isinstance(backend, str) and backend else None) or self.run.ww_default
        if heap and effective in ("mprotect", "uffd-sync") and self.excluded("heap-watch"):
            return True
        return effective == "mprotect" and shared and self.excluded("close-while-writing")

    def sync_backend(self) -> Any:
        rng = self.rng
        if rng.random() < 0.95:
            return rng.choice((*SYNC_BACKENDS, None))
        return rng.choice(("eventfd", "bogus", 1, ""))

    def size(self) -> Any:
        """Sizes that succeed (small, so nothing costs much, or now and then large enough
        that calls on it release the GIL), or fail however large."""
        rng = self.rng
        if rng.random() < 0.8:
            if rng.random() < 0.05:
                return BIG * P
            return rng.choice((1, P - 1, P, P + 1, 2 * P, 3 * P + 5, 8 * P, 16 * P, rng.randint(1, 64 * P)))
        return rng.choice((0, -1, -P, 1 << 47, 1 << 60, 2**64, 2**64 + P, 4096.0, "4096", None, True, numpy.int32(P)))

    def name(self) -> Any:
        """A name most threads will meet again (so creations open, and kinds collide)."""
        rng = self.rng
        if rng.random() < 0.85:
            return f"{self.run.stem}-{rng.randrange(6)}"
        return rng.choice(("", "a\0b", "x" * 300, "\ud800", 5, b"name", "é" * 128))

    # ---- regions ---------------------------------------------------------------------------

    def new_region(self) -> None:
        rng = self.rng
        pools = self.pools()
        kwargs: dict[str, Any] = {}
        if rng.random() < 0.5:
            kwargs["watch"] = True if rng.random() < 0.85 else rng.choice((1, "yes", None))
            if rng.random() < 0.8:
                kwargs["backend"] = self.ww_backend()
            if self.protecting(kwargs.get("backend"), False, pools.shared):
                kwargs["backend"] = "uffd-async"
        elif rng.random() < 0.1:
            kwargs["backend"] = self.ww_backend()  # without watch=True: refused
        if rng.random() < 0.3:
            kwargs["shared"] = True if rng.random() < 0.9 else rng.choice((1, None))
        if rng.random() < 0.1:
            kwargs["below"] = rng.choice((1 << 32, 1 << 31, 1 << 40, P, 0, -1, 2**64, "x"))
        elif rng.random() < 0.05:
            kwargs["zero_bits"] = rng.choice((1, 0xFFFFFFFF, 0x7FFFFFFF, 20, 21, 22, 63, 0, -1, 2**64))
        size = self.size()
        if rng.random() < 0.6:
            if rng.random() < 0.5:
                kwargs["protect"] = self.protection()
            label = self.label("R")
            region = self.call(f"{label}=alloc", ntshim.alloc, size, **kwargs)
        else:
            if rng.random() < 0.15:
                kwargs["align"] = rng.choice((0, P, 1 << 16, 1 << 21, 3, -1, 1 << 40, True))
            if rng.random() < 0.05:
                kwargs["address"] = rng.choice((P, 1 << 16, 1 << 32, 1 << 46, 2**47, 2**64, P + 1, -P))
            label = self.label("R")
            region = self.call(f"{label}=reserve", ntshim.reserve, size, **kwargs)
            if region is not FAILED and rng.random() < 0.8:
                self.call(f"{label}.commit", region.commit, 0, region.size, rng.choice(("rw", "rw", "r")))
        if region is not FAILED:
            item = Item(label, region, "region-shared" if kwargs.get("shared") is True else "region")
            if region.write_watch is not None:
                self.run.watches[region.write_watch.backend] += 1
            pools.regions.put(rng, item)

    def region(self) -> tuple[Pools, Item] | None:
        pools = self.pools()
        item = pools.regions.pick(self.rng)
        if item is None:
            self.new_region()
            return None
        return pools, item

    def region_protect(self) -> None:
        picked = self.region()
        if picked is None:
            return
        pools, item = picked
        region = item.obj
        size = region.size
        rng = self.rng
        offset = self.offset(size)
        length = self.length(size, offset)
        which = rng.random()
        if pools.shared and self.excluded("protect-vs-view"):
            return
        if not isinstance(region, ntshim.Reservation):
            which = 0.0  # commit, decommit and discard are a Reservation's: an alloc() region or alias protects
        if which < 0.5:
            protect = self.protection()
            done = self.call(f"{item.label}.protect", region.protect, offset, length, protect)
            committed = True
        elif which < 0.75:
            protect = self.protection()
            done = self.call(f"{item.label}.commit", region.commit, offset, length, protect)
            committed = True
        elif which < 0.9:
            protect = "none"
            done = self.call(f"{item.label}.decommit", region.decommit, offset, length)
            committed = False
        else:
            self.call(f"{item.label}.discard", region.discard, offset, length)
            return
        if done is FAILED or pools.shared or item.kind == "alias":
            return
        # This thread alone changes the region: every page of the range says what was set.
        last = offset + (region.size - offset if length is None else length) - 1
        for at in (offset, last - last % P):
            state = region.protection(at), region.committed(at)
            self.expect(
                state == (canonical(protect), committed),
                f"{item.label}: page {at:#x} is {state} after setting {protect!r} on {offset:#x}+{length!r}",
            )

    def region_query(self) -> None:
        picked = self.region()
        if picked is None:
            return
        _pools, item = picked
        region, rng = item.obj, self.rng
        offset = self.offset(region.size)
        which = rng.randrange(6)
        if which == 0:
            self.call(f"{item.label}.protection", region.protection, offset)
        elif which == 1:
            self.call(f"{item.label}.committed", region.committed, offset)
        elif which == 2:
            self.call(f"{item.label}.repr", repr, region)
        elif which == 3:
            self.call(f"{item.label}.write_watch.backend", lambda: (w := region.write_watch) and w.backend)
        elif which == 4:
            self.call(f"{item.label}.write_watch.granularity", lambda: (w := region.write_watch) and w.granularity)
        else:
            self.call(f"{item.label}.write_watch", getattr, region, "write_watch")

    def region_dirty(self) -> None:
        picked = self.region()
        if picked is None:
            return
        pools, item = picked
        watch = item.obj.write_watch  # the one way a region reaches its watch
        if watch is None:
            return
        exclusive = not pools.shared and item.kind == "region"
        self.watch_calls(f"{item.label}.write_watch", watch, item.obj.size, exclusive=exclusive)

    def watch_calls(self, label: str, target: Any, size: int, exclusive: bool = False) -> None:
        """dirty / reset / writing / close on a WriteWatch (``target``).
        ``exclusive``: only this thread writes the memory (no other thread, no other
        mapping of the same pages), so right after a reset nothing is dirty."""
        rng = self.rng
        offset = self.offset(size) if rng.random() < 0.5 else 0
        length = self.length(size, offset) if rng.random() < 0.5 else None
        which = rng.random()
        if which < 0.45:
            kwargs: dict[str, Any] = {}
            if rng.random() < 0.5:
                kwargs["reset"] = True if rng.random() < 0.85 else rng.choice((1, None, "yes"))
            if rng.random() < 0.3:
                kwargs["limit"] = rng.choice((1, 2, 7, 1000, 0, -1, None, True, 2**64, 1.0))
            dirty = self.call(f"{label}.dirty", target.dirty, offset, length, **kwargs)
            if dirty is FAILED:
                return
            self.check_dirty_pages(dirty, size)
            limit = kwargs.get("limit")
            if limit is not None:
                self.expect(len(dirty) <= limit, f"{label}.dirty(limit={limit}) returned {len(dirty)} pages")
            elif kwargs.get("reset") is True and exclusive:
                self.expect_clean(label, target, offset, length)
        elif which < 0.6:
            if self.call(f"{label}.reset", target.reset, offset, length) is not FAILED and exclusive:
                self.expect_clean(label, target, offset, length)
        elif which < 0.85:
            self.call(f"{label}.writing", self.writing_block, target, offset, length)
        else:
            if which < 0.95:
                self.call(f"{label}.kernel_writes_tracked", getattr, target, "kernel_writes_tracked")
            else:
                self.call(f"{label}.watch.close", target.close)

    def expect_clean(self, label: str, target: Any, offset: Any, length: Any) -> None:
        again = self.call(f"{label}.dirty", target.dirty, offset, length)
        if again is not FAILED:
            self.expect(not again, f"{label}: {again} dirty right after a reset of {offset:#x}+{length!r}")

    def writing_block(self, target: Any, offset: Any, length: Any) -> None:
        rng = self.rng
        with target.writing(offset, length) as window:
            if window.nbytes and not window.readonly:
                window = window.cast("B") if window.format != "B" else window
                i = rng.randrange(window.nbytes)
                window[i] = (window[i] + 1) % 256
                if rng.random() < 0.3:
                    with open("/dev/urandom", "rb", buffering=0) as f:
                        f.readinto(window[i : i + rng.randint(1, 64)])
            window.release()

    def check_dirty_pages(self, dirty: DirtyPages, size: int) -> None:
        """What every answer of dirty() satisfies: page-aligned offsets inside the memory,
        ascending and unique, agreeing with len(), ranges() and addresses."""
        offsets = self.call("DirtyPages.offsets", getattr, dirty, "offsets")
        if offsets is FAILED:
            return
        listed = offsets.tolist()
        self.expect(listed == sorted(set(listed)), f"dirty offsets not ascending and unique: {listed[:8]}")
        self.expect(all(o % P == 0 and 0 <= o < size for o in listed), f"dirty offsets not in the memory: {listed[:8]}")
        self.expect(len(dirty) == len(listed), f"len(dirty) {len(dirty)} != {len(listed)} offsets")
        covered = [o for start, end in dirty.ranges() for o in range(start, end, P)]
        self.expect(covered == listed, "dirty.ranges() disagree with dirty.offsets")
        addresses = dirty.addresses.tolist()
        self.expect(addresses == [dirty.address + o for o in listed], "dirty.addresses disagree with offsets")

    def region_free(self) -> None:
        picked = self.region()
        if picked is None:
            return
        pools, item = picked
        if pools.shared and self.excluded("watch-vs-free"):
            return
        region = item.obj
        if self.rng.random() < 0.8:
            self.call(f"{item.label}.free", region.free)
        else:
            self.call(f"{item.label}.with", self.with_exit, region)

    @staticmethod
    def with_exit(region: Any) -> None:
        with region:
            pass

    def region_watch(self) -> None:
        picked = self.region()
        if picked is None:
            return
        pools, item = picked
        backend = self.ww_backend()
        if self.protecting(backend, False, pools.shared):
            return
        watch = self.call(f"{item.label}.watch", ntshim.watch, item.obj, backend=backend)
        if watch is not FAILED:
            self.run.watches[watch.backend] += 1

    def region_write(self) -> None:
        """Write a byte of a region through a memoryview; on a region of this thread alone,
        read it back and check the watch saw the page."""
        picked = self.region()
        if picked is None:
            return
        pools, item = picked
        region, rng = item.obj, self.rng
        if pools.shared:
            view = self.call(f"{item.label}.memoryview", memoryview, region)
            if view is not FAILED:
                with view:
                    if view.nbytes and not view.readonly:
                        i = rng.randrange(view.nbytes)
                        view[i] = (view[i] + 1) % 256
            return
        if region.closed:
            return
        page = rng.randrange(region.size // P)
        if not region.committed(page * P) or "w" not in region.protection(page * P):
            return
        view = self.call(f"{item.label}.view", region.view, page * P, P)
        if view is FAILED:
            return
        with view:
            i = rng.randrange(P)
            value = (view[i] + 1 + rng.randrange(255)) % 256
            view[i] = value
            self.expect(view[i] == value, f"{item.label}: byte {page * P + i:#x} reads {view[i]}, wrote {value}")
        watch = region.write_watch
        if watch is not None:
            dirty = self.call(f"{item.label}.write_watch.dirty", watch.dirty, page * P, P)
            if dirty is not FAILED:
                self.expect(
                    list(dirty.offsets) == [page * P],
                    f"{item.label} ({watch.backend}): page {page * P:#x} written, dirty says {dirty}",
                )

    def duel(self) -> None:
        """Two threads repeat one race-prone call each on the hot region (the first slot of
        the shared regions) for 10 to 60 ms, while the walk's other threads go on: every
        byte written or read with the GIL released, protection changes, watches started and
        closed, resets, the region freed (and replaced), fork (a child that queries it).
        Races that need two calls to meet within microseconds meet within seconds so."""
        rng = self.rng
        deadline = time.monotonic() + rng.uniform(0.01, 0.06)
        if self.partner is None:
            self.partner = Walker(self.run, self.thread + self.run.threads)
        if rng.random() < 0.5:
            mine, theirs = rng.sample(rng.choice(RACE_PAIRS), 2)
        else:
            mine, theirs = rng.choice(DUEL_ACTIONS), rng.choice(DUEL_ACTIONS)
        partner = threading.Thread(target=self.partner.second, args=(theirs, deadline))
        partner.start()
        try:
            self.hammer(mine, deadline)
        finally:
            partner.join()

    def hammer(self, action: str, deadline: float) -> None:
        """Repeat ``action`` on the hot region until ``deadline`` (the region of the moment:
        the other side may free and replace it)."""
        rng, slots = self.rng, self.run.shared.regions.slots
        backend = rng.choice(("mprotect", *WW_BACKENDS))  # (its fault handler races most)
        if (
            (action == "protect" and self.excluded("protect-vs-view"))
            or (action == "watch" and self.protecting(backend, False, True))
            or (action == "free" and self.excluded("watch-vs-free"))
        ):
            return
        while time.monotonic() < deadline:
            item = slots[0]
            if item is None or item.obj.closed:
                slots[0] = self.hot_region()
                continue
            region, label = item.obj, item.label
            if action == "write":
                self.call(f"{label}.numpy", bulk, region, True)
            elif action == "read":
                self.call(f"{label}.read", self.read_export, region)
            elif action == "protect":
                self.call(f"{label}.protect", region.protect, 0, region.size, rng.choice(("none", "r", "rw")))
            elif action == "watch":
                self.call(f"{label}.watch+close", self.watch_cycle, region, backend)
            elif action == "reset":
                watch = region.write_watch
                if watch is not None:
                    self.call(f"{label}.write_watch.dirty", watch.dirty, reset=True)
            elif action == "free":
                self.call(f"{label}.free", region.free)
            else:
                with self.run.lock:
                    if self.run.duel_forks <= 0:
                        return
                    self.run.duel_forks -= 1
                self.fork_child([region], [])

    def second(self, action: str, deadline: float) -> None:
        """The partner's side of a duel, in a thread of its own."""
        try:
            self.hammer(action, deadline)
        except Stop:
            pass
        except BaseException:
            self.run.fail(self.thread, "the fuzz driver itself failed:\n" + traceback.format_exc())

    def hot_region(self) -> Item | None:
        """A new region for the duels: large most of the time (large enough that calls on it
        release the GIL: races need two threads in C at once), watched half of the time
        (with a backend at random)."""
        rng = self.rng
        kwargs: dict[str, Any] = {"shared": rng.random() < 0.3}
        if rng.random() < 0.5:
            backend = rng.choice(WW_BACKENDS)
            kwargs.update(watch=True, backend="uffd-async" if self.protecting(backend, False, True) else backend)
        label = self.label("H")
        region = self.call(f"{label}=alloc", ntshim.alloc, rng.choice((16, BIG, BIG, 2 * BIG)) * P, **kwargs)
        if region is FAILED:
            return None
        if region.write_watch is not None:
            self.run.watches[region.write_watch.backend] += 1
        return Item(label, region, "region-shared" if kwargs["shared"] else "region")

    def read_export(self, region: Any) -> int:
        view = region.view() if self.rng.random() < 0.5 else memoryview(region)
        try:
            return bulk(view, False)
        finally:
            view.release()

    @staticmethod
    def watch_cycle(region: Any, backend: str) -> None:
        """Close the region's watch if it has one, then start one, reset it and close it."""
        existing = region.write_watch  # (read once: another thread may close it meanwhile)
        if existing is not None:
            existing.close()
        watch = ntshim.watch(region, backend=backend)
        try:
            watch.dirty(reset=True)
        finally:
            watch.close()

    # ---- exports -----------------------------------------------------------------------------

    def new_export(self) -> None:
        picked = self.region()
        if picked is None:
            return
        pools, item = picked
        region, rng = item.obj, self.rng
        which = rng.random()
        label = self.label("X")
        if which < 0.4:
            offset = self.offset(region.size)
            export = self.call(f"{label}={item.label}.view", region.view, offset, self.length(region.size, offset))
        elif which < 0.7:
            export = self.call(f"{label}=memoryview", memoryview, region)
        elif which < 0.9:
            export = self.call(f"{label}=numpy.frombuffer", numpy.frombuffer, region, numpy.uint8)
        else:
            export = self.call(f"{label}=c_char.from_buffer", ctypes.c_char.from_buffer, region)
        if export is not FAILED:
            pools.exports.put(rng, Item(label, export, "export"))

    def use_export(self) -> None:
        pools = self.pools()
        item = pools.exports.pick(self.rng)
        if item is None:
            self.new_export()
            return
        export, rng = item.obj, self.rng
        which = rng.random()
        if which < 0.4:
            self.call(f"{item.label}.write", self.poke, export)
        elif which < 0.6:
            self.call(f"{item.label}.numpy", bulk, export, rng.random() < 0.7)
        elif which < 0.8:
            if isinstance(export, memoryview):
                self.call(f"{item.label}.release", export.release)
        else:
            for slot, there in enumerate(pools.exports.slots):
                if there is item:
                    pools.exports.slots[slot] = None  # dropped: collected when no call uses it

    def poke(self, export: Any) -> None:
        """Read a byte of an export and write it back changed, if it is writable."""
        rng = self.rng
        if isinstance(export, numpy.ndarray):
            if export.size:
                i = rng.randrange(export.size)
                if export.flags.writeable:
                    export[i] = (int(export[i]) + 1) % 256
                else:
                    int(export[i])
        elif isinstance(export, memoryview):
            if export.nbytes:
                i = rng.randrange(export.nbytes)
                if export.readonly:
                    export[i]
                else:
                    export[i] = (export[i] + 1) % 256
        else:
            export.value = bytes([(export.value[0] + 1) % 256]) if export.value else b"\x01"

    # ---- buffers the user already has --------------------------------------------------------

    def new_buffer(self) -> None:
        rng = self.rng
        pools = self.pools()
        n = rng.choice((1, 7, P - 3, P, P + 1, 2 * P + 100, 3 * P)) if rng.random() < 0.9 else 40 * P
        which = rng.randrange(8)
        label = self.label("B")
        if which == 0:
            obj, kind = bytearray(n), "bytearray"
        elif which == 1:
            dtype = rng.choice((numpy.uint8, numpy.int32, numpy.float64))
            arr = numpy.zeros(max(n // numpy.dtype(dtype).itemsize, 1), dtype)
            cut = rng.random()
            if cut < 0.2:
                arr = arr[1:]
            elif cut < 0.3:
                arr = arr[::2]  # strided: watch() refuses it
            obj, kind = arr, "numpy"
        elif which == 2:
            obj, kind = (ctypes.c_ubyte * n)(), "ctypes"
        elif which == 3:
            obj, kind = array.array("B", bytes(n)), "array"
        elif which == 4:
            obj, kind = mmap.mmap(-1, n), "mmap-shared"
        elif which == 5:
            obj, kind = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE), "mmap-private"
        elif which == 6:
            fd = os.memfd_create("ntshim-fuzz")
            os.ftruncate(fd, n)
            obj, kind = mmap.mmap(fd, n), "mmap-memfd"
            os.close(fd)
        else:
            path = os.path.join(self.run.tmp, f"{label}.bin")
            with open(path, "wb+") as f:
                f.write(bytes(n))
                f.flush()
                obj, kind = mmap.mmap(f.fileno(), n), "mmap-file"
        item = Item(label, obj, kind)
        pools.buffers.put(rng, item)

    HEAP = frozenset(("bytearray", "numpy", "ctypes", "array"))

    def buffer(self) -> tuple[Pools, Item] | None:
        pools = self.pools()
        item = pools.buffers.pick(self.rng)
        if item is None:
            self.new_buffer()
            return None
        return pools, item

    def buffer_watch(self) -> None:
        picked = self.buffer()
        if picked is None:
            return
        pools, item = picked
        backend = self.ww_backend()
        if self.protecting(backend, item.kind in self.HEAP, pools.shared):
            return
        watch = self.call(f"{item.label}.watch", ntshim.watch, item.obj, backend=backend)
        if watch is not FAILED:
            self.run.watches[watch.backend] += 1
            LABELS[id(watch)] = f"W({item.label})", type(watch)
            item.watch, item.backend = watch, watch.backend  # the one there before is dropped

    def buffer_write(self) -> None:
        picked = self.buffer()
        if picked is None:
            return
        pools, item = picked
        obj, rng = item.obj, self.rng
        if isinstance(obj, numpy.ndarray):
            n = obj.size
            if not n:
                return
            i = rng.randrange(n)
            self.call(f"{item.label}.write", obj.__setitem__, i, (int(obj[i]) + 1) % 100)
        else:
            view = self.call(f"{item.label}.memoryview", memoryview, obj)
            if view is FAILED:
                return
            with view:
                flat = view.cast("B")
                with flat:
                    if not flat.nbytes:
                        return
                    i = rng.randrange(flat.nbytes)
                    flat[i] = (flat[i] + 1) % 256
        if pools.shared or item.watch is None or item.watch.closed:
            return
        # This thread alone uses the buffer: the watch must report the page.
        address = self.call(f"{item.label}.address", buffer_address, obj, i)
        if address is FAILED:
            return
        page = (address - item.watch.address) // P * P
        dirty = self.call(f"{item.label}.watch.dirty", item.watch.dirty, page, P)
        if dirty is not FAILED:
            self.expect(
                list(dirty.offsets) == [page],
                f"{item.label} ({item.kind}, {item.backend}): byte {i} at {address:#x} written, "
                f"watch {item.watch!r} says {dirty}",
            )

    def buffer_watch_calls(self) -> None:
        picked = self.buffer()
        if picked is None:
            return
        _pools, item = picked
        watch = item.watch
        if watch is None:
            self.buffer_watch()
            return
        self.watch_calls(f"W({item.label})", watch, watch.size)

    def buffer_mess(self) -> None:
        """What a user does to their own buffer: close the mmap, resize the bytearray, drop it."""
        picked = self.buffer()
        if picked is None:
            return
        pools, item = picked
        obj, rng = item.obj, self.rng
        which = rng.random()
        if which < 0.35 and isinstance(obj, mmap.mmap):
            self.call(f"{item.label}.close", obj.close)
        elif which < 0.55 and isinstance(obj, bytearray):
            if rng.random() < 0.5:
                self.call(f"{item.label}.extend", obj.extend, bytes(rng.randint(1, 2 * P)))
            else:
                self.call(f"{item.label}.clear", obj.clear)
        elif which < 0.75 and item.watch is not None:
            item.watch = None  # the watch is collected: its finalizer closes it
        elif which < 0.85:
            for slot, there in enumerate(pools.buffers.slots):
                if there is item:
                    pools.buffers.slots[slot] = None
        else:
            self.call(f"{item.label}.repr(watch)", repr, item.watch)

    # ---- DirtyPages built by hand ------------------------------------------------------------

    def dirty_pages(self) -> None:
        rng = self.rng
        if rng.random() < 0.85:
            granularity = rng.choice((P, P, P, 1, 8, 3))
        elif rng.random() < 0.5 or self.excluded("dirtypages-overflow"):
            granularity = rng.choice((0, 2**64, True, 1.5, None, "4096"))
        else:
            granularity = rng.choice((-1, -P, 2**63, 2**64 - 1))  # steps that wrap around 2**64
        if granularity == 0 and self.excluded("dirtypages-granularity"):
            granularity = P
        address = rng.choice((0, 0, 1 << 40, rng.getrandbits(64))) if rng.random() < 0.9 else self.junk()
        mode = rng.random()
        expected: list[int] | None = None
        if mode < 0.5 and type(granularity) is int and 0 < granularity < 1 << 20:
            # Well formed: ascending, disjoint runs of whole pages.
            values, cursor, expected = [], 0, []
            for _ in range(rng.randrange(6)):
                start = cursor + granularity * rng.randrange(4)
                end = start + granularity * rng.randint(1, 40)
                values += [start, end]
                expected += range(start, end, granularity)
                cursor = end + granularity
        elif mode < 0.8 or self.excluded("dirtypages-overflow"):
            # Small garbage: any order, overlapping, unaligned, but never decreasing in a
            # run (start <= end) and never large, so every expansion is small.
            values = []
            for _ in range(rng.randrange(6)):
                start = rng.randrange(16 * P)
                values += [start, start + rng.randrange(8 * P)]
        else:
            # Runs whose size arithmetic overflows: end before start, and runs near 2**64.
            values = []
            for _ in range(rng.randint(1, 3)):
                start = rng.choice((0, 1, P, 2**63, 2**64 - P))
                end = rng.choice((0, P - 1, 2**61, 2**61 + 8, 2**62, 2**63, 2**64 - 1, 2**64 - P, start - 1))
                values += [start, end % 2**64]
        runs: Any = array.array("Q", values).tobytes()
        if rng.random() < 0.1:
            runs = rng.choice((runs[:-1] or b"\0", runs + b"\0" * 8, bytearray(runs), "runs", None, list(values)))
            expected = None
        if type(address) is not int or not 0 <= address <= 2**64 - 1 - (values[-1] if values else 0):
            expected = None  # (an address the offsets cannot be added to may be refused)
        dirty = self.call("DirtyPages", DirtyPages, runs, address, granularity)
        if dirty is FAILED:
            self.expect(expected is None, f"DirtyPages refused well-formed runs {values[:8]}")
            return
        # Well-formed runs (expected is not None) answer every query, and exactly.
        which = rng.randrange(8)
        if which == 0:
            count = self.call("DirtyPages.len", len, dirty)
            if expected is not None:
                self.expect(count == len(expected), f"len(DirtyPages) = {count}, runs hold {len(expected)}")
        elif which == 1:
            offsets = self.call("DirtyPages.offsets", getattr, dirty, "offsets")
            if expected is not None:
                self.expect(offsets is not FAILED and offsets.tolist() == expected, "DirtyPages.offsets")
        elif which == 2:
            addresses = self.call("DirtyPages.addresses", getattr, dirty, "addresses")
            if expected is not None:
                wanted = [address + o for o in expected]
                self.expect(addresses is not FAILED and addresses.tolist() == wanted, "DirtyPages.addresses")
        elif which == 3:
            ranges = self.call("DirtyPages.ranges", dirty.ranges)
            if expected is not None:
                pairs = [v for pair in ranges for v in pair] if ranges is not FAILED else None
                self.expect(pairs == values, "DirtyPages.ranges disagree with the runs")
        elif which == 4:
            self.call("DirtyPages.iter", lambda: list(itertools.islice(dirty, 100)))
        elif which == 5:
            self.call("DirtyPages.bool", bool, dirty)
        elif which == 6:
            empty = DirtyPages(b"", 0, P)
            equal = self.call("DirtyPages.eq", lambda: (dirty == dirty, dirty == empty, dirty == 3))  # noqa: PLR0124
            if equal is not FAILED:
                same_as_empty = not dirty and dirty.address == 0 and dirty.granularity == P
                self.expect(equal == (True, same_as_empty, False), f"DirtyPages.eq answered {equal}")
        else:
            self.call("DirtyPages.repr", repr, dirty)

    # ---- aliases -----------------------------------------------------------------------------

    def alias_op(self) -> None:
        rng = self.rng
        kwargs: dict[str, Any] = {}
        if rng.random() < 0.2:
            kwargs["below"] = rng.choice((1 << 32, 1 << 31, P, 0, -1, 2**64, 1.5))
        elif rng.random() < 0.05:
            kwargs["address"] = rng.choice((1 << 16, 1 << 33, 2**47, P + 1, -P, "x"))
        which = rng.random()
        pools = self.pools()
        label = self.label("A")
        if which < 0.3:
            picked = self.region()
            if picked is None:
                return
            source = picked[1].obj
        elif which < 0.6:
            picked = self.buffer()
            if picked is None:
                return
            source = picked[1].obj
            if rng.random() < 0.2 and isinstance(source, mmap.mmap):
                source = self.call(f"{picked[1].label}[P:]", lambda s=source: memoryview(s)[P:])
                if source is FAILED:
                    return
        elif which < 0.75:
            self.refused_export()
            return
        elif which < 0.9:
            self.alias_fd(label, pools, kwargs)
            return
        else:
            source = rng.choice((-1, 99999, True, None, b"bytes", "str", 1.5))
        made = self.call(f"{label}=alias", alias, source, **kwargs)
        if made is not FAILED:
            pools.regions.put(rng, Item(label, made, "alias"))

    def alias_fd(self, label: str, pools: Pools, kwargs: dict[str, Any]) -> None:
        rng = self.rng
        which = rng.randrange(5)
        if which == 0:
            fd = os.memfd_create("ntshim-fuzz-alias")
            os.ftruncate(fd, rng.choice((1, P, 3 * P + 1)))
        elif which == 1:
            fd = os.memfd_create("ntshim-fuzz-empty")
        elif which == 2:
            fd = os.open("/dev/zero", os.O_RDWR)
        elif which == 3:
            fd = os.open(self.run.tmp, os.O_RDONLY)
        else:
            read_end, fd = os.pipe()
            os.close(read_end)
        try:
            made = self.call(f"{label}=alias(fd)", alias, fd, **kwargs)
        finally:
            os.close(fd)
        if made is not FAILED:
            pools.regions.put(rng, Item(label, made, "alias"))

    def refused_export(self) -> None:
        """alias() refuses private memory, uffd-sync refuses a file mapping: the refusal must
        let the source go at once (users close their mmap in the except block)."""
        if self.rng.random() < 0.5:
            mm = mmap.mmap(-1, 2 * P, flags=mmap.MAP_PRIVATE)
            self.call("alias(private mmap), close", self.refused_then_close, mm, alias, mm)
        else:
            with open(os.path.join(self.run.tmp, self.label("F")), "wb+") as f:
                f.truncate(2 * P)
                mm = mmap.mmap(f.fileno(), 2 * P)
            self.call(
                "watch(file mmap, uffd-sync), close", self.refused_then_close, mm, ntshim.watch, mm, backend="uffd-sync"
            )

    def refused_then_close(self, mm: mmap.mmap, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            function(*args, **kwargs)
        except (ValueError, BackendUnavailable):
            if not self.excluded("refused-export"):
                try:
                    mm.close()
                except BufferError as e:
                    raise Broken(f"the refused source stays exported while the exception lives: {e}") from None
            raise
        raise Broken(f"{function.__name__} accepted what it documents it refuses")

    # ---- sync objects -------------------------------------------------------------------------

    def new_sync(self) -> None:
        rng = self.rng
        pools = self.pools()
        backend = self.sync_backend()
        kwargs: dict[str, Any] = {"backend": backend}
        if rng.random() < 0.5:
            kwargs["name"] = self.name()
        label = self.label("S")

        def u32() -> Any:
            if rng.random() < 0.85:
                return rng.choice((0, 1, 2, 5, U32))
            return rng.choice((-1, U32 + 1, True, 1.5, None, "3"))

        which = rng.random()
        if which < 0.3:
            obj = self.call(f"{label}=Semaphore", ntshim.sync.Semaphore, u32(), u32(), **kwargs)
        elif which < 0.55:
            if rng.random() < 0.5:
                kwargs["count"] = rng.choice((1, 1, 2, U32)) if rng.random() < 0.9 else u32()
                if rng.random() < 0.3:
                    kwargs["owner"] = rng.choice((1, threading.get_native_id(), U32, 0, -1, 2**40))
            obj = self.call(f"{label}=Mutex", ntshim.sync.Mutex, **kwargs)
        elif which < 0.65:
            obj = self.call(f"{label}=Lock", ntshim.sync.Lock, **kwargs)
        elif which < 0.85:
            manual = rng.random() < 0.5 if rng.random() < 0.95 else rng.choice((1, None))
            obj = self.call(f"{label}=Event", ntshim.sync.Event, manual=manual, signaled=rng.random() < 0.5, **kwargs)
        else:
            kind = rng.choice((ntshim.sync.Semaphore, ntshim.sync.Mutex, ntshim.sync.Event, ntshim.sync.Lock))
            obj = self.call(f"{label}={kind.__name__}.open", kind.open, self.name(), backend=backend)
        if obj is not FAILED:
            self.run.sync_objects[obj.backend] += 1
            pools.sync.put(rng, Item(label, obj, type(obj).__name__))

    def sync_item(self) -> Item | None:
        item = self.pools().sync.pick(self.rng)
        if item is None:
            self.new_sync()
        return item

    def sync_op(self) -> None:
        item = self.sync_item()
        if item is None:
            return
        obj, rng, label = item.obj, self.rng, item.label
        which = rng.random()
        if which < 0.1:
            self.call(f"{label}.close", obj.close)
        elif which < 0.2:
            self.call(f"{label}.read", obj.locked if isinstance(obj, ntshim.sync.Lock) else obj.read)
        elif which < 0.25:
            self.call(f"{label}.repr", repr, obj)
        elif which < 0.32:
            copy = self.call(f"{label}.pickle", lambda: pickle.loads(pickle.dumps(obj)))
            if copy is not FAILED:
                self.pools().sync.put(rng, Item(self.label("S"), copy, type(copy).__name__))
        elif which < 0.45:
            self.protocol_op(obj, label)
        elif isinstance(obj, ntshim.sync.Semaphore):
            n = rng.choice((1, 1, 2, U32)) if rng.random() < 0.9 else rng.choice((0, -1, U32 + 1, True, None))
            self.call(f"{label}.release", obj.release, n)
        elif isinstance(obj, ntshim.sync.Lock):  # (by any thread: another thread's hold included)
            self.call(f"{label}.release", _release_unless_unheld, obj)
        elif isinstance(obj, ntshim.sync.Mutex):
            if rng.random() < 0.7:
                owner = None if rng.random() < 0.7 else rng.choice((1, 0, -1, U32, U32 + 1, True))
                self.call(f"{label}.unlock", obj.unlock, owner)
            else:
                state = self.call(f"{label}.read", obj.read) if rng.random() < 0.5 else FAILED
                owner = state[0] if state and state[0] else rng.choice((threading.get_native_id(), 1, 0, -1, None))
                self.call(f"{label}.kill", obj.kill, owner)
        else:
            op = rng.choice(("set", "set", "reset", "pulse"))
            self.call(f"{label}.{op}", getattr(obj, op))

    def protocol_op(self, obj: Any, label: str) -> None:
        """threading's calls, never waiting long: a timeout or a non-blocking acquire."""
        rng = self.rng
        if isinstance(obj, ntshim.sync.Event):
            op = rng.choice(("is_set", "clear", "wait"))
            if op != "wait":
                self.call(f"{label}.{op}", getattr(obj, op))
                return
            timeout = rng.choice((0, 0.001, 0.01, -1)) if rng.random() < 0.9 else rng.choice(("1", float("nan"), True))
            self.call(f"{label}.wait", obj.wait, timeout)
            return
        if rng.random() < 0.4:
            self.call(f"{label}.release", _release_unless_unheld, obj)
            return
        if rng.random() < 0.5:
            args: tuple[Any, ...] = (False,)
        else:
            args = (True, rng.choice((0, 0.001, 0.01)) if rng.random() < 0.9 else rng.choice((-2, "1", float("nan"))))
        if self.call(f"{label}.acquire", obj.acquire, *args) is True and rng.random() < 0.7:
            self.call(f"{label}.release", _release_unless_unheld, obj)

    def sync_wait(self) -> None:
        rng = self.rng
        pools = self.pools()
        picked = (pools.sync.pick(rng) for _ in range(rng.randint(1, 4)))
        objects: Any = [item.obj for item in picked if item is not None]
        if not objects:
            self.new_sync()
            return
        wait_all = rng.random() < 0.35
        kwargs: dict[str, Any] = {}
        if rng.random() < 0.2:
            kwargs["owner"] = rng.choice((1, threading.get_native_id(), U32, 0, -1, "me"))
        if rng.random() < 0.15:
            events = [i.obj for i in pools.sync.items() if isinstance(i.obj, ntshim.sync.Event)]
            kwargs["alert"] = rng.choice(events) if events and rng.random() < 0.8 else rng.choice((objects[0], 3))
        timeout: Any = rng.choice((0, 0, 0.001, 0.005, 0.02))
        forever = False
        if not wait_all and rng.random() < 0.1:
            # A wait that may last forever, made to end: a signaled semaphore of its own
            # joins the objects, so the wait takes it if nothing before it is signaled.
            backend = objects[0].backend if not objects[0].closed else None
            sentinel = self.call("sentinel=Semaphore", ntshim.sync.Semaphore, 1, 1, backend=backend)
            if sentinel is FAILED:
                return
            objects.append(sentinel)
            forever = True
            timeout = rng.choice((None, float("inf"), 1e10, 2**63, 10**30))
            if isinstance(timeout, int) and self.excluded("server-huge-timeout"):
                timeout = None
        elif rng.random() < 0.1:
            timeout = rng.choice((-1, float("nan"), "0", True, -float("inf"), 1e300, 10**400))
        if rng.random() < 0.05:
            objects = rng.choice((tuple(objects), objects * 40, [*objects, "x"], "abc", iter(objects), []))
            if forever and not objects:  # the sentinel is gone, and an alert alone is a real wait
                timeout = 0.01
        function = ntshim.sync.wait_all if wait_all else ntshim.sync.wait_any
        self.call("wait_all" if wait_all else "wait_any", function, objects, timeout, **kwargs)

    def sync_async(self) -> None:
        """Waits from asyncio (the dispatcher thread), never long: a timeout, or a cancellation
        that races with the hand-over.  A mutex the wait takes, its task releases."""
        rng = self.rng
        picked = (self.pools().sync.pick(rng) for _ in range(rng.randint(1, 3)))
        objects = [item.obj for item in picked if item is not None]
        if not objects:
            return
        timeout = rng.choice((0, 0.001, 0.01, 0.05))
        cancel_after = rng.choice((None, None, 0, 0.001, 0.005))
        wait_all = rng.random() < 0.3  # (an object named twice: ValueError)
        wait = ntshim.sync.wait_all_async if wait_all else ntshim.sync.wait_any_async

        async def take() -> int:
            index = await wait(objects, timeout)
            for obj in objects if wait_all else [objects[index]]:
                if isinstance(obj, (ntshim.sync.Mutex, ntshim.sync.Lock)) and rng.random() < 0.9:
                    # (another thread may have released a Lock meanwhile.)  Else the task ends
                    # holding it: a mutex is abandoned, a lock stays held.
                    _release_unless_unheld(obj)
            return index

        async def walk() -> Any:
            task = asyncio.ensure_future(take())
            if cancel_after is not None:
                await asyncio.sleep(cancel_after)
                task.cancel()
            try:
                return await task
            except asyncio.CancelledError:
                return "cancelled"

        self.call("wait_all_async" if wait_all else "wait_any_async", asyncio.run, walk())

    def sync_invariants(self) -> None:
        """On unnamed objects only this thread knows, the state machine answers exactly."""
        if self.run.arena_damaged:
            return  # damaged state may read back as anything (it must still not crash)
        rng = self.rng
        backend = rng.choice(SYNC_BACKENDS)
        sem = self.call("sem=Semaphore", ntshim.sync.Semaphore, 0, 5, backend=backend)
        if sem is FAILED:
            return
        with contextlib.closing(sem):
            released = self.call("sem.release", sem.release, 2)
            taken = self.call("wait_any", ntshim.sync.wait_any, [sem], 0)
            state = self.call("sem.read", sem.read)
            if FAILED not in (released, taken, state) and not self.run.arena_damaged:
                answers = released, taken, state
                self.expect(answers == (0, 0, (1, 5)), f"{backend} semaphore: {answers}")
        event = self.call("event=Event", ntshim.sync.Event, manual=True, backend=backend)
        if event is FAILED:
            return
        with contextlib.closing(event):
            answers = (
                self.call("event.set", event.set),
                self.call("wait_any", ntshim.sync.wait_any, [event], 0),
                self.call("event.read", event.read),
                self.call("event.reset", event.reset),
                self.call("event.read", event.read),
            )
            if FAILED not in answers and not self.run.arena_damaged:
                self.expect(answers == (False, 0, (True, True), True, (True, False)), f"{backend} event: {answers}")
        mutex = self.call("mutex=Mutex", ntshim.sync.Mutex, count=1, backend=backend)
        if mutex is FAILED:
            return
        with contextlib.closing(mutex):
            me = threading.get_native_id()
            state = self.call("mutex.read", mutex.read)
            previous = self.call("mutex.unlock", mutex.unlock)
            after = self.call("mutex.read", mutex.read)
            if FAILED not in (state, previous, after) and not self.run.arena_damaged:
                answers = state, previous, after
                self.expect(answers == ((me, 1), 1, (0, 0)), f"{backend} mutex: {answers}")

    # ---- win32 ------------------------------------------------------------------------------

    def win32_address(self) -> Any:
        """An address in (or just past the start of) an allocation the walk made, or one where
        nothing of this process can be."""
        rng = self.rng
        allocations = tuple(self.run.win32_allocations)
        if allocations and rng.random() < 0.8:
            return rng.choice(allocations) + rng.choice((0, 0, 0, P, 2 * P, 1, 1 << 16))
        return rng.choice((None, 0, 1, P, 1 << 16, 2**47 - P, 2**47, 2**64 - 1, -1, ctypes.c_void_p(0), "x"))

    def win32_call(self, label: str, failure: object, function: Callable[..., Any], *args: Any) -> Any:
        """A Win32 function: when it returns its failure value, it has set this thread's
        last error (GetLastError), as every Win32 function documents."""
        w32.SetLastError(0)
        result = self.call(label, function, *args)
        if type(result) is type(failure) and result == failure:
            self.expect(w32.GetLastError() != 0, f"{label} returned {failure!r} without setting the last error")
        return result

    def win32_memory(self) -> None:
        """Win32 memory calls.  Every one goes through a lock of this driver (ntshim.win32
        serializes them anyway): an address a thread took from the list must not be freed
        and handed out to another thread's allocation before it uses it, or the walk would
        free memory it is writing itself."""
        rng = self.rng
        which = rng.random()
        with self.run.win32_memory:
            if which < 0.25:
                types = rng.choice(
                    (
                        w32.MEM_RESERVE | w32.MEM_COMMIT,
                        w32.MEM_RESERVE,
                        w32.MEM_COMMIT,
                        w32.MEM_RESERVE | w32.MEM_COMMIT | w32.MEM_WRITE_WATCH,
                        w32.MEM_RESET,
                        w32.MEM_RESERVE | w32.MEM_WRITE_WATCH,
                        w32.MEM_TOP_DOWN | w32.MEM_COMMIT,
                        0,
                        rng.getrandbits(32),
                    )
                )
                protect = rng.choice(
                    (
                        w32.PAGE_READWRITE,
                        w32.PAGE_READONLY,
                        w32.PAGE_NOACCESS,
                        w32.PAGE_EXECUTE_READ,
                        w32.PAGE_READWRITE | w32.PAGE_GUARD,
                        w32.PAGE_WRITECOPY,
                        0,
                        rng.getrandbits(32),
                    )
                )
                address = None if rng.random() < 0.6 else self.win32_address()
                size = rng.choice((P, 16 * P, 1 << 16, 1, 0, 2**47, 2**64, -1, True))
                base = self.win32_call("VirtualAlloc", 0, w32.VirtualAlloc, address, size, types, protect)
                if base and types & w32.MEM_RESERVE:
                    with self.run.lock:
                        self.run.win32_allocations.append(base)
            elif which < 0.4:
                address = self.win32_address()
                free_type = rng.choice((w32.MEM_RELEASE, w32.MEM_RELEASE, w32.MEM_DECOMMIT, 0, w32.MEM_RESET))
                size = 0 if free_type == w32.MEM_RELEASE and rng.random() < 0.8 else rng.choice((P, 0, 1, 1 << 20))
                freed = self.win32_call("VirtualFree", False, w32.VirtualFree, address, size, free_type)
                if freed and free_type == w32.MEM_RELEASE and address in self.run.win32_allocations:
                    with self.run.lock:
                        self.run.win32_allocations.remove(address)
            elif which < 0.55:
                old = rng.choice((ctypes.c_uint32(), ctypes.c_uint32(), None, 5))
                pointer = ctypes.byref(old) if isinstance(old, ctypes.c_uint32) and rng.random() < 0.8 else old
                protect = rng.choice(
                    (
                        w32.PAGE_READWRITE,
                        w32.PAGE_READONLY,
                        w32.PAGE_NOACCESS,
                        w32.PAGE_EXECUTE,
                        w32.PAGE_READWRITE | w32.PAGE_NOCACHE,
                        rng.getrandbits(32),
                    )
                )
                size = rng.choice((P, 1, 2 * P, 0))
                address = self.win32_address()
                self.win32_call("VirtualProtect", False, w32.VirtualProtect, address, size, protect, pointer)
            elif which < 0.7:
                info = self.win32_call("VirtualQuery", None, w32.VirtualQuery, self.win32_address())
                if info:
                    self.expect(info.RegionSize > 0 or info.State == w32.MEM_FREE, "VirtualQuery: empty region")
            elif which < 0.85:
                length = rng.randint(1, 8)
                addresses = (ctypes.c_void_p * length)()
                count = ctypes.c_uint64(rng.randint(0, length))
                granularity = ctypes.c_uint32()
                flags = rng.choice((0, w32.WRITE_WATCH_FLAG_RESET, 2))
                result = self.win32_call(
                    "GetWriteWatch",
                    U32,
                    w32.GetWriteWatch,
                    flags,
                    self.win32_address(),
                    rng.choice((P, 16 * P, 1 << 16, 0)),
                    addresses if rng.random() < 0.95 else None,
                    ctypes.byref(count),
                    ctypes.byref(granularity) if rng.random() < 0.95 else None,
                )
                if result == 0:
                    self.expect(count.value <= length and granularity.value == P, "GetWriteWatch: count or granularity")
            elif which < 0.92:
                size = rng.choice((P, 1 << 16, 0, 1))
                self.win32_call("ResetWriteWatch", U32, w32.ResetWriteWatch, self.win32_address(), size)
            else:
                self.win32_watch_invariant()

    def win32_watch_invariant(self) -> None:
        """A page written into fresh write-watched memory is what GetWriteWatch reports."""
        rng = self.rng
        size = 4 * P
        kind = w32.MEM_RESERVE | w32.MEM_COMMIT | w32.MEM_WRITE_WATCH
        base = self.call("VirtualAlloc(watch)", w32.VirtualAlloc, None, size, kind, w32.PAGE_READWRITE)
        if not base:
            return
        try:
            page = rng.randrange(4)
            ctypes.memset(base + page * P + rng.randrange(P), 1 + rng.randrange(255), 1)
            addresses = (ctypes.c_void_p * 4)()
            count, granularity = ctypes.c_uint64(4), ctypes.c_uint32()
            result = self.call(
                "GetWriteWatch(reset)",
                w32.GetWriteWatch,
                w32.WRITE_WATCH_FLAG_RESET,
                base,
                size,
                addresses,
                ctypes.byref(count),
                ctypes.byref(granularity),
            )
            if result != FAILED:
                got = [addresses[i] for i in range(count.value)]
                self.expect((result, got) == (0, [base + page * P]), f"GetWriteWatch after a write: {result}, {got}")
        finally:
            self.call("VirtualFree(watch)", w32.VirtualFree, base, 0, w32.MEM_RELEASE)

    def win32_sync(self) -> None:
        rng = self.rng
        handles = self.run.win32_handles
        which = rng.random()

        def handle() -> Any:
            known = tuple(handles)
            if known and rng.random() < 0.85:
                return rng.choice(known)
            return rng.choice((0, None, -1, 4, 0xFFFF, 2**64 - 1, "h", ctypes.c_void_p(8)))

        def wname() -> Any:
            if rng.random() < 0.4:
                return None
            name = self.name()
            if not isinstance(name, str):
                return name
            return rng.choice((name, f"Local\\{name}", f"Global\\{name}", "a\\b", "Local\\", ""))

        made = FAILED
        if which < 0.1:
            manual, signaled = rng.randrange(2), rng.randrange(2)
            made = self.win32_call("CreateEventW", 0, w32.CreateEventW, None, manual, signaled, wname())
        elif which < 0.18:
            made = self.win32_call("CreateMutexW", 0, w32.CreateMutexW, None, rng.randrange(2), wname())
        elif which < 0.26:
            initial, maximum = rng.choice((0, 1, 5, -1, 2**31)), rng.choice((1, 5, 0, -1, 2**32 + 1))
            made = self.win32_call("CreateSemaphoreW", 0, w32.CreateSemaphoreW, None, initial, maximum, wname())
        elif which < 0.33:
            opener = rng.choice((w32.OpenEventW, w32.OpenMutexW, w32.OpenSemaphoreW))
            access = rng.choice(
                (w32.SYNCHRONIZE, w32.GENERIC_ALL, w32.MAXIMUM_ALLOWED, w32.EVENT_ALL_ACCESS, 0, 1 << 31)
            )
            made = self.win32_call(opener.__name__, 0, opener, access, rng.randrange(2), wname())
        elif which < 0.45:
            h = handle()
            closed = self.win32_call("CloseHandle", False, w32.CloseHandle, h)
            if closed and h in handles:
                with self.run.lock:
                    if h in handles:
                        handles.remove(h)
        elif which < 0.6:
            op = rng.choice((w32.SetEvent, w32.ResetEvent, w32.PulseEvent, w32.ReleaseMutex))
            self.win32_call(op.__name__, False, op, handle())
        elif which < 0.68:
            previous = ctypes.c_int32()
            amount, out = rng.choice((1, 2, 0, -1, 2**31)), rng.choice((ctypes.byref(previous), None, previous))
            self.win32_call("ReleaseSemaphore", False, w32.ReleaseSemaphore, handle(), amount, out)
        elif which < 0.84:
            self.win32_call("WaitForSingleObject", U32, w32.WaitForSingleObject, handle(), rng.choice((0, 0, 1, 5)))
        else:
            count = rng.randint(1, 4)
            array_type = ctypes.c_void_p * count
            values = array_type(*[h if isinstance(h, int) and h >= 0 else 0 for h in (handle() for _ in range(count))])
            number = count if rng.random() < 0.9 else rng.choice((0, count + 1, 65, -1))
            wait_all, milliseconds = rng.randrange(2), rng.choice((0, 1, 5))
            function = w32.WaitForMultipleObjects
            self.win32_call("WaitForMultipleObjects", U32, function, number, values, wait_all, milliseconds)
        if made:
            with self.run.lock:
                handles.append(made)
                oldest = handles.pop(0) if len(handles) > 64 else None
            if oldest is not None:
                self.call("CloseHandle(oldest)", w32.CloseHandle, oldest)

    # ---- processes and the arena --------------------------------------------------------------

    def fork_op(self) -> None:
        """fork() while the other threads work; the child queries every watch and sync
        object it inherited.  At most FORKS_PER_RUN, spread over the run (the k-th waits
        for the k-th part of the time budget)."""
        run = self.run
        with run.lock:
            due = run.start + (FORKS_PER_RUN - run.forks) * run.seconds / (FORKS_PER_RUN + 1)
            if run.forks <= 0 or time.monotonic() < due:
                return
            run.forks -= 1
        every = [run.shared, *(walker.own for walker in run.walkers)]
        watches = [i.obj for pools in every for i in pools.regions.items()]
        watches += [i.watch for pools in every for i in pools.buffers.items() if i.watch is not None]
        self.fork_child(watches, [i.obj for pools in every for i in pools.sync.items()])

    def fork_child(self, watches: list[Any], objects: list[Any]) -> None:
        """Fork a child that calls dirty() on ``watches`` and read() on ``objects``, then
        exits.  It must neither crash nor hang."""
        run = self.run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "fork() of a multi-threaded process"
            pid = self.call("os.fork", os.fork)
        if pid == 0:
            # A child that hangs must not outlive a parent that is gone (crashed, or killed
            # by the test's bound) before it could kill the child itself.
            signal.alarm(int(FORK_BOUND) + 4)
            os._exit(in_child(watches, objects))
        if pid is FAILED:
            return
        deadline = time.monotonic() + FORK_BOUND
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                run.fail(self.thread, f"a fork child (pid {pid}) hung in its ntshim calls for {FORK_BOUND} s")
                raise Stop
            time.sleep(0.001)
        if os.WIFSIGNALED(status):
            run.fail(self.thread, f"a fork child died of signal {os.WTERMSIG(status)}")
            raise Stop
        if os.WEXITSTATUS(status):
            run.fail(self.thread, f"a fork child failed (status {os.WEXITSTATUS(status)}; its stderr says why)")
            raise Stop

    def arena_damage(self) -> None:
        """Another process of the user writes garbage into the futex arena, or truncates it:
        every later call must still return or fail cleanly."""
        run, rng = self.run, self.rng
        if not run.damage_arena or not run.late():
            return
        paths = glob.glob(os.path.join(os.environ[ROOT_ENV_VAR], "ntshim-*", "*.arena"))
        if not paths:
            return
        path = paths[0]
        words = numpy.fromfile(path, numpy.uint64)
        if not len(words):
            return  # truncated to nothing already
        run.arena_damaged = True
        if rng.random() < 0.05:
            self.call("arena.truncate", os.truncate, path, 8 * rng.randrange(len(words)))
            return
        # Change a few 8-byte words that are in use (indexes, counts, links, names: whatever
        # the layout), to what damaged state looks like: zeros, all ones, random bits.
        used = numpy.flatnonzero(words)
        fd = os.open(path, os.O_WRONLY)
        try:
            for _ in range(rng.randint(1, 4)):
                at = 8 * int(used[rng.randrange(len(used))]) if len(used) else 8 * rng.randrange(len(words))
                value = rng.choice((0, 2**64 - 1, 0xFFFFFFFF, 1 << 31, rng.getrandbits(64), rng.getrandbits(16)))
                self.call(f"arena.scribble@{at:#x}", os.pwrite, fd, value.to_bytes(8, "little"), at)
        finally:
            os.close(fd)

    def misc(self) -> None:
        rng = self.rng
        which = rng.randrange(5)
        if which == 0:
            self.call("ntshim.backends", ntshim.backends)
        elif which == 1:
            self.call("sync.backends", ntshim.sync.backends)
        elif which == 2:
            self.call(
                "watch(junk)",
                ntshim.watch,
                rng.choice((b"bytes", 5, None, memoryview(b"ro"), bytearray(), "s")),
                backend=self.ww_backend(),
            )
        elif which == 3:
            self.call("SetLastError", w32.SetLastError, rng.choice((0, 5, 2**40, -1, "x")))
            self.call("GetLastError", w32.GetLastError)
        else:
            picked = self.region()
            if picked is not None:
                self.call("pickle.dumps", pickle.dumps, picked[1].obj)


def bulk(buffer: Any, write: bool) -> int:
    """Add 1 to every byte of ``buffer`` (or sum them) in numpy, which releases the GIL for
    the loop: the accesses run while other threads protect, watch, reset or close the memory."""
    array = numpy.frombuffer(buffer, numpy.uint8)
    if write:
        numpy.add(array, 1, out=array)
        return 0
    return int(array.sum())


def canonical(protect: str) -> str:
    """How Region.protection() spells a protection given as ``protect``."""
    return ntshim.memory.protection.format(ntshim.memory.protection.parse(protect))


def buffer_address(obj: Any, index: int) -> int:
    """Address of byte ``index`` (of the flattened elements: element ``index`` for numpy)."""
    if isinstance(obj, numpy.ndarray):
        return obj.__array_interface__["data"][0] + index * obj.strides[0]
    view = memoryview(obj).cast("B")
    try:
        c = (ctypes.c_char * 1).from_buffer(view)
        address = ctypes.addressof(c)
        del c
    finally:
        view.release()
    return address + index


def in_child(watches: list[Any], objects: list[Any]) -> int:
    """What a fork child does: query everything it inherited (a region: its watch, if it has
    one in the child).  Its exit status."""
    watches = [watch.write_watch if isinstance(watch, ntshim.Region) else watch for watch in watches]
    calls = [(watch.dirty, dropped_at_fork(watch)) for watch in watches if watch is not None]
    calls += [(obj.locked if isinstance(obj, ntshim.sync.Lock) else obj.read, False) for obj in objects]
    for call, may_refuse in calls:
        try:
            call()
        except ALLOWED:
            pass
        except RuntimeError as e:
            if not may_refuse:
                os.write(2, f"fork child: {call.__qualname__}() raised {e!r}\n".encode())
                return 3
        except BaseException as e:
            os.write(2, f"fork child: {call.__qualname__}() raised {e!r}\n".encode())
            return 3
    return 0


def dropped_at_fork(watch: Any) -> bool:
    """Whether a watch is one the kernel drops in a fork child, which then raises
    RuntimeError as documented (WriteWatch.dirty)."""
    return not backend_class(watch.backend).survives_fork


#: Operations and their weights (calls per hundred, roughly).
OPS: tuple[tuple[str, float], ...] = (
    ("new_region", 5),
    ("region_protect", 7),
    ("region_query", 4),
    ("region_dirty", 8),
    ("region_free", 2),
    ("region_watch", 3),
    ("region_write", 10),
    ("duel", 0.75),
    ("new_export", 4),
    ("use_export", 5),
    ("new_buffer", 3),
    ("buffer_watch", 4),
    ("buffer_write", 8),
    ("buffer_watch_calls", 6),
    ("buffer_mess", 2),
    ("dirty_pages", 4),
    ("alias_op", 2),
    ("new_sync", 4),
    ("sync_op", 8),
    ("sync_wait", 6),
    ("sync_async", 2),
    ("sync_invariants", 1),
    ("win32_memory", 4),
    ("win32_sync", 4),
    ("fork_op", 1),
    ("arena_damage", 0.3),
    ("misc", 1),
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="time budget of the walk (default 5)")
    parser.add_argument("--max-calls", type=int, default=10**9, help="operations per thread at most")
    parser.add_argument("--threads", type=int, default=0, help="walking threads (default: the seed chooses)")
    parser.add_argument("--ring", default=None, help="file for the ring of last calls (default: a temporary file)")
    parser.add_argument("--root", default=None, help="NTSHIM_SYNC_ROOT of the run (default: a temporary directory)")
    parser.add_argument(
        "--exclude", default="", help="comma-separated known defects to avoid: " + ", ".join(EXCLUSIONS)
    )
    args = parser.parse_args(argv)
    args.exclude = [name for name in args.exclude.split(",") if name]
    unknown = set(args.exclude) - set(EXCLUSIONS)
    if unknown:
        parser.error(f"unknown exclusions {sorted(unknown)}; known: {', '.join(EXCLUSIONS)}")
    if args.ring is None:
        fd, args.ring = tempfile.mkstemp(prefix="ntshim-fuzz-ring-")
        os.close(fd)
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    faulthandler.enable(all_threads=True)
    # Nothing here needs much memory; a bound turns a runaway request into MemoryError
    # instead of trouble for the rest of the machine.
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
    run = Run(args)
    # The sync objects live in a namespace of this run alone (the arena may be damaged on
    # purpose), whose server leaves soon after the run.
    root = args.root
    if root is None:
        root = tempfile.mkdtemp(prefix="ntsf", dir="/dev/shm")
        atexit.register(shutil.rmtree, root, True)  # registered first: runs after ntshim's own exit handlers
    os.environ.update({ROOT_ENV_VAR: root, LINGER_ENV_VAR: "0.2", SYNC_ENV_VAR: run.sync_default})
    if run.ww_default:
        os.environ[WW_ENV_VAR] = run.ww_default
    else:
        os.environ.pop(WW_ENV_VAR, None)
    sys.setswitchinterval(run.switch_interval)

    def unraisable(info: Any) -> None:
        # An exception in a finalizer (a watch, region or sync object collected) is lost to
        # its caller: here it fails the run.
        exception = "".join(traceback.format_exception(info.exc_type, info.exc_value, info.exc_traceback))
        if "fork-hook-race" in run.exclude and "before_fork" in exception:
            return
        run.fail(-1, f"{info.err_msg or 'Exception ignored in'} {short(info.object)}:\n{exception}")

    sys.unraisablehook = unraisable
    # A hang anywhere (a lock held in a signal handler, a wait that never ends) shows every
    # thread's stack and ends the process.
    faulthandler.dump_traceback_later(run.seconds + HANG_BOUND, exit=True)
    print(
        f"fuzz seed {run.seed}: {run.threads} threads, switch interval {run.switch_interval}, "
        f"{run.seconds} s, default backends {run.ww_default or 'automatic'} and {run.sync_default}, "
        f"arena damage {'on' if run.damage_arena else 'off'}, forks {run.forks}, "
        f"excluded {sorted(run.exclude) or 'nothing'}; ring {args.ring}, sync root {root}",
        flush=True,
    )
    run.walkers = [Walker(run, t) for t in range(run.threads)]
    threads = [threading.Thread(target=w.walk, name=f"walker-{w.thread}", daemon=True) for w in run.walkers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(run.deadline + HANG_BOUND - time.monotonic(), 0))
        if thread.is_alive():
            sys.stderr.write(f"FUZZ FAILURE (seed {run.seed}): {thread.name} did not finish (hang)\n")
            faulthandler.dump_traceback(all_threads=True)
            os._exit(2)
    summary = {
        "seed": run.seed,
        "calls": sum(run.outcomes.values()),
        "seconds": round(time.monotonic() - run.start, 2),
        "watches": dict(run.watches),
        "sync_objects": dict(run.sync_objects),
        "outcomes": dict(sorted(run.outcomes.items())),
        "failures": len(run.failures),
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    # Leave the objects to the interpreter's exit: finalizers of live watches, regions and
    # sync objects run then, and must neither crash, nor hang, nor raise (the test reads
    # stderr for failures reported from there).
    faulthandler.dump_traceback_later(HANG_BOUND, exit=True)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
