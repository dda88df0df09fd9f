"""``ntshim bench snapshot``: what an incremental save costs against the other ways of saving
a big in-memory state, beside the floors measured in the same run.

The state is a numpy ``uint8`` array of ``size`` bytes in its own page-aligned private
mapping (:func:`ntshim.memory.alloc`), every page filled.  A *case* is a dirty fraction
(of the pages) and a placement: ``random`` pages, or ``clustered`` runs of
:data:`CLUSTER_PAGES` pages at random places.  The page set of a case is drawn once from a
seeded generator and is the same for every subject and repeat.  Writing the case means
storing a new 8-byte counter value at the start of each of its pages (never a value the page
held before), timed: *ns per page written*, untracked or tracked by a backend.

Subjects, each timed from the moment the pages are written until its data is durable:

- ``save:<backend>``: ``Checkpointer.save()`` with that write-watch backend; a base is saved
  (untimed) when its checkpointer opens, so every timed save is a delta of the case's pages.
- ``save-consistent:<backend>``: ``Checkpointer.save(consistent=True)`` (a point-in-time
  generation) with the same checkpointer, after the case's pages are written again; only the
  backends a consistent save works with (the others are skipped, ``Results.skipped`` says why).
- ``save-zstd:<backend>``: ``save()`` of a checkpointer with ``compress="zstd"``, on the best
  backend (skipped without the zstandard package).
- The writer's slowdown during a save: one native thread (``ntshim._bench.Writers``) storing
  into random pages of the first :data:`WRITER_FRACTION` of the state, ns per store while
  nothing is saved, during a ``save()`` and during a ``save(consistent=True)`` (each followed
  by an untimed save of what it wrote), per backend a consistent save works with.
- ``hash-compare:blake2b`` / ``hash-compare:xxh3``: hash every 4 KiB page (``hashlib.blake2b``,
  16-byte digests; ``xxhash.xxh3_64`` if installed), compare with the previous save's
  hashes, write the changed pages to a new file with ``os.pwritev`` + ``fsync``.
- ``shadow-compare:numpy``: compare the state with a private copy page by page (numpy, 16 MiB
  at a time), write the changed pages (as above), update the copy.
- Whole-state subjects, which do not depend on the case (timed once per repeat):
  ``full-dump`` (``os.write`` of the whole buffer to a new file + ``fsync``), ``np.save``
  (+ ``fsync``) and ``fork-and-dump`` (Redis's way: ``os.fork()``; the child writes the whole
  buffer + ``fsync`` and ``_exit``\\ s; the parent waits: its time until the child is done),
  and ``fork-and-dump:pause``, the parent's pause alone (the ``fork`` call).
- Floors: ``floor:io`` writes exactly the case's pages with ``os.pwritev`` from a ready list of
  page views into a new file (opened beforehand) + one ``fsync``, in the same directory as
  the saves; ``floor:dirty`` is a bare ``WriteWatch.dirty(reset=True)`` on the best backend.
  ``floor:io+publish`` adds to ``floor:io`` the steps of save()'s crash-safety protocol: a
  manifest-sized file (200 bytes + 32 per page) written and fsynced, the directory fsynced,
  the file renamed, the directory fsynced (four fsyncs in all, as save() does).  It reads
  the gap between save() and ``floor:io``; the targets use ``floor:io``.

The incremental subjects check that they found exactly the case's pages (RuntimeError
otherwise): a subject that saved the wrong pages would measure nonsense.  Each repeat runs
every subject once, in sessions (no tracking: the baselines and ``floor:io``; one watch of the
best backend: ``floor:dirty``; one checkpointer per backend), rotated from repeat to repeat;
figures are medians over the repeats.  docs/benchmarks.md has how to read them.

numpy is required (``pip install numpy``); xxhash is optional (its subject is skipped and
``Results.skipped`` says so).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _bench, memory
from ..memory import PAGE_SIZE
from ..snapshot import Checkpointer
from ..snapshot.format import zstandard_module
from ..writewatch import registry

#: Dirty fractions of the pages, by default: 0.1%, 1%, 10%, 100%.
FRACTIONS = (0.001, 0.01, 0.1, 1.0)
PATTERNS = ("random", "clustered")
#: Pages per run of the clustered placement (256 KiB of 4 KiB pages).
CLUSTER_PAGES = 64
WHOLE_STATE = ("full-dump", "np.save", "fork-and-dump")
HASHES = ("hash-compare:blake2b", "hash-compare:xxh3")
SHADOW = "shadow-compare:numpy"
FLOOR_IO, FLOOR_DIRTY, FORK_PAUSE = "floor:io", "floor:dirty", "fork-and-dump:pause"
FLOOR_PUBLISH = "floor:io+publish"
#: The targets: at most this dirty fraction, save() (best backend) at least FASTER times
#: faster than the fastest whole-state subject and within WITHIN_FLOOR of floor:io.
TARGET_FRACTION, FASTER, WITHIN_FLOOR = 0.01, 20.0, 1.5
#: The issue's target for consistent saves: at TARGET_FRACTION dirty, CONSISTENT_FASTER times
#: faster than fork-and-dump (Redis's point-in-time save).
CONSISTENT_FASTER = 10.0
#: The share of the state the writer of the slowdown measurement stores into, and how long it
#: runs while nothing is saved (seconds).
WRITER_FRACTION, WRITER_IDLE_SECONDS = 0.01, 0.05
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_CHUNK_PAGES = (16 << 20) // PAGE_SIZE  # shadow-compare: pages compared at a time


def numpy_module() -> Any:
    """numpy, or ImportError saying that the benchmark needs it."""
    try:
        import numpy
    except ImportError:
        raise ImportError("ntshim bench snapshot needs numpy for its state: pip install numpy") from None
    return numpy


@dataclass(frozen=True)
class Case:
    """A dirty ``fraction`` of the pages (0 < fraction <= 1) placed by ``pattern``."""

    fraction: float
    pattern: str

    @property
    def label(self) -> str:
        return f"{self.fraction * 100:g}% {self.pattern}"

    def pages(self, npages: int, seed: int = 0) -> Any:
        """The page numbers (a sorted numpy int64 array), the same for the same arguments."""
        np = numpy_module()
        count = max(1, min(npages, round(self.fraction * npages)))
        rng = np.random.default_rng([seed, round(self.fraction * 1e6), PATTERNS.index(self.pattern)])
        if count == npages:
            return np.arange(npages, dtype=np.int64)
        if self.pattern == "random":
            return np.sort(rng.choice(npages, count, replace=False)).astype(np.int64)
        slots = npages // CLUSTER_PAGES
        runs = min(slots, -(-count // CLUSTER_PAGES))
        starts = np.sort(rng.choice(slots, runs, replace=False)) * CLUSTER_PAGES
        pages = (starts[:, None] + np.arange(CLUSTER_PAGES)[None, :]).ravel()
        if len(pages) < count:  # a state smaller than the runs need: the rest at random
            rest = np.setdiff1d(np.arange(npages), pages)
            pages = np.concatenate([pages, rng.choice(rest, count - len(pages), replace=False)])
        return np.sort(pages[:count]).astype(np.int64)


@dataclass
class Measurement:
    """One subject on one case (``case`` None: a whole-state subject, the same for every
    case).  ``ms``: milliseconds per save, one per repeat; ``written``: bytes written per
    save; ``pages``: pages the subject found changed (None where it does not look)."""

    subject: str
    kind: str  # "ntshim", "incremental", "whole", "pause" or "floor"
    case: Case | None
    ms: list[float] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def written_median(self) -> float:
        return statistics.median(self.written) if self.written else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "kind": self.kind,
            "fraction": self.case.fraction if self.case else None,
            "pattern": self.case.pattern if self.case else None,
            "ms_median": self.median,
            "ms": self.ms,
            "bytes_written_median": self.written_median,
            "bytes_written": self.written,
            "pages": self.pages,
        }


@dataclass
class WriterRate:
    """A native writer's ns per store with ``backend`` watching, ``during`` "nothing", "save"
    or "consistent save": one figure per repeat."""

    backend: str
    during: str
    ns_per_store: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ns_per_store)


@dataclass
class Writes:
    """Writing a case's pages with ``tracking`` (a backend, or "none"): ns per page written,
    one figure per repeat."""

    tracking: str
    case: Case
    ns_per_page: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ns_per_page)


@dataclass(frozen=True)
class Target:
    description: str
    held: bool
    detail: str


@dataclass
class Results:
    size: int
    page_size: int
    repeat: int
    directory: str
    filesystem: str
    backends: list[str]
    cases: list[Case]
    measurements: list[Measurement] = field(default_factory=list)
    writes: list[Writes] = field(default_factory=list)
    writer: list[WriterRate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def best(self) -> str:
        """The best backend measured: the first in ntshim's order of preference."""
        return self.backends[0]

    def median(self, subject: str, case: Case | None) -> float | None:
        m = next((m for m in self.measurements if m.subject == subject and m.case == case and m.ms), None)
        return m.median if m else None

    def fastest_whole_state(self, case: Case) -> tuple[str, float] | None:
        """The fastest subject that reads the whole state (a dump, or a compare) on ``case``."""
        found = [(m.median, m.subject) for m in self.measurements
                 if m.ms and (m.kind == "whole" or (m.kind == "incremental" and m.case == case))]  # fmt: skip
        if not found:
            return None
        ms, subject = min(found)
        return subject, ms


