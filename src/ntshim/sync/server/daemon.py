"""The sync server process: ``python3 -m ntshim.sync.server.daemon <directory>``.

Started by the first client that finds none (:mod:`ntshim.sync.server.client`; the protocol
is docs/sync-protocol.md): it forks itself into the background, where it binds and listens
on ``<directory>/server.sock``; the launching process exits as soon as the socket listens
(so the client can connect at once and keeps no zombie).  The server then serves every
client of this user from one thread: an epoll loop over non-blocking sockets, a heap of
wait deadlines, and the ntsync model (:mod:`ntshim.sync.server.model`).

A client that sends something malformed, floods without reading, or vanishes only loses its
own connection.  The server takes no descriptors from clients (it reads with ``recv``: the
kernel discards any passed with a frame), so none can make it block or fault.  Out of
descriptors itself, it refuses new clients with a reply that says so (REFUSED).  When the
last client has been gone for the linger time, the server unlinks its socket (under the
start lock, so no client can start a second server meanwhile) and exits.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import heapq
import os
import resource
import secrets
import select
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import cast

from ..backend import MAX_NAME_BYTES, MAX_WAIT_OBJECTS, U32_MAX, InitialState, Kind
from .model import Model, ObjectState, Waiter
from .protocol import (
    ADDREF,
    CANCEL,
    CANCEL_CANCELLED,
    CANCEL_GIVEN_BACK,
    CANCEL_NOTHING,
    CANCEL_REPLY,
    CLOSE,
    CREATE,
    CREATE_REPLY,
    CREATE_REQUEST,
    DEFAULT_LINGER,
    E_CANCELLED,
    E_INVALID,
    E_KIND,
    E_NO_DESCRIPTORS,
    E_NOENT,
    E_OVERFLOW,
    E_PERM,
    E_TIMEOUT,
    E_UNKNOWN_PROCESS,
    EVENT_PULSE,
    EVENT_READ,
    EVENT_RESET,
    EVENT_SET,
    EVENT_STATE,
    FRAME_LENGTH,
    HELLO_PROC,
    HELLO_PROC_REPLY,
    HELLO_PROC_REQUEST,
    HELLO_THREAD,
    HELLO_THREAD_REPLY,
    HELLO_THREAD_REQUEST,
    KINDS_BY_CODE,
    LINGER_ENV_VAR,
    LOCK_NAME,
    LOCK_READ,
    LOCK_RELEASE,
    LOCK_STATE,
    MAX_BODY,
    MUTEX_KILL,
    MUTEX_READ,
    MUTEX_STATE,
    MUTEX_UNLOCK,
    OBJECT_ID,
    OBJECT_ID_AND_ARGUMENT,
    OK,
    OPEN,
    OPEN_ID,
    OPEN_ID_REQUEST,
    OPEN_REQUEST,
    PREVIOUS_COUNT,
    PROTOCOL_VERSION,
    REFUSAL,
    REFUSED,
    SEM_READ,
    SEM_RELEASE,
    SEM_STATE,
    SOCKET_NAME,
    WAIT,
    WAIT_ALERT,
    WAIT_ALL,
    WAIT_DEADLINE,
    WAIT_REPLY,
    WAIT_REQUEST,
    reply_frame,
)

#: A client that lets this much output pile up unread is dropped.
MAX_PENDING_OUTPUT = 1 << 20

#: The operations on one object, and the kind of object each applies to (an id of another
#: kind is no such object).
OBJECT_OP_KINDS: dict[int, Kind] = {
    SEM_RELEASE: "semaphore",
    SEM_READ: "semaphore",
    MUTEX_UNLOCK: "mutex",
    MUTEX_KILL: "mutex",
    MUTEX_READ: "mutex",
    EVENT_SET: "event",
    EVENT_RESET: "event",
    EVENT_PULSE: "event",
    EVENT_READ: "event",
    LOCK_RELEASE: "lock",
    LOCK_READ: "lock",
}
#: Those whose request is OBJECT_ID_AND_ARGUMENT; the others' is OBJECT_ID.
ARGUMENT_OPS = frozenset({SEM_RELEASE, MUTEX_UNLOCK, MUTEX_KILL, LOCK_RELEASE})


class BadRequest(Exception):
    """The client broke the protocol: its connection is dropped."""


class Process:
    """One client process: its references, held while its anchor connection is open."""

    def __init__(self, token: int, pid: int) -> None:
        self.token = token
        self.pid = pid
        self.refs: dict[int, int] = {}
        self.alive = True


class Record:
    """One object the server keeps: its model object, name and reference count (process
    references plus waits)."""

    __slots__ = ("id", "kind", "name", "obj", "refs")

    def __init__(self, oid: int, kind: Kind, name: bytes | None, obj: ObjectState) -> None:
        self.id = oid
        self.kind: Kind = kind
        self.name = name
        self.refs = 0
        self.obj = obj


class ClientConnection:
    """The server's side of one client connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = bytearray()
        self.out: collections.deque[memoryview] = collections.deque()
        self.out_bytes = 0
        self.process: Process | None = None
        self.anchor = False
        self.pid = 0
        self.closed = False
        #: The wait in progress, and the last satisfied one until the client moves on
        #: (CANCEL gives it back), with the records the wait references.
        self.pending_wait: Waiter | None = None
        self.last_wait: Waiter | None = None
        self.wait_records: list[Record] = []
        self.writing = False


