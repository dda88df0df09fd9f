"""The ``ntshim`` command, run as a user would run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from ntshim.sync import registry as sync_registry
from ntshim.writewatch import registry


def ntshim(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in (registry.ENV_VAR, sync_registry.ENV_VAR)}
    environment.update(COLUMNS="200", **env)
    return subprocess.run(
        [sys.executable, "-m", "ntshim", *args], capture_output=True, text=True, timeout=120, env=environment
    )


def test_info_json_lists_every_backend_with_availability_and_reasons() -> None:
    proc = ntshim("info", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["kernel"]["release"] == os.uname().release
    assert report["kernel"]["page_size"] == os.sysconf("SC_PAGE_SIZE")
    backends = report["writewatch"]["backends"]
    assert [b["name"] for b in backends] == ["uffd-async", "uffd-sync", "mprotect", "shadow"]
    for b in backends:
        assert isinstance(b["available"], bool)
        # Every unavailable backend says why; an available one has no reason.
        assert bool(b["reason"]) != b["available"], b
        assert b["available"] == registry.backend_class(b["name"]).availability().available
    assert report["writewatch"]["default"] == next(b["name"] for b in backends if b["available"])
    assert report["userfaultfd"]["usable"] in (True, False)


def test_info_json_lists_the_sync_backends() -> None:
    report = json.loads(ntshim("info", "--json").stdout)
    backends = report["sync"]["backends"]
    assert [b["name"] for b in backends] == ["futex", "server"]
    for b in backends:
        assert bool(b["reason"]) != b["available"], b
        assert b["available"] == sync_registry.backend_class(b["name"]).availability().available
        assert b["summary"]
    assert report["sync"]["default"] == next(b["name"] for b in backends if b["available"])
    assert report["futex_waitv"] is True or not backends[0]["available"]
    forced = json.loads(ntshim("info", "--json", NTSHIM_SYNC_BACKEND="server").stdout)
    assert forced["sync"]["default"] == "server"
    assert forced["sync"]["forced_by_environment"] == "server"


def test_info_reports_what_placement_can_do() -> None:
    report = json.loads(ntshim("info", "--json").stdout)["placement"]
    # Each mechanism was tried for real: a kernel (and architecture) that has it must be found to.
    kernel = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())  # type: ignore[union-attr]
    assert report["map_fixed_noreplace"] is True or kernel < (4, 17)
    assert report["mremap_alias"] is True
    assert report["mremap_dontunmap_shared"] is True or kernel < (5, 13)
    if os.uname().machine == "x86_64":  # MAP_32BIT is x86-64's alone
        assert report["map_32bit"] is True and 0 < report["map_32bit_address"] < 2 << 30
    with open("/proc/sys/vm/mmap_min_addr") as f:
        assert report["mmap_min_addr"] == max(int(f.read()), os.sysconf("SC_PAGE_SIZE"))
    assert "MAP_FIXED_NOREPLACE" in ntshim("info").stdout


def test_info_json_reports_a_backend_forced_by_the_environment() -> None:
    proc = ntshim("info", "--json", NTSHIM_WRITEWATCH_BACKEND="shadow")
    report = json.loads(proc.stdout)
    assert report["writewatch"]["default"] == "shadow"
    assert report["writewatch"]["forced_by_environment"] == "shadow"


def test_info_prints_a_table() -> None:
    proc = ntshim("info")
    assert proc.returncode == 0, proc.stderr
    for name in ("uffd-async", "uffd-sync", "mprotect", "shadow", "default backend", "futex", "server"):
        assert name in proc.stdout
    assert os.uname().release in proc.stdout


def test_demo_reports_what_was_written_on_every_available_backend() -> None:
    proc = ntshim("demo")
    assert proc.returncode == 0, proc.stderr
    available = [b.backend for b in registry.backends() if b.available]
    rows = [line for line in proc.stdout.splitlines() if any(f" {name} " in line for name in available)]
    assert len(rows) == len(available)
    assert all("yes" in row and "NO" not in row for row in rows), proc.stdout


def test_usage_errors() -> None:
    assert ntshim().returncode == 2
    assert ntshim("nonsense").returncode == 2
    proc = ntshim("demo", "--pages", "3")
    assert proc.returncode != 0 and "at least 32" in proc.stderr