def targets(results: Results) -> list[Target]:
    """The issue's targets, judged on every case of at most 1% dirty pages (the consistent
    save's at 1%)."""
    out = []
    subject = f"save:{results.best}" if results.backends else None
    for case in results.cases:
        if case.fraction > TARGET_FRACTION or subject is None:
            continue
        save = results.median(subject, case)
        whole = results.fastest_whole_state(case)
        floor = results.median(FLOOR_IO, case)
        if save and whole:
            out.append(Target(
                f"{subject} >= {FASTER:g}x faster than the fastest whole-state subject, {case.label}",
                whole[1] >= FASTER * save, f"{whole[1] / save:.1f}x: {save:.2f} ms, {whole[0]} {whole[1]:.1f} ms",
            ))  # fmt: skip
        if save and floor:
            out.append(Target(
                f"{subject} within {WITHIN_FLOOR:g}x of the I/O floor, {case.label}",
                save <= WITHIN_FLOOR * floor, f"{save / floor:.2f}x: {save:.2f} ms, {FLOOR_IO} {floor:.2f} ms",
            ))  # fmt: skip
        consistent = next((c for c in (f"save-consistent:{b}" for b in results.backends)
                           if results.median(c, case)), None)  # fmt: skip
        fork = results.median("fork-and-dump", None)
        if case.fraction == TARGET_FRACTION and consistent and fork:
            ms = results.median(consistent, case) or 0.0
            out.append(Target(
                f"{consistent} >= {CONSISTENT_FASTER:g}x faster than fork-and-dump, {case.label}",
                fork >= CONSISTENT_FASTER * ms, f"{fork / ms:.1f}x: {ms:.2f} ms, fork-and-dump {fork:.1f} ms",
            ))  # fmt: skip
    return out


