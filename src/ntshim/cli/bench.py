"""``ntshim bench``: the benchmarks, every subject beside a floor measured in the same run."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from .. import _kernel
from ..bench import report
from ..bench import snapshot as sn
from ..bench import sync as sy
from ..bench import writewatch as ww
from ..errors import BackendUnavailable
from ..writewatch import registry


def _bit(text: str) -> bool:
    if text not in ("0", "1"):
        raise argparse.ArgumentTypeError("must be 0 or 1")
    return text == "1"


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return value

    return parse


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(text: str) -> int:
    """A size in bytes: 1G, 256M, 512K (binary units; KiB, MiB, GiB also), or plain bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (1G, 256M, 512K or bytes)")
    value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    page = os.sysconf("SC_PAGE_SIZE")
    if value <= 0 or value % page:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of the page size ({page} bytes)")
    return value


def _percentages(text: str) -> list[float]:
    """Comma-separated percentages of the pages, each in (0, 100]: 0.1,1,10,100."""
    out = []
    for part in text.split(","):
        try:
            value = float(part.strip().rstrip("%"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a percentage") from None
        if not 0 < value <= 100:
            raise argparse.ArgumentTypeError(f"{part!r}: a percentage of the pages must be in (0, 100]")
        out.append(value / 100)
    return out


class BenchCommand:
    name = "bench"
    help = (
        "benchmarks: `ntshim bench writewatch`, `ntshim bench sync`, `ntshim bench snapshot` "
        "(every backend beside the kernel floor)"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        which = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
        p = which.add_parser(
            "writewatch",
            help="Wine's write-watch micro-benchmark for every backend and the kernel floors",
            description="With no row options, runs the eight parameter rows of Wine's table for every "
            "available backend.  Any of --threads/--pages/--delay/--random/--reset-flag runs one row "
            "instead (the others default to 8 8192 3 1 1).",
        )
        p.add_argument("--threads", type=_positive(int), help="writer threads")
        p.add_argument("--pages", type=_positive(int), help="pages written")
        p.add_argument("--delay", type=_positive(float), help="ms between gets")
        p.add_argument("--random", type=_bit, help="1: random page order, 0: sequential")
        p.add_argument("--reset-flag", type=_bit, help="1: get resets; 0: a separate reset follows")
        p.add_argument("--backend", default="all", help="a backend name, or all (default)")
        p.add_argument("--seconds", type=_positive(float), help="seconds per measurement (default 1, quick 0.25)")
        p.add_argument("--repeat", type=_positive(int), help="repeats, interleaved; medians (default 3, quick 1)")
        p.add_argument("--no-native", action="store_true", help="skip the native:<backend> rows (C reader)")
        p.add_argument("--quick", action="store_true", help="a short run (under 20 s): no native rows")
        p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
        p.add_argument("--plot", metavar="FILE.png", help="plot write ns and get us (needs ntshim[plot])")
        p.set_defaults(benchmark_run=self._writewatch)

        q = which.add_parser(
            "sync",
            help="contended wait, zigzag and uncontended locking for every sync backend, Python's own tools and "
            "the raw mechanisms",
            description="contended: two sides loop wait -> release on one semaphore (count 1, max 1) for "
            "ITERATIONS acquisitions in total; zigzag: side 1 sets auto event A and waits on B, side 2 "
            "waits on A and sets B, for SECONDS; uncontended: one side takes and releases a free lock "
            "ITERATIONS times (uncontended-rlock, -semaphore: the same object from Python; uncontended-event: "
            "set + wait(0) on a manual event).  Sides are threads, or processes with --processes.",
        )
        q.add_argument("--test", choices=(*sy.TESTS, "all"), default="all")
        q.add_argument("--iterations", type=_positive(int), default=50_000,
                       help="contended, uncontended*: acquisitions (default 50000)")
        q.add_argument("--seconds", type=_positive(float), default=1.0, help="zigzag: seconds (default 1)")
        q.add_argument("--backend", default="all", help="a sync backend name, or all (default)")
        q.add_argument("--processes", action="store_true", help="two processes (named objects) instead of threads")
        q.add_argument("--repeat", type=_positive(int), default=3, help="repeats, interleaved; medians (default 3)")
        q.add_argument("--sides", type=int, default=sy.DEFAULT_SIDES, metavar="N",
                       help=f"oversubscribed: sides sharing the semaphore, 2..16 (default {sy.DEFAULT_SIDES}, "
                       "twice the CPUs)")
        q.add_argument("--load", type=int, default=0, metavar="N",
                       help="N processes spinning on the CPUs meanwhile: a busy machine (default 0)")
        q.add_argument("--json", metavar="FILE", help="write every figure as JSON")
        q.add_argument("--plot", metavar="FILE.png", help="plot ns per operation (needs ntshim[plot])")
        q.set_defaults(benchmark_run=self._sync)

        s = which.add_parser(
            "snapshot",
            help="Checkpointer.save() with every write-watch backend beside full dumps, np.save, fork-and-dump, "
            "hash-and-compare and shadow-compare, the I/O floor and a bare dirty(reset=True)",
            description="Per dirty fraction and placement: write the same seeded pages, then time each "
            "subject's save until durable; whole-state dumps once per repeat.  Targets (at <= 1%% dirty): "
            "save() on the best backend >= 20x faster than the fastest whole-state subject and within 1.5x of "
            "the I/O floor.  Needs numpy; xxhash optional.  docs/benchmarks.md explains every subject.",
        )
        s.add_argument("--size", type=_bytes, help="bytes of state: 1G (default), 256M, ... (quick: 64M)")
        s.add_argument("--dirty", type=_percentages, default=[f * 100 for f in sn.FRACTIONS],
                       help="percentages of the pages written before each save (default 0.1,1,10,100)")
        s.add_argument("--pattern", choices=(*sn.PATTERNS, "all"), default="all",
                       help=f"random pages, clustered runs of {sn.CLUSTER_PAGES} pages, or all (default)")
        s.add_argument("--backend", default="all", help="a write-watch backend for save(), or all (default)")
        s.add_argument("--dir", help="where the files go (default: a temporary directory under the current one); "
                       "a new directory is made inside it and removed at the end")
        s.add_argument("--repeat", type=_positive(int), help="repeats, interleaved; medians (default 3, quick 1)")
        s.add_argument("--quick", action="store_true", help="a short run (under 30 s): 64 MiB, one repeat")
        s.add_argument("--seed", type=int, default=0, help="seed of the dirty page sets (default 0)")
        s.add_argument("--json", metavar="FILE", help="write every figure as JSON")
        s.add_argument("--plot", metavar="FILE.png", help="plot ms per save and ns per page (needs ntshim[plot])")
        s.set_defaults(benchmark_run=self._snapshot)

    def run(self, args: argparse.Namespace) -> int:
        return int(args.benchmark_run(args))

    def _sync(self, args: argparse.Namespace) -> int:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(width=None if sys.stdout.isatty() else 150)
        try:
            backends = sy.available_backends(args.backend)
        except ValueError as e:
            raise SystemExit(f"ntshim bench sync: {e}") from None
        if not backends:
            raise SystemExit(f"ntshim bench sync: {args.backend} is unavailable here (see ntshim info)")
        tests = list(sy.TESTS) if args.test == "all" else [args.test]
        subjects = {test: sy.subjects(backends, args.processes, test) for test in tests}
        if args.load < 0:
            raise SystemExit("ntshim bench sync: --load must be 0 or more")
        if not 2 <= args.sides <= 16:
            raise SystemExit("ntshim bench sync: --sides must be 2..16")
        total = sum(map(len, subjects.values())) * args.repeat
        console.print(f"{len(tests)} test(s), {total // args.repeat} measurements x {args.repeat} repeat(s)"
                      + (f", {args.load} busy process(es) beside" if args.load else ""))
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task("", total=total)
            results = sy.run(
                backends, tests, args.processes, args.iterations, args.seconds, args.repeat,
                lambda what: progress.update(task, advance=1, description=f"{what:<28}"), args.load, args.sides,
            )
        console.print(report.sync_table(results))
        for line in report.sync_targets_text(results):
            console.print(line)
        settings = {"tests": tests, "subjects": subjects, "iterations": args.iterations, "seconds": args.seconds,
                    "repeat": args.repeat, "processes": args.processes, "load": args.load, "sides": args.sides,
                    "command": " ".join(sys.argv)}
        self._save(args, console, lambda: report.sync_json(results, _kernel.machine(), settings),
                   lambda path: report.sync_plot(results, path))
        return 0

    def _snapshot(self, args: argparse.Namespace) -> int:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(width=None if sys.stdout.isatty() else 170)
        try:
            sn.numpy_module()
            backends = sn.available_backends(args.backend)
        except (ImportError, ValueError) as e:
            raise SystemExit(f"ntshim bench snapshot: {e}") from None
        if args.backend != "all" and not backends:
            raise SystemExit(f"ntshim bench snapshot: {args.backend} is unavailable here (see ntshim info)")
        # --dirty's default is already in percent; a given --dirty was parsed into fractions.
        fractions = sn.FRACTIONS if args.dirty == [f * 100 for f in sn.FRACTIONS] else args.dirty
        cases = sn.cases_for(fractions, sn.PATTERNS if args.pattern == "all" else [args.pattern])
        size = args.size or ((64 << 20) if args.quick else (1 << 30))
        repeat = args.repeat or (1 if args.quick else 3)
        parent = args.dir or os.getcwd()
        if not os.path.isdir(parent):
            raise SystemExit(f"ntshim bench snapshot: --dir {parent} is not a directory")
        directory = tempfile.mkdtemp(prefix="ntshim-bench-snapshot-", dir=parent)
        try:
            filesystem = sn.filesystem_of(directory)
            console.print(f"{len(cases)} case(s), backends {', '.join(backends) or 'none'}; {size >> 20} MiB "
                          f"of state, {repeat} repeat(s); files on {filesystem}")  # fmt: skip
            if filesystem.startswith(("tmpfs", "ramfs")):
                console.print("[yellow]that is memory: fsync costs nothing there; use --dir on a disk[/yellow]")
            total = repeat * sn.steps(len(cases), len(backends), 2)
            with Progress(
                TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console, transient=True
            ) as progress:
                task = progress.add_task("", total=total)
                results = sn.run(size, cases, backends, repeat, directory,
                                 lambda what: progress.update(task, advance=1, description=f"{what:<36}"),
                                 seed=args.seed)  # fmt: skip
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        for line in results.skipped:
            console.print(f"[yellow]{line}[/yellow]")
        console.print(report.snapshot_table(results))
        console.print(report.snapshot_writes_table(results))
        if results.writer:
            console.print(report.snapshot_writer_table(results))
        lines = report.snapshot_targets_text(results)
        for line in lines:
            console.print(line)
        if not lines:
            console.print(f"[dim]No target judged: they apply at <= {sn.TARGET_FRACTION:.0%} dirty with a backend.[/dim]")
        settings = {"size": size, "fractions": list(dict.fromkeys(c.fraction for c in cases)), "patterns": list(dict.fromkeys(
            c.pattern for c in cases)), "backends": backends, "repeat": repeat, "seed": args.seed,
            "dir": parent, "command": " ".join(sys.argv)}  # fmt: skip
        self._save(args, console, lambda: report.snapshot_json(results, _kernel.machine(), settings),
                   lambda path: report.snapshot_plot(results, path))
        return 0

    @staticmethod
    def _save(args: argparse.Namespace, console: Any, data: Callable[[], dict[str, Any]],
              plot: Callable[[str], None]) -> None:
        """--json and --plot, if asked for."""
        if args.json:
            report.write_json(data(), args.json)
            console.print(f"JSON: {args.json}")
        if args.plot:
            plot(args.plot)
            console.print(f"plot: {args.plot}")

    def _writewatch(self, args: argparse.Namespace) -> int:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(width=None if sys.stdout.isatty() else 150)  # files and pipes get the whole table
        rows = self._rows(args)
        backends = self._backends(args, console)
        subjects = ww.subjects_for(backends, native=not (args.quick or args.no_native))
        seconds = args.seconds or (0.25 if args.quick else 1.0)
        repeat = args.repeat or (1 if args.quick else 3)
        total = len(rows) * len(subjects) * repeat
        console.print(
            f"{len(rows)} row(s) x {len(subjects)} subjects x {repeat} repeat(s), {seconds:g} s each: "
            f"about {total * seconds * 1.1:.0f} s"
        )
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task("", total=total)

            def step(row: ww.Row, subject: str) -> None:
                progress.update(task, advance=1, description=f"{row.label:>14}  {subject:<20}")

            results = ww.run(rows, subjects, seconds, repeat, step)
        console.print(report.writewatch_table(results, show_references=not args.quick))
        if args.quick:  # a quarter second per cell says what things cost, not whether a 10% target holds
            console.print("[dim]Targets are judged on full runs (without --quick); a quick run is too short.[/dim]")
        else:
            for line in report.targets_text(results):
                console.print(line)
        settings = {
            "rows": [r.__dict__ for r in rows],
            "subjects": subjects,
            "seconds": seconds,
            "repeat": repeat,
            "command": " ".join(sys.argv),
        }
        self._save(args, console, lambda: report.writewatch_json(results, _kernel.machine(), settings),
                   lambda path: report.writewatch_plot(results, path))
        return 0

    @staticmethod
    def _rows(args: argparse.Namespace) -> list[ww.Row]:
        given = [args.threads, args.pages, args.delay, args.random, args.reset_flag]
        if all(value is None for value in given):
            return list(ww.SEED_ROWS)
        default = ww.Row(8, 8192, 3, True, True)
        return [
            ww.Row(
                args.threads or default.threads,
                args.pages or default.pages,
                args.delay or default.delay_ms,
                default.random if args.random is None else args.random,
                default.reset_flag if args.reset_flag is None else args.reset_flag,
            )
        ]

    @staticmethod
    def _backends(args: argparse.Namespace, console: object) -> list[str]:
        if args.backend == "all":
            available = [b.backend for b in registry.backends() if b.available]
            for b in registry.backends():
                if not b.available:
                    console.print(f"[yellow]{b.backend} skipped: {b.reason}[/yellow]")  # type: ignore[attr-defined]
            return available
        try:  # the family's own checks: a known name, available here
            registry.FAMILY.select(args.backend)
        except (ValueError, BackendUnavailable) as e:
            raise SystemExit(f"ntshim bench: {e}") from None
        return [args.backend]


__all__ = ["BenchCommand"]
