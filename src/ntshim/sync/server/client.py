"""The client side of the ``server`` backend: connections to the per-user server (started
on first use), the per-process client that keeps them across threads and fork, and the
backend class, whose handles turn each operation into one round trip.  Its asynchronous
requests (what asyncio's dispatcher builds on) are WAITs left in flight on connections of
their own, whose sockets it polls beside an eventfd doorbell.

The protocol, and what each connection is for, is docs/sync-protocol.md.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, cast

from ...errors import NameKindError
from .. import userdir
from ..backend import Availability, Backend, Handle, InitialState, Kind, Request
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
    KIND_CODES,
    LINGER_ENV_VAR,
    LOCK_NAME,
    LOCK_READ,
    LOCK_RELEASE,
    LOCK_STATE,
    LOG_NAME,
    MAX_BODY,
    MUTEX_KILL,
    MUTEX_READ,
    MUTEX_STATE,
    MUTEX_UNLOCK,
    OBJECT_ARGUMENT_REQUEST_FRAME,
    OBJECT_ID,
    OBJECT_REQUEST_FRAME,
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
    WAIT_REPLY,
    frame,
    object_ids,
    wait_frame,
)

#: Most request connections (:meth:`Client.open_request`) a process keeps, so most requests in
#: flight at once.  Each is a descriptor here and one in the server, which serves every
#: process of the user from its RLIMIT_NOFILE; asyncio's dispatcher keeps the requests beyond
#: this queued (OSError(ENOSPC)) until one ends, and so never takes more than its share.
MAX_REQUEST_CONNECTIONS = 256
#: Longest poll in :meth:`Server.sleep` (ms, a C int): a longer one returns early, as allowed.
_MAX_POLL_MS = 1 << 30


class ProtocolError(ConnectionError):
    """The other side sent something that is not this protocol."""


class ServerGone(ConnectionError):
    """The server closed the connection: it was killed or crashed (a server that exits by
    itself never leaves clients behind)."""


def refusal_error(payload: bytes) -> OSError:
    """The error for a REFUSED frame: the server is out of descriptors."""
    pid, limit, connections, processes, linger_ms = REFUSAL.unpack_from(payload)
    return OSError(
        errno.EMFILE,
        f"the per-user sync server (pid {pid}) reached its descriptor limit of {limit} (the RLIMIT_NOFILE hard "
        f"limit of the process that started it) serving {connections} connections of {processes} processes "
        "(one per process and one per thread that uses sync objects); it cannot take this one. Raise the hard "
        "limit (ulimit -Hn) of the process that starts the server, or end idle processes: the server exits "
        f"{linger_ms / 1000:g} s after its last client leaves, and the next one starts with the limits of the "
        "process that starts it",
    )


def raise_status(status: int, what: str) -> None:
    """Turn a reply status into the contract's exception."""
    if status == OK:
        return
    if status == E_NOENT:
        raise FileNotFoundError(f"{what}: no such object (it was closed by every process that had it)")
    if status == E_KIND:
        raise NameKindError(f"{what}: the name belongs to an object of another kind")
    if status == E_PERM:  # (``what`` is the kind for the operations on one object)
        raise PermissionError(f"{what}: not locked" if what == "lock" else f"{what}: the owner does not own this mutex")
    if status == E_OVERFLOW:
        raise OverflowError(f"{what}: the count would pass the semaphore's maximum")
    if status == E_TIMEOUT:
        raise TimeoutError(f"{what}: timed out")
    if status == E_UNKNOWN_PROCESS:
        raise ServerGone(
            f"{what}: the sync server restarted since this process connected (it was killed); "
            "the objects this process had are gone"
        )
    raise ProtocolError(f"{what}: the server refused the request (status {status})")


# ----- connections ---------------------------------------------------------------------


