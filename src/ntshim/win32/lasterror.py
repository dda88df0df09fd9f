"""GetLastError / SetLastError: one value per thread, as on Windows."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_state = threading.local()


def GetLastError() -> int:
    """The calling thread's last-error code (0 until something sets it)."""
    return getattr(_state, "code", 0)


def SetLastError(code: int) -> None:
    """Set the calling thread's last-error code (a DWORD)."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"code must be an int, not {type(code).__name__}")
    _state.code = code & 0xFFFFFFFF


class Win32Error(Exception):
    """Internal: a Win32 call fails with ``code``; the public function catches it, sets the
    last error and returns the failure value."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def win32_function(failure: object) -> Callable[[F], F]:
    """Turn Win32Error raised inside a Win32 function into ``failure`` plus a last error."""

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Win32Error as e:
                SetLastError(e.code)
                return failure

        return call  # type: ignore[return-value]

    return wrap
