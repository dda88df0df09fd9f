"""Which backends this machine must test.  ``NTSHIM_REQUIRE=uffd-async,mprotect,futex,...``
turns the skip of a listed backend into a failure: on machines that support a backend, CI
must not go green by skipping it.  The list mixes write-watch backends (``BACKENDS``) and
sync backends (``SYNC_BACKENDS``); their names are distinct."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ntshim._backends import Family
from ntshim.sync import registry as sync_registry
from ntshim.writewatch import registry

BACKENDS = list(registry.FAMILY.names)
SYNC_BACKENDS = list(sync_registry.FAMILY.names)
REQUIRED = {name.strip() for name in os.environ.get("NTSHIM_REQUIRE", "").split(",") if name.strip()}


def _require(family: Family[Any], kind: str, name: str) -> None:
    availability = family.backend_class(name).availability()
    if availability.available:
        return
    if name in REQUIRED:
        pytest.fail(f"{kind}backend {name} is required here (NTSHIM_REQUIRE) but unavailable: {availability.reason}")
    pytest.skip(f"{kind}backend {name} unavailable: {availability.reason}")


def require_backend(name: str) -> None:
    """Skip when write-watch backend ``name`` is unavailable here, with the reason, unless
    NTSHIM_REQUIRE lists it."""
    _require(registry.FAMILY, "", name)


def require_sync_backend(name: str) -> None:
    """The same for sync backend ``name``.  A backend module that fails to import is a bug,
    not an unavailable feature: the ImportError propagates and the test errors."""
    _require(sync_registry.FAMILY, "sync ", name)