class ServerConnection:
    """One socket to the server, used by one thread at a time: frames out, frames in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.closed = False
        #: In a request now (a signal handler running on this thread must use another).
        self.busy = False
        #: An exception left a request without its reply: settle() before the next one.
        self.unsettled = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next reply body (op, status, payload)."""
        buffer = self._buffer
        while True:
            length = self._whole_reply()
            if length:
                body = bytes(buffer[4 : 4 + length])
                del buffer[: 4 + length]
                return body
            data = self.sock.recv(MAX_BODY)
            if not data:
                raise ServerGone("the sync server closed the connection (it was killed or crashed)")
            buffer += data

    def _whole_reply(self) -> int:
        """The length of the buffered reply's body if all of it is in, else 0; ProtocolError
        if the buffer starts with a length no reply has."""
        buffer = self._buffer
        if len(buffer) < 4:
            return 0
        (length,) = FRAME_LENGTH.unpack_from(buffer)
        if not 2 <= length <= MAX_BODY:
            raise ProtocolError(f"bad reply length {length}")
        return length if len(buffer) >= 4 + length else 0

    def reply_buffered(self) -> bool:
        """Whether a whole reply (or a bad length, which :meth:`receive` raises) is in the
        buffer: then :meth:`receive` returns (or raises) without touching the socket."""
        try:
            return bool(self._whole_reply())
        except ProtocolError:
            return True

    def reply_in(self) -> bool:
        """Whether :meth:`receive` would return (or raise) without blocking: a whole reply is
        buffered once what has arrived is read, without waiting; or the connection ended (the
        server closed it, or it failed), which :meth:`receive` then reports."""
        if self.reply_buffered():
            return True
        try:
            data = self.sock.recv(MAX_BODY, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # (a reset is reported once; the receive then sees the end)
        if not data:
            return True
        self._buffer += data
        return self.reply_buffered()

    def call(self, data: bytes, op: int, what: str) -> tuple[int, bytes]:
        """Send a request (``data`` may carry CLOSE frames ahead of it) and read its reply:
        ``(status, payload)``.  An interruption while the reply is on its way (the server
        answers at once) is held until the reply is in, so the connection stays in step."""
        self.busy = True
        try:
            self.unsettled = True
            self.send(data)
            body = self._receive_all()
            self.unsettled = False
        finally:
            self.busy = False
        return self._check(body, op, what)

    def _receive_all(self) -> bytes:
        """:meth:`receive`, holding back interruptions until the frame is in."""
        body, interrupted = self._receive_quietly()
        if interrupted is not None:
            self.unsettled = False
            raise interrupted
        return body

    def _receive_quietly(self) -> tuple[bytes, BaseException | None]:
        """The next frame, and the first interruption that came meanwhile (not raised: the
        server answers at once, and a half-read reply would put the connection out of step)."""
        interrupted: BaseException | None = None
        while True:
            try:
                return self.receive(), interrupted
            except (ConnectionError, OSError):
                raise
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt and friends: finish first
                if interrupted is None:
                    interrupted = exc

    def hello(self, data: bytes) -> tuple[int, bytes]:
        """Send a hello and read the answer: ``(status, payload)``.  A server out of
        descriptors accepts a connection only to refuse it and close it, perhaps before the
        hello is sent (which then fails with EPIPE): its refusal is read all the same, and
        raised as OSError(EMFILE)."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send(data)
        body = self._receive_all()
        if body[:2] == bytes((REFUSED, E_NO_DESCRIPTORS)):
            raise refusal_error(body[2:])
        return self._check(body, data[4], "hello")

    @staticmethod
    def _check(body: bytes, op: int, what: str) -> tuple[int, bytes]:
        if len(body) < 2 or body[0] != op:
            raise ProtocolError(f"{what}: a reply to another request (op {body[:1].hex()}, expected {op:#04x})")
        return body[1], body[2:]

    def wait(self, data: bytes, what: str) -> tuple[int, bytes]:
        """Send a WAIT and block (the GIL released in recv) until the server answers.  If
        the caller is interrupted meanwhile (KeyboardInterrupt, an exception from a signal
        handler), cancel the wait on the server: if it had already been satisfied, what it
        acquired is given back, so nothing is held that the caller does not know of.  The
        interruption is then re-raised with a note saying what happened."""
        self.busy = True
        try:
            self.unsettled = True
            self.send(data)
            try:
                body = self.receive()
            except (ConnectionError, OSError):
                raise
            except BaseException as exc:
                note, _again = self._cancel()  # a second Ctrl-C adds nothing to the first
                if hasattr(exc, "add_note"):
                    exc.add_note(note)
                raise
            self.unsettled = False
        finally:
            self.busy = False
        return self._check(body, WAIT, what)

    def _cancel(self) -> tuple[str, BaseException | None]:
        """End whatever request is in flight on this connection (a pending wait is
        cancelled, a satisfied one given back, any other reply skipped); say what happened
        to a wait, and return the first interruption that came meanwhile."""
        wait_reply, cancel_reply, first = self.cancel()
        return _cancel_note(wait_reply, cancel_reply), first

    def cancel(self) -> tuple[bytes | None, bytes, BaseException | None]:
        """:meth:`_cancel`'s work: the WAIT reply that came before CANCEL's (None if none
        did), CANCEL's reply, and the first interruption that came meanwhile (not raised:
        the connection is brought in step first)."""
        self.sock.sendall(frame(CANCEL))
        wait_reply: bytes | None = None
        first: BaseException | None = None
        while True:
            body, interrupted = self._receive_quietly()
            first = first or interrupted
            if body[:1] == bytes((CANCEL,)):
                break
            if body[:1] == bytes((WAIT,)):
                wait_reply = body
        self.unsettled = False
        return wait_reply, body, first

    def settle(self) -> None:
        """Bring a connection that an exception left in the middle of a request back in step
        with the server (see :meth:`_cancel`)."""
        self.busy = True
        try:
            _note, interrupted = self._cancel()
        finally:
            self.busy = False
        if interrupted is not None:
            raise interrupted

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # close(), never shutdown(): a forked child closing its copy must not cut the
            # parent's connection.
            self.sock.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - at interpreter exit module globals may be gone already
            pass


def _cancel_outcome(cancel_reply: bytes) -> tuple[int, int, int]:
    """CANCEL's reply: (outcome, returned, kept); a short reply: nothing to report."""
    if len(cancel_reply) < 2 + CANCEL_REPLY.size:  # (after the reply's op and status bytes)
        return CANCEL_NOTHING, 0, 0
    outcome, returned, kept = CANCEL_REPLY.unpack_from(cancel_reply, 2)
    return outcome, returned, kept


