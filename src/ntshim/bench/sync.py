"""The two micro-benchmarks NT synchronization implementations are judged by (the msync
README's), for every sync backend, Python's own tools, and the raw mechanisms, in one run.

- *contended wait*: two sides share one semaphore (count 1, maximum 1); each loops
  wait → release until ``iterations`` acquisitions are done in total.  Figure: ns per
  acquisition (elapsed / iterations).
- *zigzag*: two auto-reset events A and B; side 1 sets A and waits on B, side 2 waits on A
  and sets B, for ``seconds``.  Figure: ns per round trip (seconds / round trips).
- *uncontended* (beyond the msync README: what a program does most): one side alone takes a
  free lock and releases it, ``iterations`` times; ``with lock:`` on ntshim's, threading's
  and multiprocessing's ``Lock``, the semaphore of the floors and native loops.  Figure: ns
  per acquire + release.
- *uncontended-rlock*, *-semaphore*, *-event*: the same for the other objects from Python
  (``with rlock:``, ``with semaphore:``, ``event.set(); event.wait(0)`` on a manual event),
  ntshim's futex backend beside threading's and multiprocessing's (no floors: the C loops'
  uncontended semaphore is the floor of them all; no server: a round trip, as its Lock shows).
- *oversubscribed*: ``sides`` sides, more than the CPUs, share the semaphore as in
  *contended* until ``iterations`` acquisitions in total; each wait is timed.  Figures: ns per
  acquisition, and the median and 99th percentile of the waits (how waiting degrades when
  waiters outnumber the CPUs).

Sides are two threads, or with ``processes`` two processes (named objects, opened by name
in the children); the uncontended side runs in this process either way.  Subjects:

- ``floor:futex``, ``floor:futex-fifo``, ``floor:eventfd``: the raw mechanism driven by
  minimal C (``_bench/sync.c``, in the ``ntshim._bench`` extension).  ``floor:futex`` lets a releaser take the unit back
  at once (what ``sem_t`` does); ``floor:futex-fifo`` hands it to the queued waiter as NT
  objects must, so each contended acquisition costs a context switch.  ``floor:eventfd``
  is what the esync design costs at best (ntshim has no eventfd backend: docs/sync.md).
- ``native:futex``: the same C loops through ntshim's futex backend (what a C caller gets).
- ``futex``, ``server``: the public Python API, ``wait_any`` / ``release`` / ``set`` (what
  a Python caller gets).
- ``threading`` and ``multiprocessing``: Python's nearest tools (``Semaphore``; ``Event``
  waited on and cleared as an auto-reset event).

docs/benchmarks.md has the details and how to read the results.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import multiprocessing
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import _bench
from ..sync import Event, Lock, RLock, Semaphore, registry, wait_any

#: Uncontended operations measured from Python only (see the module's docstring).
PYTHON_ONLY = ("uncontended-rlock", "uncontended-semaphore", "uncontended-event")
#: (The C loops know the first four by index: new tests go at the end.)
TESTS = ("contended", "zigzag", "uncontended", "oversubscribed", *PYTHON_ONLY)
#: The tests that take ``iterations`` (the others take ``seconds``).
COUNTED = ("contended", "uncontended", "oversubscribed", *PYTHON_ONLY)
#: The oversubscribed test's sides by default: twice the CPUs, 4 to 16 (the C loops' most).
DEFAULT_SIDES = min(16, max(4, 2 * (os.cpu_count() or 1)))
FLOORS = {"floor:futex": 0, "floor:eventfd": 1, "floor:futex-fifo": 3}
NATIVE = {"native:futex": 2}
BASELINES = ("threading", "multiprocessing")


@dataclass(frozen=True)
class Reference:
    """A figure from the msync README, measured on other hardware (Apple silicon, Wine):
    for orientation, not comparison."""

    test: str
    source: str
    ns_per_op: float


#: contended: 10,000,000 iterations, seconds; zigzag: round trips in 2 s.
REFERENCES = tuple(
    [Reference("contended", f"{name} (msync README)", seconds / 10_000_000 * 1e9)
     for name, seconds in (("msync with ulock", 3.792806), ("msync", 5.891094), ("esync", 7.423686),
                           ("server-side sync, over", 170.0))]
    + [Reference("zigzag", f"{name} (msync README)", 2e9 / trips)
       for name, trips in (("msync with ulock", 401605), ("msync", 270545), ("esync", 222675),
                           ("server-side sync", 60309))]
)


@dataclass
class Measurement:
    test: str
    subject: str
    processes: bool
    amount: float  # iterations (contended) or seconds (zigzag)
    samples: list[float] = field(default_factory=list)  # ns per acquisition / per round trip
    waits: list[tuple[float, float]] = field(default_factory=list)  # oversubscribed: (median, p99) ns

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def wait_percentiles(self) -> tuple[float, float] | None:
        """The median over the repeats of each run's median and 99th percentile wait."""
        if not self.waits:
            return None
        return statistics.median(w[0] for w in self.waits), statistics.median(w[1] for w in self.waits)

    @property
    def kind(self) -> str:
        if self.subject in FLOORS:
            return "floor"
        if self.subject in NATIVE:
            return "native"
        return "baseline" if self.subject in BASELINES else "python"


