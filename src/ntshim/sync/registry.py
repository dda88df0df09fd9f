"""Which synchronization backends exist and which one serves a request."""

from __future__ import annotations

import importlib

from .._backends import requested_name
from ..errors import BackendUnavailable
from .backend import Availability, Backend, forget_probes

#: Best first: automatic selection takes the first that is available.  Modules are
#: imported on first use so that ``import ntshim`` stays cheap.
NAMES: tuple[str, ...] = ("futex", "server")
ENV_VAR = "NTSHIM_SYNC_BACKEND"

_classes: dict[str, type[Backend]] = {}


def backend_class(name: str) -> type[Backend]:
    if name not in _classes:
        module = importlib.import_module(f"{__package__}.{name}")
        _classes[name] = module.BACKEND
    return _classes[name]


def backends() -> list[Availability]:
    """Every synchronization backend, best first, with whether it works here and why not."""
    return [backend_class(name).availability() for name in NAMES]


def refresh() -> None:
    """Probe the backends again on next use."""
    forget_probes()


def check_name(backend: object) -> str | None:
    """The backend requested by argument or environment, validated; None for automatic."""
    return requested_name(backend, ENV_VAR, NAMES, "sync")


def choose(backend: object) -> type[Backend]:
    """The requested backend if it is available, else the best available one — passing over
    a backend only when the machine lacks what it needs: one that fails for a reason of this
    user's (its shared state damaged, full, or in use by another ntshim) stops the selection,
    since processes that can use it would not see objects made with the next one."""
    name = check_name(backend)
    if name is not None:
        chosen = backend_class(name)
        availability = chosen.availability()
        if not availability.available:
            raise BackendUnavailable(name, availability.reason)
        return chosen
    reasons = []
    for candidate in NAMES:
        availability = backend_class(candidate).availability()
        if availability.available:
            return backend_class(candidate)
        if availability.stops_selection:
            raise BackendUnavailable(
                candidate,
                f"{availability.reason} (not passing to another backend: processes that use {candidate} would not "
                f"see its objects; fix this, or choose a backend for every process with {ENV_VAR})",
            )
        reasons.append(f"{candidate}: {availability.reason}")
    raise BackendUnavailable(None, "no sync backend works here: " + "; ".join(reasons))