class SyncServer:
    def __init__(self, listener: socket.socket, path: str, directory: str, linger: float) -> None:
        self.listener = listener
        self.path = path
        self.path_inode = os.stat(path).st_ino
        self.directory = directory
        self.linger = linger
        self.instance = secrets.randbits(63) | 1
        self.epoll = select.epoll()
        self.epoll.register(listener.fileno(), select.EPOLLIN)
        listener.setblocking(False)
        self.connections: set[ClientConnection] = set()
        self.by_fd: dict[int, ClientConnection] = {}
        self.processes: dict[int, Process] = {}
        self.records: dict[int, Record] = {}
        self.names: dict[bytes, Record] = {}
        self.next_id = 1
        self.model = Model(self._on_satisfied)
        self.timers: list[tuple[int, int, Waiter]] = []
        self.timer_seq = 0
        self.idle_since: float | None = time.monotonic()
        self.accept_complaint = 0.0
        #: A descriptor kept free: closed to accept a client it must refuse (see _refuse).
        self.reserve = _open_reserve()
        self.handlers: dict[int, Callable[[ClientConnection, int, memoryview], None]] = {
            HELLO_PROC: self._hello_process,
            HELLO_THREAD: self._hello_thread,
            CREATE: self._create,
            OPEN: self._open,
            OPEN_ID: self._open,
            ADDREF: self._addref,
            CLOSE: self._close_refs,
            **dict.fromkeys(OBJECT_OP_KINDS, self._object_op),
            WAIT: self._wait,
            CANCEL: self._cancel,
        }

    # ----- main loop ---------------------------------------------------------------

    def run(self) -> None:
        while True:
            timeout = self._next_timeout()
            listener = self.listener.fileno()
            for fd, events in self.epoll.poll(-1 if timeout is None else timeout):
                if fd == listener:
                    self._accept()
                    continue
                connection = self.by_fd.get(fd)
                if connection is None:
                    continue  # dropped by an earlier event of this round
                if events & select.EPOLLOUT:
                    self._flush(connection)
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not connection.closed:
                    self._read(connection)
            self._expire_timers()
            if not self.connections and self.idle_since is None:
                self.idle_since = time.monotonic()
            idle = self.idle_since is not None and time.monotonic() - self.idle_since >= self.linger
            if idle and self._try_exit():
                return

    def _next_timeout(self) -> float | None:
        timeout: float | None = None
        if self.timers:
            timeout = max(0.0, (self.timers[0][0] - time.monotonic_ns()) / 1e9)
        if self.idle_since is not None:
            idle = max(0.0, self.linger - (time.monotonic() - self.idle_since))
            timeout = idle if timeout is None else min(timeout, idle)
        return timeout

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self.reserve >= 0:
                    # Out of descriptors: the reserve makes room to tell the next client why.
                    os.close(self.reserve)
                    try:
                        refused = self._refuse()
                    finally:
                        self.reserve = _open_reserve()
                    if refused:
                        continue
                    return
                # No reserve (another process took the system's last file meanwhile), or
                # ENOBUFS and the like: the listener stays readable, so pause rather than spin.
                self._pause(f"accept: {exc}")
                return
            sock.setblocking(False)
            connection = ClientConnection(sock)
            self.connections.add(connection)
            self.idle_since = None
            self.by_fd[sock.fileno()] = connection
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _refuse(self) -> bool:
        """Accept the next client with the descriptor just freed, send it REFUSED (why it
        cannot be served, and what to do) and close it.  False if nobody is waiting."""
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # ENFILE: another process took the file we freed
            self._pause(f"accept: {exc}")
            return False
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._complain(f"out of descriptors (limit {limit}, {len(self.connections)} connections): refusing clients")
        linger_ms = int(min(self.linger * 1000, U32_MAX))  # NTSHIM_SYNC_SERVER_LINGER may be inf
        refusal = REFUSAL.pack(os.getpid(), limit, len(self.connections), len(self.processes), linger_ms)
        with sock, contextlib.suppress(OSError):
            sock.send(reply_frame(REFUSED, E_NO_DESCRIPTORS, refusal), socket.MSG_DONTWAIT)
        return True

    def _pause(self, message: str) -> None:
        """A failure that would repeat at once: say so, and wait a little."""
        self._complain(message)
        time.sleep(0.01)

    def _complain(self, message: str) -> None:
        """Log ``message``, at most once a second (it may repeat for every client)."""
        now = time.monotonic()
        if now - self.accept_complaint >= 1.0:
            self.accept_complaint = now
            print(message, file=sys.stderr)

    def _try_exit(self) -> bool:
        """Exit if still idle, holding the start lock so no client starts a server while
        this one is going.  Never blocks: a client holding the lock is talking to us."""
        try:
            lock_fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            # Our directory is gone (removed by hand, a test's temporary root): no client
            # can find us, so nobody can start a rival either.
            self.listener.close()
            return True
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.idle_since = time.monotonic() - self.linger + 0.05  # try again shortly
                return False
            self._accept()
            if self.connections:
                return False
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self.path_inode:
                    os.unlink(self.path)
            self.listener.close()
            return True
        finally:
            os.close(lock_fd)

    # ----- input -------------------------------------------------------------------

    def _read(self, connection: ClientConnection) -> None:
        try:
            # recv(), never recvmsg() with room for ancillary data: descriptors a client
            # passes are closed by the kernel, unseen (the protocol has none).
            data = connection.sock.recv(MAX_BODY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(connection)
            return
        if not data:
            self._drop(connection)
            return
        if connection.rbuf:
            connection.rbuf += data
            buffer: bytes | bytearray = connection.rbuf
        else:
            buffer = data  # the usual case: whole frames, no copy
        offset = 0
        try:
            while len(buffer) - offset >= 4:
                (length,) = FRAME_LENGTH.unpack_from(buffer, offset)
                if not 1 <= length <= MAX_BODY:
                    raise BadRequest(f"frame length {length}")
                if len(buffer) - offset < 4 + length:
                    break
                body = memoryview(buffer)[offset + 4 : offset + 4 + length]
                offset += 4 + length
                try:
                    self._dispatch(connection, body)
                finally:
                    body.release()
                if connection.closed:
                    return
        except (BadRequest, struct.error, ValueError, KeyError, IndexError) as exc:
            self._drop(connection, f"protocol error: {exc!r}")
            return
        except Exception:  # noqa: BLE001 - a bug of ours: lose this client, not every client
            self._drop(connection, "internal error:\n" + traceback.format_exc())
            return
        if buffer is connection.rbuf:
            del connection.rbuf[:offset]
        elif offset < len(buffer):
            connection.rbuf += buffer[offset:]

    def _dispatch(self, connection: ClientConnection, body: memoryview) -> None:
        op = body[0]
        handler = self.handlers.get(op)
        if handler is None:
            raise BadRequest(f"unknown op {op:#x}")
        if connection.process is None and op not in (HELLO_PROC, HELLO_THREAD):
            raise BadRequest("a request before hello")
        if op != CANCEL and connection.last_wait is not None:
            # The client has read its wait's result and moved on: nothing to give back.  (A
            # CLOSE counts: a client sends none between a wait and its CANCEL, and an idle
            # connection's last wait would otherwise keep its objects, and their names, alive.)
            connection.last_wait = None
            self._release_wait_records(connection)
        handler(connection, op, body[1:])

    # ----- output ------------------------------------------------------------------

    def _reply(self, connection: ClientConnection, op: int, status: int, payload: bytes = b"") -> None:
        if connection.closed:
            return
        data = reply_frame(op, status, payload)
        connection.out.append(memoryview(data))
        connection.out_bytes += len(data)
        if connection.out_bytes > MAX_PENDING_OUTPUT:
            self._drop(connection, "does not read its replies")
            return
        self._flush(connection)

    def _flush(self, connection: ClientConnection) -> None:
        while connection.out:
            data = connection.out[0]
            try:
                sent = connection.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(connection)
                return
            connection.out_bytes -= sent
            if sent < len(data):
                connection.out[0] = data[sent:]
                break
            connection.out.popleft()
        want_write = bool(connection.out)
        if want_write != connection.writing:
            connection.writing = want_write
            self.epoll.modify(connection.sock.fileno(), select.EPOLLIN | (select.EPOLLOUT if want_write else 0))

    # ----- connection end ----------------------------------------------------------

    def _drop(self, connection: ClientConnection, why: str | None = None) -> None:
        """Forget a connection: cancel its wait, abandon the mutexes its thread held, and
        if it was a process's anchor, abandon the locks the process held and drop its
        references."""
        if connection.closed:
            return
        if why:
            print(f"dropping a client (pid {connection.pid}): {why}", file=sys.stderr)
        connection.closed = True
        self.connections.discard(connection)
        fd = connection.sock.fileno()
        self.by_fd.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)
        connection.sock.close()
        connection.out.clear()
        if connection.pending_wait is not None:
            self.model.cancel(connection.pending_wait)
            connection.pending_wait = None
        connection.last_wait = None
        self._release_wait_records(connection)
        self.model.abandon_holder(connection)
        process = connection.process
        if process is not None and (connection.anchor or not process.alive):
            # The process is gone.  Its thread connections go with it, but the server may
            # read one's end only after the anchor's, and meanwhile its pending wait may have
            # taken a lock (or a request read late taken one): abandon those too as each goes.
            self.model.abandon_holder(process)
        if connection.anchor and process is not None and process.alive:
            process.alive = False
            self.processes.pop(process.token, None)
            refs, process.refs = process.refs, {}
            for oid, count in refs.items():
                record = self.records.get(oid)
                if record is not None:
                    self._unref(record, count)
        if not self.connections:
            self.idle_since = time.monotonic()

    # ----- references --------------------------------------------------------------

    def _new_record(self, kind: Kind, name: bytes | None, obj: ObjectState) -> Record:
        record = Record(self.next_id, kind, name, obj)
        self.next_id += 1
        self.records[record.id] = record
        if name is not None:
            self.names[name] = record
        return record

    def _ref(self, process: Process, record: Record) -> None:
        record.refs += 1
        process.refs[record.id] = process.refs.get(record.id, 0) + 1

    def _unref(self, record: Record, count: int = 1) -> None:
        record.refs -= count
        if record.refs > 0:
            return
        del self.records[record.id]
        if record.name is not None and self.names.get(record.name) is record:
            del self.names[record.name]
        self.model.destroy(record.obj)

    def _release_wait_records(self, connection: ClientConnection) -> None:
        records, connection.wait_records = connection.wait_records, []
        for record in records:
            self._unref(record)

    def _live_process(self, connection: ClientConnection) -> Process:
        process = connection.process
        assert process is not None  # checked in _dispatch
        return process

    # ----- hello -------------------------------------------------------------------

    def _hello_process(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        if connection.process is not None:
            raise BadRequest("second hello")
        version, pid, clone = HELLO_PROC_REQUEST.unpack(payload)
        if version != PROTOCOL_VERSION:
            raise BadRequest(f"protocol version {version}, this server speaks {PROTOCOL_VERSION}")
        token = secrets.randbits(63) | 1
        process = Process(token, pid)
        if clone:
            parent = self.processes.get(clone)
            if parent is None:
                self._reply(connection, op, E_UNKNOWN_PROCESS)
                return
            # A fork child's anchor: the same references as the parent, taken now, before
            # the parent can close anything the child inherits.
            for oid, count in parent.refs.items():
                record = self.records.get(oid)
                if record is not None:
                    record.refs += count
                    process.refs[oid] = count
        self.processes[token] = process
        connection.process = process
        connection.anchor = True
        connection.pid = pid
        self._reply(connection, op, OK, HELLO_PROC_REPLY.pack(token, self.instance))

    def _hello_thread(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        if connection.process is not None:
            raise BadRequest("second hello")
        version, pid, _tid, token = HELLO_THREAD_REQUEST.unpack(payload)
        if version != PROTOCOL_VERSION:
            raise BadRequest(f"protocol version {version}, this server speaks {PROTOCOL_VERSION}")
        process = self.processes.get(token)
        if process is None:
            self._reply(connection, op, E_UNKNOWN_PROCESS)
            return
        connection.process = process
        connection.pid = pid
        self._reply(connection, op, OK, HELLO_THREAD_REPLY.pack(self.instance))

    # ----- names and references ----------------------------------------------------

    @staticmethod
    def _name(raw: memoryview) -> bytes | None:
        if len(raw) > MAX_NAME_BYTES:
            raise BadRequest("name too long")
        name = bytes(raw)
        if b"\0" in name:
            raise BadRequest("NUL in name")
        return name or None

    @staticmethod
    def _kind(code: int) -> Kind:
        kind = KINDS_BY_CODE.get(code)
        if kind is None:
            raise BadRequest(f"kind {code}")
        return kind

    def _create(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        process = self._live_process(connection)
        code, *initial = CREATE_REQUEST.unpack_from(payload)
        kind = self._kind(code)
        name = self._name(payload[CREATE_REQUEST.size :])
        if not process.alive:
            self._reply(connection, op, E_UNKNOWN_PROCESS)
            return
        if name is not None:
            existing = self.names.get(name)
            if existing is not None:
                if existing.kind != kind:
                    self._reply(connection, op, E_KIND)
                    return
                self._ref(process, existing)
                self._reply(connection, op, OK, CREATE_REPLY.pack(existing.id, 0))
                return
        state = cast(InitialState, tuple(initial))
        if not self._valid_initial_state(kind, state):
            self._reply(connection, op, E_INVALID)
            return
        record = self._new_record(kind, name, self.model.create(kind, state, holder=connection))
        self._ref(process, record)
        self._reply(connection, op, OK, CREATE_REPLY.pack(record.id, 1))

    @staticmethod
    def _valid_initial_state(kind: Kind, initial: InitialState) -> bool:
        if kind == "semaphore":
            count, maximum = initial
            return 0 < maximum and count <= maximum
        if kind == "mutex":
            owner, count = initial
            return (owner == 0) == (count == 0)
        if kind == "lock":
            return initial == (0, 0)  # created unlocked: nobody to hold it yet
        manual, signaled = initial
        return manual in (0, 1) and signaled in (0, 1)

    def _open(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        """OPEN (an object by name; the reply carries its id) and OPEN_ID (by id, as a pickled
        handle reopens it; the reply carries nothing): one more reference of the process to
        an existing object of the kind asked for."""
        process = self._live_process(connection)
        if op == OPEN:
            (code,) = OPEN_REQUEST.unpack_from(payload)
            kind = self._kind(code)
            name = self._name(payload[OPEN_REQUEST.size :])
            record = self.names.get(name) if name is not None else None
        else:
            code, oid = OPEN_ID_REQUEST.unpack(payload)
            kind = self._kind(code)
            record = self.records.get(oid)
        if not process.alive:
            self._reply(connection, op, E_UNKNOWN_PROCESS)
        elif record is None:
            self._reply(connection, op, E_NOENT)
        elif record.kind != kind:
            self._reply(connection, op, E_KIND)
        else:
            self._ref(process, record)
            self._reply(connection, op, OK, OBJECT_ID.pack(record.id) if op == OPEN else b"")

    def _addref(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        process = self._live_process(connection)
        if len(payload) % OBJECT_ID.size:
            raise BadRequest("ADDREF payload")
        present = bytearray()
        for (oid,) in OBJECT_ID.iter_unpack(payload):
            record = self.records.get(oid)
            if record is not None and process.alive:
                self._ref(process, record)
            present.append(record is not None)
        self._reply(connection, op, OK, bytes(present))

    def _close_refs(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        process = self._live_process(connection)
        if len(payload) % OBJECT_ID.size:
            raise BadRequest("CLOSE payload")
        for (oid,) in OBJECT_ID.iter_unpack(payload):
            held = process.refs.get(oid, 0)
            if not held:
                continue  # not this process's reference: ignore, never underflow another's
            if held == 1:
                del process.refs[oid]
            else:
                process.refs[oid] = held - 1
            record = self.records.get(oid)
            if record is not None:
                self._unref(record)

    # ----- operations on one object ------------------------------------------------

    def _object(self, oid: int, kind: Kind) -> ObjectState | None:
        record = self.records.get(oid)
        if record is None or record.kind != kind:
            return None
        return record.obj

    def _object_op(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        model = self.model
        if op in ARGUMENT_OPS:
            oid, argument = OBJECT_ID_AND_ARGUMENT.unpack(payload)
        else:
            (oid,) = OBJECT_ID.unpack(payload)
            argument = 0
        obj = self._object(oid, OBJECT_OP_KINDS[op])
        if obj is None:
            self._reply(connection, op, E_NOENT)
            return
        try:
            if op == SEM_RELEASE:
                result = PREVIOUS_COUNT.pack(model.sem_release(obj, argument))
            elif op == SEM_READ:
                result = SEM_STATE.pack(*model.sem_read(obj))
            elif op == MUTEX_UNLOCK:
                if not argument:
                    raise BadRequest("owner 0")
                result = PREVIOUS_COUNT.pack(model.mutex_unlock(obj, argument))
            elif op == MUTEX_KILL:
                if not argument:
                    raise BadRequest("owner 0")
                model.mutex_kill(obj, argument)
                result = b""
            elif op == MUTEX_READ:
                result = MUTEX_STATE.pack(*model.mutex_read(obj))
            elif op == EVENT_SET:
                result = bytes((model.event_set(obj),))
            elif op == EVENT_RESET:
                result = bytes((model.event_reset(obj),))
            elif op == EVENT_PULSE:
                result = bytes((model.event_pulse(obj),))
            elif op == EVENT_READ:
                result = EVENT_STATE.pack(*model.event_read(obj))
            elif op == LOCK_RELEASE:
                if argument not in (0, 1):
                    raise BadRequest(f"abandon {argument}")
                model.lock_release(obj, abandon=bool(argument))
                result = b""
            else:  # LOCK_READ: OBJECT_OP_KINDS has no other op
                result = LOCK_STATE.pack(*model.lock_read(obj))
        except OverflowError:
            self._reply(connection, op, E_OVERFLOW)
            return
        except PermissionError:
            self._reply(connection, op, E_PERM)
            return
        self._reply(connection, op, OK, result)

    # ----- waits -------------------------------------------------------------------

    def _wait(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        if connection.pending_wait is not None:
            raise BadRequest("a second wait while one is pending")
        flags, owner, deadline, count = WAIT_REQUEST.unpack_from(payload)
        has_alert = bool(flags & WAIT_ALERT)
        ids = struct.unpack_from(f"<{count + has_alert}Q", payload, WAIT_REQUEST.size)
        if len(payload) != WAIT_REQUEST.size + OBJECT_ID.size * (count + has_alert):
            raise BadRequest("WAIT payload length")
        records = [self.records.get(oid) for oid in ids]
        valid = (
            (1 <= count or (has_alert and not flags & WAIT_ALL))  # wait-any may wait on its alert alone
            and count <= MAX_WAIT_OBJECTS
            and owner != 0
            and all(r is not None for r in records)
            and (not has_alert or cast(Record, records[-1]).kind == "event")
            and (not flags & WAIT_ALL or len(set(ids)) == len(ids))
        )
        if not valid:
            self._reply(connection, op, E_INVALID if all(r is not None for r in records) else E_NOENT)
            return
        live = cast(list[Record], records)
        for record in live:
            record.refs += 1  # a wait keeps its objects alive, as ntsync's waits hold files
        connection.wait_records = live
        objects = [r.obj for r in live]
        alert = objects.pop() if has_alert else None
        # A mutex is held by the thread (its connection), a lock by the process.
        waiter = self.model.wait(
            objects, bool(flags & WAIT_ALL), owner, alert, holder=connection, tag=connection, process=connection.process
        )
        if not waiter.pending:
            return  # satisfied at once: _on_satisfied replied
        if flags & WAIT_DEADLINE and deadline <= time.monotonic_ns():
            self.model.cancel(waiter)
            self._release_wait_records(connection)
            self._reply(connection, op, E_TIMEOUT)
            return
        connection.pending_wait = waiter
        if flags & WAIT_DEADLINE:
            self.timer_seq += 1
            heapq.heappush(self.timers, (deadline, self.timer_seq, waiter))
            if len(self.timers) > 1024 and len(self.timers) > 4 * len(self.connections):
                # Satisfied waits leave their deadlines behind; drop them now and then.
                self.timers = [t for t in self.timers if cast(ClientConnection, t[2].tag).pending_wait is t[2]]
                heapq.heapify(self.timers)

    def _on_satisfied(self, waiter: Waiter) -> None:
        connection = cast(ClientConnection, waiter.tag)
        if connection.pending_wait is waiter:
            connection.pending_wait = None
        connection.last_wait = waiter
        self._reply(connection, WAIT, OK, WAIT_REPLY.pack(waiter.signaled, waiter.abandoned))

    def _expire_timers(self) -> None:
        now = time.monotonic_ns()
        while self.timers and self.timers[0][0] <= now:
            _, _, waiter = heapq.heappop(self.timers)
            connection = cast(ClientConnection, waiter.tag)
            if connection.pending_wait is waiter and self.model.cancel(waiter):
                connection.pending_wait = None
                self._release_wait_records(connection)
                self._reply(connection, WAIT, E_TIMEOUT)

    def _cancel(self, connection: ClientConnection, op: int, payload: memoryview) -> None:
        waiter = connection.pending_wait
        if waiter is not None:
            self.model.cancel(waiter)
            connection.pending_wait = None
            self._release_wait_records(connection)
            self._reply(connection, WAIT, E_CANCELLED)
            self._reply(connection, op, OK, CANCEL_REPLY.pack(CANCEL_CANCELLED, 0, 0))
            return
        waiter = connection.last_wait
        if waiter is not None:
            connection.last_wait = None
            given = self.model.rollback(waiter)
            self._release_wait_records(connection)
            self._reply(connection, op, OK, CANCEL_REPLY.pack(CANCEL_GIVEN_BACK, given.returned, given.kept))
            return
        self._reply(connection, op, OK, CANCEL_REPLY.pack(CANCEL_NOTHING, 0, 0))


def _open_reserve() -> int:
    """A descriptor to keep in reserve, or -1 if none is left (the next refusal tries again)."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _serve(directory: str) -> int:
    path = os.path.join(directory, SOCKET_NAME)
    linger = float(os.environ.get(LINGER_ENV_VAR) or DEFAULT_LINGER)
    ready_read, ready_write = os.pipe()
    if os.fork():
        # The launcher: return once the server listens (or has failed), so the client that
        # started it can connect at once and has no zombie to reap.
        os.close(ready_write)
        ready = os.read(ready_read, 1)
        os._exit(0 if ready == b"1" else 1)
    os.close(ready_read)
    # The server binds itself, so that SO_PEERCRED names its pid, not the launcher's.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(128)
    except OSError as exc:
        print(f"cannot listen on {path}: {exc}", file=sys.stderr)
        return 1
    os.write(ready_write, b"1")
    os.close(ready_write)
    os.chdir("/")
    # Every client connection is a descriptor here, and the limit is inherited from whichever
    # process started us: take all its hard limit allows (raising the hard limit is not ours
    # to do; a refused client is told what to do instead).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = SyncServer(listener, path, directory, linger)
    try:
        server.run()
    except BaseException:
        traceback.print_exc()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == server.path_inode:
                os.unlink(path)
        raise
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m ntshim.sync.server.daemon <directory>", file=sys.stderr)
        return 2
    return _serve(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
