"""The ``eventfd`` backend: the esync design (Wine 3.x–8.x), for comparison.

Every object is an eventfd; a wait ``poll()``\\ s the descriptors, then tries to take what
looks signaled with non-blocking reads, and polls again if someone else was faster:

- semaphore: an ``EFD_SEMAPHORE`` eventfd whose counter *is* the count (a read takes one);
  the maximum is kept beside the handle;
- event: an eventfd whose counter is nonzero while signaled; a wait on an auto-reset event
  reads it (which zeroes it), a wait on a manual one only looks;
- mutex: an eventfd holding one token while the mutex is unowned, plus a shared block
  (a memfd) with owner, recursion count, abandoned flag and the holder thread's (pid, tid).
  Only the thread that holds the token writes the block.

Every object is registered with the server process (:mod:`ntshim.sync.server`), which acts
as esync's wineserver did: it keeps a copy of the descriptors under the object's id and
name and passes them with SCM_RIGHTS to whoever opens the name or unpickles the object;
the references and the name go as with the server backend.  It also watches threads: each
thread that acquires a mutex here keeps a connection to it, and when that connection closes
(the thread exited, the process died) the server abandons the mutexes whose block names
that thread, writing the token back — how wineserver abandoned esync mutexes.

Gaps
----
What this design cannot do, rule by rule of :mod:`ntshim.sync.backend` (the tests mark
the scenarios that show them as expected failures):

1. **No hand-off.**  ``release``, ``unlock``, ``kill``, ``set`` and ``pulse`` only make the
   object signaled; a woken waiter takes it itself, later, in its own thread.  Reading the
   object right after the signalling call returns still shows the count (or the event
   set, or the mutex unowned), and a thread that was not waiting at all can take it first.
2. **No queue order.**  Every waiter polling an object is woken and they race for it; the
   winner is arbitrary: neither FIFO order nor "wait-all waiters before wait-any waiters"
   holds.
3. **wait_all is not atomic.**  It takes the objects one after another and puts back what it
   took if one is gone meanwhile.  The waiter itself never returns with a part, but other
   threads can see a part taken (a semaphore one lower, an auto event reset, a mutex
   owned) and can fail a wait, or sleep, because of it; a put-back then wakes them late.
   Livelock between wait-alls that share objects is possible (both take a part, both put
   back, both retry).
4. **pulse is set-then-reset.**  Waiters blocked in poll are woken by the set but usually
   find the event already reset, so a pulse wakes nobody (manual: not all current waiters;
   auto: not reliably one), and a thread that was not waiting can take an auto event in
   the window.  The previous state returned by ``set`` and ``pulse`` is a snapshot taken
   before the write (``reset`` reports exactly: its read is the reset).
5. **The semaphore maximum is checked, not enforced.**  ``release`` reads the counter
   (``/proc/self/fdinfo``) and then adds: two concurrent releases can both pass the check
   and push the count over the maximum, and a wait-all putting a unit back (gap 3) can as
   well.  The previous count it returns and ``read()`` are snapshots.
6. **Mutex state is not atomic across owners.**  The block is written with plain stores by
   the token holder; two threads using the *same* owner id on one mutex at once (explicit
   ``owner=``), or a ``kill`` by a thread racing the holder's ``unlock``, can corrupt the
   recursion count.  Distinct owners (the default: one per thread) are safe.
7. **Abandonment depends on the broker.**  A thread that dies between taking the token and
   writing its identity into the block (a few bytecodes) leaves the mutex owned by nobody
   and locked forever; the server can only abandon what the block names.  A waiter blocked
   on the mutex is woken as soon as the server has processed the connection's end (the
   same moment as with the server backend).  If the server is killed, the objects keep
   working (they are the process's own descriptors) but holders' deaths go unnoticed: a
   new server does not know the old objects.
8. **Descriptors.**  Each object costs one descriptor (two for a mutex) in every process
   that has it open and in the server: esync's well-known file-descriptor exhaustion.  The
   server raises its own soft ``RLIMIT_NOFILE`` to the hard limit; clients do not.
9. **Every creation is a round trip** to the server (to register the descriptors), so is
   each thread's first mutex wait (it opens the thread's connection to the server), and the
   backend is only available when the server is.  ``read()`` of a semaphore or event, and
   the checks of ``release``/``set``/``pulse``, read ``/proc/self/fdinfo`` (a few µs).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from .backend import U32_MAX, Availability, Backend, Handle, Kind
from .server import (
    CLIENT,
    CREATE_HEAD,
    EFD_CREATE,
    EFD_OPEN,
    EFD_OPEN_ID,
    II,
    KIND_CODES,
    KIND_ID,
    QBII,
    QII,
    U8,
    ProtocolError,
    RefHandle,
    frame,
    raise_status,
)
from .server import Server as _Server

#: The shared block of a mutex: owner, count, abandoned, holder pid, holder tid (u32 each).
BLOCK = struct.Struct("<IIIII")
BLOCK_SIZE = 4096
#: Descriptors per kind: the eventfd, and for a mutex its block's memfd.
FDS_PER_KIND: dict[Kind, int] = {"semaphore": 1, "mutex": 2, "event": 1}

# Guards the use counts of descriptors: a handle closed by one thread while another waits on
# it keeps its descriptors until the wait is over (a closed descriptor's number could be
# reused by an unrelated file, which a late read would then consume from).
_use_lock = threading.Lock()


def _counter(fd: int) -> int:
    """An eventfd's counter, without consuming it (the kernel shows it in fdinfo, in hex)."""
    info_fd = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = os.read(info_fd, 4096)
    finally:
        os.close(info_fd)
    for line in text.splitlines():
        if line.startswith(b"eventfd-count:"):
            return int(line.split(b":", 1)[1].strip(), 16)
    raise OSError(errno.EINVAL, f"descriptor {fd} is not an eventfd")


