"""Events, mutexes and semaphores through the Win32 API, over :mod:`ntshim.sync`.

Every object is an :mod:`ntshim.sync` object (the backend is the library's default, which
``NTSHIM_SYNC_BACKEND`` chooses); this module adds what Windows keeps on top: a per-process
handle table with the access granted to each handle, object names with their ``Local\\`` and
``Global\\`` prefixes, and the return values and last-error codes of kernel32.  The
behaviour follows Windows as Wine's conformance tests describe it
(``dlls/kernel32/tests/sync.c``, ``dlls/ntdll/tests/sync.c``); ``docs/win32.md`` lists what
differs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar, cast

from ..errors import AbandonedError, BackendUnavailable, NameKindError
from ..sync import MAX_NAME_BYTES, Event, Mutex, Semaphore, SyncObject, wait_all, wait_any
from . import arguments
from .constants import (
    ACCESS_SYSTEM_SECURITY,
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_BUSY,
    ERROR_FILE_CORRUPT,
    ERROR_FILE_NOT_FOUND,
    ERROR_FILENAME_EXCED_RANGE,
    ERROR_GEN_FAILURE,
    ERROR_INVALID_HANDLE,
    ERROR_INVALID_NAME,
    ERROR_INVALID_PARAMETER,
    ERROR_NOACCESS,
    ERROR_NOT_ENOUGH_MEMORY,
    ERROR_NOT_OWNER,
    ERROR_NOT_SUPPORTED,
    ERROR_PATH_NOT_FOUND,
    ERROR_PRIVILEGE_NOT_HELD,
    ERROR_TOO_MANY_POSTS,
    EVENT_ALL_ACCESS,
    EVENT_MODIFY_STATE,
    EVENT_QUERY_STATE,
    GENERIC_ALL,
    GENERIC_EXECUTE,
    GENERIC_READ,
    GENERIC_WRITE,
    INFINITE,
    MAXIMUM_ALLOWED,
    MAXIMUM_WAIT_OBJECTS,
    MUTANT_ALL_ACCESS,
    MUTANT_QUERY_STATE,
    SEMAPHORE_ALL_ACCESS,
    SEMAPHORE_MODIFY_STATE,
    SEMAPHORE_QUERY_STATE,
    STANDARD_RIGHTS_EXECUTE,
    STANDARD_RIGHTS_READ,
    STANDARD_RIGHTS_WRITE,
    SYNCHRONIZE,
    WAIT_ABANDONED_0,
    WAIT_FAILED,
    WAIT_OBJECT_0,
    WAIT_TIMEOUT,
)
from .lasterror import SetLastError, Win32Error, win32_function

T = TypeVar("T", bound=SyncObject)

_CArgObject = type(ctypes.byref(ctypes.c_int()))

#: Handles are pointer-sized; the low two bits are tag bits the kernel ignores (Wine's
#: test_WaitForSingleObject checks that ``handle | 1``, ``| 2`` and ``| 3`` all work).
_HANDLE_BITS = (1 << 64) - 1
_TAG_BITS = 3

# What each generic right means for each kind (Windows' GENERIC_MAPPING of the three object
# types), and everything a handle of that kind can be granted.
_GENERIC_MAPPING: dict[type[SyncObject], tuple[int, int, int, int]] = {
    # GENERIC_READ, GENERIC_WRITE, GENERIC_EXECUTE, GENERIC_ALL
    Event: (
        STANDARD_RIGHTS_READ | EVENT_QUERY_STATE,
        STANDARD_RIGHTS_WRITE | EVENT_MODIFY_STATE,
        STANDARD_RIGHTS_EXECUTE | SYNCHRONIZE,
        EVENT_ALL_ACCESS,
    ),
    Mutex: (
        STANDARD_RIGHTS_READ | MUTANT_QUERY_STATE,
        STANDARD_RIGHTS_WRITE,
        STANDARD_RIGHTS_EXECUTE | SYNCHRONIZE,
        MUTANT_ALL_ACCESS,
    ),
    Semaphore: (
        STANDARD_RIGHTS_READ | SEMAPHORE_QUERY_STATE,
        STANDARD_RIGHTS_WRITE | SEMAPHORE_MODIFY_STATE,
        STANDARD_RIGHTS_EXECUTE | SYNCHRONIZE,
        SEMAPHORE_ALL_ACCESS,
    ),
}
_ALL_ACCESS = {kind: mapping[3] for kind, mapping in _GENERIC_MAPPING.items()}


# ---- the handle table ----------------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    """One open handle: the object, the access granted, and how many calls are using it."""

    obj: SyncObject
    access: int
    users: int = 0
    closed: bool = False


class HandleTable:
    """The process's handles: small integers (multiples of 4 from 4, never 0) naming objects.

    A call *borrows* the entries it uses and gives them back when done.  ``CloseHandle``
    removes the number at once (any later use fails with ERROR_INVALID_HANDLE and the number
    may be given out again), but the object reference is dropped only when the last call
    using it returns: a thread blocked in a wait keeps its object, as on Windows, where a
    wait holds a reference to the object rather than to the handle.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._free: list[int] = []  # closed numbers, reused most recent first as Windows does
        self._next = 4
        self._lingering: set[_Entry] = set()  # closed while in use; dropped by the last user

    def insert(self, obj: SyncObject, access: int) -> int:
        with self._lock:
            if self._free:
                value = self._free.pop()
            else:
                value, self._next = self._next, self._next + 4
            self._entries[value] = _Entry(obj, access)
        return value

    def borrow(self, values: Sequence[int], kind: type[SyncObject] | None, access: int) -> list[_Entry]:
        """The entries of ``values``, all or none: ERROR_INVALID_HANDLE for an unknown
        handle or one of another kind than ``kind`` (the NT type check comes first), then
        ERROR_ACCESS_DENIED if a handle lacks ``access``."""
        with self._lock:
            entries = []
            for value in values:
                entry = self._entries.get(value & _HANDLE_BITS & ~_TAG_BITS)
                if entry is None or (kind is not None and not isinstance(entry.obj, kind)):
                    raise Win32Error(ERROR_INVALID_HANDLE)
                entries.append(entry)
            for entry in entries:
                if entry.access & access != access:
                    raise Win32Error(ERROR_ACCESS_DENIED)
            for entry in entries:
                entry.users += 1
        return entries

    def give_back(self, entries: Sequence[_Entry]) -> None:
        release = []
        with self._lock:
            for entry in entries:
                entry.users -= 1
                if entry.closed and entry.users == 0 and entry in self._lingering:
                    self._lingering.discard(entry)
                    release.append(entry.obj)
        for obj in release:
            obj.close()

    def close(self, value: int) -> None:
        key = value & _HANDLE_BITS & ~_TAG_BITS
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                raise Win32Error(ERROR_INVALID_HANDLE)
            self._free.append(key)
            entry.closed = True
            if entry.users:
                self._lingering.add(entry)
                return
        entry.obj.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives: no call is using an entry any more, and the lock
        # may have been held by a thread that no longer exists.
        self._lock = threading.Lock()
        for entry in self._entries.values():
            entry.users = 0
        lingering, self._lingering = self._lingering, set()
        for entry in lingering:
            entry.obj.close()


