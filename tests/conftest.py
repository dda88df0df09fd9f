"""Shared fixtures.  See required.py for NTSHIM_REQUIRE."""

from __future__ import annotations

import pytest
from required import BACKENDS, REQUIRED, SYNC_BACKENDS, require_backend

from ntshim.writewatch import registry


def pytest_configure(config: pytest.Config) -> None:
    known = [*BACKENDS, *SYNC_BACKENDS]
    unknown = REQUIRED - set(known)
    if unknown:
        raise pytest.UsageError(f"NTSHIM_REQUIRE names unknown backends {sorted(unknown)}; known: {known}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each write-watch backend in turn (skipped, or failed when required, if unavailable)."""
    require_backend(request.param)
    return request.param


@pytest.fixture(params=[name for name in BACKENDS if not registry.backend_class(name).shared_page_hazard()])
def heap_backend(request: pytest.FixtureRequest) -> str:
    """Each write-watch backend that watches heap objects (pages shared with malloc), in turn."""
    require_backend(request.param)
    return request.param


@pytest.fixture(autouse=True)
def _no_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests choose backends explicitly; a developer's NTSHIM_WRITEWATCH_BACKEND must not leak in.
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
