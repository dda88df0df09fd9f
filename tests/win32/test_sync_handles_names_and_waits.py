"""What Wine's tests do not cover: the handle table (values, closing, reuse, threads, fork),
the forms ctypes arguments take, access rights on events and semaphores, object names
(prefixes, limits), wait-all (atomicity, duplicates, abandonment), argument errors, per-thread
last errors, and a named event shared with another process."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
import time
from ctypes import wintypes

import pytest
from win32_calls import SOON_MS, fails, unique

from ntshim import win32
from ntshim.win32 import (
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
    MUTEX_ALL_ACCESS,
    SEMAPHORE_ALL_ACCESS,
    SEMAPHORE_MODIFY_STATE,
    SYNCHRONIZE,
    WAIT_ABANDONED_0,
    WAIT_FAILED,
    WAIT_OBJECT_0,
    WAIT_TIMEOUT,
    CloseHandle,
    GetLastError,
    SetLastError,
)
from ntshim.win32 import sync as win32_sync
from ntshim.win32.sync import open_handle_count


def close_all(*handles: int) -> None:
    for handle in handles:
        assert CloseHandle(handle), GetLastError()


def own_and_exit(mutex: int) -> None:
    """Take ``mutex`` in a thread that ends holding it (the mutex is then abandoned)."""
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(win32.WaitForSingleObject(mutex, 0)))
    thread.start()
    thread.join(SOON_MS / 1000)
    assert results == [WAIT_OBJECT_0]


# ---- handles -------------------------------------------------------------------------------


def test_handle_values_are_small_multiples_of_four() -> None:
    handles = [win32.CreateEventW(None, False, False, None) for _ in range(20)]
    assert len(set(handles)) == 20
    assert all(h > 0 and h % 4 == 0 for h in handles)
    assert all(h < 1 << 32 for h in handles)
    close_all(*handles)


def test_closed_handle_is_invalid_everywhere() -> None:
    event = win32.CreateEventW(None, True, False, None)
    mutex = win32.CreateMutexW(None, False, None)
    semaphore = win32.CreateSemaphoreW(None, 0, 1, None)
    close_all(event, mutex, semaphore)
    for call in (
        lambda: win32.SetEvent(event),
        lambda: win32.ResetEvent(event),
        lambda: win32.PulseEvent(event),
        lambda: win32.ReleaseMutex(mutex),
        lambda: win32.ReleaseSemaphore(semaphore, 1, None),
        lambda: win32.CloseHandle(event),
    ):
        SetLastError(0)
        assert fails(call(), ERROR_INVALID_HANDLE)
    SetLastError(0)
    assert win32.WaitForSingleObject(mutex, 0) == WAIT_FAILED and GetLastError() == ERROR_INVALID_HANDLE
    SetLastError(0)
    assert win32.WaitForMultipleObjects(1, [semaphore], True, 0) == WAIT_FAILED
    assert GetLastError() == ERROR_INVALID_HANDLE


@pytest.mark.parametrize("value", [0, None, 4 << 40, -4, 0xFFFFFFFFFFFFFFFF])
def test_null_and_unknown_handles(value: object) -> None:
    SetLastError(0)
    assert fails(win32.SetEvent(value), ERROR_INVALID_HANDLE)
    SetLastError(0)
    assert win32.WaitForSingleObject(value, 0) == WAIT_FAILED and GetLastError() == ERROR_INVALID_HANDLE


def test_functions_refuse_handles_of_another_kind() -> None:
    event = win32.CreateEventW(None, True, True, None)
    mutex = win32.CreateMutexW(None, False, None)
    semaphore = win32.CreateSemaphoreW(None, 1, 2, None)
    for call in (
        lambda: win32.SetEvent(mutex),
        lambda: win32.ResetEvent(semaphore),
        lambda: win32.PulseEvent(mutex),
        lambda: win32.ReleaseMutex(event),
        lambda: win32.ReleaseSemaphore(event, 1, None),
        lambda: win32.ReleaseSemaphore(mutex, 1, None),
    ):
        SetLastError(0)
        assert fails(call(), ERROR_INVALID_HANDLE)
    # All three kinds can be waited on.
    assert win32.WaitForMultipleObjects(3, [event, mutex, semaphore], True, 0) == WAIT_OBJECT_0
    assert win32.ReleaseMutex(mutex)
    close_all(event, mutex, semaphore)


def test_handle_forms() -> None:
    event = win32.CreateEventW(None, True, True, None)
    for form in (event, ctypes.c_void_p(event), wintypes.HANDLE(event), ctypes.c_size_t(event), event | 3):
        assert win32.WaitForSingleObject(form, 0) == WAIT_OBJECT_0
    with pytest.raises(TypeError):
        win32.WaitForSingleObject("4", 0)
    with pytest.raises(TypeError):
        win32.WaitForSingleObject(4.0, 0)
    with pytest.raises(TypeError):
        win32.SetEvent(True)
    assert CloseHandle(ctypes.c_void_p(event))


def test_handle_array_forms() -> None:
    events = [win32.CreateEventW(None, True, False, None) for _ in range(3)]
    assert win32.SetEvent(events[2])
    array = (wintypes.HANDLE * 3)(*events)
    sized = (ctypes.c_uint64 * 3)(*events)
    for form in (
        events,
        tuple(events),
        array,
        sized,
        ctypes.cast(array, ctypes.POINTER(wintypes.HANDLE)),
        ctypes.byref(array),
        ctypes.cast(sized, ctypes.POINTER(ctypes.c_uint64)),
    ):
        assert win32.WaitForMultipleObjects(3, form, False, 0) == WAIT_OBJECT_0 + 2
    # Only the first ``count`` handles are looked at.
    assert win32.WaitForMultipleObjects(2, events, False, 0) == WAIT_TIMEOUT
    assert win32.WaitForMultipleObjects(1, ctypes.byref(wintypes.HANDLE(events[2])), False, 0) == WAIT_OBJECT_0
    with pytest.raises(ValueError):
        win32.WaitForMultipleObjects(3, events[:2], False, 0)
    with pytest.raises(TypeError):
        win32.WaitForMultipleObjects(1, "abc", False, 0)
    with pytest.raises(TypeError):
        win32.WaitForMultipleObjects(1, [object()], False, 0)
    SetLastError(0)
    assert win32.WaitForMultipleObjects(1, None, False, 0) == WAIT_FAILED and GetLastError() == ERROR_NOACCESS
    close_all(*events)


def test_close_handle_frees_the_number_and_the_object() -> None:
    before = open_handle_count()
    name = unique("close-frees")
    first = win32.CreateSemaphoreW(None, 0, 1, name)
    second = win32.OpenSemaphoreW(SYNCHRONIZE, False, name)
    assert open_handle_count() == before + 2
    close_all(first)
    # The other handle keeps the object and its name.
    third = win32.OpenSemaphoreW(SYNCHRONIZE, False, name)
    assert third
    close_all(second, third)
    assert open_handle_count() == before
    assert fails(win32.OpenSemaphoreW(SYNCHRONIZE, False, name), ERROR_FILE_NOT_FOUND)


def test_closing_a_handle_under_a_waiter_keeps_the_wait() -> None:
    """A wait holds the object, not the handle: closing the handle under a blocked waiter
    neither fails nor ends the wait, and the object goes once the wait is over."""
    name = unique("close-under-waiter")
    event = win32.CreateEventW(None, False, False, name)
    other = win32.OpenEventW(EVENT_MODIFY_STATE, False, name)
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(win32.WaitForSingleObject(event, SOON_MS)))
    waiter.start()
    entry = win32_sync._table._entries[event]
    deadline = time.monotonic() + SOON_MS / 1000
    while entry.users == 0 and time.monotonic() < deadline:  # until the waiter is in its wait
        time.sleep(0.001)
    assert entry.users == 1
    assert CloseHandle(event)
    assert win32.WaitForSingleObject(event, 0) == WAIT_FAILED  # the number is gone at once
    assert win32.SetEvent(other)
    waiter.join(SOON_MS / 1000)
    assert results == [WAIT_OBJECT_0]
    close_all(other)
    assert fails(win32.OpenEventW(SYNCHRONIZE, False, name), ERROR_FILE_NOT_FOUND)  # the object went


def test_handles_from_many_threads() -> None:
    """Creating, using and closing handles from several threads at once: every live handle
    is distinct and nothing is lost."""
    before = open_handle_count()
    errors: list[str] = []

    def worker() -> None:
        mine: set[int] = set()
        for _ in range(200):
            handle = win32.CreateEventW(None, True, False, None)
            if not handle or handle in mine:
                errors.append(f"create gave {handle}")
            mine.add(handle)
            if not win32.SetEvent(handle) or win32.WaitForSingleObject(handle, 0) != WAIT_OBJECT_0:
                errors.append(f"handle {handle} is not my event")
            if not CloseHandle(handle):
                errors.append(f"close {handle}: {GetLastError()}")
            mine.discard(handle)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert open_handle_count() == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_uses_inherited_handles() -> None:
    event = win32.CreateEventW(None, True, False, None)
    done = win32.CreateEventW(None, True, False, None)
    pid = os.fork()
    if pid == 0:  # the child: signal through the handles it inherited, then leave at once
        try:
            ok = win32.WaitForSingleObject(event, SOON_MS) == WAIT_OBJECT_0 and win32.SetEvent(done)
        finally:
            os._exit(0 if ok else 1)
    assert win32.SetEvent(event)
    assert win32.WaitForSingleObject(done, SOON_MS) == WAIT_OBJECT_0
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    close_all(event, done)


# ---- creation, names, last error -----------------------------------------------------------


def test_create_sets_the_last_error_on_success() -> None:
    for create in (
        lambda name: win32.CreateEventW(None, True, False, name),
        lambda name: win32.CreateMutexW(None, False, name),
        lambda name: win32.CreateSemaphoreW(None, 0, 1, name),
    ):
        SetLastError(0xDEADBEEF)
        unnamed = create(None)
        assert unnamed and GetLastError() == 0
        name = unique(f"create-last-error-{unnamed}")
        SetLastError(0xDEADBEEF)
        first = create(name)
        assert first and GetLastError() == 0
        SetLastError(0xDEADBEEF)
        second = create(name)
        assert second and second != first and GetLastError() == ERROR_ALREADY_EXISTS
        close_all(unnamed, first, second)


def test_a_name_belongs_to_one_kind() -> None:
    name = unique("one-kind")
    mutex = win32.CreateMutexW(None, False, name)
    SetLastError(0)
    assert fails(win32.CreateEventW(None, False, False, name), ERROR_INVALID_HANDLE)
    SetLastError(0)
    assert fails(win32.CreateSemaphoreW(None, 0, 1, name), ERROR_INVALID_HANDLE)
    SetLastError(0)
    assert fails(win32.OpenEventW(EVENT_ALL_ACCESS, False, name), ERROR_INVALID_HANDLE)
    SetLastError(0)
    assert fails(win32.OpenSemaphoreW(SEMAPHORE_ALL_ACCESS, False, name), ERROR_INVALID_HANDLE)
    opened = win32.OpenMutexW(MUTEX_ALL_ACCESS, False, name)
    assert opened
    close_all(mutex, opened)


def test_create_of_an_existing_name_ignores_the_parameters() -> None:
    name = unique("existing-params")
    mutex = win32.CreateMutexW(None, False, name)
    again = win32.CreateMutexW(None, True, name)  # initial_owner ignored: not owned
    assert again and GetLastError() == ERROR_ALREADY_EXISTS
    assert fails(win32.ReleaseMutex(again), ERROR_NOT_OWNER)

    sem_name = unique("existing-sem")
    semaphore = win32.CreateSemaphoreW(None, 0, 1, sem_name)
    again_sem = win32.CreateSemaphoreW(None, 5, 10, sem_name)
    assert again_sem and GetLastError() == ERROR_ALREADY_EXISTS
    assert win32.WaitForSingleObject(again_sem, 0) == WAIT_TIMEOUT  # still 0 of 1
    assert fails(win32.ReleaseSemaphore(again_sem, 2, None), ERROR_TOO_MANY_POSTS)
    close_all(mutex, again, semaphore, again_sem)


def test_name_prefixes() -> None:
    base = unique("prefixed")
    plain = win32.CreateEventW(None, True, False, base)
    local = win32.CreateEventW(None, True, False, "Local\\" + base)
    assert local and GetLastError() == ERROR_ALREADY_EXISTS  # the same namespace
    global_ = win32.CreateEventW(None, True, False, "Global\\" + base)
    assert global_ and GetLastError() == 0  # another one
    assert win32.SetEvent(local)
    assert win32.WaitForSingleObject(plain, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(global_, 0) == WAIT_TIMEOUT
    opened = win32.OpenEventW(SYNCHRONIZE, False, "Global\\" + base)
    assert opened
    close_all(plain, local, global_, opened)

    for name in ("dir\\" + base, "Local\\a\\b", "Global\\a\\b", "local\\" + base, "\\" + base):
        SetLastError(0)
        assert fails(win32.CreateEventW(None, True, False, name), ERROR_PATH_NOT_FOUND), name
        SetLastError(0)
        assert fails(win32.OpenEventW(SYNCHRONIZE, False, name), ERROR_PATH_NOT_FOUND), name
    for name in ("Local\\", "Global\\"):
        SetLastError(0)
        assert fails(win32.CreateMutexW(None, False, name), ERROR_INVALID_HANDLE)


def test_empty_names_and_long_names() -> None:
    first = win32.CreateEventW(None, True, False, "")
    second = win32.CreateEventW(None, True, False, "")
    assert first and second and GetLastError() == 0  # unnamed: two objects
    assert win32.SetEvent(first)
    assert win32.WaitForSingleObject(second, 0) == WAIT_TIMEOUT
    SetLastError(0)
    assert fails(win32.OpenEventW(SYNCHRONIZE, False, ""), ERROR_INVALID_HANDLE)
    close_all(first, second)

    longest = unique("x")
    longest += "x" * (255 - len(longest.encode()))
    handle = win32.CreateMutexW(None, False, longest)
    assert handle, GetLastError()
    SetLastError(0)
    assert fails(win32.CreateMutexW(None, False, longest + "x"), ERROR_FILENAME_EXCED_RANGE)
    SetLastError(0)
    assert fails(win32.OpenMutexW(SYNCHRONIZE, False, longest + "x"), ERROR_FILENAME_EXCED_RANGE)
    close_all(handle)

    SetLastError(0)
    assert fails(win32.CreateMutexW(None, False, unique("lone-\ud800-surrogate")), ERROR_INVALID_NAME)


def test_name_forms() -> None:
    name = unique("wide")
    event = win32.CreateEventW(None, True, False, ctypes.c_wchar_p(name))
    assert event
    for form in (name, ctypes.create_unicode_buffer(name), name + "\0ignored"):
        opened = win32.OpenEventW(SYNCHRONIZE, False, form)
        assert opened, form
        close_all(opened)
    unicode_name = unique("événement-事件")
    other = win32.CreateEventW(None, True, False, unicode_name)
    assert other and GetLastError() == 0
    reopened = win32.OpenEventW(SYNCHRONIZE, False, unicode_name)
    assert reopened
    with pytest.raises(TypeError):
        win32.CreateEventW(None, True, False, b"bytes")
    with pytest.raises(TypeError):
        win32.OpenEventW(SYNCHRONIZE, False, 5)
    close_all(event, other, reopened)


def test_security_attributes_only_null() -> None:
    handle = win32.CreateEventW(0, True, False, None)
    assert handle
    close_all(handle)
    attributes = (ctypes.c_byte * 24)()
    SetLastError(0)
    assert fails(win32.CreateEventW(ctypes.byref(attributes), True, False, None), ERROR_NOT_SUPPORTED)
    SetLastError(0)
    assert fails(win32.CreateMutexW(ctypes.byref(attributes), False, None), ERROR_NOT_SUPPORTED)
    SetLastError(0)
    assert fails(win32.CreateSemaphoreW(ctypes.byref(attributes), 0, 1, None), ERROR_NOT_SUPPORTED)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "arena full"), OSError(errno.EMFILE, "no fd"), MemoryError()])
def test_backend_out_of_room(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    before = open_handle_count()
    monkeypatch.setattr(win32_sync, "Event", refuse)
    SetLastError(0)
    assert fails(win32.CreateEventW(None, True, False, None), ERROR_NOT_ENOUGH_MEMORY)
    assert open_handle_count() == before


BACKEND_FAILURES = [
    (OSError(errno.EUCLEAN, "the sync arena is damaged"), ERROR_FILE_CORRUPT),
    (OSError(errno.EBUSY, "the arena is in use by another layout"), ERROR_BUSY),
    (PermissionError(errno.EACCES, "the per-user directory is refused"), ERROR_ACCESS_DENIED),
    (ConnectionError("the sync server closed the connection"), ERROR_INVALID_HANDLE),
    (OSError(errno.EIO, "anything else"), ERROR_GEN_FAILURE),
]


@pytest.mark.parametrize(("error", "code"), BACKEND_FAILURES, ids=lambda x: getattr(x, "strerror", None) or str(x))
def test_backend_failures_are_win32_failures(monkeypatch: pytest.MonkeyPatch, error: OSError, code: int) -> None:
    """A Win32 function fails with a last error whatever the backend raised (a damaged arena,
    a refused directory, a vanished server): it never raises it (the API fuzz test found
    OSError(EUCLEAN) escaping CreateEventW and WaitForSingleObject)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    event = win32.CreateEventW(None, True, True, None)
    try:
        before = open_handle_count()
        with monkeypatch.context() as patch:
            patch.setattr(win32_sync, "Mutex", refuse)
            assert fails(win32.CreateMutexW(None, False, None), code)
            assert open_handle_count() == before
            patch.setattr(win32_sync.Event, "set", refuse)
            assert fails(win32.SetEvent(event), code)
            patch.setattr(win32_sync, "wait_any", refuse)
            assert win32.WaitForSingleObject(event, 0) == WAIT_FAILED
            assert win32.GetLastError() == code
        assert win32.WaitForSingleObject(event, 0) == WAIT_OBJECT_0  # the handle is fine afterwards
    finally:
        win32.CloseHandle(event)


