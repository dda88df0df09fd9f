"""The public objects and waits: argument checks, timeouts and exceptions; the backends do
the rest (see :mod:`ntshim.sync.backend` for the contract).

Each object has its NT operations and also follows :mod:`threading`'s protocol:
:class:`RLock` (the NT mutex), :class:`Lock`, :class:`Semaphore`, :class:`BoundedSemaphore`
and :class:`Event` accept the calls, arguments, results and exceptions of their namesakes in
:mod:`threading`, across processes."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

from .. import _core
from .._arguments import as_int
from ..errors import AbandonedError, AbandonedWarning, SemaphoreOverflowError
from . import aio, registry
from .backend import MAX_NAME_BYTES, MAX_WAIT_OBJECTS, U32_MAX, Backend, Handle, InitialState, Kind


def _u32(value: object, what: str, *, nonzero: bool = False) -> int:
    number = as_int(value, what)
    low = 1 if nonzero else 0
    if not low <= number <= U32_MAX:
        raise ValueError(f"{what} must be in {low}..{U32_MAX:#x}, got {number}")
    return number


def _owner(owner: object) -> int:
    """An owner id: by default the calling thread's native id (never 0 on Linux)."""
    if owner is None:
        return threading.get_native_id()
    return _u32(owner, "owner", nonzero=True)


def _name(name: object) -> bytes | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    encoded = name.encode("utf-8", "strict")
    if not encoded:
        raise ValueError("name must not be empty (use None for an unnamed object)")
    if b"\0" in encoded:
        raise ValueError("name must not contain NUL characters")
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"name is {len(encoded)} bytes of UTF-8; at most {MAX_NAME_BYTES} are allowed")
    return encoded


