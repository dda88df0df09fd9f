"""Fixtures of the sync tests: every backend in turn, a clean environment, unique names, and
waiter threads and child processes that are cleaned up after each test (the classes are in
helpers.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from required import require_sync_backend

from ntshim.sync import registry

from .helpers import BOUND, Child, WaiterThread


@pytest.fixture(params=registry.FAMILY.names)
def sync_backend(request: pytest.FixtureRequest) -> str:
    """Each sync backend in turn (skipped, or failed when NTSHIM_REQUIRE lists it, if it is
    unavailable here)."""
    require_sync_backend(request.param)
    return str(request.param)


@pytest.fixture(autouse=True)
def _no_sync_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests choose sync backends explicitly; a developer's NTSHIM_SYNC_BACKEND must not leak in.
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Names unique to this run: other test runs (and other users of this machine's
    namespace) may be live at the same time."""
    stem = uuid.uuid4().hex[:12]

    def make(label: str = "obj") -> str:
        return f"ntshim-test-{stem}-{label}"

    return make


@pytest.fixture
def waiters() -> Iterator[Callable[[Callable[[], Any]], WaiterThread]]:
    """Start :class:`WaiterThread` threads; every one is let go at the end of the test."""
    started: list[WaiterThread] = []

    def start(call: Callable[[], Any]) -> WaiterThread:
        waiter = WaiterThread(call)
        started.append(waiter)
        return waiter

    yield start
    for waiter in started:
        waiter._may_exit.set()
    for waiter in started:
        waiter._thread.join(BOUND)


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    """Start :class:`Child` processes; any still running at the end of the test is killed."""
    started: list[Child] = []

    def start(method: str, function: Callable[..., Any], *args: Any) -> Child:
        child = Child(method, function, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()
