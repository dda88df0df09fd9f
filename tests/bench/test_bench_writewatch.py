"""``ntshim bench writewatch``: every subject measured, every figure in the JSON, the plot
drawn, the ratios and targets computed from the numbers.  Timing is not asserted: the
benchmark measures speed; these tests check that it measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from required import require_backend

from ntshim.bench import writewatch as ww
from ntshim.writewatch import registry


def bench(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != registry.ENV_VAR}
    return subprocess.run(
        [sys.executable, "-m", "ntshim", "bench", "writewatch", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=environment,
        check=False,
    )


def test_one_row_every_subject_json_and_plot(tmp_path: Path) -> None:
    proc = bench(
        "--threads", "2", "--pages", "64", "--delay", "2", "--random", "0", "--reset-flag", "0",
        "--seconds", "0.1", "--repeat", "2", "--json", "out.json", "--plot", "out.png",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    available = [b.backend for b in registry.backends() if b.available]
    expected = ww.subjects_for(available)
    assert [r["subject"] for r in data["results"]] == expected
    for result in data["results"]:
        assert result["label"] == "2 64 2 0 0"
        assert result["writes"] > 0 and result["write_ns"] > 0
        assert len(result["write_ns_repeats"]) == 2
        if result["subject"] == "floor:none":
            assert result["gets"] == 0 and result["get_us"] is None
        else:
            assert result["gets"] > 0 and result["get_us"]["median"] > 0 and result["reset_us"]["count"] > 0
            assert result["pages_per_get"] > 0  # writers were seen by every mechanism
    assert {r["subject"] for r in data["ratios"]} == {s for s in expected if not s.startswith("floor:")}
    assert data["machine"]["kernel"]["page_size"] == os.sysconf("SC_PAGE_SIZE")
    assert data["settings"]["repeat"] == 2 and data["settings"]["seconds"] == 0.1
    assert any("Windows" in ref["source"] for ref in data["references"])
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for subject in expected:
        assert subject in proc.stdout


def test_quick_run_covers_the_seed_rows(tmp_path: Path) -> None:
    require_backend("uffd-async")
    proc = bench("--quick", "--backend", "uffd-async", "--seconds", "0.05", "--json", "q.json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "q.json").read_text())
    labels = {r["label"] for r in data["results"]}
    assert labels == {row.label for row in ww.SEED_ROWS}
    assert {r["subject"] for r in data["results"]} == {"floor:none", "floor:uffd-async", "uffd-async"}
    assert any("uffd-async get us within 1.25x" in t["description"] for t in data["targets"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--random", "2"], "must be 0 or 1"),
        (["--pages", "0"], "must be positive"),
        (["--backend", "nope"], "unknown write-watch backend 'nope'"),
        (["--seconds", "-1"], "must be positive"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    proc = bench(*args, tmp_path=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr


def _measurement(label: str, subject: str, write_ns: float, get_us: float | None) -> ww.Measurement:
    row = next(r for r in ww.SEED_ROWS if r.label == label)
    return ww.Measurement(row, subject, 1000, [write_ns], [get_us] if get_us else [], [], 0)


def test_ratios_and_targets_follow_the_numbers() -> None:
    results = [
        _measurement("8 8192 3 1 1", "floor:none", 20, None),
        _measurement("8 8192 3 1 1", "floor:uffd-async", 60, 400),
        _measurement("8 8192 3 1 1", "floor:mprotect", 2000, 3000),
        _measurement("8 8192 3 1 1", "uffd-async", 63, 520),  # get 1.3x: missed
        _measurement("8 8192 3 1 1", "mprotect", 2400, 3000),  # write 1.2x: held
        _measurement("8 8192 3 1 1", "shadow", 25, 2000),  # reads against floor:none: no get ratio
    ]
    by_subject = {r.subject: r for r in ww.ratios(results)}
    assert by_subject["uffd-async"].write == pytest.approx(1.05) and by_subject["uffd-async"].get == pytest.approx(1.3)
    assert by_subject["shadow"].floor == "floor:none" and by_subject["shadow"].get is None
    held = {t.description: t.held for t in ww.targets(results)}
    assert held["uffd-async write ns within 1.1x of floor:uffd-async on every row"] is True
    assert held["uffd-async get us within 1.25x of floor:uffd-async on every row"] is False
    assert held["mprotect write ns within 1.25x of floor:mprotect on every row"] is True
    assert held["uffd-async writes >= 4x cheaper than mprotect on 8 8192 3 1 1"] is True