def _cancel_note(wait_reply: bytes | None, cancel_reply: bytes) -> str:
    outcome, returned, kept = _cancel_outcome(cancel_reply)
    if outcome == CANCEL_CANCELLED:
        return "ntshim.sync: the interrupted wait was cancelled; it acquired nothing"
    if outcome == CANCEL_GIVEN_BACK:
        index = WAIT_REPLY.unpack_from(wait_reply, 2)[0] if wait_reply and len(wait_reply) >= 7 else None
        note = (
            f"ntshim.sync: the interrupted wait had just been satisfied (index {index}); "
            f"what it acquired was given back ({returned} object(s) released"
        )
        if kept:
            note += f"; {kept} could not be: a semaphore refilled to its maximum or a mutex no longer owned"
        return note + ")"
    if wait_reply is not None and len(wait_reply) >= 2 and wait_reply[1] == E_TIMEOUT:
        return "ntshim.sync: the interrupted wait had timed out; it acquired nothing"
    return "ntshim.sync: the interrupted wait had ended; it acquired nothing"


# ----- finding or starting the server --------------------------------------------------


def _linger() -> float:
    value = os.environ.get(LINGER_ENV_VAR)
    if not value:
        return DEFAULT_LINGER
    try:
        linger = float(value)
    except ValueError:
        raise ValueError(f"{LINGER_ENV_VAR} must be a number of seconds, got {value!r}") from None
    if not linger >= 0:
        raise ValueError(f"{LINGER_ENV_VAR} must be >= 0 seconds, got {value!r}")
    return linger


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _connect_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _start_server(directory: str, path: str) -> None:
    """Start a server for ``directory`` (the caller holds the start lock) and return once it
    listens.  The launched process forks the real server into the background and exits
    once that listens, so no client is left with a zombie to reap."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a server that was killed leaves its socket behind
    # The directory ntshim/ is in (ntshim/sync/server/client.py): the server runs this very ntshim.
    package_parent = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env[LINGER_ENV_VAR] = str(_linger())
    log_path = os.path.join(directory, LOG_NAME)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ntshim.sync.server.daemon", directory],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            close_fds=True,
            start_new_session=True,
            cwd="/",
            env=env,
        )
    try:
        status = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = -1
    if status != 0:
        try:
            with open(log_path, encoding="utf-8", errors="replace") as log_file:
                detail = log_file.read()[-2000:].strip()
        except OSError:
            detail = ""
        raise ConnectionError(
            f"could not start the ntshim sync server (exit status {status})" + (f": {detail}" if detail else "")
        )


def open_connection(hello: bytes, directory: str | None = None) -> tuple[ServerConnection, bytes]:
    """Connect to this user's server (starting it if there is none) and say hello; returns
    the connection and the hello reply's payload."""
    directory = directory or userdir.user_directory()
    path = os.path.join(directory, SOCKET_NAME)
    last: BaseException | None = None
    for _attempt in range(5):
        try:
            try:
                sock = _connect_socket(path)
            except (FileNotFoundError, ConnectionRefusedError):
                with _locked(os.path.join(directory, LOCK_NAME)):
                    try:
                        sock = _connect_socket(path)
                    except (FileNotFoundError, ConnectionRefusedError):
                        _start_server(directory, path)
                        sock = _connect_socket(path)
            connection = ServerConnection(sock)
            try:
                status, payload = connection.hello(hello)
            except BaseException:
                connection.close()
                raise
        except (ServerGone, ConnectionResetError, BrokenPipeError, ConnectionRefusedError, FileNotFoundError) as exc:
            # A server that exits because it was idle drops the connections it had not
            # accepted yet: it has unlinked its socket first, so the next try starts a new one.
            last = exc
            continue
        if status != OK:
            connection.close()
            raise_status(status, "hello")
        return connection, payload
    raise ConnectionError(f"could not reach the ntshim sync server at {path}: {last}")


# ----- the per-process client ----------------------------------------------------------


class ThreadConnections(list[ServerConnection]):
    """One thread's connections, kept in a thread-local slot and referenced from nowhere
    else: when the thread ends its locals are cleared, and this closes the connections
    (whoever else still holds one), so the server abandons the mutexes the thread owned."""

    def __del__(self) -> None:
        for connection in self:
            try:
                connection.close()
            except Exception:  # noqa: BLE001, S110 - at interpreter exit module globals may be gone already
                pass