def _deadline(timeout: object) -> int | None:
    """A timeout in seconds as an absolute CLOCK_MONOTONIC deadline in ns (None: never)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if isinstance(timeout, float) and math.isnan(timeout):
        raise ValueError("timeout must not be NaN")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds (None waits forever), got {timeout}")
    if timeout == math.inf:
        return None
    if timeout > threading.TIMEOUT_MAX:  # as threading's locks answer: the clock cannot count that far
        raise OverflowError(
            f"timeout must be at most threading.TIMEOUT_MAX ({threading.TIMEOUT_MAX:g} s), got {timeout}"
        )
    deadline = time.monotonic_ns() + math.ceil(timeout * 1e9)
    return deadline if deadline < 1 << 63 else None  # past the clock's range: never reached


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _caller_level() -> int:
    """The ``stacklevel`` that names the first caller outside this package (the frames
    between differ: the C methods have none, asyncio's path has more)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


#: A deadline that has passed: the wait tries once (a poll).
_POLL = 0


def _checked_seconds(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if isinstance(timeout, float) and math.isnan(timeout):
        raise ValueError("timeout must not be NaN")
    return timeout


def _lock_deadline(blocking: object, timeout: object) -> int | None:
    """``threading.Lock.acquire``'s arguments as a deadline: -1 waits forever, another
    negative timeout is an error, and a non-blocking call takes no timeout."""
    seconds = _checked_seconds(timeout)
    if not blocking:
        if seconds != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return _POLL
    if seconds == -1:
        return None
    if seconds < 0:
        raise ValueError("timeout value must be a non-negative number")
    return _deadline(seconds)


def _wait_deadline(timeout: object) -> int | None:
    """``threading.Event.wait``'s and ``threading.Semaphore.acquire``'s timeout as a
    deadline: None waits forever, a negative timeout polls."""
    if timeout is None:
        return None
    seconds = _checked_seconds(timeout)
    return _POLL if seconds <= 0 else _deadline(seconds)


class SyncObject:
    """What the three kinds share: a backend handle, an optional name, close and pickling.

    Objects are usable from every thread.  They pass to child processes: ``fork`` children
    inherit them, and they pickle for ``spawn`` children and ``multiprocessing`` (the
    pickled form reopens the same object; keep it open until the child has it).
    """

    kind: ClassVar[Kind]
    _handle: Handle
    _backend: type[Backend]
    #: The futex arena's object, for the kind's hot methods in C (_core/sync/hot.c), which
    #: hand every call to the Python ``_slow_`` methods while it is 0.
    _slot: int

    def _start(self, backend: object, initial: InitialState, name: object) -> None:
        encoded = _name(name)
        chosen = registry.FAMILY.select(backend)
        self._handle, self.created = chosen.create(self.kind, initial, encoded)
        self._backend = chosen
        self._name: str | None = name if isinstance(name, str) else None
        self._opened()

    @classmethod
    def _wrap(cls, chosen: type[Backend], handle: Handle, name: str | None, created: bool) -> Any:
        self = cls.__new__(cls)
        self._handle, self._backend, self._name, self.created = handle, chosen, name, created
        self._opened()
        return self

    def _opened(self) -> None:
        self._slot = self._handle.slot if self._backend.name == "futex" else 0  # type: ignore[attr-defined]

    @classmethod
    def open(cls, name: str, *, backend: str | None = None) -> Any:
        """Open the existing object called ``name``: FileNotFoundError if there is none,
        :class:`~ntshim.errors.NameKindError` if the name belongs to another kind."""
        encoded = _name(name)
        if encoded is None:
            raise TypeError("name must be a str")
        chosen = registry.FAMILY.select(backend)
        return cls._wrap(chosen, chosen.open(cls.kind, encoded), name, False)

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def close(self) -> None:
        """Drop this reference (idempotent).  The object, and its name, live on while any
        process holds a reference.  (``with`` acquires and releases the locks and semaphores;
        ``contextlib.closing`` closes.)"""
        self._slot = 0  # (first: the C methods then hand every call to Python, which says it is closed)
        self._handle.close()

    def _live(self) -> Handle:
        if self._handle.closed:
            raise ValueError(f"operation on a closed {self.kind}")
        return self._handle

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (type(self), self._backend.name, self._name, self._live().state()))

    def __repr__(self) -> str:
        if self._handle.closed:
            return f"<ntshim.sync.{type(self).__name__} closed>"
        named = f" name={self._name!r}" if self._name is not None else ""
        return f"<ntshim.sync.{type(self).__name__}{named} backend={self.backend} {self._describe()}>"

    def _describe(self) -> str:
        raise NotImplementedError

    def _acquire(self, deadline: int | None, owner: int) -> bool | None:
        """Wait for this object alone: None on timeout, else whether it was abandoned."""
        try:
            return self._backend.wait([self._live()], False, deadline, owner, None)[1]
        except TimeoutError:
            return None


def _reopen(cls: type[SyncObject], backend: str, name: str | None, state: Any) -> SyncObject:
    chosen = registry.backend_class(backend)
    return cls._wrap(chosen, chosen.from_state(cls.kind, state), name, False)


class Semaphore(_core.SemaphoreBase, SyncObject):
    """A counting semaphore, as :class:`threading.Semaphore` across processes: ``acquire``
    takes one from the count, waiting while it is 0; ``release`` gives back.

    ``value`` is the initial count (``count=`` is accepted too); ``maximum`` bounds it (None:
    only the 32-bit range, 0xFFFFFFFF).  Semaphores have no owner, as in NT and POSIX: a unit
    that a process took and then died holding is not given back.
    """

    kind = "semaphore"

    def __init__(
        self,
        value: int = 1,
        maximum: int | None = None,
        *,
        count: int | None = None,
        name: str | None = None,
        backend: str | None = None,
    ) -> None:
        if count is not None:
            if value != 1:
                raise TypeError("give the initial count once: value or count=")
            value = count
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        value = _u32(value, "value")
        maximum = U32_MAX if maximum is None else _u32(maximum, "maximum", nonzero=True)
        if value > maximum:
            raise ValueError(f"value ({value}) must not exceed maximum ({maximum})")
        self._start(backend, (value, maximum), name)

    # acquire, release, with: _core.SemaphoreBase's C methods serve an open futex semaphore
    # themselves and hand every other call to the _slow_ method of the same name.

    def _slow_acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        return self._acquire(_wait_deadline(timeout) if blocking else _POLL, _owner(None)) is not None

    def _slow_release(self, n: int = 1) -> int:
        n = as_int(n, "n")
        if n < 1:
            raise ValueError("n must be one or more")
        n = _u32(n, "n")
        try:
            return self._live().sem_release(n)
        except OverflowError:
            raise SemaphoreOverflowError(self._overflow_message(n)) from None

    def _overflow_message(self, n: int) -> str:
        count, maximum = self.read()
        return f"releasing {n} would raise the count ({count}) past the maximum ({maximum})"

    def read(self) -> tuple[int, int]:
        """``(count, maximum)``"""
        return self._live().sem_read()

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """:meth:`acquire` from a coroutine (``timeout`` as :meth:`Event.wait`'s); see
        :func:`wait_any_async`."""
        return await aio.wait([self], None, False, _wait_deadline(timeout)) is not None

    async def __aenter__(self) -> Semaphore:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def _describe(self) -> str:
        count, maximum = self.read()
        return f"count={count} maximum={maximum}"


class BoundedSemaphore(Semaphore):
    """:class:`threading.BoundedSemaphore`: a semaphore whose count may not pass its initial
    value; a release past it raises :class:`~ntshim.errors.SemaphoreOverflowError` (a
    ValueError)."""

    def __init__(self, value: int = 1, *, name: str | None = None, backend: str | None = None) -> None:
        super().__init__(value, value, name=name, backend=backend)

    def _overflow_message(self, n: int) -> str:
        return "Semaphore released too many times"


_H = TypeVar("_H", bound="_Held")


class _Held(SyncObject):
    """What :class:`Lock` and :class:`Mutex` share: a holder that dies abandons them, the
    next acquirer learns it, and ``with`` / ``async with`` acquire and release."""

    # ``abandoned`` (whether this process's current hold began by taking over an abandoned
    # lock), acquire, release, locked and with are each kind's C type's (_core/sync/hot.c).
    abandoned: bool
    release: Callable[[], None]
    acquire_async: Callable[..., Awaitable[bool]]

    def _took_over_abandoned(self, give_up: Callable[[], None]) -> None:
        """Report an abandoned lock just acquired; if the warning is an error here, leave
        the lock abandoned (``give_up``), not held, and raise it."""
        self.abandoned = True
        try:
            warnings.warn(
                AbandonedWarning(f"{self!r} was abandoned: its holder died holding it; you hold it now"),
                stacklevel=_caller_level(),
            )
        except BaseException:
            self.abandoned = False
            give_up()
            raise

    async def __aenter__(self: _H) -> _H:
        await self.acquire_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Lock(_core.LockBase, _Held):
    """:class:`threading.Lock` across processes: not recursive, and any thread of any
    process may release it.

    It is held by the *process* of the thread that took it: if that process ends while
    holding it (killed, or exiting without releasing), the lock is abandoned, and the next
    ``acquire()`` (or ``with``) gets it, sets :attr:`abandoned` and warns with
    :class:`~ntshim.errors.AbandonedWarning`; ``wait_any``/``wait_all`` raise
    :class:`~ntshim.errors.AbandonedError` as for a mutex.  A thread that exits holding it
    abandons nothing: another thread may release it, as with ``threading.Lock``.
    """

    kind = "lock"

    def __init__(self, *, name: str | None = None, backend: str | None = None) -> None:
        self._start(backend, (0, 0), name)

    # acquire, release, locked, with: _core.LockBase's C methods serve an open futex lock
    # themselves and hand every other call to the _slow_ method of the same name.

    def _slow_acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        abandoned = self._acquire(_lock_deadline(blocking, timeout), _owner(None))
        if abandoned is None:
            return False
        if abandoned:
            self._took_over_abandoned(self._give_up)
        return True

    def _slow_release(self) -> None:
        was_abandoned, self.abandoned = self.abandoned, False  # (before: the next holder may set it)
        try:
            self._live().lock_release(False)
        except PermissionError:
            self.abandoned = was_abandoned
            raise RuntimeError("release unlocked lock") from None

    def _give_up(self) -> None:
        self._live().lock_release(True)

    def _slow_locked(self) -> bool:
        return self._live().lock_read()[0]

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """:meth:`acquire` from a coroutine (``timeout`` as :meth:`Event.wait`'s); see
        :func:`wait_any_async`."""
        outcome = await aio.wait([self], None, False, _wait_deadline(timeout))
        if outcome is None:
            return False
        if outcome[1]:
            self._took_over_abandoned(self._give_up)
        return True

    def _describe(self) -> str:
        locked, abandoned = self._live().lock_read()
        return "abandoned" if abandoned else "locked" if locked else "unlocked"


class Mutex(_core.MutexBase, _Held):
    """A recursive mutex owned by an owner id (default: the calling thread's native id); also
    :class:`threading.RLock` across processes (:class:`RLock` is its threading name).

    ``Mutex()`` is unowned; ``Mutex(count=1)`` is owned once by the calling thread.  When the
    thread that acquired it exits, or its process dies, the mutex is abandoned: the next
    ``wait_any``/``wait_all`` acquires it and raises :class:`~ntshim.errors.AbandonedError`;
    the next ``acquire()`` (or ``with``) acquires it, sets :attr:`abandoned` and warns with
    :class:`~ntshim.errors.AbandonedWarning` instead, so that the ``with`` block runs.
    """

    kind = "mutex"

    def __init__(
        self, *, owner: int | None = None, count: int = 0, name: str | None = None, backend: str | None = None
    ) -> None:
        count = _u32(count, "count")
        if count == 0:
            if owner is not None:
                raise ValueError("an owner was given for an unowned mutex (count 0); pass count=1 to own it")
            initial = (0, 0)
        else:
            initial = (_owner(owner), count)
        self._start(backend, initial, name)

    def unlock(self, owner: int | None = None) -> int:
        """Release one level of ownership; return the previous count.  PermissionError, and
        no change, if ``owner`` (default: this thread) does not own it."""
        return self._live().mutex_unlock(_owner(owner))

    def kill(self, owner: int) -> None:
        """Abandon the mutex as if ``owner``, which must own it, had died (PermissionError
        otherwise)."""
        self._live().mutex_kill(_u32(owner, "owner", nonzero=True))

    def read(self) -> tuple[int, int]:
        """``(owner, count)``; ``(0, 0)`` when unowned.  Raises AbandonedError while abandoned."""
        owner, count, abandoned = self._live().mutex_read()
        if abandoned:
            raise AbandonedError(None, "the mutex is abandoned: its owner died holding it")
        return owner, count

    def _describe(self) -> str:
        owner, count, abandoned = self._live().mutex_read()
        return "abandoned" if abandoned else f"owner={owner} count={count}"

    # ---- threading.RLock's protocol: acquire, release, locked, with are _core.MutexBase's
    # C methods, which serve an open futex mutex held by a thread themselves and hand every
    # other call to the _slow_ method of the same name. ----

    def _slow_acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        abandoned = self._acquire(_lock_deadline(blocking, timeout), threading.get_native_id())
        if abandoned is None:
            return False
        if abandoned:  # (the flag was cleared by the release that ended the last hold)
            self._took_over_abandoned(self._give_up)
        return True

    def _give_up(self) -> None:
        self._live().mutex_kill(threading.get_native_id())

    def _slow_release(self) -> None:
        # The flag goes before the last level does: once the mutex is free, the next holder
        # (another thread of this process, sharing this object) may set it.
        was_abandoned, self.abandoned = self.abandoned, False
        try:
            level = aio.release(self)  # a task's hold, through the dispatcher
            if level is None:
                try:
                    level = self._live().mutex_unlock(threading.get_native_id())
                except PermissionError:
                    raise RuntimeError("cannot release un-acquired lock") from None
        except BaseException:
            self.abandoned = was_abandoned
            raise
        if level > 1:
            self.abandoned = was_abandoned  # still held (nobody else could take it meanwhile)

    def _slow_locked(self) -> bool:
        return self._live().mutex_read()[1] > 0

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """:meth:`acquire` from a coroutine, for the running task: the task owns it (its
        recursion counts per task) and releases it with :meth:`release` or ``async with``.
        ``timeout`` as :meth:`Event.wait`'s.  No thread waits for it: see
        :func:`wait_any_async`.  The dispatcher thread acquires it, so the process's death
        abandons it."""
        outcome = await aio.wait([self], None, False, _wait_deadline(timeout))
        if outcome is None:
            return False
        if outcome[1]:
            self._took_over_abandoned(lambda: aio.abandon(self))
        return True

    # What threading.Condition uses of an RLock: waiting releases every level, then takes them back.
    def _is_owned(self) -> bool:
        owner, count, _ = self._live().mutex_read()
        return count > 0 and owner == threading.get_native_id()

    def _release_save(self) -> tuple[int, int]:
        owner = threading.get_native_id()
        try:
            levels = self._live().mutex_unlock(owner)
        except PermissionError:
            raise RuntimeError("cannot release un-acquired lock") from None
        for _ in range(levels - 1):
            self._live().mutex_unlock(owner)
        return levels, owner

    def _acquire_restore(self, state: tuple[int, int]) -> None:
        levels, _ = state
        for _ in range(levels):
            self.acquire()


class RLock(Mutex):
    """:class:`threading.RLock` across processes: the NT mutex (see :class:`Mutex`), unowned
    when made.  A holder that dies (its thread or its process) leaves it abandoned, and the
    next ``acquire()`` gets it: see :attr:`Mutex.abandoned`."""

    def __init__(self, *, name: str | None = None, backend: str | None = None) -> None:
        super().__init__(name=name, backend=backend)


class Event(_core.EventBase, SyncObject):
    """A manual-reset (stays signaled until reset) or auto-reset (a wait resets it) event;
    with the defaults (manual, unsignaled), :class:`threading.Event` across processes.
    Like it, not a context manager."""

    kind = "event"

    def __init__(
        self, *, manual: bool = True, signaled: bool = False, name: str | None = None, backend: str | None = None
    ) -> None:
        for what, value in (("manual", manual), ("signaled", signaled)):
            if not isinstance(value, bool):
                raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
        self._start(backend, (int(manual), int(signaled)), name)

    # set, is_set, clear, wait: _core.EventBase's C methods serve an open futex event
    # themselves and hand every other call to the _slow_ method of the same name.

    def _slow_set(self) -> bool:
        return self._live().event_set()

    def reset(self) -> bool:
        """Unsignal the event; return the previous state."""
        return self._live().event_reset()

    def pulse(self) -> bool:
        """Wake the current waiters (all for manual, one for auto) and leave the event
        unsignaled, atomically; return the previous state."""
        return self._live().event_pulse()

    def read(self) -> tuple[bool, bool]:
        """``(manual, signaled)``"""
        return self._live().event_read()

    def _slow_is_set(self) -> bool:
        return self._live().event_read()[1]

    def _slow_clear(self) -> None:
        self._live().event_reset()

    def _slow_wait(self, timeout: float | None = None) -> bool:
        return self._acquire(_wait_deadline(timeout), _owner(None)) is not None

    async def wait_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait` from a coroutine; see :func:`wait_any_async`."""
        return await aio.wait([self], None, False, _wait_deadline(timeout)) is not None

    def _describe(self) -> str:
        manual, signaled = self.read()
        return f"{'manual' if manual else 'auto'} {'signaled' if signaled else 'unsignaled'}"


def _checked_wait(objects: Sequence[SyncObject], alert: object, wait_all: bool) -> list[SyncObject]:
    """The objects of a wait, the alert last, after every check a wait makes of them."""
    if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
        raise TypeError(f"objects must be a sequence of sync objects, not {type(objects).__name__}")
    if not objects and (wait_all or alert is None):
        raise ValueError("objects must name at least one object (wait_any may wait on its alert alone)")
    if len(objects) > MAX_WAIT_OBJECTS:
        raise ValueError(f"at most {MAX_WAIT_OBJECTS} objects can be waited on at once, got {len(objects)}")
    for i, obj in enumerate(objects):
        if not isinstance(obj, SyncObject):
            raise TypeError(f"objects[{i}] is a {type(obj).__name__}, not a Lock, Mutex, Semaphore or Event")
    if alert is not None and not isinstance(alert, Event):
        raise TypeError(f"alert must be an Event or None, not {type(alert).__name__}")
    everything = [*objects, alert] if alert is not None else list(objects)
    backend = everything[0]._backend
    for obj in everything:
        if obj._backend is not backend:
            raise ValueError(f"cannot wait on objects of different backends ({backend.name} and {obj.backend})")
    handles = [obj._live() for obj in everything]
    if wait_all and len({h.key for h in handles}) < len(everything):
        raise ValueError("wait_all: an object appears twice (the alert included)")
    return everything


def _wait(objects: Sequence[SyncObject], timeout: object, owner: object, alert: object, wait_all: bool) -> int:
    everything = _checked_wait(objects, alert, wait_all)
    owner_id = _owner(owner)
    deadline = _deadline(timeout)
    handles = [obj._handle for obj in objects]
    alert_handle = everything[-1]._handle if alert is not None else None
    return _served(everything[0]._backend.wait(handles, wait_all, deadline, owner_id, alert_handle))


def _served(outcome: tuple[int, bool]) -> int:
    """A wait's index; AbandonedError (the object then held) if it took an abandoned one."""
    index, abandoned = outcome
    if abandoned:
        raise AbandonedError(index)
    return index


def wait_any(
    objects: Sequence[SyncObject],
    timeout: float | None = None,
    *,
    owner: int | None = None,
    alert: Event | None = None,
) -> int:
    """Wait until one of ``objects`` is signaled, acquire it and return its index (the lowest
    when several are); ``len(objects)`` if ``alert`` was signaled first.

    ``timeout`` in seconds (0 polls, None waits forever) → TimeoutError.  Acquiring an
    abandoned mutex raises AbandonedError with its index (the mutex is then owned).
    """
    if owner is None and alert is None:
        served = _core.sync_wait_hot(objects, timeout, False)
        if served is not None:
            return _served(served)
    return _wait(objects, timeout, owner, alert, False)


def wait_all(
    objects: Sequence[SyncObject],
    timeout: float | None = None,
    *,
    owner: int | None = None,
    alert: Event | None = None,
) -> int:
    """Wait until every one of ``objects`` is signaled and acquire them all in one atomic
    step (never a part); return 0, or ``len(objects)`` if ``alert`` was signaled first."""
    if owner is None and alert is None:
        served = _core.sync_wait_hot(objects, timeout, True)
        if served is not None:
            return _served(served)
    return _wait(objects, timeout, owner, alert, True)


async def wait_any_async(
    objects: Sequence[SyncObject], timeout: float | None = None, *, alert: Event | None = None
) -> int:
    """:func:`wait_any` from a coroutine: the event loop runs on while it waits, and no thread
    waits for it (one dispatcher thread per process serves every pending wait).  A mutex it
    acquires is owned by the calling task.  Cancelling the task takes nothing: a unit, a
    lock, a mutex or an auto-reset event handed to it meanwhile is given back."""
    return await _wait_async(objects, timeout, alert, False)


async def wait_all_async(
    objects: Sequence[SyncObject], timeout: float | None = None, *, alert: Event | None = None
) -> int:
    """:func:`wait_all` from a coroutine, as :func:`wait_any_async` is :func:`wait_any`'s:
    every object is acquired in one atomic step, for the calling task, or none is."""
    return await _wait_async(objects, timeout, alert, True)


async def _wait_async(objects: Sequence[SyncObject], timeout: object, alert: Event | None, wait_all: bool) -> int:
    _checked_wait(objects, alert, wait_all)
    outcome = await aio.wait(list(objects), alert, wait_all, _deadline(timeout))
    if outcome is None:
        raise TimeoutError("the wait timed out")
    index, abandoned = outcome
    if abandoned:
        raise AbandonedError(index)
    return index
