"""Incremental, crash-safe checkpoints of live memory, driven by write watches.

::

    import numpy as np
    from ntshim.snapshot import Checkpointer, load

    state = np.zeros((4096, 4096))
    with Checkpointer("run.ckpt", {"state": state}) as checkpoint:
        for step in range(100):
            state[step] += 1                  # the program's work
            checkpoint.save()                 # only the pages written since the last save
    state = load("run.ckpt")["state"]         # the latest generation, as a numpy array

:class:`Checkpointer` saves named buffers as generations (a base, then deltas);
:func:`load` and :func:`restore` read any generation back, :func:`generations` lists them,
:meth:`Checkpointer.compact` folds old deltas away; :func:`describe_generations` and
:func:`verify` inspect and check a checkpoint (``ntshim snapshot info|verify``).  A process killed during a save leaves
every earlier generation loadable; every page is checksummed (CRC32C) and damage raises
:class:`SnapshotError`.  docs/snapshot.md has the save model, the crash-safety argument,
the on-disk format and the shared-memory rule.
"""

from __future__ import annotations

from .checkpointer import Checkpointer, SaveInfo
from .format import SnapshotError
from .reading import GenerationInfo, describe_generations, generations, load, restore, verify

__all__ = [
    "Checkpointer",
    "GenerationInfo",
    "SaveInfo",
    "SnapshotError",
    "describe_generations",
    "generations",
    "load",
    "restore",
    "verify",
]