def test_bad_python_arguments_raise() -> None:
    before = open_handle_count()
    with pytest.raises(TypeError):
        win32.CreateEventW(None, "yes", False, None)
    with pytest.raises(TypeError):
        win32.CreateMutexW(None, None, None)
    with pytest.raises(TypeError):
        win32.CreateSemaphoreW(None, 1.0, 2, None)
    with pytest.raises(TypeError):
        win32.OpenMutexW("all", False, "x")
    with pytest.raises(TypeError):
        win32.WaitForSingleObject(4, 1.5)
    with pytest.raises(TypeError):
        win32.WaitForMultipleObjects(1.0, [4], False, 0)
    with pytest.raises(TypeError):
        win32.ReleaseSemaphore(4, 1, 7)
    assert open_handle_count() == before


def test_last_error_is_per_thread() -> None:
    SetLastError(1234)
    seen: list[int] = []

    def other() -> None:
        seen.append(GetLastError())
        win32.SetEvent(0)
        seen.append(GetLastError())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [0, ERROR_INVALID_HANDLE]
    assert GetLastError() == 1234


# ---- access rights -------------------------------------------------------------------------


def test_event_access_rights() -> None:
    name = unique("event-access")
    event = win32.CreateEventW(None, True, False, name)
    only_wait = win32.OpenEventW(SYNCHRONIZE, False, name)
    only_modify = win32.OpenEventW(EVENT_MODIFY_STATE, False, name)
    query = win32.OpenEventW(EVENT_QUERY_STATE, False, name)
    for call in (lambda: win32.SetEvent(only_wait), lambda: win32.ResetEvent(query), lambda: win32.PulseEvent(query)):
        SetLastError(0)
        assert fails(call(), ERROR_ACCESS_DENIED)
    assert win32.SetEvent(only_modify)
    assert win32.WaitForSingleObject(only_wait, 0) == WAIT_OBJECT_0
    SetLastError(0)
    assert win32.WaitForSingleObject(only_modify, 0) == WAIT_FAILED and GetLastError() == ERROR_ACCESS_DENIED
    # One handle without SYNCHRONIZE fails the whole wait.
    SetLastError(0)
    assert win32.WaitForMultipleObjects(2, [only_wait, query], False, 0) == WAIT_FAILED
    assert GetLastError() == ERROR_ACCESS_DENIED

    generic_write = win32.OpenEventW(GENERIC_WRITE, False, name)
    assert win32.ResetEvent(generic_write)
    assert win32.WaitForSingleObject(generic_write, 0) == WAIT_FAILED
    generic_read = win32.OpenEventW(GENERIC_READ, False, name)
    assert fails(win32.SetEvent(generic_read), ERROR_ACCESS_DENIED)
    everything = [win32.OpenEventW(access, False, name) for access in (GENERIC_ALL, MAXIMUM_ALLOWED, EVENT_ALL_ACCESS)]
    for handle in everything:
        assert win32.SetEvent(handle) and win32.WaitForSingleObject(handle, 0) == WAIT_OBJECT_0
    # Bits an event does not have are refused.
    SetLastError(0)
    assert fails(win32.OpenEventW(EVENT_ALL_ACCESS | 0x4, False, name), ERROR_ACCESS_DENIED)
    close_all(event, only_wait, only_modify, query, generic_write, generic_read, *everything)


