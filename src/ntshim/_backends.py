"""What every family of backends (write watches, sync objects) shares: how a backend says
whether it works here, a probe made once per process, and how a requested name is
validated against the family's names and its environment variable."""

from __future__ import annotations

import abc
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Availability:
    """Whether a backend works in this process; if not, ``reason`` says why and what to do."""

    backend: str
    available: bool
    reason: str = ""
    notes: tuple[str, ...] = ()
    #: Unavailable for a reason that belongs to this process or user (shared state that is
    #: damaged, full or in conflict), not to the machine: other processes may be using this
    #: backend, so automatic selection must stop here rather than pass to the next one.
    stops_selection: bool = False


_probes: dict[tuple[type, int], Availability] = {}


class ProbedBackend(abc.ABC):
    """A backend that probes the machine once per process (a forked child probes again)."""

    name: ClassVar[str]
    summary: ClassVar[str]

    @classmethod
    def availability(cls) -> Availability:
        key = (cls, os.getpid())
        if key not in _probes:
            _probes[key] = cls._probe()
        return _probes[key]

    @classmethod
    @abc.abstractmethod
    def _probe(cls) -> Availability: ...


def forget_probes() -> None:
    """Probe every backend again on next use."""
    _probes.clear()


def requested_name(backend: object, env_var: str, names: Collection[str], family: str) -> str | None:
    """The backend asked for by argument, else by ``env_var``, validated; None: automatic."""
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, not {type(backend).__name__}")
    name = backend or os.environ.get(env_var) or None
    if name is not None and name not in names:
        source = "backend" if backend else env_var
        raise ValueError(f"{source}: unknown {family} backend {name!r}; choose from {', '.join(names)}")
    return name
