"""Exceptions ntshim raises beyond the built-in ones."""

from __future__ import annotations

__all__ = ["BackendUnavailable"]


class BackendUnavailable(RuntimeError):
    """A backend cannot serve this request: missing on this kernel, or unable to handle this memory.

    ``backend`` names the backend (``None`` when no backend at all could serve the request),
    ``reason`` says why in words a user can act on.
    """

    def __init__(self, backend: str | None, reason: str) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(f"{backend}: {reason}" if backend else reason)
