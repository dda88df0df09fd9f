"""The ``server`` backend: one server process per user owns every object and its waiters
(the wineserver design); clients ask it over a Unix socket.  Slow next to shared memory (a
round trip per operation), but every operation is one step of one single-threaded state
machine, which makes it the reference for correctness.

- :mod:`.protocol`: the wire format (specified in docs/sync-protocol.md);
- :mod:`.client`: connections, the per-process client, the backend class;
- :mod:`.daemon`: the server process (``python3 -m ntshim.sync.server.daemon``);
- :mod:`.model`: the ntsync state machine the server runs.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # The registry finds the backend class here; imported on demand, so that the daemon,
    # which imports this package too, runs without a client of its own.
    if name == "BACKEND":
        from .client import BACKEND

        return BACKEND
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