class Client:
    """This process's connections: the anchor (its references) and one per thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.RLock()
        #: The thread whose fork holds ``lock`` (set by before_fork).  This module is imported
        #: on first use of its backend, and if that happens while another thread forks, the
        #: after-fork hooks run without the before-fork one: they must not release the lock.
        self._forking_thread: int | None = None
        self.anchor: ServerConnection | None = None
        self.token = 0
        self.instance = 0
        self.local = threading.local()
        self.handles: weakref.WeakSet[ServerHandle] = weakref.WeakSet()
        #: Ids of handles that were garbage-collected: CLOSE frames for the next request.
        self.closes_to_send: collections.deque[int] = collections.deque()
        #: Every connection opened in this process, for a fork child to close its copies.
        self.connections: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        #: Made just before fork for the child (see before_fork).
        self._child_anchor: ServerConnection | None = None
        self._child_token = 0
        #: A child forked without a prepared anchor re-takes its references on connection.
        self._retake = False
        #: Request connections (see :meth:`open_request`): every one this process opened,
        #: held here so that none closes while the process lives, and the idle ones among
        #: them (a deque: a request dropped unended puts its connection back from a finalizer,
        #: which must take no lock).
        self.request_connections: list[ServerConnection] = []
        self.idle_requests: collections.deque[ServerConnection] = collections.deque()
        #: Guards the cap on request connections while one is being opened.
        self._request_lock = threading.Lock()
        self._requests_opening = 0
        #: The doorbell (:meth:`doorbell`): an eventfd, -1 until first used.
        self._doorbell = -1
        self._doorbell_lock = threading.Lock()

    # -- connections --

    def _ensure_anchor(self) -> None:
        if self.anchor is not None:
            return
        with self.lock:
            if self.anchor is not None:
                return
            hello = frame(HELLO_PROC, HELLO_PROC_REQUEST.pack(PROTOCOL_VERSION, os.getpid(), 0))
            connection, payload = open_connection(hello)
            self.token, self.instance = HELLO_PROC_REPLY.unpack_from(payload)
            self.connections.add(connection)
            self.anchor = connection
            if self._retake:
                self._retake = False
                self._retake_references(connection)

    def live_handles(self) -> list[ServerHandle]:
        """The handles not closed yet.  Walking a WeakSet while another thread adds or drops
        a handle raises RuntimeError (the collector's removals wait, others do not); a lock
        would have to be held across fork and could not be taken by finalizers that close
        handles while one is walked: walk again instead."""
        while True:
            try:
                return [h for h in self.handles if not h.closed]
            except RuntimeError:
                continue

    def _retake_references(self, connection: ServerConnection) -> None:
        # Only ids of this server: a restarted one numbers its objects anew.
        ids = [h.id for h in self.live_handles() if h.instance == self.instance]
        if ids:
            data = frame(ADDREF, object_ids(ids))
            status, _present = connection.call(data, ADDREF, "re-taking references after fork")
            raise_status(status, "re-taking references after fork")

    def server_instance(self) -> int:
        self._ensure_anchor()
        return self.instance

    def ensure_own(self) -> None:
        """Repair this client in a child forked without os.fork()'s hooks (a C extension's
        fork()): what :meth:`after_fork_child` would have done."""
        if self.pid != os.getpid():
            self.after_fork_child()

    def connection(self) -> ServerConnection:
        """A connection of this thread that is not in a request, opened on first use.

        Usually the thread's one connection; a second one only when a signal handler uses
        sync objects while its thread is in a request (a SIGINT handler setting the event
        the main thread waits on): the busy connection's frames must not interleave.
        """
        self.ensure_own()
        pool: ThreadConnections | None = getattr(self.local, "pool", None)
        if pool is None:
            pool = self.local.pool = ThreadConnections()
        for connection in list(pool):
            if not connection.busy and not connection.closed and self._in_step(connection):
                return connection
        connection = self._open_thread_connection()
        pool.append(connection)
        return connection

    def _in_step(self, connection: ServerConnection) -> bool:
        """Bring a connection that an exception left in the middle of a request back in step
        with the server; False (and dropped) if it is gone."""
        if connection.unsettled:
            try:
                connection.settle()
            except (ConnectionError, OSError):
                self.drop(connection)
                return False
        return True

    def _open_thread_connection(self) -> ServerConnection:
        with self.lock:
            if self.anchor is not None and _at_end(self.anchor.sock):
                # The server was killed: start afresh.  Handles of the old server stay
                # dead (their instance differs); new objects work.
                self.anchor.close()
                self.anchor = None
                self.closes_to_send.clear()
            self._ensure_anchor()
        hello = frame(
            HELLO_THREAD,
            HELLO_THREAD_REQUEST.pack(PROTOCOL_VERSION, os.getpid(), threading.get_native_id(), self.token),
        )
        connection, payload = open_connection(hello)
        (instance,) = HELLO_THREAD_REPLY.unpack_from(payload)
        if instance != self.instance:
            connection.close()
            raise ServerGone("the sync server restarted since this process connected; its objects are gone")
        self.connections.add(connection)
        return connection

    def drop(self, connection: ServerConnection) -> None:
        """Close a connection that failed and forget it."""
        pool: list[ServerConnection] = getattr(self.local, "pool", [])
        if connection in pool:
            pool.remove(connection)
        with self._request_lock:
            if connection in self.request_connections:
                self.request_connections.remove(connection)
        connection.close()

    def _close_frames(self) -> bytes:
        if not self.closes_to_send:
            return b""
        ids = []
        with contextlib.suppress(IndexError):
            while True:
                ids.append(self.closes_to_send.popleft())
        return frame(CLOSE, object_ids(ids))

    def call(self, data: bytes, what: str) -> tuple[int, bytes]:
        """One request (a frame) and its reply: ``(status, payload)``.  A WAIT blocks until
        the server answers, and is cancelled there if the caller is interrupted meanwhile
        (:meth:`ServerConnection.wait`)."""
        op = data[4]
        connection = self.connection()
        try:
            if op == WAIT:
                return connection.wait(self._close_frames() + data, what)
            return connection.call(self._close_frames() + data, op, what)
        except (ConnectionError, OSError) as exc:
            self.drop(connection)
            _lost(exc, what)

    def release(self, oid: int) -> None:
        """Drop one reference, now (another process may be about to look the name up)."""
        self.closes_to_send.append(oid)
        connection = None
        try:
            connection = self.connection()
            connection.send(self._close_frames())
        except (ConnectionError, OSError):
            if connection is not None:
                self.drop(connection)  # the server is gone, and with it the reference

    # -- requests (Backend.request) --

    def open_request(self, data: bytes, what: str) -> ServerRequest:
        """Send a WAIT (``data``, without a deadline) on a request connection, and return
        without waiting for its reply.

        The server allows one pending wait per connection, so each request in flight has a
        connection of its own: a HELLO_THREAD connection of the calling thread (the asyncio
        dispatcher), kept for reuse once the request ends.  None is ever closed while the
        process lives: a mutex a request acquired is held by its connection, and stays held
        (by the task the dispatcher gave it to) after the request ended.
        """
        self.ensure_own()
        payload: bytes | None = None
        while True:
            connection, reused = self._request_connection()
            if payload is None:  # (the pending CLOSE frames once, even if a send fails)
                payload = self._close_frames() + data
            connection.unsettled = True  # until its reply is read, or the request cancelled
            try:
                connection.send(payload)
            except (ConnectionError, OSError) as exc:
                self.drop(connection)
                if reused:
                    continue  # a connection to a server killed since: the next try opens anew
                _lost(exc, what)
            except BaseException:
                # Interrupted (the wait may be out): settled (cancelled, or given back) before
                # the connection's next use.
                self.idle_requests.append(connection)
                raise
            return ServerRequest(connection, what)

    def _request_connection(self) -> tuple[ServerConnection, bool]:
        """An idle request connection, brought in step, or a new one: ``(connection,
        reused)``.  OSError(ENOSPC) when :data:`MAX_REQUEST_CONNECTIONS` are all busy, or
        when a new one cannot be had for want of descriptors while others are busy (the
        caller waits for a request to end, and its connection)."""
        while True:
            try:
                connection = self.idle_requests.pop()  # the most recent: the fewest idle
            except IndexError:
                break
            if connection.closed:
                self.drop(connection)
                continue
            try:
                if self._in_step(connection):
                    return connection, True
            except BaseException:
                self.idle_requests.append(connection)
                raise
        with self._request_lock:
            busy = len(self.request_connections) + self._requests_opening
            if busy >= MAX_REQUEST_CONNECTIONS:
                raise OSError(
                    errno.ENOSPC,
                    f"all {busy} request connections to the sync server are in use "
                    "(ntshim.sync.server.client.MAX_REQUEST_CONNECTIONS); end a request first",
                )
            self._requests_opening += 1
        try:
            connection = self._open_thread_connection()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE) and self.request_connections:
                # (the server's descriptors, or ours): those in use come back as requests end
                raise OSError(
                    errno.ENOSPC,
                    f"no descriptor for another request connection while {busy} are in use; "
                    f"end a request first ({exc})",
                ) from exc
            raise
        finally:
            with self._request_lock:
                self._requests_opening -= 1
        with self._request_lock:
            self.request_connections.append(connection)
        return connection, False

    def end_request(self, connection: ServerConnection, what: str) -> tuple[int, bool] | None:
        """End the request in flight on ``connection`` (see :meth:`ServerRequest.end`) and put
        the connection back among the idle ones."""
        interrupted: BaseException | None = None
        result: tuple[int, bytes] | None = None
        try:
            if connection.reply_in():
                reply: bytes | None = connection.receive()  # all in: it does not block
                connection.unsettled = False
            else:
                # Pending as far as we know: cancel it.  The server drops it (its reply says
                # cancelled), or gives back what it took if it was satisfied meanwhile.  A
                # satisfied reply with nothing given back (which the server never sends, as
                # it keeps a satisfied wait until the client moves on, but which costs nothing
                # to honour) is the caller's.
                wait_reply, cancel_reply, interrupted = connection.cancel()
                reply = wait_reply if _cancel_outcome(cancel_reply)[0] == CANCEL_NOTHING else None
            if reply is not None:
                result = connection._check(reply, WAIT, what)
                if result[0] == OK:
                    # The server keeps a satisfied wait, for CANCEL to give back, and with it
                    # its objects (their names included) until the client moves on: say so
                    # now, as this connection may stay idle a long time.
                    connection.send(self._close_frames() or frame(CLOSE))
        except (ConnectionError, OSError) as exc:
            self.drop(connection)
            _lost(exc, what)
        except BaseException:
            # Interrupted before the end was complete: still unsettled if so, and settled
            # (cancelled, or given back) before the connection's next use.
            self.idle_requests.append(connection)
            raise
        self.idle_requests.append(connection)
        if interrupted is not None:
            raise interrupted
        return None if result is None else _wait_result(*result, what)

    def doorbell(self) -> int:
        """This process's doorbell for :meth:`Server.sleep`: a non-blocking eventfd that
        :meth:`Server.ring` adds to and :meth:`Server.bell` drains (made on first use)."""
        fd = self._doorbell
        if fd < 0:
            with self._doorbell_lock:
                fd = self._doorbell
                if fd < 0:
                    fd = self._doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd

    # -- fork --

    def before_fork(self) -> None:
        self.lock.acquire()
        self._forking_thread = threading.get_ident()
        self._child_anchor = None
        if self.anchor is None or self.pid != os.getpid() or not self.live_handles():
            return
        try:
            hello = frame(HELLO_PROC, HELLO_PROC_REQUEST.pack(PROTOCOL_VERSION, os.getpid(), self.token))
            connection, payload = open_connection(hello)
            token, instance = HELLO_PROC_REPLY.unpack_from(payload)
            if instance != self.instance:
                connection.close()
                return
        except Exception:  # noqa: BLE001 - a fork hook must not raise; the child re-takes its references
            return
        self._child_anchor, self._child_token = connection, token

    def after_fork_parent(self) -> None:
        if self._forking_thread != threading.get_ident():
            return  # registered during this fork: before_fork did not run
        self._forking_thread = None
        child_anchor, self._child_anchor = self._child_anchor, None
        if child_anchor is not None:
            child_anchor.close()  # the child holds the only other copy
        self.lock.release()

    def after_fork_child(self) -> None:
        child_anchor, self._child_anchor = self._child_anchor, None
        for connection in list(self.connections):  # the request connections among them
            if connection is not child_anchor:
                connection.close()
        self.connections = weakref.WeakSet()
        # The parent's requests and doorbell are the parent's: close our copies (the parent's
        # are untouched) and start with none.
        self.request_connections = []
        self.idle_requests = collections.deque()
        self._request_lock = threading.Lock()
        self._requests_opening = 0
        if self._doorbell >= 0:
            with contextlib.suppress(OSError):
                os.close(self._doorbell)
            self._doorbell = -1
        self._doorbell_lock = threading.Lock()
        self.local = threading.local()
        self.lock = threading.RLock()
        self._forking_thread = None
        self.pid = os.getpid()
        if child_anchor is not None:
            self.connections.add(child_anchor)
            self.anchor, self.token = child_anchor, self._child_token
        else:
            # No prepared anchor: the child takes one reference per live handle itself, so
            # the parent's pending closes are not the child's to send.
            self.anchor = None
            self.closes_to_send.clear()
            self._retake = bool(self.live_handles())


def _lost(exc: ConnectionError | OSError, what: str) -> NoReturn:
    """Raise what a request whose connection failed with ``exc`` raises (the caller has
    dropped the connection): the protocol error itself, or ServerGone."""
    if isinstance(exc, ProtocolError):
        raise exc
    raise ServerGone(f"{what}: lost the connection to the sync server ({exc})") from exc


def _at_end(sock: socket.socket) -> bool:
    """Whether the server closed this connection (it never writes to an idle one)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


