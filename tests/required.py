"""Which backends this machine must test.  ``NTSHIM_REQUIRE=uffd-async,mprotect,...`` turns
the skip of a listed backend into a failure: on machines that support a backend, CI must not
go green by skipping it."""

from __future__ import annotations

import os

import pytest

from ntshim.writewatch import registry

BACKENDS = [b.name for b in registry.ORDER]
REQUIRED = {name.strip() for name in os.environ.get("NTSHIM_REQUIRE", "").split(",") if name.strip()}


def require_backend(name: str) -> None:
    """Skip when ``name`` is unavailable here, with the reason, unless NTSHIM_REQUIRE lists it."""
    availability = registry.BY_NAME[name].availability()
    if availability.available:
        return
    if name in REQUIRED:
        pytest.fail(f"backend {name} is required here (NTSHIM_REQUIRE) but unavailable: {availability.reason}")
    pytest.skip(f"backend {name} unavailable: {availability.reason}")
