"""Which backends this machine must test.  ``NTSHIM_REQUIRE=uffd-async,mprotect,futex,...``
turns the skip of a listed backend into a failure: on machines that support a backend, CI
must not go green by skipping it.  The list mixes write-watch backends (``BACKENDS``) and
sync backends (``SYNC_BACKENDS``); their names are distinct."""

from __future__ import annotations

import os

import pytest

from ntshim.sync import registry as sync_registry
from ntshim.writewatch import registry

BACKENDS = [b.name for b in registry.ORDER]
SYNC_BACKENDS = list(sync_registry.NAMES)
REQUIRED = {name.strip() for name in os.environ.get("NTSHIM_REQUIRE", "").split(",") if name.strip()}


def _skip_or_fail(kind: str, name: str, available: bool, reason: str) -> None:
    if available:
        return
    if name in REQUIRED:
        pytest.fail(f"{kind}backend {name} is required here (NTSHIM_REQUIRE) but unavailable: {reason}")
    pytest.skip(f"{kind}backend {name} unavailable: {reason}")


def require_backend(name: str) -> None:
    """Skip when write-watch backend ``name`` is unavailable here, with the reason, unless
    NTSHIM_REQUIRE lists it."""
    availability = registry.BY_NAME[name].availability()
    _skip_or_fail("", name, availability.available, availability.reason)


def require_sync_backend(name: str) -> None:
    """The same for sync backend ``name``.  A backend module that fails to import is a bug,
    not an unavailable feature: the ImportError propagates and the test errors."""
    availability = sync_registry.backend_class(name).availability()
    _skip_or_fail("sync ", name, availability.available, availability.reason)
