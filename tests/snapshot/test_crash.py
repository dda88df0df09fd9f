"""A writer killed with SIGKILL at any moment of a save or a compaction leaves every generation
it published loadable, and the newest one is a state the program really had.

The child saves in a loop; before save number c it writes the counter c into page 0 and into
the pages step c picks (seeded by c), so the whole state after step c is a function of c
alone.  Each round the parent kills the child after a random delay, then checks that every
listed generation loads and equals the state of the counter it holds, and starts the next
round, which restores the latest generation and goes on (reopening, cleaning leftovers)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from required import require_backend

from ntshim.snapshot import Checkpointer, generations, load

PAGES = 256  # 1 MiB: a base takes a few ms to write and fsync, a delta less
WORDS = 512  # uint64 per page
ROUNDS = 6

CHILD = f"""
import mmap, random, sys
import numpy as np
from ntshim.snapshot import Checkpointer, generations, restore

path, backend = sys.argv[1], sys.argv[2]
memory = mmap.mmap(-1, {PAGES} * 4096)
state = np.frombuffer(memory, np.uint64).reshape({PAGES}, {WORDS})
if generations(path):
    restore(path, {{"state": state}})
counter = int(state[0, 0])
with Checkpointer(path, {{"state": state}}, backend=backend) as checkpoint:
    print("ready", flush=True)
    while True:
        counter += 1
        for page in random.Random(counter).sample(range(1, {PAGES}), 8):
            state[page] = counter
        state[0] = counter
        checkpoint.save()
        if counter % 5 == 0:
            checkpoint.compact(keep=3)
"""


def expected_states(highest: int) -> list[np.ndarray]:
    """The state after each step 0..highest, as the child computes it."""
    values = np.zeros(PAGES, np.uint64)
    states = [np.repeat(values, WORDS).reshape(PAGES, WORDS)]
    for counter in range(1, highest + 1):
        for page in random.Random(counter).sample(range(1, PAGES), 8):
            values[page] = counter
        values[0] = counter
        states.append(np.repeat(values, WORDS).reshape(PAGES, WORDS))
    return states


@pytest.mark.parametrize("backend", ["uffd-async", "mprotect"])
def test_sigkill_during_saves_loses_no_published_generation(backend: str, tmp_path: Path) -> None:
    require_backend(backend)
    rng = random.Random(11)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    newest_seen = 0
    for _ in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), backend], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        listed = generations(tmp_path)
        assert listed, "the child published nothing"
        loaded = {g: load(tmp_path, g)["state"] for g in listed}
        counters = {g: int(state[0, 0]) for g, state in loaded.items()}
        states = expected_states(max(counters.values()))
        for g, state in loaded.items():
            assert np.array_equal(state, states[counters[g]]), f"generation {g} is no state the child had"
        newest = counters[listed[-1]]
        assert newest == max(counters.values()) and newest >= newest_seen
        newest_seen = newest
    # The lock died with the last child; its leftovers go with the next writer.
    state = np.zeros((PAGES, WORDS), np.uint64)
    with Checkpointer(tmp_path, {"state": state}) as checkpoint:
        assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
        checkpoint.save()
