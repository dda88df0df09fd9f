"""Threads racing over one region: protection changes against buffer exports, write watches
against free, and fork against both.  Each race runs in a child process with a timeout, so
that a crash (SIGSEGV) or a hang fails the test instead of taking pytest down; switches are
made frequent (``sys.setswitchinterval(1e-6)``) so that the windows are hit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ntshim.memory import PAGE_SIZE

P = PAGE_SIZE

# Run in the child first: threads whose exceptions end the child with a message, a clock.
PRELUDE = r"""
import os, random, sys, threading, time, traceback
sys.setswitchinterval(1e-6)
import ntshim
from ntshim.memory import PAGE_SIZE as P, alloc, reserve

failures = []

def run_threads(*targets):
    def guarded(target):
        try:
            target()
        except BaseException:
            failures.append(traceback.format_exc())
    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        sys.exit("a thread failed:\n" + failures[0])
"""


def run_child(script: str, *args: object, timeout: float = 60) -> str:
    """Run ``PRELUDE + script`` in a fresh interpreter; fail on a crash, a hang or a non-zero
    exit, showing what the child printed; return its stdout."""
    code = PRELUDE + textwrap.dedent(script)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child hung (no exit within {timeout} s); its output: {e.stdout!r} {e.stderr!r}")
    assert proc.returncode == 0, f"the child ended with status {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


# ---- protection changes against buffer exports (issue 11, item 3) ------------------------

# One thread takes access away and gives it back (protect "none"/"r"/"rw", decommit/commit)
# over the whole region or half of it; two threads take buffers (Region.view() of the whole
# region or a half, memoryview(region)) and touch every page they got.  A BufferError is a
# legitimate answer to either side; a buffer over pages without access is a SIGSEGV.
PROTECT_RACE = r"""
backend = sys.argv[1] if sys.argv[1] != "-" else None
npages, seconds = int(sys.argv[2]), float(sys.argv[3])
region = alloc(npages * P, watch=backend is not None, backend=backend)
half = npages // 2 * P
spans = [(0, npages * P), (0, half), (half, npages * P - half)]
deadline = time.monotonic() + seconds
buffers = [0, 0]

def changer():
    rng = random.Random(1)
    while time.monotonic() < deadline:
        offset, size = rng.choice(spans)
        for step in ("none", "rw", "r", "decommit", "commit"):
            try:
                if step == "decommit":
                    region.decommit(offset, size)
                elif step == "commit":
                    region.commit(offset, size, "rw")
                else:
                    region.protect(offset, size, step)
            except BufferError:
                pass
            except ValueError:  # protect of pages a failed commit left decommitted
                region.commit(offset, size, "rw")

def reader(seed):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        offset, size = rng.choice(spans)
        try:
            view = memoryview(region) if rng.random() < 0.5 else region.view(offset, size)
        except BufferError:
            continue
        with view:
            total = sum(view[i] for i in range(0, len(view), P))
            if not view.readonly:
                view[len(view) - 1] = total & 0xFF
        buffers[seed - 1] += 1

run_threads(changer, lambda: reader(1), lambda: reader(2))
region.free()
print("ok", buffers)
"""


def test_protect_and_decommit_never_leave_a_buffer_over_inaccessible_pages() -> None:
    out = run_child(PROTECT_RACE, "-", 8, 3.0)
    assert out.startswith("ok")


def test_protect_of_a_watched_region_never_leaves_a_buffer_over_inaccessible_pages(backend: str) -> None:
    # More than 1024 pages: the tracker changes their protection with the GIL released.
    out = run_child(PROTECT_RACE, backend, 2048, 2.0)
    assert out.startswith("ok")