CLIENT = Client()
os.register_at_fork(
    before=lambda: CLIENT.before_fork(),
    after_in_parent=lambda: CLIENT.after_fork_parent(),
    after_in_child=lambda: CLIENT.after_fork_child(),
)


# ----- the backend ---------------------------------------------------------------------


_close_lock = threading.Lock()


class ServerHandle:
    """A reference to one object of the server: tracked for fork, released on close or
    when garbage-collected."""

    __slots__ = ("__weakref__", "_closed", "id", "instance", "kind")

    def __init__(self, kind: Kind, oid: int) -> None:
        self.kind: Kind = kind
        self.id = oid
        #: The server the id belongs to: a restarted server numbers its objects anew.
        self.instance = CLIENT.instance
        self._closed = False
        CLIENT.handles.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def key(self) -> Any:
        return self.id

    def close(self) -> None:
        # Two threads closing one handle must drop one reference, not two (the second
        # would be another handle's).
        with _close_lock:
            if self._closed:
                return
            self._closed = True
        CLIENT.handles.discard(self)
        if self.instance == CLIENT.instance:
            CLIENT.release(self.id)

    def __del__(self) -> None:
        # Never talk to the server from a finalizer: it may run inside this very thread's
        # request.  The reference goes out ahead of the next request of any thread.
        if not self._closed:
            self._closed = True
            try:
                CLIENT.closes_to_send.append(self.id)
            except Exception:  # noqa: BLE001, S110 - at interpreter exit module globals may be gone already
                pass

    def state(self) -> Any:
        return (self.instance, self.id)

    def _op(self, frame_struct: struct.Struct, op: int, *args: int) -> bytes:
        if self.instance != CLIENT.instance:
            raise _gone(self.kind)
        status, payload = CLIENT.call(frame_struct.pack(frame_struct.size - 4, op, self.id, *args), self.kind)
        raise_status(status, self.kind)
        return payload

    def sem_release(self, count: int) -> int:
        return PREVIOUS_COUNT.unpack(self._op(OBJECT_ARGUMENT_REQUEST_FRAME, SEM_RELEASE, count))[0]

    def sem_read(self) -> tuple[int, int]:
        count, maximum = SEM_STATE.unpack(self._op(OBJECT_REQUEST_FRAME, SEM_READ))
        return count, maximum

    def mutex_unlock(self, owner: int) -> int:
        return PREVIOUS_COUNT.unpack(self._op(OBJECT_ARGUMENT_REQUEST_FRAME, MUTEX_UNLOCK, owner))[0]

    def mutex_kill(self, owner: int) -> None:
        self._op(OBJECT_ARGUMENT_REQUEST_FRAME, MUTEX_KILL, owner)

    def mutex_read(self) -> tuple[int, int, bool]:
        owner, count, abandoned = MUTEX_STATE.unpack(self._op(OBJECT_REQUEST_FRAME, MUTEX_READ))
        return owner, count, bool(abandoned)

    def lock_release(self, abandon: bool) -> None:
        self._op(OBJECT_ARGUMENT_REQUEST_FRAME, LOCK_RELEASE, int(abandon))

    def lock_read(self) -> tuple[bool, bool]:
        locked, abandoned = LOCK_STATE.unpack(self._op(OBJECT_REQUEST_FRAME, LOCK_READ))
        return bool(locked), bool(abandoned)

    def event_set(self) -> bool:
        return bool(self._op(OBJECT_REQUEST_FRAME, EVENT_SET)[0])

    def event_reset(self) -> bool:
        return bool(self._op(OBJECT_REQUEST_FRAME, EVENT_RESET)[0])

    def event_pulse(self) -> bool:
        return bool(self._op(OBJECT_REQUEST_FRAME, EVENT_PULSE)[0])

    def event_read(self) -> tuple[bool, bool]:
        manual, signaled = EVENT_STATE.unpack(self._op(OBJECT_REQUEST_FRAME, EVENT_READ))
        return bool(manual), bool(signaled)


