"""Wine's conformance tests of events, mutexes, semaphores and waits, ported: what Windows
does, per dlls/kernel32/tests/sync.c (test_temporary_objects, test_mutex, test_event,
test_semaphore, test_WaitForSingleObject, test_WaitForMultipleObjects) and the parts of
dlls/ntdll/tests/sync.c (test_mutant, test_semaphore) that the Win32 calls can reach.

Left out, because ntshim.win32 cannot express them:
- security descriptors and SECURITY_ATTRIBUTES (test_event's blank, NULL-DACL and empty-DACL
  descriptors): only NULL attributes are accepted;
- the ANSI functions (CreateMutexA, OpenEventA, ...): only the W functions exist, and Python
  strings are Unicode anyway;
- pseudo handles (GetCurrentProcess(), GetCurrentThread()) and thread handles: there are no
  process or thread objects here, so test_WaitForSingleObject's and
  test_WaitForMultipleObjects' pseudo-handle cases, and waiting on a thread handle, are out;
- TerminateThread: Python cannot kill a thread, so test_mutex's owner thread *exits* while
  holding the mutex instead of being terminated (the same abandonment);
- the Nt* functions (NtWaitForMultipleObjects, NtQueryMutant, NtSetEvent's previous state,
  ...): the repeats through them are dropped and the mutex state NtQueryMutant reports is
  checked through ReleaseMutex instead;
- SignalObjectAndWait (test_signalandwait), waitable timers, memory resource
  notifications, keyed events: not part of this API.

Names carry this process's id so that parallel test runs of the same user do not meet.
"""

from __future__ import annotations

import ctypes
import threading

from win32_calls import SOON_MS, fails, unique

from ntshim import win32
from ntshim.win32 import (
    ACCESS_SYSTEM_SECURITY,
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_HANDLE,
    ERROR_INVALID_PARAMETER,
    ERROR_NOT_OWNER,
    ERROR_PRIVILEGE_NOT_HELD,
    ERROR_TOO_MANY_POSTS,
    EVENT_ALL_ACCESS,
    GENERIC_EXECUTE,
    GENERIC_READ,
    GENERIC_WRITE,
    INFINITE,
    MAXIMUM_WAIT_OBJECTS,
    READ_CONTROL,
    SEMAPHORE_ALL_ACCESS,
    WAIT_ABANDONED,
    WAIT_ABANDONED_0,
    WAIT_FAILED,
    WAIT_OBJECT_0,
    WAIT_TIMEOUT,
    CloseHandle,
    GetLastError,
    SetLastError,
)


def test_temporary_objects() -> None:
    """A named object goes away with its last handle: opening the name afterwards fails."""
    SetLastError(0xDEADBEEF)
    handle = win32.CreateMutexW(None, False, unique("WineTestMutex2"))
    assert handle, GetLastError()
    assert CloseHandle(handle)
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenMutexW(READ_CONTROL, False, unique("WineTestMutex2")), ERROR_FILE_NOT_FOUND)

    SetLastError(0xDEADBEEF)
    handle = win32.CreateSemaphoreW(None, 0, 1, unique("WineTestSemaphore2"))
    assert handle, GetLastError()
    assert CloseHandle(handle)
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenSemaphoreW(READ_CONTROL, False, unique("WineTestSemaphore2")), ERROR_FILE_NOT_FOUND)

    SetLastError(0xDEADBEEF)
    handle = win32.CreateEventW(None, False, False, unique("WineTestEvent2"))
    assert handle, GetLastError()
    assert CloseHandle(handle)
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenEventW(READ_CONTROL, False, unique("WineTestEvent2")), ERROR_FILE_NOT_FOUND)