def subjects(backends: Iterable[str], processes: bool, test: str = "contended") -> list[str]:
    """The subjects of ``test``: floors, native, the backends asked for, Python's tools (for
    the Python-only tests: futex, if asked for, and Python's tools)."""
    baselines = ["multiprocessing"] if processes else list(BASELINES)
    if test in PYTHON_ONLY:
        return ["futex", *baselines] if "futex" in backends else []
    out = [*FLOORS]
    if "futex" in backends:
        out += list(NATIVE)
    return out + list(backends) + baselines


def available_backends(requested: str) -> list[str]:
    """The sync backends ``requested`` names ("all" or one) that work here; ValueError for
    an unknown name."""
    names = registry.FAMILY.names if requested == "all" else [registry.FAMILY.requested(requested)]
    return [n for n in names if n is not None and registry.backend_class(n).availability().available]


# ---- the sides, in Python ----------------------------------------------------------------


class _Ops:
    """wait / signal / make for one Python subject; events are auto-reset."""

    def __init__(self, subject: str) -> None:
        self.subject = subject

    def semaphore(self, name: str | None) -> Any:
        if self.subject == "threading":
            return threading.Semaphore(1)
        if self.subject == "multiprocessing":
            return multiprocessing.get_context("fork").Semaphore(1)
        return Semaphore(1, 1, name=name, backend=self.subject)

    def lock(self) -> Any:
        if self.subject == "threading":
            return threading.Lock()
        if self.subject == "multiprocessing":
            return multiprocessing.get_context("fork").Lock()
        return Lock(backend=self.subject)

    def uncontended(self, test: str) -> Any:
        """The free object an uncontended test takes and gives back (an event: set)."""
        if test == "uncontended":
            return self.lock()
        if test == "uncontended-semaphore":
            return self.semaphore(None)
        kind = "RLock" if test == "uncontended-rlock" else "Event"
        if self.subject in BASELINES:
            made = getattr(threading if self.subject == "threading" else multiprocessing.get_context("fork"), kind)()
        else:
            made = RLock(backend=self.subject) if kind == "RLock" else Event(manual=True, backend=self.subject)
        if kind == "Event":
            made.set()
        return made

    def event(self, name: str | None) -> Any:
        if self.subject == "threading":
            return threading.Event()
        if self.subject == "multiprocessing":
            return multiprocessing.get_context("fork").Event()
        return Event(manual=False, name=name, backend=self.subject)

    def functions(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], Any]]:
        """(wait on a semaphore, wait on an auto event, signal either)."""
        if self.subject in BASELINES:
            def wait_event(e: Any) -> None:
                e.wait()
                e.clear()
            return (lambda s: s.acquire()), wait_event, _signal
        return (lambda o: wait_any([o])), (lambda o: wait_any([o])), _signal


