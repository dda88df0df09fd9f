"""The write-watch micro-benchmark Wine's write-watch work was judged by, for every backend,
beside the kernel floors measured in the same run.

A *row* is the benchmark's parameters: writer threads, pages, delay between gets (ms),
random (1) or sequential (0) page order, and whether the get resets (1, like
``GetWriteWatch(WRITE_WATCH_FLAG_RESET)``) or a separate reset follows it (0, like
``ResetWriteWatch``).  A *subject* is a backend, or a floor: the same kernel mechanism driven
by minimal C with no ntshim code in the path (``floor:none`` writes untracked memory).

Per row and subject: native writer threads store into the pages until stopped; *write ns*
is their summed running time over their number of stores.  Meanwhile a reader sleeps
``delay`` ms, then times one get (and, for reset 0, one reset): for a backend the public
Python call, ``watch.dirty(reset=...)`` (and ``watch.reset()``); for a floor the same step
in C.  *get µs* is the median of those calls.  A ``native:`` subject is a backend read
from C through ntshim's core (what a native caller gets; the difference to the plain
backend is Python's share).  docs/benchmarks.md has the details.
"""

from __future__ import annotations

import gc
import statistics
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .. import _bench, _core, _kernel
from ..memory import alloc


@dataclass(frozen=True)
class Row:
    threads: int
    pages: int
    delay_ms: float
    random: bool
    reset_flag: bool

    @property
    def label(self) -> str:
        return f"{self.threads} {self.pages} {self.delay_ms:g} {int(self.random)} {int(self.reset_flag)}"


#: The parameter rows of the seed's table (Wine's write-watch benchmark).
SEED_ROWS = tuple(
    Row(threads, pages, delay, True, reset)
    for threads, pages, delay, reset in [
        (6, 1080, 3, True),
        (6, 1080, 3, False),
        (8, 8192, 3, True),
        (8, 8192, 3, False),
        (8, 8192, 1, True),
        (8, 8192, 1, False),
        (8, 64, 1, True),
        (8, 64, 1, False),
    ]
)


@dataclass(frozen=True)
class Reference:
    """A figure measured elsewhere, on other hardware: for orientation, not comparison."""

    label: str
    source: str
    write_ns: float
    get_us: float


def _references() -> tuple[Reference, ...]:
    seed = "M2 Max, x64 under emulation (Wine MR for Mach COW write watches)"
    mr = "Wine's userfaultfd merge request (its author's machine)"
    table = {  # row: (Windows, Mach COW, Wine fallback) as (write ns, get µs)
        "6 1080 3 1 1": ((897, 80), (371, 12634), (66202, 186)),
        "6 1080 3 1 0": ((855, 87), (369, 12637), (66766, 187)),
        "8 8192 3 1 1": ((6526, 268), (627, 113263), (111053, 485)),
        "8 8192 3 1 0": ((1197, 509), (623, 113810), (122921, 489)),
        "8 8192 1 1 1": ((1227, 412), (636, 118930), (150628, 388)),
        "8 8192 1 1 0": ((5721, 144), (631, 120538), (146392, 384)),
        "8 64 1 1 1": ((572, 7), (490, 1078), (1000, 89)),
        "8 64 1 1 0": ((530, 13), (500, 1075), (1167, 77)),
    }
    out = []
    for label, figures in table.items():
        for name, (write_ns, get_us) in zip(("Windows 11", "macOS Mach COW", "Wine fallback"), figures):
            out.append(Reference(label, f"{name} ({seed})", write_ns, get_us))
    uffd_mr = {
        "6 1080 3 1 1": ((210, 40), (178, 40), (1800, 1000)),
        "8 8192 3 1 1": ((290, 290), (245, 295), (70000, 1800)),
    }
    for label, figures in uffd_mr.items():
        for name, (write_ns, get_us) in zip(("Windows", "Wine kernel write watches", "Wine fallback"), figures):
            out.append(Reference(label, f"{name} ({mr})", write_ns, get_us))
    return tuple(out)


REFERENCES = _references()

FLOORS = ("floor:none", "floor:uffd-async", "floor:mprotect")
#: The floor each backend reads against: the kernel mechanism it is built on.
FLOOR_OF = {
    "uffd-async": "floor:uffd-async",
    "mprotect": "floor:mprotect",
    "uffd-sync": "floor:none",
    "shadow": "floor:none",
}