def test_mutex_access_rights_recursion_and_names() -> None:
    name = unique("WineTestMutex")
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenMutexW(0, False, name), ERROR_FILE_NOT_FOUND)

    SetLastError(0xDEADBEEF)
    created = win32.CreateMutexW(None, False, name)
    assert created, GetLastError()

    # Access 0 grants nothing: refused, but only once the name exists.
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenMutexW(0, False, name), ERROR_ACCESS_DENIED)

    SetLastError(0xDEADBEEF)
    opened = win32.OpenMutexW(GENERIC_EXECUTE, False, name)  # maps to SYNCHRONIZE
    assert opened, GetLastError()
    assert win32.WaitForSingleObject(opened, INFINITE) == WAIT_OBJECT_0
    assert CloseHandle(opened)

    for _ in range(31):
        assert win32.WaitForSingleObject(created, INFINITE) == WAIT_OBJECT_0  # recursive: 32 levels now

    SetLastError(0xDEADBEEF)
    opened = win32.OpenMutexW(GENERIC_READ | GENERIC_WRITE, False, name)  # no SYNCHRONIZE
    assert opened, GetLastError()
    assert win32.WaitForSingleObject(opened, INFINITE) == WAIT_FAILED
    assert GetLastError() == ERROR_ACCESS_DENIED
    assert CloseHandle(opened)

    # Each access bit alone: the ones a mutex has open it (and ReleaseMutex needs none of
    # them); the others are refused.  Every round releases one of the 32 levels.
    failed = 0
    for i in range(32):
        SetLastError(0xDEADBEEF)
        opened = win32.OpenMutexW(1 << i, False, name)
        if opened:
            SetLastError(0xDEADBEEF)
            assert win32.ReleaseMutex(opened), (GetLastError(), hex(1 << i))
            assert CloseHandle(opened)
        else:
            expected = ERROR_PRIVILEGE_NOT_HELD if 1 << i == ACCESS_SYSTEM_SECURITY else ERROR_ACCESS_DENIED
            assert GetLastError() == expected, hex(1 << i)
            assert win32.ReleaseMutex(created)
            failed |= 1 << i
    assert failed == 0x0DE0FFFE, hex(failed)  # Wine marks this todo_wine; Windows does it

    SetLastError(0xDEADBEEF)
    assert fails(win32.ReleaseMutex(created), ERROR_NOT_OWNER)

    # Names are case sensitive.
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenMutexW(READ_CONTROL, False, unique("WINETESTMUTEX")), ERROR_FILE_NOT_FOUND)
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenMutexW(READ_CONTROL, False, unique("winetestmutex")), ERROR_FILE_NOT_FOUND)
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenMutexW(READ_CONTROL, False, None), ERROR_INVALID_PARAMETER)

    SetLastError(0xDEADBEEF)
    again = win32.CreateMutexW(None, False, name)
    assert again and GetLastError() == ERROR_ALREADY_EXISTS
    assert CloseHandle(again)

    SetLastError(0xDEADBEEF)
    other = win32.CreateMutexW(None, False, unique("WINETESTMUTEX"))
    assert other and GetLastError() == 0
    assert CloseHandle(other)

    assert CloseHandle(created)


def test_mutex_abandoned_while_a_thread_waits_on_a_closed_handle() -> None:
    """test_mutex's threads: an owner holds the mutex, a second thread waits for it, the
    handle is closed under the waiter (its wait goes on), then the owner dies holding the
    mutex: the waiter acquires it with WAIT_ABANDONED."""
    start_event = win32.CreateEventW(None, False, False, None)
    stop_event = win32.CreateEventW(None, False, False, None)
    owner_dies = win32.CreateEventW(None, False, False, None)  # stands in for TerminateThread
    mutex = win32.CreateMutexW(None, False, None)
    results: dict[str, int] = {}

    def mutex_thread(role: str) -> None:
        results[role] = win32.WaitForSingleObject(mutex, INFINITE)
        win32.SetEvent(start_event)
        results[role + " stop"] = win32.WaitForSingleObject(owner_dies if role == "owner" else stop_event, INFINITE)

    owner = threading.Thread(target=mutex_thread, args=("owner",))
    owner.start()
    assert win32.WaitForSingleObject(start_event, SOON_MS) == WAIT_OBJECT_0

    waiter = threading.Thread(target=mutex_thread, args=("waiter",))
    waiter.start()
    assert win32.WaitForSingleObject(start_event, 100) == WAIT_TIMEOUT

    assert CloseHandle(mutex)
    assert win32.WaitForSingleObject(start_event, 100) == WAIT_TIMEOUT

    assert win32.SetEvent(owner_dies)
    owner.join(SOON_MS / 1000)
    assert not owner.is_alive()
    assert win32.WaitForSingleObject(start_event, SOON_MS) == WAIT_OBJECT_0

    assert win32.SetEvent(stop_event)
    waiter.join(SOON_MS / 1000)
    assert not waiter.is_alive()
    assert results == {"owner": WAIT_OBJECT_0, "owner stop": WAIT_OBJECT_0, "waiter": WAIT_ABANDONED,
                       "waiter stop": WAIT_OBJECT_0}
    for handle in (start_event, stop_event, owner_dies):
        assert CloseHandle(handle)