class ServerRequest:
    """An asynchronous wait (:class:`~ntshim.sync.backend.Request`): a WAIT sent on a request
    connection of its own (:meth:`Client.open_request`), whose reply is read when it ends."""

    __slots__ = ("_connection", "_pid", "_polled", "_what")

    def __init__(self, connection: ServerConnection, what: str) -> None:
        self._connection: ServerConnection | None = connection
        #: The last :meth:`Server.sleep` found its socket readable: the one case in which
        #: :meth:`ready` reads it (the dispatcher asks every pending request after each sleep).
        self._polled = False
        #: A fork child has its parent's request objects, but their connections are closed
        #: there (or, forked without the hooks, still the parent's): never the child's to use.
        self._pid = os.getpid()
        self._what = what

    def _own(self) -> ServerConnection | None:
        """The connection, if this request is in flight and this process's."""
        connection = self._connection
        if connection is None or connection.closed or self._pid != os.getpid():
            return None
        return connection

    def ready(self) -> bool:
        """Whether the WAIT's reply is in: buffered, or on a socket the last sleep found
        readable (read now, without waiting)."""
        connection = self._own()
        if connection is None:
            return False
        if connection.reply_buffered():
            return True
        polled, self._polled = self._polled, False
        return polled and connection.reply_in()

    def poll_fd(self) -> int | None:
        """For :meth:`Server.sleep`: the socket to watch, None if the reply is buffered
        already (no need to sleep), -1 if nothing is (ended, or a fork parent's)."""
        connection = self._own()
        if connection is None:
            return -1
        return None if connection.reply_buffered() else connection.sock.fileno()

    def end(self) -> tuple[int, bool] | None:
        """``(index, abandoned)`` if the wait was satisfied (the reply is in, or it came in
        before the cancellation and was not given back), else None: it was cancelled, or
        its acquisition given back, on the server.  Raises what :meth:`Server.wait` raises
        for the reply's status; ServerGone if the connection failed.  In a fork child, a
        parent's request ends as None (what it acquires is the parent's)."""
        connection = self._connection
        if connection is None:
            raise RuntimeError("this request has ended already")
        self._connection = None
        if connection.closed or self._pid != os.getpid():
            return None
        return CLIENT.end_request(connection, self._what)

    def __del__(self) -> None:
        # Dropped without end(): give the connection back unsettled, to be settled (its
        # wait cancelled or given back: nobody knows of it) before its next use.  Never
        # talk to the server from a finalizer (it may run inside a request of this thread).
        connection = self._connection
        if connection is not None and self._pid == os.getpid() and not connection.closed:
            self._connection = None
            try:
                connection.unsettled = True
                CLIENT.idle_requests.append(connection)
            except Exception:  # noqa: BLE001, S110 - at interpreter exit module globals may be gone already
                pass