_table = HandleTable()
os.register_at_fork(after_in_child=_table._after_fork_in_child)


@contextmanager
def _using(handle: object, kind: type[T], access: int) -> Iterator[T]:
    entry = _table.borrow([_handle_value(handle, "handle")], kind, access)[0]
    try:
        with _object_errors():
            yield cast(T, entry.obj)
    finally:
        _table.give_back([entry])


# ---- arguments -----------------------------------------------------------------------------


def _handle_value(value: object, name: str) -> int:
    """A HANDLE argument as an int (NULL → 0): an int, None, ``ctypes.c_void_p`` (what
    ``ctypes.wintypes.HANDLE`` is) or another ctypes integer."""
    if value is None:
        return 0
    if isinstance(value, ctypes.c_void_p):
        return value.value or 0
    if isinstance(value, ctypes._SimpleCData):
        value = value.value
    if isinstance(value, int) and not isinstance(value, bool):
        return value & _HANDLE_BITS
    raise TypeError(f"{name} must be a handle (int, None or ctypes.c_void_p), not {type(value).__name__}")


def _handle_values(handles: object, count: int) -> list[int]:
    """The first ``count`` handles of a HANDLE array: a ctypes array, a pointer to its first
    element (``byref`` included) or a Python sequence."""
    if handles is None:
        raise Win32Error(ERROR_NOACCESS)  # a NULL array: Windows faults reading it
    if isinstance(handles, _CArgObject):
        handles = handles._obj  # type: ignore[attr-defined]
    if isinstance(handles, ctypes._SimpleCData):  # byref of a single HANDLE
        handles = [handles]
    if isinstance(handles, (str, bytes)) or not isinstance(handles, (ctypes.Array, ctypes._Pointer, Sequence)):
        raise TypeError(f"handles must be a ctypes array or pointer of HANDLEs, or a sequence, not {type(handles).__name__}")
    if not isinstance(handles, ctypes._Pointer) and len(handles) < count:
        raise ValueError(f"count is {count} but handles holds only {len(handles)}")
    return [_handle_value(handles[i], f"handles[{i}]") for i in range(count)]