def test_event_names() -> None:
    """test_event without its security descriptors (only NULL attributes exist here)."""
    name = unique("sync.c: Test Event")
    handle = win32.CreateEventW(None, False, False, name)
    assert handle, GetLastError()
    assert CloseHandle(handle)

    SetLastError(0xDEADBEEF)
    handle = win32.CreateEventW(None, False, False, name)
    assert handle and GetLastError() == 0

    SetLastError(0xDEADBEEF)
    handle2 = win32.CreateEventW(None, False, False, name)
    assert handle2 and GetLastError() == ERROR_ALREADY_EXISTS
    assert CloseHandle(handle2)

    SetLastError(0xDEADBEEF)
    handle2 = win32.CreateEventW(None, False, False, unique("sync.c: TEST EVENT"))
    assert handle2 and GetLastError() == 0
    assert CloseHandle(handle2)

    SetLastError(0xDEADBEEF)
    handle2 = win32.OpenEventW(EVENT_ALL_ACCESS, False, name)
    assert handle2, GetLastError()
    assert CloseHandle(handle2)

    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenEventW(EVENT_ALL_ACCESS, False, unique("sync.c: TEST EVENT")), ERROR_FILE_NOT_FOUND)
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenEventW(EVENT_ALL_ACCESS, False, None), ERROR_INVALID_PARAMETER)

    assert CloseHandle(handle)


def test_semaphore_names() -> None:
    name = unique("sync.c: Test Semaphore")
    SetLastError(0xDEADBEEF)
    handle = win32.CreateSemaphoreW(None, 0, 1, name)
    assert handle and GetLastError() == 0

    SetLastError(0xDEADBEEF)
    handle2 = win32.CreateSemaphoreW(None, 0, 1, name)
    assert handle2 and GetLastError() == ERROR_ALREADY_EXISTS
    assert CloseHandle(handle2)

    SetLastError(0xDEADBEEF)
    handle2 = win32.CreateSemaphoreW(None, 0, 1, unique("sync.c: TEST SEMAPHORE"))
    assert handle2 and GetLastError() == 0
    assert CloseHandle(handle2)

    SetLastError(0xDEADBEEF)
    handle2 = win32.OpenSemaphoreW(SEMAPHORE_ALL_ACCESS, False, name)
    assert handle2, GetLastError()
    assert CloseHandle(handle2)

    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenSemaphoreW(SEMAPHORE_ALL_ACCESS, False, unique("sync.c: TEST SEMAPHORE")),
                 ERROR_FILE_NOT_FOUND)
    SetLastError(0xDEADBEEF)
    assert fails(win32.OpenSemaphoreW(SEMAPHORE_ALL_ACCESS, False, None), ERROR_INVALID_PARAMETER)

    assert CloseHandle(handle)


def test_wait_for_single_object_handle_tag_bits_and_last_error() -> None:
    signaled = win32.CreateEventW(None, True, True, None)
    nonsignaled = win32.CreateEventW(None, True, False, None)
    invalid = 0xDEADBEE0

    # The low two bits of a handle are ignored, for invalid handles and valid ones alike.
    for bits in range(4):
        SetLastError(0xDEADBEEF)
        assert win32.WaitForSingleObject(invalid | bits, 0) == WAIT_FAILED
        assert GetLastError() == ERROR_INVALID_HANDLE

    # A wait that succeeds or times out leaves the last error alone.
    for bits in range(4):
        SetLastError(0xDEADBEEF)
        assert win32.WaitForSingleObject(nonsignaled | bits, 0) == WAIT_TIMEOUT
        assert GetLastError() == 0xDEADBEEF

    for bits in range(4):
        SetLastError(0xDEADBEEF)
        assert win32.WaitForSingleObject(signaled | bits, 0) == WAIT_OBJECT_0
        assert GetLastError() == 0xDEADBEEF

    assert CloseHandle(signaled)
    assert CloseHandle(nonsignaled)


