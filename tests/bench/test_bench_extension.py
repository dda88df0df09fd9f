"""ntshim._bench, the benchmark and test-only natives, is an extension of its own: the library
never loads it, and it drives the trackers and the sync arena of ntshim._core itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ntshim
from ntshim import _bench, _core


def test_the_library_never_imports_the_bench_extension() -> None:
    script = (
        "import sys, ntshim, ntshim.memory, ntshim.writewatch, ntshim.sync, ntshim.win32\n"
        "assert 'ntshim._bench' not in sys.modules, 'the library imported ntshim._bench'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_native_reader_queries_a_core_tracker() -> None:
    """The native reader takes _core's own Tracker (through _core's capsule), nothing else."""
    region = ntshim.alloc(4 * _core.PAGE_SIZE, watch=True)
    try:
        tracker = region.write_watch._tracker  # type: ignore[union-attr]
        assert isinstance(tracker, _core.Tracker)
        with memoryview(region) as view:
            view[_core.PAGE_SIZE] = 1
        gets, resets, reported = _bench.native_reader(tracker, 1_000_000, 5_000_000, True)
        # (gets and resets: one native uint64 duration each)
        assert len(gets) // 8 >= 1 and len(gets) % 8 == 0 and len(resets) == len(gets) and reported == 1
        with pytest.raises(TypeError):
            _bench.native_reader(object(), 1, 1, True)
    finally:
        region.free()