def _summary(samples: list[float]) -> dict[str, float] | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "mean": statistics.fmean(ordered),
        "p10": ordered[len(ordered) // 10],
        "p90": ordered[(len(ordered) * 9) // 10],
        "min": ordered[0],
        "max": ordered[-1],
        "count": len(ordered),
    }


@dataclass
class Measurement:
    row: Row
    subject: str
    writes: int
    write_ns_runs: list[float]  # thread time / stores, one per repeat
    get_us: list[float] = field(default_factory=list)  # every get, all repeats
    reset_us: list[float] = field(default_factory=list)
    pages_reported: int = 0

    @property
    def write_ns(self) -> float:
        """The median over repeats of thread time / stores."""
        return statistics.median(self.write_ns_runs)

    def merge(self, other: Measurement) -> None:
        """Fold in another repeat of the same row and subject."""
        self.writes += other.writes
        self.write_ns_runs += other.write_ns_runs
        self.get_us += other.get_us
        self.reset_us += other.reset_us
        self.pages_reported += other.pages_reported

    @property
    def get_median_us(self) -> float | None:
        return statistics.median(self.get_us) if self.get_us else None

    @property
    def reset_median_us(self) -> float | None:
        return statistics.median(self.reset_us) if self.reset_us and not self.row.reset_flag else None

    @property
    def pages_per_get(self) -> float | None:
        return self.pages_reported / len(self.get_us) if self.get_us else None

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.row.label,
            "row": self.row.__dict__,
            "subject": self.subject,
            "writes": self.writes,
            "write_ns": self.write_ns,
            "write_ns_repeats": self.write_ns_runs,
            "gets": len(self.get_us),
            "get_us": _summary(self.get_us),
            "reset_us": None if self.row.reset_flag else _summary(self.reset_us),
            "pages_per_get": self.pages_per_get,
            "get_us_samples": [round(x, 2) for x in self.get_us],
        }


def _from_c(
    row: Row, subject: str, writes: int, write_ns: int, gets: bytes, resets: bytes, reported: int
) -> Measurement:
    """A measurement from the C loops' figures: totals, and per-call ns as uint64 bytes."""
    return Measurement(
        row,
        subject,
        writes,
        [write_ns / max(writes, 1)],
        [ns / 1000 for ns in array("Q", gets)],
        [ns / 1000 for ns in array("Q", resets)],
        reported,
    )


def measure_floor(row: Row, floor: str, seconds: float) -> Measurement:
    kind = floor.split(":", 1)[1]
    return _from_c(
        row,
        floor,
        *_bench.floor_writewatch(
            kind, row.pages, row.threads, row.random, int(row.delay_ms * 1e6), int(seconds * 1e9), row.reset_flag
        ),
    )


def measure_backend(row: Row, backend: str, seconds: float) -> Measurement:
    """Writers write; this thread gets (and resets) through the public API every delay ms."""
    region = alloc(row.pages * _kernel.PAGE_SIZE, watch=True, backend=backend)
    watch = region.write_watch
    assert watch is not None  # watch=True
    gets: list[float] = []
    resets: list[float] = []
    reported = 0
    delay = row.delay_ms / 1000
    clock = time.perf_counter_ns
    try:
        writers = _bench.Writers(memoryview(region), row.threads, random=row.random)
        try:
            deadline = time.monotonic() + seconds
            tick = time.monotonic()
            while time.monotonic() < deadline:
                # Fixed ticks, as the C readers keep: every subject resets as often.
                now = time.monotonic()
                tick = tick + delay if tick + delay > now else now + delay
                time.sleep(tick - now)
                t0 = clock()
                dirty = watch.dirty(reset=row.reset_flag)
                t1 = clock()
                if not row.reset_flag:
                    watch.reset()
                    resets.append((clock() - t1) / 1000)
                gets.append((t1 - t0) / 1000)
                reported += len(dirty)
        finally:
            writes, write_ns = writers.stop()
    finally:
        region.free()
    return Measurement(row, backend, writes, [write_ns / max(writes, 1)], gets, resets, reported)


