"""The write-watch backend for Win32 tests, chosen as a Win32 program would: by environment."""

from __future__ import annotations

import pytest

from ntshim.writewatch import registry


@pytest.fixture
def watch_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every write-watch backend in turn, through NTSHIM_WRITEWATCH_BACKEND."""
    monkeypatch.setenv(registry.ENV_VAR, backend)
    return backend
