"""Which synchronization backends exist and which one serves a request."""

from __future__ import annotations

import importlib

from .._backends import Family
from .backend import Backend


def _load(name: str) -> type[Backend]:
    return importlib.import_module(f"{__package__}.{name}").BACKEND


#: Modules are imported on first use so that ``import ntshim`` stays cheap.
FAMILY: Family[Backend] = Family("sync", "NTSHIM_SYNC_BACKEND", ("futex", "server"), _load, exhausted="works here")
ENV_VAR, backend_class, backends = FAMILY.env_var, FAMILY.backend_class, FAMILY.backends
