"""``ntshim bench snapshot``: every subject measured on a tiny state, through the command
line and the Python API; the JSON holds every figure, the targets are judged.  Timing is not
asserted: these tests check that the benchmark measures what it says (each incremental
subject found exactly the pages written), not how fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntshim.bench import report
from ntshim.bench import snapshot as sn
from ntshim.memory import PAGE_SIZE as PS
from ntshim.writewatch import registry

SIZE = 8 << 20


CONSISTENT = ("uffd-async", "mprotect")  # the backends save(consistent=True) works with


def subjects_expected(backends: list[str], xxhash: bool) -> set[str]:
    hashes = set(sn.HASHES) if xxhash else {sn.HASHES[0]}
    consistent = {f"save-consistent:{b}" for b in backends if b in CONSISTENT}
    return {*(f"save:{b}" for b in backends), *consistent, f"save-zstd:{backends[0]}", *hashes, sn.SHADOW,
            sn.FLOOR_IO, sn.FLOOR_PUBLISH, sn.FLOOR_DIRTY}  # fmt: skip


def has_xxhash() -> bool:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return False
    return True


def test_cli_every_subject_json_plot_and_targets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != registry.ENV_VAR}
    proc = subprocess.run(
        [sys.executable, "-m", "ntshim", "bench", "snapshot", "--size", "8M", "--dirty", "1", "--repeat", "1",
         "--dir", str(tmp_path), "--json", "out.json", "--plot", "out.png"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    backends = [b.backend for b in registry.backends() if b.available]
    assert data["best_backend"] == backends[0] and data["size"] == SIZE
    assert data["filesystem"].split()[0] in proc.stdout
    rows = data["results"]
    per_case = {r["subject"] for r in rows if r["fraction"] is not None}
    assert per_case == subjects_expected(backends, has_xxhash())
    assert {r["subject"] for r in rows if r["fraction"] is None} == {*sn.WHOLE_STATE, sn.FORK_PAUSE}
    assert {(r["fraction"], r["pattern"]) for r in rows if r["fraction"] is not None} == {
        (0.01, "random"), (0.01, "clustered"),
    }  # fmt: skip
    expected_pages = round(0.01 * SIZE / PS)
    for r in rows:
        assert len(r["ms"]) == 1 and r["ms_median"] > 0, r
        if r["kind"] in ("ntshim", "incremental") or r["subject"] == sn.FLOOR_DIRTY:
            assert r["pages"] == [expected_pages], r  # exactly the pages written, found
        if r["kind"] == "whole":
            assert r["bytes_written_median"] >= SIZE
        elif r["subject"] in (sn.FLOOR_IO, sn.HASHES[0], sn.SHADOW):
            assert r["bytes_written_median"] == expected_pages * PS
    assert {w["tracking"] for w in data["writes"]} == {"none", *backends}
    assert all(w["ns_per_page_median"] > 0 for w in data["writes"])
    assert len(data["targets"]) == 6  # three targets (the consistent save's included), two patterns at 1%
    for t in data["targets"]:
        line = f"{'held' if t['held'] else 'MISSED'}: {t['description']}"
        assert line in proc.stdout.replace("\n", " ") or line[:60] in proc.stdout
    assert sum("faster than fork-and-dump" in t["description"] for t in data["targets"]) == 2
    refused = sorted(s.split()[0] for s in data["skipped"] if s.startswith("save-consistent:"))
    assert refused == sorted(f"save-consistent:{b}" for b in backends if b not in CONSISTENT)
    rates = {(r["backend"], r["during"]): r for r in data["writer"]}
    assert set(rates) == {(b, d) for b in backends if b in CONSISTENT for d in ("nothing", "save", "consistent save")}
    assert all(len(r["ns_per_store"]) == 1 and r["ns_per_store_median"] > 0 for r in rates.values())
    assert "a writer during saves" in proc.stdout
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ntshim-bench")] == []  # cleaned up


def test_python_api_one_backend_every_subject(tmp_path: Path) -> None:
    backend = next(b.backend for b in registry.backends() if b.available)
    cases = sn.cases_for([0.001, 0.1], ["clustered"])
    results = sn.run(SIZE, cases, [backend], 1, str(tmp_path), seed=3)
    subjects = {m.subject for m in results.measurements if m.case is not None}
    assert subjects == subjects_expected([backend], has_xxhash())
    for case in cases:
        pages = len(case.pages(SIZE // PS, 3))
        save = next(m for m in results.measurements if m.subject == f"save:{backend}" and m.case == case)
        assert save.pages == [pages] and save.written[0] > pages * PS  # data, checksums and a manifest
    judged = sn.targets(results)
    assert [t.description for t in judged] == [
        f"save:{backend} >= 20x faster than the fastest whole-state subject, 0.1% clustered",
        f"save:{backend} within 1.5x of the I/O floor, 0.1% clustered",
    ]  # 10% is past the targets' 1%
    text = report.snapshot_targets_text(results)
    assert all(line.startswith(("held: ", "MISSED: ")) for line in text) and len(text) == 2
    json.dumps(report.snapshot_json(results, {}, {}))  # serialisable
    assert list(tmp_path.iterdir()) == []  # every file deleted as the run went


def test_page_sets_are_seeded_and_placed() -> None:
    npages = 4096
    random = sn.Case(0.01, "random").pages(npages, 0)
    assert np.array_equal(random, sn.Case(0.01, "random").pages(npages, 0))
    assert not np.array_equal(random, sn.Case(0.01, "random").pages(npages, 1))
    assert len(random) == 41 and len(set(random.tolist())) == 41 and random.max() < npages
    clustered = sn.Case(0.1, "clustered").pages(npages, 0)
    assert len(clustered) == 410
    slots, counts = np.unique(clustered // sn.CLUSTER_PAGES, return_counts=True)
    assert len(slots) == 7  # ceil(410 / 64) runs of 64 pages at run-aligned places (adjacent ones may touch)
    assert sorted(counts.tolist()) == [410 - 6 * 64] + [64] * 6  # the last run cut to the count
    assert len(sn.Case(1.0, "clustered").pages(npages)) == npages


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "12345"], "multiple of the page size"),
        (["--size", "lots"], "is not a size"),
        (["--dirty", "0"], "must be in (0, 100]"),
        (["--dirty", "a"], "is not a percentage"),
        (["--backend", "nope"], "unknown write-watch backend 'nope'"),
        (["--dir", "/nonexistent/x"], "is not a directory"),
        (["--pattern", "diagonal"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ntshim", "bench", "snapshot", "--size", "1M", *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_without_xxhash_its_subject_is_skipped_and_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xxhash", None)  # import xxhash now raises ImportError
    results = sn.run(1 << 20, sn.cases_for([0.01], ["random"]), [], 1, str(tmp_path))
    assert results.skipped == ["hash-compare:xxh3 skipped: xxhash is not installed (pip install xxhash)"]
    subjects = {m.subject for m in results.measurements if m.case is not None}
    assert subjects == {sn.HASHES[0], sn.SHADOW, sn.FLOOR_IO, sn.FLOOR_PUBLISH}  # no backend: no save rows
    assert sn.targets(results) == []  # nothing to judge without a save
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report.snapshot_table(results), report.snapshot_writes_table(results))
    assert "shadow-compare:numpy" in console.export_text() and "save:" not in console.export_text()
