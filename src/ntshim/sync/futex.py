"""The ``futex`` backend: object state in a shared-memory arena, sleeping with futex_waitv.

The mechanism is C (``src/ntshim/_core/sync.c``: the algorithm, hand-off, robust
abandonment, reference bookkeeping); this module decides where the arena lives and keeps
Python's handles.  The arena is one file per user in the per-user directory
(:mod:`~ntshim.sync.userdir`), named after its layout so that two ntshim versions with
different layouts never share one.  It is sparse: only the pages of the tables in use
take memory.
"""

from __future__ import annotations

import atexit
import os
import secrets
import stat
import threading
from collections.abc import Sequence
from typing import Any

from .. import _core, _kernel
from ..errors import NameKindError
from .backend import Availability, Backend, Handle, Kind
from .userdir import user_directory

_KIND_CODES: dict[str, int] = {
    "semaphore": _core.SYNC_SEMAPHORE,
    "mutex": _core.SYNC_MUTEX,
    "event": _core.SYNC_EVENT,
}

_lock = threading.Lock()
_arena_path: str | None = None
_detached = False


def _detach() -> None:
    """At interpreter exit: give back every reference at once (handles collected later
    must not give theirs back a second time)."""
    global _detached
    _detached = True
    _core.sync_detach()


def arena_path() -> str:
    """The arena file of this user, attached on first use in this process."""
    global _arena_path
    with _lock:
        if _arena_path is None:
            path = os.path.join(user_directory(), f"sync-v1-{_core.SYNC_ARENA_SIZE}.arena")
            fd = _open_or_create(path)
            try:
                _core.sync_attach(fd)
            finally:
                os.close(fd)  # the mapping stays
            atexit.register(_detach)
            _arena_path = path
        return _arena_path


def _open_or_create(path: str) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        # Format under a private name and link it into place: a process racing us either
        # wins the link (we use its arena) or finds a complete one; never a half-made file.
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, flags | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _core.sync_format(fd)
            os.link(tmp, path)
        except FileExistsError:
            os.close(fd)
            fd = os.open(path, flags)
        finally:
            os.unlink(tmp)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        os.close(fd)
        raise PermissionError(f"{path} is not private to this user; remove it so ntshim can create its own")
    return fd


class FutexHandle:
    """One reference of this process to an arena object."""

    __slots__ = ("_closed", "_gen", "_slot", "kind")

    def __init__(self, kind: Kind, slot: int, gen: int) -> None:
        self.kind = kind
        self._slot = slot
        self._gen = gen
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def key(self) -> Any:
        return self._slot

    @property
    def slot(self) -> int:
        return self._slot

    def close(self) -> None:
        with _lock:  # two threads closing at once must drop one reference, not two
            if self._closed:
                return
            self._closed = True
            if _detached:
                return
        _core.sync_unref(self._slot)

    def __del__(self) -> None:
        # Like a file: a handle nobody closed gives its reference back when collected.
        if not getattr(self, "_closed", True) and _arena_path is not None:
            self.close()

    def state(self) -> Any:
        return (arena_path(), self._slot, self._gen)

    def sem_release(self, count: int) -> int:
        return _core.sync_sem_release(self._slot, count)

    def sem_read(self) -> tuple[int, int]:
        return _core.sync_sem_read(self._slot)

    def mutex_unlock(self, owner: int) -> int:
        return _core.sync_mutex_unlock(self._slot, owner)

    def mutex_kill(self, owner: int) -> None:
        _core.sync_mutex_kill(self._slot, owner)

    def mutex_read(self) -> tuple[int, int, bool]:
        return _core.sync_mutex_read(self._slot)

    def event_set(self) -> bool:
        return _core.sync_event(self._slot, _core.SYNC_SET)

    def event_reset(self) -> bool:
        return _core.sync_event(self._slot, _core.SYNC_RESET)

    def event_pulse(self) -> bool:
        return _core.sync_event(self._slot, _core.SYNC_PULSE)

    def event_read(self) -> tuple[bool, bool]:
        return _core.sync_event_read(self._slot)


def _arena_full(e: OSError) -> OSError:
    return OSError(e.errno, f"the sync arena is full ({e.strerror}): close objects you no longer need")


class Futex(Backend):
    name = "futex"
    summary = "state in a per-user shared-memory arena, hand-off wake-ups with futex_waitv, robust abandonment"

    @classmethod
    def _probe(cls) -> Availability:
        usable, reason = _kernel.futex_waitv()
        if not usable:
            return Availability(cls.name, False, reason)
        try:
            path = arena_path()
        except OSError as e:
            return Availability(cls.name, False, f"cannot open the shared arena: {e}")
        return Availability(cls.name, True, notes=(f"arena {path}",))

    @classmethod
    def create(cls, kind: Kind, params: tuple[int, ...], name: bytes | None) -> tuple[Handle, bool]:
        arena_path()
        try:
            x, y = params
            slot, gen, created = _core.sync_create(_KIND_CODES[kind], x, y, name)
        except FileExistsError:
            raise NameKindError(f"the name {name!r} belongs to an object of another kind, not a {kind}") from None
        except OSError as e:
            raise _arena_full(e) from None
        return FutexHandle(kind, slot, gen), created

    @classmethod
    def open(cls, kind: Kind, name: bytes) -> Handle:
        arena_path()
        try:
            slot, gen = _core.sync_open(_KIND_CODES[kind], name)
        except FileExistsError:
            raise NameKindError(f"the name {name!r} belongs to an object of another kind, not a {kind}") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"no {kind} is called {name.decode()!r}") from None
        return FutexHandle(kind, slot, gen)

    @classmethod
    def from_state(cls, kind: Kind, state: Any) -> Handle:
        path, slot, gen = state
        if path != arena_path():
            raise FileNotFoundError(f"the {kind} lives in the arena {path}, this process uses {arena_path()}")
        try:
            _core.sync_ref(_KIND_CODES[kind], slot, gen)
        except FileNotFoundError:
            raise FileNotFoundError(f"the {kind} was closed by every process before this one reopened it") from None
        return FutexHandle(kind, slot, gen)

    @classmethod
    def wait(
        cls, handles: Sequence[Handle], wait_all: bool, deadline: int | None, owner: int, alert: Handle | None
    ) -> tuple[int, bool]:
        slots = [h.slot for h in handles]  # type: ignore[attr-defined]  # every handle here is a FutexHandle
        alert_slot = alert.slot if alert is not None else 0  # type: ignore[attr-defined]
        return _core.sync_wait(slots, wait_all, deadline, owner, alert_slot)


BACKEND = Futex