def measure_native(row: Row, subject: str, seconds: float) -> Measurement:
    """As measure_backend, with the reader in C calling the backend's tracker directly: what a
    native caller of ntshim's core gets, and how much of a get is Python's."""
    backend = subject.split(":", 1)[1]
    region = alloc(row.pages * _kernel.PAGE_SIZE, watch=True, backend=backend)
    try:
        tracker: _core.Tracker = region.write_watch._tracker  # type: ignore[union-attr,assignment]
        writers = _bench.Writers(memoryview(region), row.threads, random=row.random)
        try:
            gets, resets, reported = _bench.native_reader(
                tracker, int(row.delay_ms * 1e6), int(seconds * 1e9), row.reset_flag
            )
        finally:
            writes, write_ns = writers.stop()
    finally:
        region.free()
    return _from_c(row, subject, writes, write_ns, gets, resets, reported)


def backend_of(subject: str) -> str:
    """``native:uffd-async`` → ``uffd-async``; a backend's name stays."""
    return subject.split(":", 1)[1] if subject.startswith("native:") else subject


def subjects_for(backends: Iterable[str], native: bool = True) -> list[str]:
    """The floors the given backends read against (floor:none always), then the backends
    read from Python, then (``native``) read from C."""
    backends = list(backends)
    floors = ["floor:none"] + [f for f in FLOORS[1:] if f in {FLOOR_OF[b] for b in backends}]
    return floors + backends + ([f"native:{b}" for b in backends] if native else [])


def run(
    rows: Iterable[Row],
    subjects: list[str],
    seconds: float,
    repeat: int = 1,
    progress: Callable[[Row, str], None] | None = None,
) -> list[Measurement]:
    """Measure every subject on every row, ``repeat`` times, interleaved so that the
    machine's drift hits every subject alike; repeats are merged per row and subject."""
    rows = list(rows)
    merged: dict[tuple[Row, str], Measurement] = {}
    collecting = gc.isenabled()
    gc.disable()  # a collection in the reader would land in someone's get time
    try:
        for _ in range(repeat):
            for row in rows:
                for subject in subjects:
                    if progress:
                        progress(row, subject)
                    kind = subject.split(":", 1)[0] if ":" in subject else "backend"
                    measure = {"floor": measure_floor, "native": measure_native, "backend": measure_backend}[kind]
                    m = measure(row, subject, seconds)
                    if (row, subject) in merged:
                        merged[row, subject].merge(m)
                    else:
                        merged[row, subject] = m
    finally:
        if collecting:
            gc.enable()
    return list(merged.values())


@dataclass(frozen=True)
class Ratio:
    label: str
    subject: str
    floor: str
    write: float | None
    get: float | None


def ratios(results: list[Measurement]) -> list[Ratio]:
    """Each backend over its floor, row by row."""
    by_key = {(m.row.label, m.subject): m for m in results}
    out = []
    for m in results:
        if m.subject.startswith("floor:"):
            continue
        floor = by_key.get((m.row.label, FLOOR_OF[backend_of(m.subject)]))
        if floor is None:
            continue
        write = m.write_ns / floor.write_ns if floor.write_ns else None
        get = m.get_median_us / floor.get_median_us if floor.get_median_us and m.get_median_us else None
        out.append(Ratio(m.row.label, m.subject, floor.subject, write, get))
    return out


@dataclass(frozen=True)
class Target:
    description: str
    held: bool
    detail: str


def targets(results: list[Measurement]) -> list[Target]:
    """The issue's targets, judged on this run's numbers."""
    rs = ratios(results)
    out = []

    def worst(subject: str, attribute: str, bound: float, what: str) -> None:
        floor = FLOOR_OF[backend_of(subject)]
        values = [(getattr(r, attribute), r.label) for r in rs if r.subject == subject and getattr(r, attribute)]
        if not values:
            return
        value, label = max(values)
        out.append(
            Target(
                f"{subject} {what} within {bound:g}x of {floor} on every row",
                value <= bound,
                f"worst {value:.2f}x on {label}",
            )
        )

    for reader in ("", "native:"):
        worst(f"{reader}uffd-async", "write", 1.10, "write ns")
        worst(f"{reader}uffd-async", "get", 1.25, "get us")
        worst(f"{reader}mprotect", "write", 1.25, "write ns")
    by_key = {(m.row.label, m.subject): m for m in results}
    fast, slow = by_key.get(("8 8192 3 1 1", "uffd-async")), by_key.get(("8 8192 3 1 1", "mprotect"))
    if fast and slow:
        factor = slow.write_ns / fast.write_ns
        out.append(
            Target("uffd-async writes >= 4x cheaper than mprotect on 8 8192 3 1 1", factor >= 4, f"{factor:.1f}x")
        )
    return out
