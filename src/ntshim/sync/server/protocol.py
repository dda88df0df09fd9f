"""The wire format the ``server`` backend's clients and server share: file names, op codes,
statuses, and one :class:`struct.Struct` per payload, named for what it carries.

docs/sync-protocol.md is the specification (frames, every op's payloads, the rules of a
connection); this module is its only transcription into code.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..backend import Kind

#: 2: the lock kind (LOCK_RELEASE, LOCK_READ).  A server drops a client whose hello names another.
PROTOCOL_VERSION = 2
SOCKET_NAME = "server.sock"
LOCK_NAME = "server.lock"
LOG_NAME = "server.log"
LINGER_ENV_VAR = "NTSHIM_SYNC_SERVER_LINGER"
DEFAULT_LINGER = 2.0
#: Largest frame body either side accepts.
MAX_BODY = 1 << 16

KIND_CODES: dict[Kind, int] = {"semaphore": 0, "mutex": 1, "event": 2, "lock": 3}
KINDS_BY_CODE: dict[int, Kind] = {code: kind for kind, code in KIND_CODES.items()}

# Op codes.
REFUSED = 0x00
HELLO_PROC = 0x01
HELLO_THREAD = 0x02
CREATE = 0x10
OPEN = 0x11
OPEN_ID = 0x12
ADDREF = 0x13
CLOSE = 0x14
SEM_RELEASE = 0x20
SEM_READ = 0x21
MUTEX_UNLOCK = 0x22
MUTEX_KILL = 0x23
MUTEX_READ = 0x24
EVENT_SET = 0x25
EVENT_RESET = 0x26
EVENT_PULSE = 0x27
EVENT_READ = 0x28
LOCK_RELEASE = 0x29
LOCK_READ = 0x2A
WAIT = 0x30
CANCEL = 0x31

# Wait flags.
WAIT_ALL = 1
WAIT_ALERT = 2
WAIT_DEADLINE = 4

# Statuses.
OK = 0
E_NOENT = 1
E_KIND = 2
E_PERM = 3
E_OVERFLOW = 4
E_TIMEOUT = 5
E_CANCELLED = 6
E_INVALID = 7
E_UNKNOWN_PROCESS = 8
E_NO_DESCRIPTORS = 9

# CANCEL outcomes.
CANCEL_CANCELLED = 0
CANCEL_GIVEN_BACK = 1
CANCEL_NOTHING = 2

# ----- framing -----------------------------------------------------------------------------

#: The u32 that starts every frame: the length of the body that follows.
FRAME_LENGTH = struct.Struct("<I")
#: The start of a reply's body: the op it answers, the status.
REPLY_HEAD = struct.Struct("<BB")

# ----- payloads ----------------------------------------------------------------------------

#: HELLO_PROC: version, pid, the token of the process whose references to copy (0: none).
HELLO_PROC_REQUEST = struct.Struct("<IIQ")
#: HELLO_PROC's reply: the new process token, the server instance.
HELLO_PROC_REPLY = struct.Struct("<QQ")
#: HELLO_THREAD: version, pid, tid, process token.
HELLO_THREAD_REQUEST = struct.Struct("<IIIQ")
#: HELLO_THREAD's reply: the server instance.
HELLO_THREAD_REPLY = struct.Struct("<Q")
#: CREATE, before the name: kind, then the kind's initial state as two u32 (see
#: :meth:`ntshim.sync.backend.Backend.create`).
CREATE_REQUEST = struct.Struct("<BII")
#: CREATE's reply: object id, whether it was created (0: the name existed).
CREATE_REPLY = struct.Struct("<QB")
#: OPEN, before the name: kind.
OPEN_REQUEST = struct.Struct("<B")
#: OPEN_ID: kind, object id.
OPEN_ID_REQUEST = struct.Struct("<BQ")
#: One object id: OPEN's reply, the request of the operations on one object, and each
#: element of ADDREF's and CLOSE's lists.
OBJECT_ID = struct.Struct("<Q")
#: SEM_RELEASE (object id, count), MUTEX_UNLOCK and MUTEX_KILL (object id, owner),
#: LOCK_RELEASE (object id, abandon 0/1).
OBJECT_ID_AND_ARGUMENT = struct.Struct("<QI")
#: SEM_RELEASE's and MUTEX_UNLOCK's reply: the count before.
PREVIOUS_COUNT = struct.Struct("<I")
#: SEM_READ's reply: count, maximum.
SEM_STATE = struct.Struct("<II")
#: MUTEX_READ's reply: owner, count, abandoned.
MUTEX_STATE = struct.Struct("<IIB")
#: EVENT_READ's reply: manual, signaled.
EVENT_STATE = struct.Struct("<BB")
#: LOCK_READ's reply: locked, abandoned.
LOCK_STATE = struct.Struct("<BB")
#: WAIT, before the ids: flags, owner, deadline, how many objects.
WAIT_REQUEST = struct.Struct("<BIQB")
#: WAIT's reply: the index acquired, whether an acquired mutex or lock was abandoned.
WAIT_REPLY = struct.Struct("<IB")
#: CANCEL's reply: its outcome (CANCEL_*), objects given back, objects that could not be.
CANCEL_REPLY = struct.Struct("<BII")
#: REFUSED's payload: server pid, descriptor limit, connections, processes, linger in ms.
REFUSAL = struct.Struct("<IIIII")

# Whole request frames for the frequent operations, packed in one call: length, op, object
# id (and the argument of OBJECT_ID_AND_ARGUMENT).
OBJECT_REQUEST_FRAME = struct.Struct("<IBQ")
OBJECT_ARGUMENT_REQUEST_FRAME = struct.Struct("<IBQI")


def frame(op: int, payload: bytes = b"") -> bytes:
    """One request frame."""
    return FRAME_LENGTH.pack(len(payload) + 1) + bytes((op,)) + payload


def reply_frame(op: int, status: int, payload: bytes = b"") -> bytes:
    """One reply frame."""
    return FRAME_LENGTH.pack(len(payload) + 2) + REPLY_HEAD.pack(op, status) + payload


def object_ids(ids: Sequence[int]) -> bytes:
    """A list of object ids: the payload of ADDREF and CLOSE."""
    return struct.pack(f"<{len(ids)}Q", *ids)


_wait_frames: dict[tuple[int, bool], struct.Struct] = {}


def wait_frame(ids: Sequence[int], wait_all: bool, deadline: int | None, owner: int, alert: int | None) -> bytes:
    """A whole WAIT request frame (its struct is cached by the number of ids)."""
    key = (len(ids), alert is not None)
    packer = _wait_frames.get(key)
    if packer is None:
        packer = _wait_frames[key] = struct.Struct(f"<IBBIQB{len(ids) + (alert is not None)}Q")
    flags = (WAIT_ALL if wait_all else 0) | (WAIT_ALERT if alert is not None else 0)
    if deadline is not None:
        flags |= WAIT_DEADLINE
    extra = (alert,) if alert is not None else ()
    return packer.pack(packer.size - 4, WAIT, flags, owner, max(deadline or 0, 0), len(ids), *ids, *extra)
