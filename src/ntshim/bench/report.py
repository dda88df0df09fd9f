"""Reporting benchmark results: a terminal table, JSON with every figure, and a plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import snapshot as sn
from . import sync as sy
from .writewatch import FLOOR_OF, REFERENCES, Measurement, Reference, backend_of, ratios, targets


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if value < 1000 else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def writewatch_table(results: Sequence[Measurement], show_references: bool = True) -> Any:
    """A rich Table of the results, row by row, each subject beside its floor."""
    from rich.table import Table

    table = Table(
        title="write watches: write ns per store, get us per call (median); ratios to the floor of the "
        "same mechanism, measured in this run",
        title_justify="left",
        caption="row: threads, pages, delay between gets (ms), random order, get resets (1) or a reset follows (0)",
        caption_justify="left",
    )
    for column, justify in [
        ("row", "left"),
        ("subject", "left"),
        ("write ns", "right"),
        ("x floor", "right"),
        ("get us", "right"),
        ("x floor", "right"),
        ("reset us", "right"),
        ("pages/get", "right"),
    ]:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    by_ratio = {(r.label, r.subject): r for r in ratios(list(results))}
    labels = list(dict.fromkeys(m.row.label for m in results))
    for n, label in enumerate(labels):
        for m in (m for m in results if m.row.label == label):
            r = by_ratio.get((label, m.subject))
            style = "dim" if m.subject.startswith("floor:") else None
            table.add_row(
                label,
                m.subject,
                _number(m.write_ns),
                _ratio(r.write if r else None),
                _number(m.get_median_us),
                _ratio(r.get if r else None),
                _number(m.reset_median_us),
                _number(m.pages_per_get, 0),
                style=style,
            )
        if show_references:
            for ref in (ref for ref in REFERENCES if ref.label == label):
                table.add_row(
                    label, f"[italic]{ref.source}[/italic]", _number(ref.write_ns), "", _number(ref.get_us), "", "", "",
                    style="dim",
                )
        if n < len(labels) - 1:
            table.add_section()
    return table


def targets_text(results: Sequence[Measurement]) -> list[str]:
    return [
        f"{'held' if t.held else 'MISSED'}: {t.description} ({t.detail})" for t in targets(list(results))
    ]


def writewatch_json(
    results: Sequence[Measurement], machine: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    """Every figure of the run, the machine it ran on, and the references, for machines."""
    return {
        "benchmark": "writewatch",
        "machine": machine,
        "settings": settings,
        "floor_of": FLOOR_OF,
        "results": [m.to_json() for m in results],
        "ratios": [r.__dict__ for r in ratios(list(results))],
        "targets": [t.__dict__ for t in targets(list(results))],
        "references": [
            {**ref.__dict__, "note": "measured elsewhere, on other hardware"} for ref in REFERENCES
        ],
    }


def write_json(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def writewatch_plot(results: Sequence[Measurement], path: str | Path, references: Sequence[Reference] = ()) -> None:
    """Write ns and get us per subject per row, log scale, to a PNG (needs matplotlib: the
    ``[plot]`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'ntshim[plot]'") from None
    labels = list(dict.fromkeys(m.row.label for m in results))
    subjects = list(dict.fromkeys(m.subject for m in results))
    by_key = {(m.row.label, m.subject): m for m in results}
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(labels)), 8), sharex=True)
    width = 0.8 / len(subjects)
    for ax, attribute, unit in ((axes[0], "write_ns", "write, ns per store"), (axes[1], "get_median_us", "get, us")):
        for i, subject in enumerate(subjects):
            xs, ys = [], []
            for j, label in enumerate(labels):
                m = by_key.get((label, subject))
                value = getattr(m, attribute) if m else None
                if value:
                    xs.append(j + (i - len(subjects) / 2 + 0.5) * width)
                    ys.append(value)
            hatch = "//" if subject.startswith("floor:") else None
            ax.bar(xs, ys, width, label=subject, hatch=hatch, alpha=0.6 if backend_of(subject) != subject else 1.0)
        ax.set_yscale("log")
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels)
    axes[1].set_xlabel("threads pages delay(ms) random reset-flag")
    axes[0].legend(ncol=4, fontsize="small")
    axes[0].set_title("ntshim write watches: every backend beside its kernel floor (hatched), this machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- ntshim bench sync ----------------------------------------------------------------------


def sync_table(results: Sequence[sy.Measurement], show_references: bool = True) -> Any:
    """Per test, every subject's median ns per operation, and its ratio to the floors."""
    from rich.table import Table

    mode = "processes" if results and results[0].processes else "threads"
    table = Table(
        title=f"sync, two {mode}: ns per acquisition (contended) / per round trip (zigzag) / per acquire + "
        "release (uncontended*, one side; set + wait(0) for uncontended-event), median; ratios to the floors "
        "measured in this run",
        title_justify="left",
        caption="floor:futex lets a releaser take the unit back (sem_t); floor:futex-fifo hands it over "
        "as NT objects must, with ntshim's waiting policy",
        caption_justify="left",
    )
    oversubscribed = any(m.waits for m in results)
    columns = [("test", "left"), ("subject", "left"), ("ns/op", "right"), ("ops/s", "right"),
               ("x floor:futex", "right"), ("x floor:futex-fifo", "right")]
    if oversubscribed:
        columns += [("wait median", "right"), ("wait p99", "right")]
    for column, justify in columns:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    tests = list(dict.fromkeys(m.test for m in results))
    for n, test in enumerate(tests):
        floors = {m.subject: m.median for m in results if m.test == test and m.kind == "floor" and m.samples}
        for m in (m for m in results if m.test == test and m.samples):
            plain, fifo = floors.get("floor:futex"), floors.get("floor:futex-fifo")
            waits = m.wait_percentiles
            extra = [_number(waits[0], 0), _number(waits[1], 0)] if waits else ["", ""]
            table.add_row(
                test, m.subject, _number(m.median, 0), _number(1e9 / m.median, 0),
                _ratio(m.median / plain if plain and m.kind != "floor" else None),
                _ratio(m.median / fifo if fifo and m.kind != "floor" else None),
                *(extra if oversubscribed else []),
                style="dim" if m.kind == "floor" else None,
            )
        if show_references:
            for ref in (r for r in sy.REFERENCES if r.test == test):
                table.add_row(test, f"[italic]{ref.source}[/italic]", _number(ref.ns_per_op, 0), "", "", "",
                              style="dim")
        if n < len(tests) - 1:
            table.add_section()
    return table


def sync_targets_text(results: Sequence[sy.Measurement]) -> list[str]:
    return [f"{'held' if t.held else 'MISSED'}: {t.description} ({t.detail})" for t in sy.targets(list(results))]


def sync_json(results: Sequence[sy.Measurement], machine: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "sync",
        "machine": machine,
        "settings": settings,
        "unit": "ns per acquisition (contended) / ns per round trip (zigzag) / ns per acquire + release "
        "(uncontended)",
        "results": [
            {"test": m.test, "subject": m.subject, "kind": m.kind, "processes": m.processes, "amount": m.amount,
             "median": m.median, "samples": m.samples,
             **({"wait_median_p99": m.wait_percentiles, "waits": m.waits} if m.waits else {})}
            for m in results if m.samples
        ],
        "targets": [t.__dict__ for t in sy.targets(list(results))],
        "references": [{**r.__dict__, "note": "measured elsewhere, on other hardware"} for r in sy.REFERENCES],
    }


def sync_plot(results: Sequence[sy.Measurement], path: str | Path) -> None:
    """ns per operation per subject, one panel per test, log scale (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'ntshim[plot]'") from None
    tests = list(dict.fromkeys(m.test for m in results))
    columns = min(4, len(tests))
    lines = -(-len(tests) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(6 * columns, 5 * lines), squeeze=False)
    colors = {"floor": "#999999", "native": "#1f77b4", "python": "#2ca02c", "baseline": "#d62728"}
    for ax in axes.flat[len(tests):]:
        ax.set_visible(False)
    for ax, test in zip(axes.flat, tests):
        rows = [m for m in results if m.test == test and m.samples]
        ax.barh([m.subject for m in rows], [m.median for m in rows], color=[colors[m.kind] for m in rows],
                hatch=None)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel({"contended": "ns per acquisition", "oversubscribed": "ns per acquisition",
                       "zigzag": "ns per round trip",
                       "uncontended-event": "ns per set + wait(0)"}.get(test, "ns per acquire + release"))
        ax.set_title(f"{test} ({'processes' if rows and rows[0].processes else 'threads'})")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("ntshim sync: grey floors (minimal C), blue native, green Python API, red Python's own tools")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- ntshim bench snapshot ------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.2f}" if n < 100 << 20 else f"{n / (1 << 20):,.0f}"


def snapshot_header(results: sn.Results) -> str:
    return (
        f"state {_mib(results.size)} MiB ({results.size // results.page_size:,} pages of {results.page_size} bytes); "
        f"files in {results.directory} on {results.filesystem}; median of {results.repeat} repeat(s)"
    )


def snapshot_table(results: sn.Results) -> Any:
    """Per case every subject's ms per save, MiB written, and its ratios to floor:io and to
    the fastest whole-state subject of the case; then the whole-state subjects."""
    from rich.table import Table

    table = Table(
        title="snapshot saves: " + snapshot_header(results), title_justify="left",
        caption=f"x I/O floor: ms / {sn.FLOOR_IO}'s ms on the same case; x fastest whole-state: ms / the fastest of "
        f"{', '.join(sn.WHOLE_STATE)} (measured once per repeat, below) and the compares on the same case",
        caption_justify="left",
    )  # fmt: skip
    for column, justify in [("subject", "left"), ("dirty", "right"), ("pattern", "left"), ("ms/save", "right"),
                            ("MiB written", "right"), ("x I/O floor", "right"), ("x fastest whole-state", "right")]:  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    previous: object = "start"
    best = f"save:{results.best}" if results.backends else None
    whole_ms = [m.median for m in results.measurements if m.kind == "whole" and m.ms]
    for m in sn.ordered(results):
        if m.case != previous and previous != "start":
            table.add_section()
        previous = m.case
        if m.case is not None:
            floor = results.median(sn.FLOOR_IO, m.case)
            fastest = results.fastest_whole_state(m.case)
            to_floor = m.median / floor if floor and m.subject != sn.FLOOR_IO else None
            to_whole = m.median / fastest[1] if fastest and m.kind != "floor" else None
            dirty, pattern = f"{m.case.fraction * 100:g}%", m.case.pattern
        else:
            to_floor = None
            to_whole = m.median / min(whole_ms) if whole_ms and m.kind == "whole" else None
            dirty, pattern = "whole", "-"
        table.add_row(
            m.subject, dirty, pattern, _number(m.median, 2 if m.median < 10 else 1),
            _mib(m.written_median) if m.written else "-", _ratio(to_floor), _ratio(to_whole),
            style="dim" if m.kind in ("floor", "pause") else ("bold" if m.subject == best else None),
        )  # fmt: skip
    return table


def snapshot_writes_table(results: sn.Results) -> Any:
    """ns per page written, untracked and tracked by each backend, per case."""
    from rich.table import Table

    table = Table(title="writers: ns per page written (one 8-byte store per page, median); x untracked",
                  title_justify="left")  # fmt: skip
    table.add_column("tracking")
    for case in results.cases:
        table.add_column(case.label, justify="right")
    untracked = {w.case: w.median for w in results.writes if w.tracking == "none"}
    for tracking in dict.fromkeys(w.tracking for w in results.writes):
        by_case = {w.case: w.median for w in results.writes if w.tracking == tracking}
        cells = []
        for case in results.cases:
            ns, base = by_case.get(case), untracked.get(case)
            ratio = f" ({ns / base:.1f}x)" if ns and base and tracking != "none" else ""
            cells.append(f"{_number(ns, 0)}{ratio}" if ns else "-")
        table.add_row(tracking, *cells)
    return table


def snapshot_writer_table(results: sn.Results) -> Any:
    """A native writer's ns per store while nothing is saved, during save() and during
    save(consistent=True), per backend; x while nothing is saved."""
    from rich.table import Table

    table = Table(title=f"a writer during saves: one native thread storing into random pages of the first "
                  f"{sn.WRITER_FRACTION:.0%} of the state, ns per store (median); x while nothing is saved",
                  title_justify="left")  # fmt: skip
    table.add_column("backend")
    for during in ("nothing", "save", "consistent save"):
        table.add_column(f"during {during}", justify="right")
    for backend in dict.fromkeys(r.backend for r in results.writer):
        by = {r.during: r.median for r in results.writer if r.backend == backend}
        idle = by.get("nothing")
        cells = []
        for during in ("nothing", "save", "consistent save"):
            ns = by.get(during)
            ratio = f" ({ns / idle:.1f}x)" if ns and idle and during != "nothing" else ""
            cells.append(f"{_number(ns, 0)}{ratio}" if ns else "-")
        table.add_row(backend, *cells)
    return table


def snapshot_targets_text(results: sn.Results) -> list[str]:
    return [f"{'held' if t.held else 'MISSED'}: {t.description} ({t.detail})" for t in sn.targets(results)]


def snapshot_json(results: sn.Results, machine: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": "snapshot",
        "machine": machine,
        "settings": settings,
        "size": results.size,
        "page_size": results.page_size,
        "directory": results.directory,
        "filesystem": results.filesystem,
        "best_backend": results.best if results.backends else None,
        "unit": "ms per save; bytes written per save; ns per page written; ns per store of the writer",
        "results": [m.to_json() for m in sn.ordered(results)],
        "writes": [{"tracking": w.tracking, "fraction": w.case.fraction, "pattern": w.case.pattern,
                    "ns_per_page_median": w.median, "ns_per_page": w.ns_per_page} for w in results.writes],
        "writer": [{"backend": r.backend, "during": r.during, "ns_per_store_median": r.median,
                    "ns_per_store": r.ns_per_store} for r in results.writer],
        "targets": [t.__dict__ for t in sn.targets(results)],
        "skipped": results.skipped,
    }


def snapshot_plot(results: sn.Results, path: str | Path) -> None:
    """ms per save per subject for each case (log scale), and ns per page written (needs
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'ntshim[plot]'") from None
    cases = results.cases
    subjects = list(dict.fromkeys(m.subject for m in sn.ordered(results) if m.case is not None))
    whole = [m for m in results.measurements if m.kind in ("whole", "pause") and m.ms]
    fig, axes = plt.subplots(2, 1, figsize=(max(9, 1.8 * len(cases)), 12), height_ratios=(3, 2))
    ax = axes[0]
    width = 0.8 / max(1, len(subjects))
    palette = [plt.get_cmap("tab20")(n) for n in range(20)]
    for i, subject in enumerate(subjects):
        kind = next(m.kind for m in results.measurements if m.subject == subject)
        xs = [j + (i - len(subjects) / 2 + 0.5) * width for j, case in enumerate(cases) if results.median(subject, case)]
        ys = [v for case in cases if (v := results.median(subject, case))]
        color = "#999999" if kind == "floor" else palette[i % len(palette)]
        ax.bar(xs, ys, width, label=subject, color=color, hatch="//" if kind == "floor" else None, edgecolor="black",
               linewidth=0.3)  # fmt: skip
    for m, style in zip(whole, ("-", "--", ":", "-.")):
        what = "the parent's pause" if m.kind == "pause" else "whole state"
        ax.axhline(m.median, color="#d62728", linestyle=style, label=f"{m.subject} ({what})")
    ax.set_yscale("log")
    ax.set_ylabel("ms per save")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c.label for c in cases])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=5, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.set_title(f"ntshim bench snapshot: {_mib(results.size)} MiB of state, files on {results.filesystem}")
    ax = axes[1]
    trackings = list(dict.fromkeys(w.tracking for w in results.writes))
    width = 0.8 / max(1, len(trackings))
    for i, tracking in enumerate(trackings):
        by_case = {w.case: w.median for w in results.writes if w.tracking == tracking}
        xs = [j + (i - len(trackings) / 2 + 0.5) * width for j, c in enumerate(cases) if c in by_case]
        ax.bar(xs, [by_case[c] for c in cases if c in by_case], width, label=tracking)
    ax.set_yscale("log")
    ax.set_ylabel("ns per page written")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([c.label for c in cases])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=5, fontsize="small")
    ax.set_title("writers: untracked (none) and tracked by each backend")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