def _take(fd: int) -> bool:
    """Read the eventfd without blocking: True if it was nonzero (and is now consumed)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        return False
    return True


def _expect(kind: Kind, fds: list[int]) -> list[int]:
    """The descriptors the broker passed for an object of ``kind``."""
    if len(fds) != FDS_PER_KIND[kind]:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise ProtocolError(f"the broker passed {len(fds)} descriptor(s) for a {kind}")
    return fds


class EventfdHandle(RefHandle):
    """The descriptors of one object, and its broker reference."""

    __slots__ = ("_dead", "_users", "block", "block_fd", "fd", "first", "second")

    def __init__(self, kind: Kind, oid: int, fds: list[int], params: tuple[int, int]) -> None:
        self.fd = fds[0]
        self.block_fd = fds[1] if kind == "mutex" else -1
        self.block: mmap.mmap | None = None
        self._users = 0
        self._dead = False
        self.first, self.second = params
        super().__init__(kind, oid)
        if kind == "mutex":
            self.block = mmap.mmap(self.block_fd, BLOCK_SIZE)

    # -- descriptor lifetime --

    def enter(self) -> None:
        with _use_lock:
            if self._dead:
                raise ValueError(f"operation on a closed {self.kind}")
            self._users += 1

    def leave(self) -> None:
        with _use_lock:
            self._users -= 1
            last = self._dead and not self._users
        if last:
            self._free()

    def _release_resources(self) -> None:
        with _use_lock:
            if self._dead:
                return
            self._dead = True
            busy = self._users > 0
        if not busy:
            self._free()

    def _free(self) -> None:
        if self.block is not None:
            with contextlib.suppress(BufferError, ValueError):
                self.block.close()
        for fd in (self.fd, self.block_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.block_fd = -1

    # -- mutex block --

    def read_block(self) -> tuple[int, int, int, int, int]:
        assert self.block is not None
        owner, count, abandoned, pid, tid = BLOCK.unpack_from(self.block)
        return owner, count, abandoned, pid, tid

    def write_block(self, owner: int, count: int, abandoned: int, pid: int, tid: int) -> None:
        assert self.block is not None
        BLOCK.pack_into(self.block, 0, owner, count, abandoned, pid, tid)

    # -- semaphore --

    def sem_release(self, count: int) -> int:
        self.enter()
        try:
            previous = _counter(self.fd)
            if previous + count > self.second:  # gap 5: a check, then a separate write
                raise OverflowError(f"releasing {count} would take the count past the maximum ({self.second})")
            if count:
                os.eventfd_write(self.fd, count)
            return previous
        finally:
            self.leave()

    def sem_read(self) -> tuple[int, int]:
        self.enter()
        try:
            return _counter(self.fd), self.second
        finally:
            self.leave()

    # -- mutex --

    def mutex_unlock(self, owner: int) -> int:
        self.enter()
        try:
            current, count, _abandoned, pid, tid = self.read_block()
            if current != owner or not count:
                raise PermissionError(f"owner {owner} does not own this mutex")
            if count > 1:
                self.write_block(owner, count - 1, 0, pid, tid)
            else:
                self.write_block(0, 0, 0, 0, 0)
                os.eventfd_write(self.fd, 1)  # the token back: the mutex is free
            return count
        finally:
            self.leave()

    def mutex_kill(self, owner: int) -> None:
        self.enter()
        try:
            current, count, _abandoned, _pid, _tid = self.read_block()
            if current != owner or not count:
                raise PermissionError(f"owner {owner} does not own this mutex")
            self.write_block(0, 0, 1, 0, 0)
            os.eventfd_write(self.fd, 1)
        finally:
            self.leave()

    def mutex_read(self) -> tuple[int, int, bool]:
        self.enter()
        try:
            owner, count, abandoned, _pid, _tid = self.read_block()
            return owner, count, bool(abandoned)
        finally:
            self.leave()

    # -- event --

    def _signaled(self) -> bool:
        return _counter(self.fd) > 0

    def event_set(self) -> bool:
        self.enter()
        try:
            previous = self._signaled()  # gap 4: a snapshot
            os.eventfd_write(self.fd, 1)
            return previous
        finally:
            self.leave()

    def event_reset(self) -> bool:
        self.enter()
        try:
            return _take(self.fd)
        finally:
            self.leave()

    def event_pulse(self) -> bool:
        self.enter()
        try:
            previous = self._signaled()
            os.eventfd_write(self.fd, 1)
            _take(self.fd)  # gap 4: not atomic with the set
            return previous
        finally:
            self.leave()

    def event_read(self) -> tuple[bool, bool]:
        self.enter()
        try:
            return bool(self.first), self._signaled()
        finally:
            self.leave()


# ----- waits -----------------------------------------------------------------------------


def _readable(handles: Sequence[EventfdHandle]) -> set[int]:
    """The descriptors among ``handles`` that are signaled right now (one poll)."""
    poller = select.poll()
    for handle in handles:
        poller.register(handle.fd, select.POLLIN)
    return {fd for fd, events in poller.poll(0) if events & select.POLLIN}


def _mutex_own_recursion(handle: EventfdHandle, owner: int) -> bool:
    current, count, _abandoned, _pid, _tid = handle.read_block()
    return current == owner and 0 < count < U32_MAX


def _signaled_for(handle: EventfdHandle, owner: int, readable: set[int]) -> bool:
    if handle.kind == "mutex" and _mutex_own_recursion(handle, owner):
        return True
    return handle.fd in readable


def _grab(handle: EventfdHandle, owner: int) -> tuple[bool, bool]:
    """Try to take one object for ``owner`` without blocking: (taken, was abandoned)."""
    if handle.kind == "semaphore":
        return _take(handle.fd), False
    if handle.kind == "event":
        if handle.first:  # manual: a wait only looks
            return handle.fd in _readable([handle]), False
        return _take(handle.fd), False
    current, count, _abandoned, pid, tid = handle.read_block()
    if current == owner and 0 < count < U32_MAX:
        handle.write_block(owner, count + 1, 0, pid, tid)  # recursion: we hold the token
        return True, False
    if not _take(handle.fd):
        return False, False
    abandoned = handle.read_block()[2]
    handle.write_block(owner, 1, 0, os.getpid(), threading.get_native_id())
    return True, bool(abandoned)


def _put_back(handle: EventfdHandle, owner: int, abandoned: bool) -> None:
    """Undo a :func:`_grab` (a wait-all that could not take everything: gap 3)."""
    if handle.kind == "semaphore":
        os.eventfd_write(handle.fd, 1)
    elif handle.kind == "event":
        if not handle.first:
            os.eventfd_write(handle.fd, 1)
    else:
        current, count, _abandoned, pid, tid = handle.read_block()
        if count > 1:
            handle.write_block(current, count - 1, 0, pid, tid)
        else:
            handle.write_block(0, 0, int(abandoned), 0, 0)
            os.eventfd_write(handle.fd, 1)


def _try_any(handles: Sequence[EventfdHandle], owner: int, alert: EventfdHandle | None) -> tuple[int, bool] | None:
    everything = [*handles, alert] if alert is not None else list(handles)
    readable = _readable(everything)
    for index, handle in enumerate(everything):
        if _signaled_for(handle, owner, readable):
            taken, abandoned = _grab(handle, owner)
            if taken:
                return index, abandoned
    return None


def _try_all(
    handles: Sequence[EventfdHandle], owner: int, alert: EventfdHandle | None
) -> tuple[tuple[int, bool] | None, list[EventfdHandle]]:
    """One attempt at a wait-all: the result, or None and what to sleep on."""
    readable = _readable([*handles, alert] if alert is not None else handles)
    missing = [h for h in handles if not _signaled_for(h, owner, readable)]
    if not missing:
        taken: list[tuple[EventfdHandle, bool]] = []
        for handle in handles:
            ok, abandoned = _grab(handle, owner)
            if not ok:
                for done, was_abandoned in reversed(taken):
                    _put_back(done, owner, was_abandoned)
                break
            taken.append((handle, abandoned))
        else:
            return (0, any(abandoned for _, abandoned in taken)), []
        missing = list(handles)  # lost a race: look again at everything
    if alert is not None and alert.fd in readable:
        ok, _ = _grab(alert, owner)
        if ok:
            return (len(handles), False), []
    return None, missing + ([alert] if alert is not None else [])


def _sleep(handles: Sequence[EventfdHandle], deadline: int | None) -> None:
    poller = select.poll()
    for handle in handles:
        poller.register(handle.fd, select.POLLIN)
    if deadline is None:
        poller.poll()
        return
    remaining = deadline - time.monotonic_ns()
    if remaining > 0:
        poller.poll(min(-(-remaining // 1_000_000), 0x7FFFFFFF))


class Eventfd(Backend):
    name = "eventfd"
    summary = "eventfds polled and read without blocking (the esync design), the server as descriptor broker"

    @classmethod
    def _probe(cls) -> Availability:
        try:
            os.close(os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            os.close(os.memfd_create("ntshim-probe", os.MFD_CLOEXEC))
        except (AttributeError, OSError) as exc:
            return Availability(cls.name, False, f"eventfd or memfd_create unavailable: {exc}")
        server = _Server.availability()
        if not server.available:
            return Availability(cls.name, False, f"needs the sync server as descriptor broker: {server.reason}")
        return Availability(
            cls.name,
            True,
            notes=("known gaps against ntsync: no hand-off, no queue order, non-atomic wait_all and pulse",),
        )

    @classmethod
    def create(cls, kind: Kind, params: tuple[int, ...], name: bytes | None) -> tuple[Handle, bool]:
        first, second = params
        fds = cls._make(kind, first, second)
        try:
            data = frame(EFD_CREATE, CREATE_HEAD.pack(KIND_CODES[kind], first, second) + (name or b""))
            status, payload, received = CLIENT.call_fds(data, f"create {kind}", fds=fds, with_fds=True)
            raise_status(status, f"create {kind} {name!r}" if name else f"create {kind}")
            oid, created, p0, p1 = QBII.unpack(payload)
            if not created:
                for fd in fds:
                    os.close(fd)
                fds = _expect(kind, received)
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return EventfdHandle(kind, oid, fds, (p0, p1)), bool(created)

    @staticmethod
    def _make(kind: Kind, first: int, second: int) -> list[int]:
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        if kind == "semaphore":
            return [os.eventfd(first, flags | os.EFD_SEMAPHORE)]
        if kind == "event":
            return [os.eventfd(second, flags)]
        token = os.eventfd(0 if second else 1, flags)
        try:
            block_fd = os.memfd_create("ntshim-mutex", os.MFD_CLOEXEC)
        except BaseException:
            os.close(token)
            raise
        try:
            os.ftruncate(block_fd, BLOCK_SIZE)
            with mmap.mmap(block_fd, BLOCK_SIZE) as block:
                if second:
                    # Owned at creation, by this thread: the server can abandon it for us.
                    BLOCK.pack_into(block, 0, first, second, 0, os.getpid(), threading.get_native_id())
        except BaseException:
            os.close(token)
            os.close(block_fd)
            raise
        return [token, block_fd]

    @classmethod
    def open(cls, kind: Kind, name: bytes) -> Handle:
        what = f"open {kind} {name!r}"
        data = frame(EFD_OPEN, U8.pack(KIND_CODES[kind]) + name)
        status, payload, received = CLIENT.call_fds(data, what, with_fds=True)
        raise_status(status, what)
        oid, p0, p1 = QII.unpack(payload)
        fds = _expect(kind, received)
        return EventfdHandle(kind, oid, fds, (p0, p1))

    @classmethod
    def from_state(cls, kind: Kind, state: Any) -> Handle:
        instance, oid = state
        if instance != CLIENT.server_instance():
            raise FileNotFoundError(f"{kind} {oid}: the sync server that brokered it has exited since")
        what = f"reopen {kind} {oid}"
        data = frame(EFD_OPEN_ID, KIND_ID.pack(KIND_CODES[kind], oid))
        status, payload, received = CLIENT.call_fds(data, what, with_fds=True)
        raise_status(status, what)
        p0, p1 = II.unpack(payload)
        fds = _expect(kind, received)
        return EventfdHandle(kind, oid, fds, (p0, p1))

    @classmethod
    def wait(
        cls,
        handles: Sequence[Handle],
        wait_all: bool,
        deadline: int | None,
        owner: int,
        alert: Handle | None,
    ) -> tuple[int, bool]:
        objects = [h for h in handles if isinstance(h, EventfdHandle)]
        alert_handle = alert if isinstance(alert, EventfdHandle) else None
        if len(objects) != len(handles) or (alert is not None and alert_handle is None):
            raise TypeError("eventfd backend: a handle of another backend")
        if any(h.kind == "mutex" for h in objects):
            # The server learns of this thread's end through its connection: open it before
            # this thread can own anything.
            CLIENT.connection()
        entered: list[EventfdHandle] = []
        try:
            for handle in [*objects, alert_handle] if alert_handle is not None else objects:
                handle.enter()
                entered.append(handle)
            return cls._wait(objects, wait_all, deadline, owner, alert_handle)
        finally:
            for handle in entered:
                handle.leave()

    @staticmethod
    def _wait(
        objects: list[EventfdHandle], wait_all: bool, deadline: int | None, owner: int, alert: EventfdHandle | None
    ) -> tuple[int, bool]:
        everything = [*objects, alert] if alert is not None else objects
        while True:
            if wait_all:
                result, sleep_on = _try_all(objects, owner, alert)
            else:
                result, sleep_on = _try_any(objects, owner, alert), everything
            if result is not None:
                return result
            if deadline is not None and time.monotonic_ns() >= deadline:
                raise TimeoutError("wait_all: timed out" if wait_all else "wait_any: timed out")
            _sleep(sleep_on, deadline)


BACKEND = Eventfd