def test_semaphore_access_rights() -> None:
    name = unique("semaphore-access")
    semaphore = win32.CreateSemaphoreW(None, 0, 5, name)
    only_wait = win32.OpenSemaphoreW(GENERIC_EXECUTE, False, name)
    only_release = win32.OpenSemaphoreW(SEMAPHORE_MODIFY_STATE, False, name)
    SetLastError(0)
    assert fails(win32.ReleaseSemaphore(only_wait, 1, None), ERROR_ACCESS_DENIED)
    assert win32.ReleaseSemaphore(only_release, 1, None)
    assert win32.WaitForSingleObject(only_wait, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(only_release, 0) == WAIT_FAILED
    assert GetLastError() == ERROR_ACCESS_DENIED
    SetLastError(0)
    assert fails(win32.OpenSemaphoreW(0x4, False, name), ERROR_ACCESS_DENIED)
    close_all(semaphore, only_wait, only_release)


# ---- events --------------------------------------------------------------------------------


def test_auto_and_manual_events() -> None:
    auto = win32.CreateEventW(None, False, True, None)
    manual = win32.CreateEventW(None, True, True, None)
    assert win32.WaitForSingleObject(auto, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(auto, 0) == WAIT_TIMEOUT  # reset by the wait
    assert win32.WaitForSingleObject(manual, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(manual, 0) == WAIT_OBJECT_0  # stays signaled
    assert win32.ResetEvent(manual) and win32.ResetEvent(manual)
    assert win32.WaitForSingleObject(manual, 0) == WAIT_TIMEOUT
    assert win32.SetEvent(auto) and win32.SetEvent(auto)  # setting twice still gives one wait
    assert win32.WaitForSingleObject(auto, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(auto, 0) == WAIT_TIMEOUT
    close_all(auto, manual)


def test_pulse_without_waiters_leaves_the_event_unsignaled() -> None:
    for manual in (True, False):
        event = win32.CreateEventW(None, manual, True, None)
        assert win32.PulseEvent(event)
        assert win32.WaitForSingleObject(event, 0) == WAIT_TIMEOUT
        assert win32.PulseEvent(event)
        assert win32.WaitForSingleObject(event, 0) == WAIT_TIMEOUT
        close_all(event)


def test_pulse_wakes_every_waiter_of_a_manual_event() -> None:
    event = win32.CreateEventW(None, True, False, None)
    woken = win32.CreateSemaphoreW(None, 0, 10, None)
    results: list[int] = []

    def waiter() -> None:
        results.append(win32.WaitForSingleObject(event, SOON_MS))
        win32.ReleaseSemaphore(woken, 1, None)

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for thread in threads:
        thread.start()
    # A pulse wakes only the threads already waiting: pulse until all four have been woken.
    count = 0
    deadline = time.monotonic() + SOON_MS / 1000
    while count < 4 and time.monotonic() < deadline:
        assert win32.PulseEvent(event)
        assert win32.WaitForSingleObject(event, 0) == WAIT_TIMEOUT  # never left signaled
        while win32.WaitForSingleObject(woken, 20) == WAIT_OBJECT_0:
            count += 1
    for thread in threads:
        thread.join()
    assert results == [WAIT_OBJECT_0] * 4
    close_all(event, woken)


def test_set_event_wakes_a_blocked_infinite_wait() -> None:
    event = win32.CreateEventW(None, False, False, None)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(win32.WaitForSingleObject(event, INFINITE)))
    thread.start()
    time.sleep(0.02)
    assert win32.SetEvent(event)
    thread.join(SOON_MS / 1000)
    assert results == [WAIT_OBJECT_0]
    close_all(event)


def test_timeout_does_not_return_early() -> None:
    event = win32.CreateEventW(None, True, False, None)
    start = time.monotonic()
    assert win32.WaitForSingleObject(event, 50) == WAIT_TIMEOUT
    assert time.monotonic() - start >= 0.049
    start = time.monotonic()
    assert win32.WaitForMultipleObjects(1, [event], True, 30) == WAIT_TIMEOUT
    assert time.monotonic() - start >= 0.029
    close_all(event)


# ---- mutexes -------------------------------------------------------------------------------


def test_mutex_recursion_and_ownership() -> None:
    mutex = win32.CreateMutexW(None, True, None)
    assert win32.WaitForSingleObject(mutex, 0) == WAIT_OBJECT_0
    assert win32.WaitForSingleObject(mutex, 0) == WAIT_OBJECT_0  # three levels

    # Another thread can neither take nor release it.
    seen: list[object] = []

    def other() -> None:
        seen.append(win32.WaitForSingleObject(mutex, 0))
        seen.append(win32.ReleaseMutex(mutex))
        seen.append(GetLastError())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [WAIT_TIMEOUT, False, ERROR_NOT_OWNER]

    assert win32.ReleaseMutex(mutex) and win32.ReleaseMutex(mutex) and win32.ReleaseMutex(mutex)
    SetLastError(0)
    assert fails(win32.ReleaseMutex(mutex), ERROR_NOT_OWNER)
    close_all(mutex)


def test_abandoned_mutex_in_wait_any_reports_its_index() -> None:
    event = win32.CreateEventW(None, True, False, None)
    mutex = win32.CreateMutexW(None, False, None)
    own_and_exit(mutex)
    assert win32.WaitForMultipleObjects(2, [event, mutex], False, SOON_MS) == WAIT_ABANDONED_0 + 1
    assert win32.WaitForMultipleObjects(2, [event, mutex], False, 0) == WAIT_OBJECT_0 + 1  # no longer abandoned
    assert win32.ReleaseMutex(mutex) and win32.ReleaseMutex(mutex)
    assert fails(win32.ReleaseMutex(mutex), ERROR_NOT_OWNER)
    close_all(event, mutex)


def test_abandoned_mutex_in_wait_all_reports_abandoned_0() -> None:
    """Wait-all reports WAIT_ABANDONED_0 whichever object was abandoned, as the wineserver
    does (the Windows documentation gives only the range)."""
    semaphore = win32.CreateSemaphoreW(None, 1, 1, None)
    event = win32.CreateEventW(None, False, True, None)
    mutex = win32.CreateMutexW(None, False, None)
    own_and_exit(mutex)
    assert win32.WaitForMultipleObjects(3, [semaphore, event, mutex], True, SOON_MS) == WAIT_ABANDONED_0
    # Everything was acquired.
    assert win32.WaitForSingleObject(semaphore, 0) == WAIT_TIMEOUT
    assert win32.WaitForSingleObject(event, 0) == WAIT_TIMEOUT
    assert win32.ReleaseMutex(mutex)
    close_all(semaphore, event, mutex)


# ---- semaphores ----------------------------------------------------------------------------


def test_create_semaphore_parameters() -> None:
    for initial, maximum in ((0, 0), (-1, 1), (2, 1), (0, -5), (0, 0x80000000), (0, 0xFFFFFFFF)):
        SetLastError(0)
        assert fails(win32.CreateSemaphoreW(None, initial, maximum, None), ERROR_INVALID_PARAMETER), (initial, maximum)
    handle = win32.CreateSemaphoreW(None, 0x7FFFFFFF, 0x7FFFFFFF, None)
    assert handle
    assert fails(win32.ReleaseSemaphore(handle, 1, None), ERROR_TOO_MANY_POSTS)
    close_all(handle)


def test_release_semaphore_counts_and_outputs() -> None:
    semaphore = win32.CreateSemaphoreW(None, 0, 10, None)
    for count in (0, -1, -0x80000000):
        SetLastError(0)
        assert fails(win32.ReleaseSemaphore(semaphore, count, None), ERROR_INVALID_PARAMETER)
    previous = ctypes.c_long(-7)
    uint = ctypes.c_uint32(7)
    assert win32.ReleaseSemaphore(semaphore, 2, ctypes.byref(previous)) and previous.value == 0
    assert win32.ReleaseSemaphore(semaphore, 3, ctypes.pointer(previous)) and previous.value == 2
    assert win32.ReleaseSemaphore(semaphore, 1, uint) and uint.value == 5
    assert win32.ReleaseSemaphore(semaphore, 1, None)
    previous.value = 99
    assert fails(win32.ReleaseSemaphore(semaphore, 5, ctypes.byref(previous)), ERROR_TOO_MANY_POSTS)
    assert previous.value == 99
    assert fails(win32.ReleaseSemaphore(semaphore, 4, ctypes.byref(previous)), ERROR_TOO_MANY_POSTS)
    assert win32.ReleaseSemaphore(semaphore, 3, ctypes.byref(previous)) and previous.value == 7
    close_all(semaphore)


def test_semaphore_release_wakes_that_many_waiters() -> None:
    semaphore = win32.CreateSemaphoreW(None, 0, 10, None)
    results: list[int] = []
    lock = threading.Lock()

    def waiter() -> None:
        result = win32.WaitForSingleObject(semaphore, 300)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for thread in threads:
        thread.start()
    assert win32.ReleaseSemaphore(semaphore, 3, None)
    for thread in threads:
        thread.join()
    assert sorted(results) == [WAIT_OBJECT_0] * 3 + [WAIT_TIMEOUT] * 2
    assert win32.WaitForSingleObject(semaphore, 0) == WAIT_TIMEOUT
    close_all(semaphore)


# ---- WaitForMultipleObjects ----------------------------------------------------------------


def test_wait_count_limits() -> None:
    events = [win32.CreateEventW(None, True, True, None) for _ in range(MAXIMUM_WAIT_OBJECTS + 1)]
    for count in (0, MAXIMUM_WAIT_OBJECTS + 1, 0xFFFFFFFF, -1):
        for wait_all in (False, True):
            SetLastError(0)
            assert win32.WaitForMultipleObjects(count, events, wait_all, 0) == WAIT_FAILED
            assert GetLastError() == ERROR_INVALID_PARAMETER
    assert win32.WaitForMultipleObjects(MAXIMUM_WAIT_OBJECTS, events, True, 0) == WAIT_OBJECT_0
    close_all(*events)


def test_wait_all_refuses_the_same_object_twice() -> None:
    name = unique("duplicate")
    event = win32.CreateEventW(None, True, True, name)
    again = win32.OpenEventW(SYNCHRONIZE, False, name)
    other = win32.CreateEventW(None, True, True, None)
    for handles in ([event, event], [event, other, again], [event | 1, event]):
        SetLastError(0)
        assert win32.WaitForMultipleObjects(len(handles), handles, True, 0) == WAIT_FAILED
        assert GetLastError() == ERROR_INVALID_PARAMETER
        # Wait-any takes duplicates.
        assert win32.WaitForMultipleObjects(len(handles), handles, False, 0) == WAIT_OBJECT_0
    close_all(event, again, other)


def test_wait_all_is_all_or_nothing() -> None:
    semaphore = win32.CreateSemaphoreW(None, 1, 1, None)
    auto = win32.CreateEventW(None, False, True, None)
    gate = win32.CreateEventW(None, True, False, None)
    assert win32.WaitForMultipleObjects(3, [semaphore, auto, gate], True, 20) == WAIT_TIMEOUT
    # Nothing was taken.
    assert win32.WaitForMultipleObjects(2, [semaphore, auto], True, 0) == WAIT_OBJECT_0
    assert win32.ReleaseSemaphore(semaphore, 1, None) and win32.SetEvent(auto)

    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(
        win32.WaitForMultipleObjects(3, [semaphore, auto, gate], True, SOON_MS)))
    thread.start()
    time.sleep(0.02)
    assert win32.SetEvent(gate)
    thread.join(SOON_MS / 1000)
    assert results == [WAIT_OBJECT_0]
    assert win32.WaitForSingleObject(semaphore, 0) == WAIT_TIMEOUT
    assert win32.WaitForSingleObject(auto, 0) == WAIT_TIMEOUT
    assert win32.WaitForSingleObject(gate, 0) == WAIT_OBJECT_0  # manual: not consumed
    close_all(semaphore, auto, gate)


def test_wait_all_with_a_mutex_owned_elsewhere_times_out() -> None:
    mutex = win32.CreateMutexW(None, False, None)
    event = win32.CreateEventW(None, True, True, None)
    held = win32.CreateEventW(None, True, False, None)
    finish = win32.CreateEventW(None, True, False, None)

    def holder() -> None:
        win32.WaitForSingleObject(mutex, 0)
        win32.SetEvent(held)
        win32.WaitForSingleObject(finish, SOON_MS)
        win32.ReleaseMutex(mutex)

    thread = threading.Thread(target=holder)
    thread.start()
    assert win32.WaitForSingleObject(held, SOON_MS) == WAIT_OBJECT_0
    assert win32.WaitForMultipleObjects(2, [event, mutex], True, 10) == WAIT_TIMEOUT
    assert win32.SetEvent(finish)
    assert win32.WaitForMultipleObjects(2, [event, mutex], True, SOON_MS) == WAIT_OBJECT_0
    thread.join()
    assert win32.ReleaseMutex(mutex)
    close_all(mutex, event, held, finish)


# ---- another process -----------------------------------------------------------------------


def test_named_event_shared_with_another_process() -> None:
    name = unique("cross-process")
    ping = win32.CreateEventW(None, False, False, name + "-ping")
    pong_name = name + "-pong"
    child = f"""
import sys
from ntshim import win32
ping = win32.OpenEventW(win32.SYNCHRONIZE, False, {name + '-ping'!r})
assert ping, win32.GetLastError()
pong = win32.CreateEventW(None, False, False, {pong_name!r})
assert pong and win32.GetLastError() == win32.ERROR_ALREADY_EXISTS
assert win32.WaitForSingleObject(ping, {SOON_MS}) == win32.WAIT_OBJECT_0
assert win32.SetEvent(pong)
"""
    pong = win32.CreateEventW(None, False, False, pong_name)
    process = subprocess.Popen([sys.executable, "-c", child])
    try:
        assert win32.SetEvent(ping)
        assert win32.WaitForSingleObject(pong, 3 * SOON_MS) == WAIT_OBJECT_0
        assert process.wait(SOON_MS / 1000) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    close_all(ping, pong)
