"""The one backend-selection mechanism every subsystem (write watches, sync objects) uses: how
a backend says whether it works here, a probe made once per process, a :class:`Family` of
backends best first that validates a requested name and chooses a backend, and
:func:`refresh`, which forgets every probe."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, overload

from . import _kernel
from .errors import BackendUnavailable


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


B = TypeVar("B", bound=ProbedBackend)
T = TypeVar("T")


class Family(Generic[B]):
    """The backends of one subsystem, best first, and the one way a backend is chosen for a
    request: the one named by argument or by ``env_var`` if it is available, else the best
    available one.  Backends are loaded on first use (``load`` maps a name to its class), so
    that naming a family costs no import."""

    def __init__(
        self, label: str, env_var: str, names: Sequence[str], load: Callable[[str], type[B]], *, exhausted: str
    ) -> None:
        self.label = label
        self.env_var = env_var
        #: Best first: automatic selection takes the first that is available (and accepts the request).
        self.names: tuple[str, ...] = tuple(names)
        self._load = load
        self._classes: dict[str, type[B]] = {}
        #: What the error says when automatic selection finds no backend: "no <label> backend ...".
        self._exhausted = exhausted

    def backend_class(self, name: str) -> type[B]:
        """The class of backend ``name`` (one of :attr:`names`), loaded on first use."""
        if name not in self._classes:
            self._classes[name] = self._load(name)
        return self._classes[name]

    def backends(self) -> list[Availability]:
        """Every backend of the family, best first, with whether it works here and why not."""
        return [self.backend_class(name).availability() for name in self.names]

    def requested(self, backend: object) -> str | None:
        """The backend asked for by argument, else by :attr:`env_var`, validated; None: automatic."""
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a str or None, not {type(backend).__name__}")
        name = backend or os.environ.get(self.env_var) or None
        if name is not None and name not in self.names:
            source = "backend" if backend else self.env_var
            raise ValueError(f"{source}: unknown {self.label} backend {name!r}; choose from {', '.join(self.names)}")
        return name

    @overload
    def select(self, backend: object) -> type[B]: ...

    @overload
    def select(self, backend: object, attempt: Callable[[type[B]], T]) -> T: ...

    def select(self, backend: object, attempt: Callable[[type[B]], Any] | None = None) -> Any:
        """Serve a request with the requested backend if it is available, else with the best
        available one; ``attempt(chosen)`` is the request (by default: the class itself).

        Automatic selection passes over a backend when the machine lacks what it needs, and
        over one whose ``attempt`` refuses with BackendUnavailable (a write watch on memory that
        mechanism cannot watch).  A backend unavailable for a reason of this user's (its shared
        state damaged, full, or in use by another ntshim: ``stops_selection``) stops it, since
        processes that can use that backend would not see what the next one makes."""
        name = self.requested(backend)
        if name is not None:
            chosen = self.backend_class(name)
            availability = chosen.availability()
            if not availability.available:
                raise BackendUnavailable(name, availability.reason)
            return chosen if attempt is None else attempt(chosen)
        unavailable, refusals = [], []
        for candidate in self.names:
            chosen = self.backend_class(candidate)
            availability = chosen.availability()
            if not availability.available:
                if availability.stops_selection:
                    raise BackendUnavailable(
                        candidate,
                        f"{availability.reason} (not passing to another backend: processes that use {candidate} would "
                        f"not see its objects; fix this, or choose a backend for every process with {self.env_var})",
                    )
                unavailable.append(f"{candidate}: {availability.reason}")
                continue
            if attempt is None:
                return chosen
            try:
                return attempt(chosen)
            except BackendUnavailable as e:
                refusals.append(str(e))
        # Why the backends that were tried refused; only if none could be tried, why none was available.
        raise BackendUnavailable(
            None, f"no {self.label} backend {self._exhausted}: " + "; ".join(refusals or unavailable)
        )


def refresh() -> None:
    """Probe the kernel and every backend again on next use (after changing credentials or
    a sysctl, for instance)."""
    _kernel.forget_probes()
    _probes.clear()