def _signal(obj: Any) -> None:
    # Semaphore.release / Event.set for ours and Python's alike.
    (obj.release if hasattr(obj, "release") else obj.set)()


_FLAGS = struct.Struct("=qqqqq")  # start ns side 1, end side 1, start side 2, end side 2, round trips


def _side(subject: str, test: str, number: int, objects: tuple[Any, ...], amount: float, board: mmap.mmap) -> None:
    wait_sem, wait_event, signal = _Ops(subject).functions()
    start = time.monotonic_ns()
    if test == "contended":
        sem = objects[0]
        for _ in range(int(amount) // 2 + (int(amount) % 2 if number == 0 else 0)):
            wait_sem(sem)
            signal(sem)
    elif number == 0:
        a, b = objects
        deadline = start + int(amount * 1e9)
        trips = 0
        while time.monotonic_ns() < deadline:
            signal(a)
            wait_event(b)
            trips += 1
        board[32:33] = b"\1"  # quit: the next A only lets side 2 out
        signal(a)
        _put(board, 4, trips)
    else:
        a, b = objects
        while True:
            wait_event(a)
            if board[32:33] == b"\1":
                break
            signal(b)
    _put(board, number * 2, start)
    _put(board, number * 2 + 1, time.monotonic_ns())


def _put(board: mmap.mmap, index: int, value: int) -> None:
    board[index * 8 + 40 : index * 8 + 48] = struct.pack("=q", value)


def _get(board: mmap.mmap, index: int) -> int:
    return int(struct.unpack("=q", board[index * 8 + 40 : index * 8 + 48])[0])


def _uncontended(obj: Any, event: bool, iterations: int) -> float:
    start = time.perf_counter_ns()
    if event:
        for _ in range(iterations):
            obj.set()
            obj.wait(0)
    else:
        for _ in range(iterations):
            with obj:
                pass
    return (time.perf_counter_ns() - start) / iterations


def _python_once(subject: str, test: str, processes: bool, amount: float) -> float:
    ops = _Ops(subject)
    if test.startswith("uncontended"):
        obj = ops.uncontended(test)
        try:
            return _uncontended(obj, test == "uncontended-event", int(amount))
        finally:
            if subject not in BASELINES:
                obj.close()
    stem = f"ntshim-bench-{uuid.uuid4().hex[:12]}" if processes and subject not in BASELINES else None
    named = (lambda label: f"{stem}-{label}") if stem else (lambda label: None)
    objects: tuple[Any, ...] = (
        (ops.semaphore(named("sem")),) if test == "contended" else (ops.event(named("a")), ops.event(named("b")))
    )
    board = mmap.mmap(-1, 4096)  # shared with forked children: quit flag and timings
    try:
        if processes:
            context = multiprocessing.get_context("fork")
            children = [
                context.Process(target=_child, args=(subject, test, n, objects, stem, amount, board))
                for n in range(2)
            ]
            for c in children:
                c.start()
            for c in children:
                c.join()
                if c.exitcode != 0:
                    raise RuntimeError(f"{subject} {test}: a side process failed (exit code {c.exitcode})")
        else:
            threads = [threading.Thread(target=_side, args=(subject, test, n, objects, amount, board)) for n in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elapsed = max(_get(board, 1), _get(board, 3)) - min(_get(board, 0), _get(board, 2))
        if test == "contended":
            return elapsed / amount
        return amount * 1e9 / max(_get(board, 4), 1)
    finally:
        board.close()
        for obj in objects:
            if hasattr(obj, "close") and subject not in BASELINES:
                obj.close()


def _wait_side(subject: str, sem: Any, stem: str | None, number: int, sides: int, waits: mmap.mmap) -> None:
    """One oversubscribed side: acquisitions number, number + sides, ...; each wait timed."""
    if stem is not None:
        sem = Semaphore.open(f"{stem}-sem", backend=subject)
    wait_sem, _, signal = _Ops(subject).functions()
    for i in range(number, len(waits) // 8, sides):
        start = time.perf_counter_ns()
        wait_sem(sem)
        _WAIT.pack_into(waits, 8 * i, time.perf_counter_ns() - start)
        signal(sem)


_WAIT = struct.Struct("=q")


def _python_oversubscribed(subject: str, processes: bool, iterations: int, sides: int) -> Sample:
    stem = f"ntshim-bench-{uuid.uuid4().hex[:12]}" if processes and subject not in BASELINES else None
    sem = _Ops(subject).semaphore(f"{stem}-sem" if stem else None)
    waits = mmap.mmap(-1, 8 * iterations)  # shared with forked children
    try:
        if processes:
            context = multiprocessing.get_context("fork")
            runners: list[Any] = [context.Process(target=_wait_side, args=(subject, sem, stem, n, sides, waits))
                                  for n in range(sides)]
        else:
            runners = [threading.Thread(target=_wait_side, args=(subject, sem, None, n, sides, waits))
                       for n in range(sides)]
        start = time.perf_counter_ns()
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
        elapsed = time.perf_counter_ns() - start
        if processes and any(r.exitcode != 0 for r in runners):
            raise RuntimeError(f"{subject} oversubscribed: a side process failed")
        ordered = sorted(w for (w,) in _WAIT.iter_unpack(waits))
        return elapsed / iterations, (float(ordered[len(ordered) // 2]), float(ordered[-1 - len(ordered) // 100]))
    finally:
        waits.close()
        if subject not in BASELINES:
            sem.close()


def _child(subject: str, test: str, number: int, objects: tuple[Any, ...], stem: str | None, amount: float,
           board: mmap.mmap) -> None:
    if stem is not None:  # the "named objects": open them by name, as another program would
        labels = ("sem",) if test == "contended" else ("a", "b")
        kind = Semaphore if test == "contended" else Event
        objects = tuple(kind.open(f"{stem}-{label}", backend=subject) for label in labels)
    _side(subject, test, number, objects, amount, board)


# ---- one measurement ---------------------------------------------------------------------


#: One measurement: ns per operation, and the waits' (median, 99th percentile) in ns for the
#: oversubscribed test (None for the others).
Sample = tuple[float, "tuple[float, float] | None"]


def measure_once(subject: str, test: str, processes: bool, amount: float, sides: int = DEFAULT_SIDES) -> Sample:
    """ns per acquisition (contended, oversubscribed: ``amount`` iterations), per round trip
    (zigzag, ``amount`` seconds) or per acquire + release (uncontended, ``amount``
    iterations); and the oversubscribed test's waits."""
    if subject in FLOORS or subject in NATIVE:
        slots = (0, 0, 0)
        keep: list[Any] = []
        if subject in NATIVE:
            keep = [Semaphore(1, 1, backend="futex"), Event(manual=False, backend="futex"),
                    Event(manual=False, backend="futex")]
            slots = (keep[0]._slot, keep[1]._slot, keep[2]._slot)
        mechanism = {**FLOORS, **NATIVE}[subject]
        n = int(amount) if test in COUNTED else int(amount * 1e9)
        try:
            elapsed, trips, median, p99 = _bench.bench_sync(mechanism, TESTS.index(test), processes, n,
                                                            slots, sides)
        finally:
            for obj in keep:
                obj.close()
        waits = (float(median), float(p99)) if test == "oversubscribed" else None
        return (elapsed / n if test in COUNTED else elapsed / max(trips, 1)), waits
    if test == "oversubscribed":
        return _python_oversubscribed(subject, processes, int(amount), sides)
    return _python_once(subject, test, processes, amount), None


@contextlib.contextmanager
def busy(processes: int) -> Iterator[None]:
    """``processes`` processes that spin on the CPUs while the block runs: the load of a
    machine that is rarely idle, the same for every subject."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def run(
    backends: list[str], tests: Iterable[str], processes: bool, iterations: int, seconds: float, repeat: int,
    progress: Callable[[str], None] | None = None, load: int = 0, sides: int = DEFAULT_SIDES,
) -> list[Measurement]:
    """Every subject on every test, ``repeat`` times interleaved (a slow moment of the
    machine then hits every subject alike), medians; with ``load`` busy processes beside."""
    results = [
        Measurement(test, subject, processes, iterations if test in COUNTED else seconds)
        for test in tests
        for subject in subjects(backends, processes, test)
    ]
    with busy(load):
        for _ in range(repeat):
            for m in results:
                if progress:
                    progress(f"{m.test} {m.subject}")
                ns, waits = measure_once(m.subject, m.test, processes, m.amount, sides)
                m.samples.append(ns)
                if waits is not None:
                    m.waits.append(waits)
    return results


# ---- targets (issue 6), measured, never asserted -----------------------------------------


@dataclass(frozen=True)
class Target:
    description: str
    held: bool
    detail: str


def _median(results: list[Measurement], test: str, subject: str) -> float | None:
    for m in results:
        if m.test == test and m.subject == subject and m.samples:
            return m.median
    return None


def targets(results: list[Measurement]) -> list[Target]:
    out = []
    mode = "processes" if results and results[0].processes else "threads"
    for test in ("contended", "zigzag"):
        native, floor, fifo = (_median(results, test, s) for s in ("native:futex", "floor:futex", "floor:futex-fifo"))
        if native and floor:
            detail = f"{native / floor:.2f}x floor:futex"
            if fifo:
                detail += f", {native / fifo:.2f}x floor:futex-fifo"
            out.append(Target(f"native:futex within 1.3x of the futex floor, {test}, {mode}", native <= 1.3 * floor,
                              detail))
        if native and fifo:  # issue 14's: against the floor that hands over as NT objects must
            out.append(Target(f"native:futex within 1.3x of floor:futex-fifo, {test}, {mode}", native <= 1.3 * fifo,
                              f"{native / fifo:.2f}x"))
        futex = _median(results, test, "futex")
        for other, factor in (("server", 10), ("multiprocessing", 1)):
            theirs = _median(results, test, other)
            if futex and theirs:
                out.append(Target(
                    f"futex (Python) {'faster than' if factor == 1 else f'{factor}x faster than'} {other}, "
                    f"{test}, {mode}", theirs >= factor * futex, f"{theirs / futex:.1f}x"))
    floor_waits = next((m.wait_percentiles for m in results
                        if m.test == "oversubscribed" and m.subject == "floor:futex-fifo" and m.waits), None)
    for m in results:
        ours = m.wait_percentiles
        if m.test == "oversubscribed" and m.subject in ("native:futex", "futex") and ours and floor_waits:
            out.append(Target(
                f"{m.subject} waits within 1.5x of floor:futex-fifo's, oversubscribed ({mode}): median and p99",
                ours[0] <= 1.5 * floor_waits[0] and ours[1] <= 1.5 * floor_waits[1],
                f"median {ours[0] / floor_waits[0]:.1f}x, p99 {ours[1] / floor_waits[1]:.1f}x"))
    for test, what in (("uncontended", "with Lock"), ("uncontended-rlock", "with RLock"),
                       ("uncontended-semaphore", "with Semaphore"), ("uncontended-event", "Event set + wait(0)")):
        futex, theirs = _median(results, test, "futex"), _median(results, test, "multiprocessing")
        if futex and theirs:  # issue 14's
            out.append(Target(f"futex {what} (Python) within 1.5x of multiprocessing's, {test}",
                              futex <= 1.5 * theirs, f"{futex / theirs:.2f}x"))
    return out
