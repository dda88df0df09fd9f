"""Writers running through saves lose nothing: every write lands in the generation being saved
or in a later one (the written pages are got and reset before they are copied)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

import ntshim
from ntshim import _bench
from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, generations, load

PAGES = 256
SECONDS = 0.4


def test_native_writer_threads_through_saves(backend: str, tmp_path: Path) -> None:
    region = ntshim.alloc(PAGES * PS)
    with Checkpointer(tmp_path, {"memory": region}, backend=backend) as checkpoint:
        checkpoint.save()
        writers = _bench.Writers(memoryview(region), 2, random=True)  # GIL-free stores, page after page
        try:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                checkpoint.save()
        finally:
            writes, _ = writers.stop()
        assert writes > 0
        checkpoint.save()
        with memoryview(region) as view:
            assert load(tmp_path)["memory"] == view
    for generation in generations(tmp_path):  # every generation, saved while memory changed, verifies
        load(tmp_path, generation)
    region.close()


def test_python_writer_threads_through_saves(backend: str, tmp_path: Path) -> None:
    memory = ntshim.alloc(PAGES * PS)
    array = np.frombuffer(memory, np.uint32)
    stop = threading.Event()

    def write(target: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            target[rng.integers(target.size, size=64)] = rng.integers(1 << 32, size=64, dtype=np.uint32)

    with Checkpointer(tmp_path, {"array": array}, backend=backend) as checkpoint:
        threads = [threading.Thread(target=write, args=(array, seed)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                checkpoint.save()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        checkpoint.save()
        assert np.array_equal(load(tmp_path)["array"], array)
    del array
    memory.close()