def filesystem_of(path: str) -> str:
    """The file system ``path`` lies on, from /proc/mounts: "ext4 (/dev/vda on /)"."""
    real = os.path.realpath(path)
    best = ("", "?", "?")
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            device, mount, kind = line.split()[:3]
            mount = mount.replace("\\040", " ")
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, kind, device)
    return f"{best[1]} ({best[2]} on {best[0]})"


def available_backends(requested: str) -> list[str]:
    """The write-watch backends ``requested`` names ("all" or one), available here, in
    ntshim's order of preference; ValueError for an unknown name."""
    names = registry.FAMILY.names if requested == "all" else [registry.FAMILY.requested(requested)]
    return [n for n in names if n is not None and registry.backend_class(n).availability().available]


def cases_for(fractions: Sequence[float], patterns: Sequence[str]) -> list[Case]:
    """Every fraction with every pattern (ValueError for a fraction outside (0, 1] or an
    unknown pattern)."""
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"dirty fraction {fraction!r} must be in (0, 1] (0.1% is 0.001)")
    for pattern in patterns:
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {pattern!r}; choose from {', '.join(PATTERNS)}")
    return [Case(f, p) for f in fractions for p in patterns]


def steps(cases: int, backends: int, hashes: int) -> int:
    """How many times :func:`run` calls ``progress`` per repeat."""
    return len(WHOLE_STATE) + 1 + cases * (hashes + 3) + (cases if backends else 0) + backends * (1 + cases)


# ---- writing ------------------------------------------------------------------------------