def test_wait_for_multiple_objects_lowest_index_first() -> None:
    # Handle 0 is a manual-reset event, the other 63 auto-reset; all signaled.
    maxevents = [win32.CreateEventW(None, i == 0, True, None) for i in range(MAXIMUM_WAIT_OBJECTS)]
    assert all(maxevents)

    # A manual-reset event stays signaled; an auto-reset event is reset by the wait.
    assert win32.WaitForMultipleObjects(MAXIMUM_WAIT_OBJECTS, maxevents, False, 0) == WAIT_OBJECT_0
    assert win32.WaitForMultipleObjects(MAXIMUM_WAIT_OBJECTS, maxevents, False, 0) == WAIT_OBJECT_0
    assert win32.ResetEvent(maxevents[0])
    for i in range(1, MAXIMUM_WAIT_OBJECTS):
        # The lowest index is taken, and the others are left as they were.
        assert win32.WaitForMultipleObjects(MAXIMUM_WAIT_OBJECTS, maxevents, False, 0) == WAIT_OBJECT_0 + i

    for handle in maxevents:
        assert CloseHandle(handle)


def test_mutant_abandoned_by_thread_exit() -> None:
    """ntdll's test_mutant, with NtQueryMutant's answers checked through ReleaseMutex."""
    mutant = win32.CreateMutexW(None, True, unique("test_mutant"))  # owned once already
    assert mutant, GetLastError()

    assert win32.WaitForSingleObject(mutant, 1000) == WAIT_OBJECT_0  # twice now
    assert win32.ReleaseMutex(mutant)
    assert win32.ReleaseMutex(mutant)
    SetLastError(0xDEADBEEF)
    assert fails(win32.ReleaseMutex(mutant), ERROR_NOT_OWNER)  # free: not owned by the caller

    # A thread takes it and ends without releasing it: abandoned.
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(win32.WaitForSingleObject(mutant, 1000)))
    thread.start()
    thread.join(SOON_MS / 1000)
    assert results == [WAIT_OBJECT_0]

    assert win32.WaitForSingleObject(mutant, SOON_MS) == WAIT_ABANDONED_0
    # Now owned by the caller, once, and no longer abandoned.
    assert win32.ReleaseMutex(mutant)
    assert fails(win32.ReleaseMutex(mutant), ERROR_NOT_OWNER)
    assert win32.WaitForSingleObject(mutant, 0) == WAIT_OBJECT_0
    assert win32.ReleaseMutex(mutant)
    assert CloseHandle(mutant)


def test_semaphore_counts() -> None:
    """ntdll's test_semaphore through CreateSemaphoreW and ReleaseSemaphore."""
    name = unique("test_semaphore")
    SetLastError(0xDEADBEEF)
    assert fails(win32.CreateSemaphoreW(None, 2, 1, name), ERROR_INVALID_PARAMETER)
    semaphore = win32.CreateSemaphoreW(None, 1, 2, name)
    assert semaphore, GetLastError()

    assert win32.WaitForSingleObject(semaphore, 1000) == WAIT_OBJECT_0  # count 0 of 2

    prev = ctypes.c_long(0xDEADBEEF)
    assert fails(win32.ReleaseSemaphore(semaphore, 3, ctypes.byref(prev)), ERROR_TOO_MANY_POSTS)
    assert prev.value == 0xDEADBEEF  # untouched on failure

    prev = ctypes.c_long(0xDEADBEEF)
    assert win32.ReleaseSemaphore(semaphore, 1, ctypes.byref(prev))
    assert prev.value == 0

    prev = ctypes.c_long(0xDEADBEEF)
    assert win32.ReleaseSemaphore(semaphore, 1, ctypes.byref(prev))
    assert prev.value == 1

    prev = ctypes.c_long(0xDEADBEEF)
    assert fails(win32.ReleaseSemaphore(semaphore, 1, ctypes.byref(prev)), ERROR_TOO_MANY_POSTS)
    assert prev.value == 0xDEADBEEF

    # The count is 2 of 2 (NtQuerySemaphore's answer, read by waiting).
    assert win32.WaitForSingleObject(semaphore, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(semaphore, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(semaphore, 0) == WAIT_TIMEOUT
    assert CloseHandle(semaphore)
