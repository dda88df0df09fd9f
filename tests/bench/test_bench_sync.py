"""``ntshim bench sync``: every subject measured on every test, threads and processes, every
figure in the JSON, the plot drawn, targets computed from the numbers.  Timing is not
asserted: the benchmark measures speed; these tests check that it measures, and that the
native loops really ping-pong (a loop that skipped its waits would report nonsense)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from required import require_sync_backend

from ntshim import _bench
from ntshim.bench import sync as sy
from ntshim.sync import Event, Semaphore
from ntshim.sync import registry as sync_registry


def bench(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != sync_registry.ENV_VAR}
    return subprocess.run(
        [sys.executable, "-m", "ntshim", "bench", "sync", *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=environment, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("processes", [False, True])
def test_every_subject_on_every_test_json_and_plot(tmp_path: Path, processes: bool) -> None:
    require_sync_backend("futex")  # the targets compare futex with the floors
    proc = bench(
        "--iterations", "2000", "--seconds", "0.1", "--repeat", "2", "--json", "out.json", "--plot", "out.png",
        *(["--processes"] if processes else []), tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    available = [b.backend for b in sync_registry.backends() if b.available]
    assert "floor:futex" in sy.subjects(available, processes) and "multiprocessing" in sy.subjects(available, processes)
    for test in sy.TESTS:
        rows = {r["subject"]: r for r in data["results"] if r["test"] == test}
        assert list(rows) == sy.subjects(available, processes, test)
        if test in sy.PYTHON_ONLY:  # ntshim's object beside Python's, no floors
            assert list(rows) == ["futex", *(["multiprocessing"] if processes else ["threading", "multiprocessing"])]
        for r in rows.values():
            assert r["processes"] is processes
            assert len(r["samples"]) == 2 and all(s > 0 for s in r["samples"])
            if test == "oversubscribed":  # every subject's waits timed, on every repeat
                assert len(r["waits"]) == 2 and 0 < r["wait_median_p99"][0] <= r["wait_median_p99"][1]
    assert data["settings"]["iterations"] == 2000
    assert {r["test"] for r in data["references"]} == {"contended", "zigzag"}  # (the msync README's two)
    assert data["targets"], "targets are computed whenever futex and its comparisons ran"
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "floor:futex-fifo" in proc.stdout and ("held" in proc.stdout or "MISSED" in proc.stdout)


def test_one_test_one_backend(tmp_path: Path) -> None:
    require_sync_backend("server")
    proc = bench("--test", "zigzag", "--backend", "server", "--seconds", "0.1", "--repeat", "1", "--json", "o.json",
                 tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    subjects = {r["subject"] for r in json.loads((tmp_path / "o.json").read_text())["results"]}
    assert subjects == {*sy.FLOORS, "server", "threading", "multiprocessing"}  # no native row: futex not asked


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    proc = bench("--backend", "nope", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "unknown sync backend 'nope'" in proc.stderr


@pytest.mark.parametrize("mechanism", [*sy.FLOORS, *sy.NATIVE])
@pytest.mark.parametrize("processes", [False, True])
def test_native_loops_really_alternate(mechanism: str, processes: bool) -> None:
    require_sync_backend("futex")  # the loops run on futex objects' slots
    keep = [Semaphore(1, 1, backend="futex"), Event(manual=False, backend="futex"), Event(manual=False, backend="futex")]
    slots = tuple(o._handle.slot for o in keep)  # type: ignore[attr-defined]
    code = {**sy.FLOORS, **sy.NATIVE}[mechanism]
    elapsed, trips, _, _ = _bench.bench_sync(code, sy.TESTS.index("zigzag"), processes, 100_000_000, slots)
    assert trips > 0 and elapsed >= 100_000_000
    for test in ("contended", "uncontended"):
        elapsed, _, _, _ = _bench.bench_sync(code, sy.TESTS.index(test), processes, 10_000, slots)
        assert elapsed > 0
    elapsed, _, median, p99 = _bench.bench_sync(code, sy.TESTS.index("oversubscribed"), processes, 10_000, slots, 5)
    assert elapsed > 0 and 0 < median <= p99  # every acquisition's wait was timed
    # The loops leave the objects as they found them: every wait was matched by a signal.
    assert keep[0].read() == (1, 1)
    assert keep[1].read() == (False, False) and keep[2].read() == (False, False)
    for obj in keep:
        obj.close()


def test_under_load(tmp_path: Path) -> None:
    """--load N runs N spinning processes beside the subjects, and stops them after."""
    require_sync_backend("futex")
    proc = bench("--test", "uncontended", "--backend", "futex", "--iterations", "1000", "--repeat", "1", "--load",
                 "2", "--json", "o.json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 busy process(es) beside" in proc.stdout
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["settings"]["load"] == 2 and all(r["samples"] for r in data["results"])
    left = subprocess.run(["pgrep", "-f", "^" + sys.executable + " -c while True: pass$"], capture_output=True,
                          text=True, check=False)
    assert not left.stdout.strip(), "a busy process outlived the benchmark"
    refused = bench("--load", "-1", tmp_path=tmp_path)
    assert refused.returncode != 0 and "--load must be 0 or more" in refused.stderr
    refused = bench("--sides", "1", tmp_path=tmp_path)
    assert refused.returncode != 0 and "--sides must be 2..16" in refused.stderr