def _bool(value: object, name: str) -> bool:
    """A BOOL: any nonzero int is TRUE."""
    if isinstance(value, int):
        return bool(value & 0xFFFFFFFF)
    raise TypeError(f"{name} must be a bool or an int (BOOL), not {type(value).__name__}")


def _long(value: object, name: str) -> int:
    """A LONG (signed 32 bits); larger ints wrap as they would through ctypes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value + 0x80000000) % 0x100000000 - 0x80000000
    raise TypeError(f"{name} must be an int (LONG), not {type(value).__name__}")


def _attributes(attributes: object) -> None:
    """Only NULL security attributes: there are no security descriptors here, and handle
    inheritance across CreateProcess does not exist for a Python process."""
    if attributes is None or (isinstance(attributes, int) and not isinstance(attributes, bool) and attributes == 0):
        return
    raise Win32Error(ERROR_NOT_SUPPORTED)


def _wide_string(value: object, name: str) -> str | None:
    """An LPCWSTR: str, None, ``ctypes.c_wchar_p`` or a ``c_wchar`` buffer.  Like C, the
    string ends at its first NUL."""
    wide_buffer = isinstance(value, ctypes.Array) and getattr(value, "_type_", None) is ctypes.c_wchar
    if isinstance(value, ctypes.c_wchar_p) or wide_buffer:
        value = value.value  # type: ignore[attr-defined]
    if value is None:
        return None
    if isinstance(value, str):
        return value.split("\0", 1)[0]
    raise TypeError(f"{name} must be a str, None or a ctypes wide string, not {type(value).__name__}")


_LOCAL = "Local\\"
_GLOBAL = "Global\\"


def _object_name(name: object, opening: bool) -> str | None:
    """The ntshim.sync name for a Win32 object name; None for an unnamed object.

    ``Local\\`` names the session namespace, which is where unprefixed names go, so it is
    dropped; ``Global\\`` names stay apart from unprefixed ones.  Any other backslash names
    a directory that does not exist (ERROR_PATH_NOT_FOUND).
    """
    text = _wide_string(name, "name")
    if text is None:
        if opening:
            raise Win32Error(ERROR_INVALID_PARAMETER)
        return None
    if not text:
        # An empty name creates an unnamed object; opening it names the namespace
        # directory itself, which is not an object of the wanted type.
        if opening:
            raise Win32Error(ERROR_INVALID_HANDLE)
        return None
    if text.startswith(_LOCAL):
        rest, namespace = text[len(_LOCAL) :], ""
    elif text.startswith(_GLOBAL):
        rest, namespace = text[len(_GLOBAL) :], _GLOBAL
    else:
        rest, namespace = text, ""
    if not rest:
        raise Win32Error(ERROR_INVALID_HANDLE)  # "Local\" alone: the directory again
    if "\\" in rest:
        raise Win32Error(ERROR_PATH_NOT_FOUND)
    full = namespace + rest
    try:
        encoded = full.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate: valid UTF-16 for Windows, not storable here
        raise Win32Error(ERROR_INVALID_NAME) from None
    if len(encoded) > MAX_NAME_BYTES:
        raise Win32Error(ERROR_FILENAME_EXCED_RANGE)
    return full


def _grant(kind: type[SyncObject], desired: int) -> int:
    """The access a handle opened with ``desired`` gets, as Windows grants it under the
    default security of a named object: generic rights mapped to the kind's rights,
    MAXIMUM_ALLOWED as everything, and a refusal of rights the kind does not have."""
    read, write, execute, everything = _GENERIC_MAPPING[kind]
    if desired & ACCESS_SYSTEM_SECURITY:
        raise Win32Error(ERROR_PRIVILEGE_NOT_HELD)
    granted = desired & ~(GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL | MAXIMUM_ALLOWED)
    for bit, mapped in ((GENERIC_READ, read), (GENERIC_WRITE, write), (GENERIC_EXECUTE, execute), (GENERIC_ALL, everything)):
        if desired & bit:
            granted |= mapped
    if desired & MAXIMUM_ALLOWED:
        granted |= everything
    if not granted or granted & ~everything:
        raise Win32Error(ERROR_ACCESS_DENIED)
    return granted


# ---- creating and opening ------------------------------------------------------------------


def _publish(obj: SyncObject, named: bool) -> int:
    """Enter a created (or create-opened) object in the table.  kernel32's Create*
    functions set the last error on success too: ERROR_ALREADY_EXISTS when the name
    existed, 0 otherwise."""
    handle = _table.insert(obj, _ALL_ACCESS[type(obj)])
    SetLastError(ERROR_ALREADY_EXISTS if named and not obj.created else 0)
    return handle


#: What the backends' OSErrors mean to a Win32 caller (by errno).  Out of room (the futex
#: arena is full, the sync server has no descriptor left for another connection): Windows
#: answers a full handle table or pool with ERROR_NOT_ENOUGH_MEMORY too.
_ERRNO_CODES = {
    errno.ENOSPC: ERROR_NOT_ENOUGH_MEMORY,
    errno.ENOMEM: ERROR_NOT_ENOUGH_MEMORY,
    errno.EMFILE: ERROR_NOT_ENOUGH_MEMORY,
    errno.ENFILE: ERROR_NOT_ENOUGH_MEMORY,
    errno.EUCLEAN: ERROR_FILE_CORRUPT,  # the shared arena is damaged
    errno.EBUSY: ERROR_BUSY,  # the arena is in use by another ntshim layout
    errno.EACCES: ERROR_ACCESS_DENIED,  # the per-user directory is refused
    errno.EPERM: ERROR_ACCESS_DENIED,
    errno.EBADF: ERROR_INVALID_HANDLE,  # the object is gone for this process
}


@contextmanager
def _object_errors() -> Iterator[None]:
    """ntshim.sync's answers as Win32 error codes: a Win32 function fails with a last error,
    it never raises what the backend raised."""
    try:
        yield
    except NameKindError:  # the name belongs to an object of another kind
        raise Win32Error(ERROR_INVALID_HANDLE) from None
    except FileNotFoundError:
        raise Win32Error(ERROR_FILE_NOT_FOUND) from None
    except BackendUnavailable:
        raise Win32Error(ERROR_NOT_SUPPORTED) from None
    except MemoryError:
        raise Win32Error(ERROR_NOT_ENOUGH_MEMORY) from None
    except ConnectionError:  # the sync server is gone, and the object with it
        raise Win32Error(ERROR_INVALID_HANDLE) from None
    except OSError as e:
        raise Win32Error(_ERRNO_CODES.get(e.errno or 0, ERROR_GEN_FAILURE)) from None


@win32_function(0)
def CreateEventW(attributes: object, manual_reset: object, initial_state: object, name: object) -> int:
    """Create an event, or open the existing event called ``name`` (last error
    ERROR_ALREADY_EXISTS).  The handle, or 0 on failure."""
    manual = _bool(manual_reset, "manual_reset")
    signaled = _bool(initial_state, "initial_state")
    _attributes(attributes)
    text = _object_name(name, opening=False)
    with _object_errors():
        event = Event(manual=manual, signaled=signaled, name=text)
    return _publish(event, text is not None)


@win32_function(0)
def CreateMutexW(attributes: object, initial_owner: object, name: object) -> int:
    """Create a mutex, owned once by the calling thread if ``initial_owner``; or open the
    existing mutex called ``name`` (last error ERROR_ALREADY_EXISTS, and not owned).  The
    handle, or 0 on failure."""
    owned = _bool(initial_owner, "initial_owner")
    _attributes(attributes)
    text = _object_name(name, opening=False)
    with _object_errors():
        mutex = Mutex(count=1 if owned else 0, name=text)
    return _publish(mutex, text is not None)


@win32_function(0)
def CreateSemaphoreW(attributes: object, initial: object, maximum: object, name: object) -> int:
    """Create a semaphore with ``initial`` of ``maximum`` (0 <= initial <= maximum, maximum
    > 0, both LONG), or open the existing semaphore called ``name`` (last error
    ERROR_ALREADY_EXISTS; the counts are ignored).  The handle, or 0 on failure."""
    initial = _long(initial, "initial")
    maximum = _long(maximum, "maximum")
    _attributes(attributes)
    if maximum <= 0 or initial < 0 or initial > maximum:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    text = _object_name(name, opening=False)
    with _object_errors():
        semaphore = Semaphore(initial, maximum, name=text)
    return _publish(semaphore, text is not None)


def _open(kind: type[SyncObject], access: object, inherit: object, name: object) -> int:
    desired = arguments.dword(access, "access")
    _bool(inherit, "inherit")  # handles are per process here: nothing inherits them
    text = _object_name(name, opening=True)
    assert text is not None
    with _object_errors():
        obj = kind.open(text)
    try:
        granted = _grant(kind, desired)  # after the lookup: a missing name wins over access
    except Win32Error:
        obj.close()
        raise
    return _table.insert(obj, granted)


@win32_function(0)
def OpenEventW(access: object, inherit: object, name: object) -> int:
    """Open the existing event called ``name`` with ``access``.  The handle, or 0 on failure
    (ERROR_FILE_NOT_FOUND, ERROR_INVALID_HANDLE for another kind, ERROR_ACCESS_DENIED)."""
    return _open(Event, access, inherit, name)


@win32_function(0)
def OpenMutexW(access: object, inherit: object, name: object) -> int:
    """Open the existing mutex called ``name`` with ``access``.  The handle, or 0."""
    return _open(Mutex, access, inherit, name)


@win32_function(0)
def OpenSemaphoreW(access: object, inherit: object, name: object) -> int:
    """Open the existing semaphore called ``name`` with ``access``.  The handle, or 0."""
    return _open(Semaphore, access, inherit, name)


@win32_function(False)
def CloseHandle(handle: object) -> bool:
    """Close a handle.  A wait already using the object keeps it until the wait ends."""
    _table.close(_handle_value(handle, "handle"))
    return True


# ---- signalling ----------------------------------------------------------------------------


@win32_function(False)
def SetEvent(handle: object) -> bool:
    """Signal an event (needs EVENT_MODIFY_STATE)."""
    with _using(handle, Event, EVENT_MODIFY_STATE) as event:
        event.set()
    return True


@win32_function(False)
def ResetEvent(handle: object) -> bool:
    """Unsignal an event (needs EVENT_MODIFY_STATE)."""
    with _using(handle, Event, EVENT_MODIFY_STATE) as event:
        event.reset()
    return True


@win32_function(False)
def PulseEvent(handle: object) -> bool:
    """Wake the threads waiting on an event at this moment (all of them for a manual-reset
    event, one for an auto-reset event) and leave it unsignaled, atomically."""
    with _using(handle, Event, EVENT_MODIFY_STATE) as event:
        event.pulse()
    return True


@win32_function(False)
def ReleaseMutex(handle: object) -> bool:
    """Release one level of the calling thread's ownership (ERROR_NOT_OWNER if it does not
    own the mutex).  Windows asks no access right for this."""
    with _using(handle, Mutex, 0) as mutex:
        try:
            mutex.unlock()
        except PermissionError:
            raise Win32Error(ERROR_NOT_OWNER) from None
    return True


@win32_function(False)
def ReleaseSemaphore(handle: object, count: object, previous_out: object) -> bool:
    """Add ``count`` (> 0) to a semaphore; the previous count goes to ``previous_out``
    (``ctypes.byref(LONG)``, a pointer or None).  ERROR_TOO_MANY_POSTS, and no change, past
    the maximum; the output is then left alone."""
    value = _handle_value(handle, "handle")
    amount = _long(count, "count")
    previous_target = arguments.target(previous_out, "previous_out")
    if amount <= 0:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    with _using(value, Semaphore, SEMAPHORE_MODIFY_STATE) as semaphore:
        try:
            previous = semaphore.release(amount)
        except OverflowError:
            raise Win32Error(ERROR_TOO_MANY_POSTS) from None
    if previous_target is not None:
        arguments.write(previous_target, previous)
    return True


# ---- waiting -------------------------------------------------------------------------------


def _wait(values: list[int], all_of_them: bool, milliseconds: int) -> int:
    entries = _table.borrow(values, None, SYNCHRONIZE)
    try:
        objects = [entry.obj for entry in entries]
        if all_of_them and len({obj._handle.key for obj in objects}) < len(objects):
            # The same object twice (through one handle or two): STATUS_INVALID_PARAMETER_MIX.
            raise Win32Error(ERROR_INVALID_PARAMETER)
        if len({obj.backend for obj in objects}) > 1:
            # NTSHIM_SYNC_BACKEND changed between the creations: one wait cannot span two
            # mechanisms.
            raise Win32Error(ERROR_NOT_SUPPORTED)
        timeout = None if milliseconds == INFINITE else milliseconds / 1000
        with _object_errors():
            try:
                index = (wait_all if all_of_them else wait_any)(objects, timeout)
            except TimeoutError:
                return WAIT_TIMEOUT
            except AbandonedError as abandoned:
                # The mutex was acquired.  A wait-all reports WAIT_ABANDONED_0 itself, as the
                # wineserver and ntsync do (the index ntshim.sync gives it is 0).
                return WAIT_ABANDONED_0 + (abandoned.index or 0)
        return WAIT_OBJECT_0 + index
    finally:
        _table.give_back(entries)


@win32_function(WAIT_FAILED)
def WaitForSingleObject(handle: object, milliseconds: object) -> int:
    """Wait up to ``milliseconds`` (INFINITE: no limit; 0: just test) for the object to be
    signaled and acquire it.  WAIT_OBJECT_0, WAIT_ABANDONED (an abandoned mutex, now owned),
    WAIT_TIMEOUT, or WAIT_FAILED (see GetLastError).  Success leaves the last error alone."""
    value = _handle_value(handle, "handle")
    timeout = arguments.dword(milliseconds, "milliseconds")
    return _wait([value], False, timeout)


@win32_function(WAIT_FAILED)
def WaitForMultipleObjects(count: object, handles: object, wait_all: object, milliseconds: object) -> int:
    """Wait for any (the lowest signaled index) or all of the first ``count`` (1..64)
    ``handles``, acquiring them.  WAIT_OBJECT_0 + index (0 for wait-all), WAIT_ABANDONED_0
    + index, WAIT_TIMEOUT or WAIT_FAILED.  Wait-all acquires everything in one step or
    nothing, and refuses the same object twice (ERROR_INVALID_PARAMETER)."""
    number = arguments.dword(count, "count")
    everything = _bool(wait_all, "wait_all")
    timeout = arguments.dword(milliseconds, "milliseconds")
    if number == 0 or number > MAXIMUM_WAIT_OBJECTS:
        raise Win32Error(ERROR_INVALID_PARAMETER)
    return _wait(_handle_values(handles, number), everything, timeout)


def open_handle_count() -> int:
    """How many handles this process has open (for tests and leak checks)."""
    return len(_table)