def _wait_result(status: int, payload: bytes, what: str) -> tuple[int, bool]:
    """A WAIT reply's ``(index, abandoned)``, or the exception its status stands for."""
    raise_status(status, what)
    index, abandoned = WAIT_REPLY.unpack(payload)
    return index, bool(abandoned)


def _wait_request(
    handles: Sequence[Handle], wait_all: bool, deadline: int | None, owner: int, alert: Handle | None
) -> tuple[bytes, str]:
    """A WAIT frame for :meth:`Server.wait` and :meth:`Server.request`, and what to call it
    in errors; ServerGone if an object belongs to a server killed since."""
    for handle in [*handles, alert] if alert is not None else handles:
        if getattr(handle, "instance", None) != CLIENT.instance:
            raise _gone(handle.kind)
    ids = [handle.key for handle in handles]
    data = wait_frame(ids, wait_all, deadline, owner, alert.key if alert is not None else None)
    return data, "wait_all" if wait_all else "wait_any"


def _poll_timeout(deadline: int | None) -> int | None:
    """poll()'s timeout in ms for a CLOCK_MONOTONIC deadline in ns: rounded up (never a
    return before the deadline that could have been a sleep), never negative."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic_ns()
    if remaining <= 0:
        return 0
    return min(-(-remaining // 1_000_000), _MAX_POLL_MS)


def _gone(kind: str) -> ServerGone:
    return ServerGone(f"{kind}: the sync server that held this object was killed; the object is gone")


class Server(Backend):
    name = "server"
    summary = "a server process owns all state and answers over a Unix socket (the wineserver design)"

    @classmethod
    def _probe(cls) -> Availability:
        try:
            directory = userdir.user_directory()
            CLIENT.server_instance()
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors (the server's or this process's) passes: no reason to
                # call the backend missing for this process's whole life.  Each request
                # raises the error, which says what to do, until there is room again.
                return Availability(cls.name, True, notes=(f"out of descriptors when probed: {exc}",))
            return Availability(cls.name, False, f"cannot start or reach the sync server: {exc}")
        return Availability(cls.name, True, notes=(f"socket {os.path.join(directory, SOCKET_NAME)}",))

    @classmethod
    def create(cls, kind: Kind, initial: InitialState, name: bytes | None) -> tuple[Handle, bool]:
        data = frame(CREATE, CREATE_REQUEST.pack(KIND_CODES[kind], *initial) + (name or b""))
        status, payload = CLIENT.call(data, f"create {kind}")
        raise_status(status, f"create {kind} {name!r}" if name else f"create {kind}")
        oid, created = CREATE_REPLY.unpack(payload)
        return ServerHandle(kind, oid), bool(created)

    @classmethod
    def open(cls, kind: Kind, name: bytes) -> Handle:
        status, payload = CLIENT.call(frame(OPEN, OPEN_REQUEST.pack(KIND_CODES[kind]) + name), f"open {kind}")
        raise_status(status, f"open {kind} {name!r}")
        return ServerHandle(kind, OBJECT_ID.unpack(payload)[0])

    @classmethod
    def from_state(cls, kind: Kind, state: Any) -> Handle:
        instance, oid = state
        if instance != CLIENT.server_instance():
            raise FileNotFoundError(f"{kind} {oid}: the sync server that held it has exited since")
        status, _ = CLIENT.call(frame(OPEN_ID, OPEN_ID_REQUEST.pack(KIND_CODES[kind], oid)), f"reopen {kind}")
        raise_status(status, f"reopen {kind} {oid}")
        return ServerHandle(kind, oid)

    @classmethod
    def wait(
        cls,
        handles: Sequence[Handle],
        wait_all: bool,
        deadline: int | None,
        owner: int,
        alert: Handle | None,
    ) -> tuple[int, bool]:
        data, what = _wait_request(handles, wait_all, deadline, owner, alert)
        status, payload = CLIENT.call(data, what)
        return _wait_result(status, payload, what)

    # Asynchronous waits: each request is a WAIT on a connection of its own, whose socket
    # becomes readable when the server answers; the doorbell is an eventfd beside them.

    @classmethod
    def request(cls, handles: Sequence[Handle], wait_all: bool, owner: int, alert: Handle | None) -> Request:
        data, what = _wait_request(handles, wait_all, None, owner, alert)
        return CLIENT.open_request(data, what)

    @classmethod
    def bell(cls) -> int:
        # Drained: a ring() after this leaves the eventfd readable for sleep().
        CLIENT.ensure_own()
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(CLIENT.doorbell())
        return 0

    @classmethod
    def ring(cls) -> None:
        CLIENT.ensure_own()
        with contextlib.suppress(BlockingIOError):  # (only if 2**64 - 2 rings were never drained)
            os.eventfd_write(CLIENT.doorbell(), 1)

    @classmethod
    def sleep(cls, requests: Sequence[Request], deadline: int | None, bell: int) -> None:
        CLIENT.ensure_own()
        poller = select.poll()
        watched: dict[int, ServerRequest] = {}
        for request in cast("Sequence[ServerRequest]", requests):
            fd = request.poll_fd()
            if fd is None:
                return  # its reply is in already
            if fd >= 0:
                poller.register(fd, select.POLLIN)
                watched[fd] = request
        poller.register(CLIENT.doorbell(), select.POLLIN)
        for fd, _events in poller.poll(_poll_timeout(deadline)):  # (the GIL released; EINTR retried)
            if fd in watched:
                watched[fd]._polled = True


BACKEND = Server
