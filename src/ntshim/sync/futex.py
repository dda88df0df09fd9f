"""The ``futex`` backend: object state in a shared-memory arena, sleeping with futex_waitv.

The mechanism is C (``src/ntshim/_core/sync/arena.c``: the algorithm, hand-off, robust
abandonment, reference bookkeeping, checks of everything read from the arena); this module
decides where the arena lives, keeps Python's handles and turns the C layer's errors into
messages that say what to do.

The arena is one file per user, ``sync.arena`` in the per-user directory
(:mod:`~ntshim.sync.userdir`), whatever the ntshim version: its header carries the layout
version, so that two versions never silently use two arenas.  A file of another layout is
replaced when no process is attached to it, and refused loudly otherwise.  The protocol
every version keeps: an attached process holds an OFD lock on a byte of ``[1,
SYNC_LIVE_END)``; a process holds a shared ``flock`` on the file from opening it until its
lock is taken, and a process replacing the file holds it exclusively.  The first layout
(``sync-v1-<size>.arena``, pid-based) is removed once none of its processes is alive.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import functools
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from .. import _core, _kernel
from ..errors import NameKindError
from .backend import Availability, Backend, Handle, InitialState, Kind, Request
from .userdir import ROOT_ENV_VAR, user_directory

_KIND_CODES: dict[str, int] = {
    "semaphore": _core.SYNC_SEMAPHORE,
    "mutex": _core.SYNC_MUTEX,
    "event": _core.SYNC_EVENT,
    "lock": _core.SYNC_LOCK,
}

#: The arena's file name in the per-user directory, the same for every ntshim version.
ARENA_NAME = "sync.arena"
_MAGIC = 0x4E545359  # "NTSY", the first field of every layout's header
_CURRENT = (_MAGIC, _core.SYNC_LAYOUT, _core.SYNC_ARENA_SIZE)

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
    """The arena file of this user, attached on first use in this process.

    Raises OSError naming the file and what to do when it cannot be used: the per-user
    directory is not ours (PermissionError), processes of another ntshim version use it
    (EBUSY), or there is no room (ENOSPC).
    """
    global _arena_path
    with _lock:
        if _arena_path is None:
            directory = user_directory()
            _retire_first_layout(directory)
            path = os.path.join(directory, ARENA_NAME)
            fd = _open_current(path)
            try:
                _core.sync_attach(fd)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                raise OSError(
                    errno.ENOSPC, f"the sync arena {path} has no free process slot: each is held by a live process"
                ) from None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)  # the C layer keeps the description open: unlock explicitly
                os.close(fd)  # the mapping and the C layer's own descriptor stay
            atexit.register(_detach)
            _arena_path = path
        return _arena_path


def _describe(layout: tuple[int, int, int]) -> str:
    magic, version, size = layout
    if magic != _MAGIC:
        return f"not an ntshim arena ({size} bytes, magic {magic:#010x})"
    return f"layout {version}, {size} bytes"


def _same_file(fd: int, path: str) -> bool:
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino)


def _open_current(path: str) -> int:
    """A descriptor of the arena of this layout at ``path``, with a shared flock held: a
    process replacing the file holds it exclusively, so what we attach to stays the file
    at ``path`` until our process slot is claimed (which makes it "in use")."""
    for _attempt in range(10):
        fd = _open_or_create(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if _same_file(fd, path):
                found = _core.sync_layout(fd)
                if found == _CURRENT:
                    return fd
                _replace(fd, path, found)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced meanwhile, by us or another process: open the new one
    raise OSError(errno.EAGAIN, f"the sync arena {path} keeps changing under this process; try again", path)


def _replace(fd: int, path: str, found: tuple[int, int, int]) -> None:
    """Put an arena of this layout at ``path`` in place of the other-layout file open as
    ``fd``, unless a process is attached to that file."""
    fcntl.flock(fd, fcntl.LOCK_EX)  # no process is between opening and claiming a slot now
    if not _same_file(fd, path):
        return  # another process replaced it first
    if _core.sync_in_use(fd):
        raise OSError(
            errno.EBUSY,
            f"the sync arena {path} has {_describe(found)}, this ntshim uses {_describe(_CURRENT)}, and "
            "processes are attached to it (another ntshim version, or a damaged file): processes of the two "
            "layouts could not share objects.  Stop the processes of this user that use ntshim.sync (the file is "
            f"replaced once none is attached), or set {ROOT_ENV_VAR} to another directory for every process of "
            "this version that must share objects",
            path,
        )
    os.rename(_format_temp(path), path)


def _format_temp(path: str) -> str:
    """A new arena under a private name beside ``path``: a racing process never sees a
    half-made file at ``path``."""
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _core.sync_format(fd)
    except OSError as e:
        os.unlink(tmp)
        if e.errno == errno.ENOSPC:
            directory = os.path.dirname(path)
            raise OSError(errno.ENOSPC, f"no room for a new sync arena in {directory}: {e.strerror}") from None
        raise
    finally:
        os.close(fd)
    return tmp


def _open_or_create(path: str) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        tmp = _format_temp(path)
        try:
            os.link(tmp, path)  # a process racing us either wins (we use its arena) or finds ours complete
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        fd = os.open(path, flags)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077 or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise PermissionError(f"{path} is not a file private to this user; remove it so ntshim can create its own")
    return fd


# --- the first layout ----------------------------------------------------------------------
# ntshim up to layout 1 named the arena after its layout (sync-v1-<size>.arena) and told live
# processes by pid and start time.  A process of that version never sees sync.arena: while one
# lives, this version must not start a second namespace beside it.

_FIRST_LAYOUT_NAME = re.compile(r"sync-v1-\d+\.arena")
#: Offset of the process table for each size that layout had (two variants of its wait block).
_FIRST_LAYOUT_PROCESSES = {15601664: 6799360, 15568896: 6766592}
_FIRST_LAYOUT_PROC_HW = 80  # header offset of the process table's high-water mark
_FIRST_LAYOUT_NPROC = 1024
_FIRST_LAYOUT_ENTRY = struct.Struct("=IIQ")  # pid, in_use, start time (/proc/<pid>/stat field 22)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None  # field 22 counts from the pid


def _first_layout_users(path: str) -> list[int]:
    """The live processes a first-layout arena lists (that layout's own rule: the pid
    exists and its start time matches)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        table = _FIRST_LAYOUT_PROCESSES.get(size)
        if table is None:
            raise OSError(
                errno.EBUSY,
                f"{path} is the sync arena of an older ntshim whose layout this version cannot read, so it cannot "
                "tell whether processes use it; remove it once no process of this user runs that version",
                path,
            )
        (hw,) = struct.unpack("=I", os.pread(fd, 4, _FIRST_LAYOUT_PROC_HW).ljust(4, b"\0"))
        hw = min(hw, _FIRST_LAYOUT_NPROC)
        entries = os.pread(fd, _FIRST_LAYOUT_ENTRY.size * (hw + 1), table)
    finally:
        os.close(fd)
    users = []
    for i in range(1, len(entries) // _FIRST_LAYOUT_ENTRY.size):
        pid, in_use, start = _FIRST_LAYOUT_ENTRY.unpack_from(entries, i * _FIRST_LAYOUT_ENTRY.size)
        if in_use and pid and _start_time(pid) == start:
            users.append(pid)
    return users


def _retire_first_layout(directory: str) -> None:
    for entry in os.listdir(directory):
        if not _FIRST_LAYOUT_NAME.fullmatch(entry):
            continue
        path = os.path.join(directory, entry)
        try:
            users = _first_layout_users(path)
        except FileNotFoundError:
            continue  # retired meanwhile by another process
        if users:
            raise OSError(
                errno.EBUSY,
                f"processes {', '.join(map(str, users))} use {path}, the sync arena of an older ntshim (layout 1); "
                f"this version uses {os.path.join(directory, ARENA_NAME)}, and processes of the two could not share "
                "objects.  Let those processes finish (the old file is removed once none is left), or set "
                f"{ROOT_ENV_VAR} to another directory for every process of this version that must share objects",
                path,
            )
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --- errors --------------------------------------------------------------------------------


def _damaged() -> OSError:
    path = _arena_path
    return OSError(
        errno.EUCLEAN,
        f"the sync arena {path} is damaged for this process: {_core.sync_damage()}.  This process has left "
        "the arena (the other processes reclaim what it held) and cannot use its objects any more.  To recover, "
        f"stop the processes of this user that use ntshim.sync and remove {path}; meanwhile, processes started "
        f"with {ROOT_ENV_VAR} set to another directory use a fresh arena there (sharing no objects with the "
        "processes on this one)",
        path,
    )


def _arena_full(e: OSError) -> OSError:
    return OSError(
        e.errno,
        f"the sync arena is full ({e.strerror}): close objects you no longer need, or make room on the "
        f"file system of {_arena_path}",
    )


def _explained(e: OSError) -> OSError:
    """The error the C layer reported, in words that say what to do."""
    if e.errno == errno.EUCLEAN:
        return _damaged()
    if e.errno == errno.ENOSPC:
        return _arena_full(e)
    return e


_F = TypeVar("_F", bound=Callable[..., Any])


def _explain_errors(method: _F) -> _F:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except OSError as e:
            raise _explained(e) from None

    return call  # type: ignore[return-value]


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
        try:
            _core.sync_unref(self._slot)
        except OSError as e:
            if e.errno != errno.EUCLEAN:
                raise
            # A damaged arena: this process has left it, and the others reclaim its references.

    def __del__(self) -> None:
        # Like a file: a handle nobody closed gives its reference back when collected.
        if not getattr(self, "_closed", True) and _arena_path is not None:
            self.close()

    def state(self) -> Any:
        return (arena_path(), self._slot, self._gen)

    @_explain_errors
    def sem_release(self, count: int) -> int:
        return _core.sync_sem_release(self._slot, count)

    @_explain_errors
    def sem_read(self) -> tuple[int, int]:
        return _core.sync_sem_read(self._slot)

    @_explain_errors
    def mutex_unlock(self, owner: int) -> int:
        return _core.sync_mutex_unlock(self._slot, owner)

    @_explain_errors
    def mutex_kill(self, owner: int) -> None:
        _core.sync_mutex_kill(self._slot, owner)

    @_explain_errors
    def mutex_read(self) -> tuple[int, int, bool]:
        return _core.sync_mutex_read(self._slot)

    @_explain_errors
    def lock_release(self, abandon: bool) -> None:
        _core.sync_lock_release(self._slot, abandon)

    @_explain_errors
    def lock_read(self) -> tuple[bool, bool]:
        return _core.sync_lock_read(self._slot)

    @_explain_errors
    def event_set(self) -> bool:
        return _core.sync_event(self._slot, _core.SYNC_SET)

    @_explain_errors
    def event_reset(self) -> bool:
        return _core.sync_event(self._slot, _core.SYNC_RESET)

    @_explain_errors
    def event_pulse(self) -> bool:
        return _core.sync_event(self._slot, _core.SYNC_PULSE)

    @_explain_errors
    def event_read(self) -> tuple[bool, bool]:
        return _core.sync_event_read(self._slot)


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
            # Not a missing kernel feature: other processes of this user may use the arena, and
            # would not see objects of the next backend (names are per backend).
            return Availability(cls.name, False, f"cannot open the shared arena: {e}", stops_selection=True)
        return Availability(cls.name, True, notes=(f"arena {path}",))

    @classmethod
    def create(cls, kind: Kind, initial: InitialState, name: bytes | None) -> tuple[Handle, bool]:
        arena_path()
        try:
            slot, gen, created = _core.sync_create(_KIND_CODES[kind], initial, name)
        except FileExistsError:
            raise NameKindError(f"the name {name!r} belongs to an object of another kind, not a {kind}") from None
        except OSError as e:
            raise _explained(e) from None
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
        except OSError as e:
            raise _explained(e) from None
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
        except OSError as e:
            raise _explained(e) from None
        return FutexHandle(kind, slot, gen)

    @classmethod
    @_explain_errors
    def wait(
        cls, handles: Sequence[Handle], wait_all: bool, deadline: int | None, owner: int, alert: Handle | None
    ) -> tuple[int, bool]:
        slots, alert_slot = _slots(handles, alert)
        return _core.sync_wait(slots, wait_all, deadline, owner, alert_slot)

    @classmethod
    @_explain_errors
    def request(cls, handles: Sequence[Handle], wait_all: bool, owner: int, alert: Handle | None) -> Request:
        if _requests.pool:
            block = _requests.pool.pop()
        elif _requests.made >= MAX_REQUESTS:
            raise OSError(errno.ENOSPC, f"this process has {MAX_REQUESTS} pending requests, the most it may have")
        else:
            block = _core.sync_request_new()
            _requests.made += 1
        slots, alert_slot = _slots(handles, alert)
        try:
            now = _core.sync_request_start(block, slots, wait_all, owner, alert_slot)
        except BaseException:
            _requests.pool.append(block)
            raise
        return FutexRequest(block, now)

    @classmethod
    def bell(cls) -> int:
        return _core.sync_bell()

    @classmethod
    def ring(cls) -> None:
        _core.sync_ring()

    @classmethod
    @_explain_errors
    def sleep(cls, requests: Sequence[Request], deadline: int | None, bell: int) -> None:
        pending = cast("list[FutexRequest]", requests)
        if all(r.outcome is None for r in pending):
            _core.sync_request_sleep([r.block for r in pending], deadline, bell)


def _slots(handles: Sequence[Handle], alert: Handle | None) -> tuple[list[int], int]:
    slots = [h.slot for h in handles]  # type: ignore[attr-defined]  # every handle here is a FutexHandle
    return slots, alert.slot if alert is not None else 0  # type: ignore[attr-defined]


#: Most requests one process has pending at once: each holds a wait block, of which the
#: arena has 4096 for every process of the user.
MAX_REQUESTS = 256


class _Requests(threading.local):
    """The request blocks of the thread that makes requests (they belong to that thread:
    its token holds what they acquire) and are reused once ended."""

    def __init__(self) -> None:
        self.pool: list[int] = []
        self.made = 0


_requests = _Requests()  # (per thread: a fork child's threads start with none)


class FutexRequest:
    """A wait in a block of its own (see arena.c, "requests")."""

    __slots__ = ("block", "outcome")

    def __init__(self, block: int, outcome: tuple[int, bool] | None) -> None:
        self.block = block
        self.outcome = outcome  # set when satisfied at once

    def ready(self) -> bool:
        return self.outcome is not None or _core.sync_request_ready(self.block)

    @_explain_errors
    def end(self) -> tuple[int, bool] | None:
        outcome = self.outcome if self.outcome is not None else _core.sync_request_end(self.block)
        _requests.pool.append(self.block)
        return outcome


BACKEND = Futex
