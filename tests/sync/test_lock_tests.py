"""CPython's own conformance suite for threading's primitives (``test.lock_tests``, shipped
with the interpreter) run against ntshim's objects on every sync backend.

Left out, each for a reason: what is CPython-private, not part of the protocol."""

from __future__ import annotations

import functools
import unittest
from typing import Any

from required import require_sync_backend
from test import lock_tests

from ntshim import sync
from ntshim.sync import registry

EXCLUDED = {
    "test_repr": "the repr text is CPython's (ntshim's names the backend and the NT state)",
    "test_locked_repr": "the repr text is CPython's",
    "test_at_fork_reinit": "_at_fork_reinit is CPython-private (threading calls it after fork on its own locks)",
    "test_recursion_count": "_recursion_count is CPython-private",
}

SUITES: dict[str, tuple[type[unittest.TestCase], str, Any]] = {
    "Lock": (lock_tests.LockTests, "locktype", sync.Lock),
    "RLock": (lock_tests.RLockTests, "locktype", sync.RLock),
    "Event": (lock_tests.EventTests, "eventtype", sync.Event),
    "Semaphore": (lock_tests.SemaphoreTests, "semtype", sync.Semaphore),
    "BoundedSemaphore": (lock_tests.BoundedSemaphoreTests, "semtype", sync.BoundedSemaphore),
    "Condition": (lock_tests.ConditionTests, "condtype", sync.Condition),
    "Barrier": (lock_tests.BarrierTests, "barriertype", sync.Barrier),
}


def _conformance(suite: type[unittest.TestCase], attribute: str, cls: Any, backend: str) -> type[unittest.TestCase]:
    def setUp(self: unittest.TestCase) -> None:
        require_sync_backend(backend)
        suite.setUp(self)

    namespace: dict[str, Any] = {
        attribute: staticmethod(functools.partial(cls, backend=backend)),
        "setUp": setUp,
        **{name: None for name in EXCLUDED if hasattr(suite, name)},  # not callable: not collected
    }
    return type(f"Test{cls.__name__}_{backend.replace('-', '_')}", (suite,), namespace)


for _backend in registry.FAMILY.names:
    for _suite, _attribute, _cls in SUITES.values():
        _case = _conformance(_suite, _attribute, _cls, _backend)
        globals()[_case.__name__] = _case
del _backend, _suite, _attribute, _cls, _case


def test_only_the_named_exclusions_are_left_out() -> None:
    for suite, attribute, cls in SUITES.values():
        case = _conformance(suite, attribute, cls, "futex")
        kept = set(unittest.TestLoader().getTestCaseNames(case))
        everything = {name for name in dir(suite) if name.startswith("test_")}
        assert kept == everything - set(EXCLUDED)
