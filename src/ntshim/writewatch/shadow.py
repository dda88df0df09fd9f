"""shadow: compare the memory with a private copy taken at the last reset.

Nothing is protected and nothing runs on the write path, so it works on memory no other
backend can watch (driver mappings, memory shared with other processes that write it
through their own mappings).  It reports pages whose bytes differ from the copy: a write
of the value already there goes unseen.  A query costs a comparison of the whole range,
and the copy doubles the memory used.
"""

from __future__ import annotations

from .. import _core
from .backend import Availability, Backend, Protections, Tracker


class Shadow(Backend):
    name = "shadow"
    summary = "content comparison with a private copy (any memory, any kernel)"
    survives_fork = True

    @classmethod
    def _probe(cls) -> Availability:
        return Availability(cls.name, True, notes=("a write that stores the value already there is not seen",))

    @classmethod
    def track(cls, address: int, size: int, prots: Protections) -> Tracker:
        return _core.shadow_tracker(address, size, prots)