def _new_file(directory: str, name: str) -> int:
    path = os.path.join(directory, name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def _pwritev_all(fd: int, views: Sequence[memoryview]) -> int:
    """Write ``views`` back to back from file offset 0, IOV_MAX at a time; the bytes written."""
    offset = 0
    for start in range(0, len(views), _IOV_MAX):
        batch = views[start : start + _IOV_MAX]
        want = sum(len(v) for v in batch)
        done = os.pwritev(fd, batch, offset)
        if done != want:  # a short write (rare): finish it plainly
            data = b"".join(bytes(v) for v in batch)[done:]
            while data:
                data = data[os.pwrite(fd, data, offset + want - len(data)) :]
        offset += want
    return offset


def _write_pages(directory: str, name: str, state_view: memoryview, pages: Sequence[int]) -> int:
    """The pages (numbers) of the state into a new file + fsync; the bytes written."""
    fd = _new_file(directory, name)
    try:
        written = _pwritev_all(fd, [state_view[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] for p in pages])
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _write_whole(fd: int, view: memoryview) -> int:
    rest = view
    while len(rest):
        rest = rest[os.write(fd, rest) :]
    os.fsync(fd)
    return len(view)


# ---- the subjects -------------------------------------------------------------------------


class _Hashes:
    """hash-compare: a digest per page; ``save`` hashes every page, writes the changed ones."""

    def __init__(self, name: str, digest: Callable[[memoryview], object], view: memoryview) -> None:
        self.name, self._digest, self._view = name, digest, view
        self._npages = len(view) // PAGE_SIZE
        self._hashes: list[object] = []

    def prime(self) -> None:
        v, d = self._view, self._digest
        self._hashes = [d(v[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]) for i in range(self._npages)]

    def save(self, directory: str) -> tuple[int, int]:
        v, d, hashes, changed = self._view, self._digest, self._hashes, []
        for i in range(self._npages):
            h = d(v[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
            if h != hashes[i]:
                hashes[i] = h
                changed.append(i)
        return _write_pages(directory, self.name, v, changed), len(changed)


class _Shadow:
    """shadow-compare: a private copy; ``save`` compares page by page, writes the changed
    pages, updates the copy."""

    name = SHADOW

    def __init__(self, state: Any) -> None:
        np = numpy_module()
        self._np = np
        self._view = memoryview(state)
        self._words = state.view(np.uint64).reshape(-1, PAGE_SIZE // 8)
        self._copy = np.empty_like(self._words)

    def prime(self) -> None:
        self._copy[:] = self._words

    def save(self, directory: str) -> tuple[int, int]:
        np, words, copy = self._np, self._words, self._copy
        found = []
        for start in range(0, len(words), _CHUNK_PAGES):
            part = slice(start, start + _CHUNK_PAGES)
            found.append(np.flatnonzero(np.not_equal(words[part], copy[part]).any(axis=1)) + start)
        changed = np.concatenate(found)
        written = _write_pages(directory, self.name, self._view, changed.tolist())
        copy[changed] = words[changed]
        return written, len(changed)


def _publish(directory: str, size: int) -> int:
    """What save() does after its data file: a small file written and fsynced, the directory
    fsynced, the file renamed, the directory fsynced.  The bytes written."""
    fd = _new_file(directory, "publish.tmp")
    try:
        os.write(fd, b"m" * size)
        os.fsync(fd)
    finally:
        os.close(fd)
    _sync_directory(directory)
    os.replace(os.path.join(directory, "publish.tmp"), os.path.join(directory, "publish"))
    _sync_directory(directory)
    return size


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fork_and_dump(path: str, view: memoryview) -> tuple[float, float]:
    """Redis's way: the child writes the whole state + fsync; the parent waits.  Seconds of
    the parent's pause (the fork) and until the child is done."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: nothing but system calls, then _exit
        status = 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            _write_whole(fd, view)
            os.close(fd)
            status = 0
        finally:
            os._exit(status)
    paused = time.perf_counter()
    _, status = os.waitpid(pid, 0)
    done = time.perf_counter()
    if status != 0:
        raise RuntimeError(f"fork-and-dump: the child failed (wait status {status})")
    return paused - start, done - start


# ---- the run ------------------------------------------------------------------------------


def run(
    size: int,
    cases: Sequence[Case],
    backends: Sequence[str],
    repeat: int,
    directory: str,
    progress: Callable[[str], None] = lambda what: None,
    seed: int = 0,
) -> Results:
    """Measure every subject on every case ``repeat`` times (see the module's docstring).

    ``size``: bytes of state, a positive multiple of the page size; ``backends``: write-watch
    backends to save with, best first (may be empty: no ``save:`` rows, no ``floor:dirty``);
    ``directory``: where every file is written (on the file system to measure; files are
    deleted as the run goes); ``progress`` is called before each measurement.
    ImportError without numpy; ValueError for bad arguments."""
    np = numpy_module()
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"size must be a positive multiple of the page size ({PAGE_SIZE}), not {size}")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, not {repeat}")
    if not cases:
        raise ValueError("no case to measure")
    results = Results(size, PAGE_SIZE, repeat, directory, filesystem_of(directory), list(backends), list(cases))
    region = memory.alloc(size)
    try:
        _sessions(results, np.frombuffer(region, dtype=np.uint8), progress, seed)
    finally:  # (while an exception propagates, its traceback still holds views: the region goes with it)
        with contextlib.suppress(BufferError):
            region.close()
    results.writes = [w for w in results.writes if w.tracking != "floor:dirty"]
    return results


def _sessions(results: Results, state: Any, progress: Callable[[str], None], seed: int) -> None:
    """The repeats of :func:`run` over ``state``, a numpy uint8 array."""
    np = numpy_module()
    size, cases, backends, directory = results.size, results.cases, results.backends, results.directory
    npages = size // PAGE_SIZE
    words = state.view(np.uint64)
    words[:] = np.arange(len(words), dtype=np.uint64)  # every page resident, no two alike
    view = memoryview(state)
    page_sets = {case: case.pages(npages, seed) for case in cases}
    word_index = {case: pages * (PAGE_SIZE // 8) for case, pages in page_sets.items()}
    counter = [1 << 62]

    def write(case: Case, tracking: str) -> None:
        counter[0] += 1
        index = word_index[case]
        start = time.perf_counter_ns()
        words[index] = counter[0]
        elapsed = time.perf_counter_ns() - start
        _writes(results, tracking, case).ns_per_page.append(elapsed / len(index))

    incremental: list[Any] = [_Hashes(HASHES[0], lambda v: hashlib.blake2b(v, digest_size=16).digest(), view)]
    try:
        import xxhash

        incremental.append(_Hashes(HASHES[1], xxhash.xxh3_64_intdigest, view))
    except ImportError:
        results.skipped.append(f"{HASHES[1]} skipped: xxhash is not installed (pip install xxhash)")
    incremental.append(_Shadow(state))

    def untracked() -> None:
        for name in WHOLE_STATE:
            progress(name)
            path = os.path.join(directory, name)
            if name == "fork-and-dump":
                pause, seconds = _fork_and_dump(path, view)
                _measure(results, FORK_PAUSE, "pause", None).ms.append(pause * 1e3)
                written = size
            else:
                start = time.perf_counter()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    if name == "full-dump":
                        written = _write_whole(fd, view)
                    else:
                        with os.fdopen(fd, "wb", closefd=False) as f:
                            np.save(f, state)
                        os.fsync(fd)
                        written = os.fstat(fd).st_size
                finally:
                    os.close(fd)
                seconds = time.perf_counter() - start
            m = _measure(results, name, "whole", None)
            m.ms.append(seconds * 1e3)
            m.written.append(written)
            os.unlink(path)
            if name == "fork-and-dump":  # the fork left every page copy-on-write: fault them back now,
                words[:: PAGE_SIZE // 8] += 0  # not in the next timed writes
        progress("priming the hashes and the copy")
        for subject in incremental:
            subject.prime()
        for case in cases:
            write(case, "none")
            for subject in incremental:
                progress(f"{subject.name} {case.label}")
                start = time.perf_counter()
                written, found = subject.save(directory)
                _record(results, subject.name, "incremental", case, start, written, found, len(page_sets[case]))
            progress(f"{FLOOR_IO} {case.label}")
            views = [view[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] for p in page_sets[case].tolist()]
            fd = _new_file(directory, FLOOR_IO)
            try:
                start = time.perf_counter()
                written = _pwritev_all(fd, views)
                os.fsync(fd)
                _record(results, FLOOR_IO, "floor", case, start, written, None, 0)
            finally:
                os.close(fd)
            progress(f"{FLOOR_PUBLISH} {case.label}")
            fd = _new_file(directory, FLOOR_IO)
            try:
                start = time.perf_counter()
                written = _pwritev_all(fd, views) + _publish(directory, 200 + 32 * len(views))
                os.fsync(fd)
                _record(results, FLOOR_PUBLISH, "floor", case, start, written, None, 0)
            finally:
                os.close(fd)
            del views
        for name in (FLOOR_IO, "publish", *(s.name for s in incremental)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))

    def bare_watch() -> None:
        watch = memory.watch(state, backend=results.best)
        try:
            for case in cases:
                write(case, "floor:dirty")  # (the same writes as the best backend's: not reported)
                progress(f"{FLOOR_DIRTY} {case.label}")
                start = time.perf_counter()
                found = len(watch.dirty(reset=True))
                _record(results, FLOOR_DIRTY, "floor", case, start, 0, found, len(page_sets[case]))
        finally:
            watch.close()

    def checkpointer(backend: str, compress: str | None = None) -> Callable[[], None]:
        name = f"save-{compress}:{backend}" if compress else f"save:{backend}"

        def session() -> None:
            path = tempfile.mkdtemp(prefix=f"save-{backend}-", dir=directory)
            try:
                progress(f"{name} (the base, untimed)")
                consistent = compress is None
                with Checkpointer(path, {"state": state}, backend=backend, compress=compress) as c:
                    c.save()
                    for case in cases:
                        write(case, backend)
                        progress(f"{name} {case.label}")
                        start = time.perf_counter()
                        info = c.save()
                        _record(results, name, "ntshim", case, start, info.bytes, info.pages, len(page_sets[case]))
                        if not consistent:
                            continue
                        write(case, backend)
                        progress(f"save-consistent:{backend} {case.label}")
                        start = time.perf_counter()
                        try:
                            info = c.save(consistent=True)
                        except ValueError as refused:  # (refused before anything changed)
                            if (said := f"save-consistent:{backend} skipped: {refused}") not in results.skipped:
                                results.skipped.append(said)  # (once, not once per repeat)
                            consistent = False
                            c.save()  # the writes it did not take: the next case's delta is the case's own
                            continue
                        _record(results, f"save-consistent:{backend}", "ntshim", case, start, info.bytes,
                                info.pages, len(page_sets[case]))  # fmt: skip
                    if consistent:
                        progress(f"a writer during save:{backend} and save-consistent:{backend}")
                        writer_rates(c, backend)
            finally:
                shutil.rmtree(path, ignore_errors=True)

        return session

    def writer_rates(c: Checkpointer, backend: str) -> None:
        """The writer's ns per store while nothing is saved, during save() and during
        save(consistent=True); an untimed save after each takes what it wrote."""
        share = view[: max(1, int(len(view) // PAGE_SIZE * WRITER_FRACTION)) * PAGE_SIZE]
        for during, consistent in (("nothing", None), ("save", False), ("consistent save", True)):
            writer = _bench.Writers(share, 1, random=True)
            if consistent is None:
                time.sleep(WRITER_IDLE_SECONDS)
            else:
                c.save(consistent=consistent)
            stores, ns = writer.stop()
            c.save()
            rate = next((r for r in results.writer if (r.backend, r.during) == (backend, during)), None)
            if rate is None:
                rate = WriterRate(backend, during)
                results.writer.append(rate)
            rate.ns_per_store.append(ns / max(stores, 1))

    sessions: list[Callable[[], None]] = [untracked, *([bare_watch] if backends else [])]
    sessions += [checkpointer(b) for b in backends]
    if backends:
        try:
            zstandard_module()
            sessions.append(checkpointer(results.best, "zstd"))
        except ImportError as missing:
            results.skipped.append(f"save-zstd:{results.best} skipped: {missing}")
    for r in range(results.repeat):
        for session in sessions[r % len(sessions) :] + sessions[: r % len(sessions)]:
            session()


def _measure(results: Results, subject: str, kind: str, case: Case | None) -> Measurement:
    for m in results.measurements:
        if m.subject == subject and m.case == case:
            return m
    m = Measurement(subject, kind, case)
    results.measurements.append(m)
    return m


def _writes(results: Results, tracking: str, case: Case) -> Writes:
    for w in results.writes:
        if w.tracking == tracking and w.case == case:
            return w
    w = Writes(tracking, case)
    results.writes.append(w)
    return w


def _record(
    results: Results, subject: str, kind: str, case: Case, start: float, written: int, found: int | None, expected: int
) -> None:
    """A measurement that began at ``start`` (perf_counter) ends now; ``found`` pages must be
    ``expected``."""
    ms = (time.perf_counter() - start) * 1e3
    if found is not None and found != expected:
        raise RuntimeError(f"{subject} on {case.label} found {found} changed pages, {expected} were written")
    m = _measure(results, subject, kind, case)
    m.ms.append(ms)
    m.written.append(written)
    if found is not None:
        m.pages.append(found)


def ordered(results: Results) -> Iterator[Measurement]:
    """The measurements in table order: per case the saves, the compares, the floors; then
    the whole-state subjects."""
    rank = {"ntshim": 0, "incremental": 1, "floor": 2}
    for case in results.cases:
        yield from sorted((m for m in results.measurements if m.case == case and m.ms), key=lambda m: rank[m.kind])
    yield from (m for m in results.measurements if m.case is None and m.ms)
