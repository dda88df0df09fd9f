"""Bad input to every entry point of ntshim.sync: a clear exception (TypeError or
ValueError naming the argument, or the errno-like exception of the semantics), and the
state of every object exactly as before."""

from __future__ import annotations

import itertools
import math
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from required import require_sync_backend

from ntshim.sync import (
    MAX_NAME_BYTES,
    MAX_WAIT_OBJECTS,
    BoundedSemaphore,
    Event,
    Lock,
    Mutex,
    NameKindError,
    RLock,
    Semaphore,
    SyncObject,
    registry,
    wait_all,
    wait_any,
)

U32_MAX = 0xFFFFFFFF
OWNER = 77  # owns the test mutex; every wait below would succeed for it but for the bad argument


@dataclass
class Objects:
    """One object of each kind, each in a state where a wait by OWNER would acquire it."""

    sem: Semaphore
    mutex: Mutex
    manual: Event
    auto: Event

    def all(self) -> list[SyncObject]:
        return [self.sem, self.mutex, self.manual, self.auto]

    def state(self) -> tuple[Any, ...]:
        # The backend's mutex read, because the public one raises for an abandoned mutex.
        return (self.sem.read(), self.mutex._handle.mutex_read(), self.manual.read(), self.auto.read())


def make_objects(backend: str) -> Objects:
    return Objects(
        Semaphore(1, 2, backend=backend),
        Mutex(owner=OWNER, count=1, backend=backend),
        Event(manual=True, signaled=True, backend=backend),
        Event(manual=False, signaled=True, backend=backend),
    )


@pytest.fixture
def objs(sync_backend: str) -> Iterator[Objects]:
    made = make_objects(sync_backend)
    yield made
    for obj in made.all():
        obj.close()


def refused(objs: Objects, exception: type[BaseException], call: Callable[[], object]) -> pytest.ExceptionInfo[Any]:
    """``call`` raises ``exception`` and every object keeps its state."""
    before = objs.state()
    with pytest.raises(exception) as info:
        call()
    assert objs.state() == before
    return info


# --- construction -----------------------------------------------------------------------

BAD_CONSTRUCTIONS: list[tuple[str, type[BaseException], Callable[[str], object]]] = [
    ("sem count str", TypeError, lambda b: Semaphore("1", 2, backend=b)),  # type: ignore[arg-type]
    ("sem count float", TypeError, lambda b: Semaphore(1.0, 2, backend=b)),  # type: ignore[arg-type]
    ("sem count bool", TypeError, lambda b: Semaphore(True, 2, backend=b)),
    ("sem count None", TypeError, lambda b: Semaphore(None, 2, backend=b)),  # type: ignore[arg-type]
    ("sem maximum str", TypeError, lambda b: Semaphore(1, "2", backend=b)),  # type: ignore[arg-type]
    ("sem count negative", ValueError, lambda b: Semaphore(-1, 2, backend=b)),
    ("sem maximum 0", ValueError, lambda b: Semaphore(0, 0, backend=b)),
    ("sem count > maximum", ValueError, lambda b: Semaphore(3, 2, backend=b)),
    ("sem maximum > u32", ValueError, lambda b: Semaphore(0, U32_MAX + 1, backend=b)),
    ("sem count > u32", ValueError, lambda b: Semaphore(U32_MAX + 1, U32_MAX + 1, backend=b)),
    ("sem value and count", TypeError, lambda b: Semaphore(2, count=3, backend=b)),
    ("sem maximum 0 unbounded value", ValueError, lambda b: Semaphore(1, 0, backend=b)),
    ("bounded negative", ValueError, lambda b: BoundedSemaphore(-1, backend=b)),
    ("bounded value str", TypeError, lambda b: BoundedSemaphore("1", backend=b)),  # type: ignore[arg-type]
    ("bounded maximum", TypeError, lambda b: BoundedSemaphore(1, 2, backend=b)),  # type: ignore[misc]
    ("lock positional", TypeError, lambda b: Lock(1, backend=b)),  # type: ignore[misc]
    ("rlock owner", TypeError, lambda b: RLock(owner=1, backend=b)),  # type: ignore[call-arg]
    ("mutex owner str", TypeError, lambda b: Mutex(owner="1", count=1, backend=b)),  # type: ignore[arg-type]
    ("mutex owner 0", ValueError, lambda b: Mutex(owner=0, count=1, backend=b)),
    ("mutex owner negative", ValueError, lambda b: Mutex(owner=-1, count=1, backend=b)),
    ("mutex owner > u32", ValueError, lambda b: Mutex(owner=U32_MAX + 1, count=1, backend=b)),
    ("mutex owner without count", ValueError, lambda b: Mutex(owner=5, backend=b)),
    ("mutex count negative", ValueError, lambda b: Mutex(count=-1, backend=b)),
    ("mutex count > u32", ValueError, lambda b: Mutex(count=U32_MAX + 1, backend=b)),
    ("mutex count float", TypeError, lambda b: Mutex(count=1.0, backend=b)),  # type: ignore[arg-type]
    ("mutex positional", TypeError, lambda b: Mutex(1, backend=b)),  # type: ignore[misc]
    ("event positional", TypeError, lambda b: Event(True, backend=b)),  # type: ignore[misc]
    ("event manual int", TypeError, lambda b: Event(manual=1, backend=b)),  # type: ignore[arg-type]
    ("event manual None", TypeError, lambda b: Event(manual=None, backend=b)),  # type: ignore[arg-type]
    ("event signaled int", TypeError, lambda b: Event(manual=True, signaled=1, backend=b)),  # type: ignore[arg-type]
    ("event signaled str", TypeError, lambda b: Event(manual=False, signaled="yes", backend=b)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("exception", "call"), [c[1:] for c in BAD_CONSTRUCTIONS], ids=[c[0] for c in BAD_CONSTRUCTIONS]
)
def test_bad_construction(sync_backend: str, exception: type[BaseException], call: Callable[[str], object]) -> None:
    with pytest.raises(exception):
        call(sync_backend)


@pytest.mark.parametrize(
    "create",
    [
        lambda b, n: Semaphore(3, 2, name=n, backend=b),
        lambda b, n: Mutex(owner=0, count=1, name=n, backend=b),
        lambda b, n: Event(manual=1, name=n, backend=b),  # type: ignore[arg-type]
    ],
    ids=["semaphore", "mutex", "event"],
)
def test_refused_creation_leaves_no_name(
    sync_backend: str, unique_name: Callable[..., str], create: Callable[[str, str], object]
) -> None:
    name = unique_name("refused")
    with pytest.raises((TypeError, ValueError)):
        create(sync_backend, name)
    for kind in (Semaphore, Mutex, Event):
        with pytest.raises(FileNotFoundError):
            kind.open(name, backend=sync_backend)


# --- methods ----------------------------------------------------------------------------

BAD_METHOD_CALLS: list[tuple[str, type[BaseException], Callable[[Objects], object]]] = [
    ("release str", TypeError, lambda o: o.sem.release("1")),  # type: ignore[arg-type]
    ("release float", TypeError, lambda o: o.sem.release(1.5)),  # type: ignore[arg-type]
    ("release None", TypeError, lambda o: o.sem.release(None)),  # type: ignore[arg-type]
    ("release bool", TypeError, lambda o: o.sem.release(True)),
    ("release negative", ValueError, lambda o: o.sem.release(-1)),
    ("release > u32", ValueError, lambda o: o.sem.release(U32_MAX + 1)),
    ("release 0", ValueError, lambda o: o.sem.release(0)),
    ("release negative", ValueError, lambda o: o.sem.release(-1)),
    ("release past maximum", OverflowError, lambda o: o.sem.release(2)),
    ("release overflowing u32", OverflowError, lambda o: o.sem.release(U32_MAX)),
    ("unlock owner 0", ValueError, lambda o: o.mutex.unlock(0)),
    ("unlock owner negative", ValueError, lambda o: o.mutex.unlock(-5)),
    ("unlock owner > u32", ValueError, lambda o: o.mutex.unlock(U32_MAX + 1)),
    ("unlock owner str", TypeError, lambda o: o.mutex.unlock("77")),  # type: ignore[arg-type]
    ("unlock not the owner", PermissionError, lambda o: o.mutex.unlock(OWNER + 1)),
    ("unlock by this thread, not the owner", PermissionError, lambda o: o.mutex.unlock()),
    ("kill owner 0", ValueError, lambda o: o.mutex.kill(0)),
    ("kill owner None", TypeError, lambda o: o.mutex.kill(None)),  # type: ignore[arg-type]
    ("kill owner str", TypeError, lambda o: o.mutex.kill("77")),  # type: ignore[arg-type]
    ("kill no owner", TypeError, lambda o: o.mutex.kill()),  # type: ignore[call-arg]
    ("kill not the owner", PermissionError, lambda o: o.mutex.kill(OWNER + 1)),
    ("set with argument", TypeError, lambda o: o.manual.set(1)),  # type: ignore[call-arg]
    ("pulse with argument", TypeError, lambda o: o.auto.pulse(True)),  # type: ignore[call-arg]
]


@pytest.mark.parametrize(("exception", "call"), [c[1:] for c in BAD_METHOD_CALLS], ids=[c[0] for c in BAD_METHOD_CALLS])
def test_bad_method_call(objs: Objects, exception: type[BaseException], call: Callable[[Objects], object]) -> None:
    refused(objs, exception, lambda: call(objs))


def test_unlock_of_an_unowned_mutex(sync_backend: str) -> None:
    mutex = Mutex(backend=sync_backend)
    with pytest.raises(PermissionError):
        mutex.unlock(OWNER)
    with pytest.raises(PermissionError):
        mutex.kill(OWNER)
    assert mutex.read() == (0, 0)
    mutex.close()


def test_release_at_the_u32_limit(sync_backend: str) -> None:
    sem = Semaphore(U32_MAX, U32_MAX, backend=sync_backend)
    with pytest.raises(OverflowError):
        sem.release(1)
    assert sem.read() == (U32_MAX, U32_MAX)
    sem.close()


# --- waits ------------------------------------------------------------------------------

BAD_WAITS: list[tuple[str, type[BaseException], Callable[[Objects], object]]] = [
    ("objects not a sequence", TypeError, lambda o: wait_any(o.sem, 0, owner=OWNER)),  # type: ignore[arg-type]
    ("objects str", TypeError, lambda o: wait_any("ab", 0, owner=OWNER)),  # type: ignore[arg-type]
    ("objects bytes", TypeError, lambda o: wait_all(b"ab", 0, owner=OWNER)),  # type: ignore[arg-type]
    ("objects set", TypeError, lambda o: wait_any({o.sem}, 0, owner=OWNER)),  # type: ignore[arg-type]
    ("objects iterator", TypeError, lambda o: wait_all(iter([o.sem]), 0, owner=OWNER)),  # type: ignore[arg-type]
    ("objects None", TypeError, lambda o: wait_any(None, 0, owner=OWNER)),  # type: ignore[arg-type]
    ("object int", TypeError, lambda o: wait_any([o.sem, 3], 0, owner=OWNER)),  # type: ignore[list-item]
    ("object None", TypeError, lambda o: wait_all([o.sem, None], 0, owner=OWNER)),  # type: ignore[list-item]
    ("object a backend handle", TypeError, lambda o: wait_any([o.sem, o.auto._handle], 0, owner=OWNER)),  # type: ignore[list-item]
    ("wait_any empty", ValueError, lambda o: wait_any([], 0, owner=OWNER)),
    ("wait_all empty", ValueError, lambda o: wait_all((), 0, owner=OWNER)),
    ("wait_any 65 objects", ValueError, lambda o: wait_any([o.sem] * (MAX_WAIT_OBJECTS + 1), 0, owner=OWNER)),
    ("wait_all 65 objects", ValueError, lambda o: wait_all([o.sem] * (MAX_WAIT_OBJECTS + 1), 0, owner=OWNER)),
    ("owner 0", ValueError, lambda o: wait_any(o.all(), 0, owner=0)),
    ("owner negative", ValueError, lambda o: wait_all(o.all(), 0, owner=-1)),
    ("owner > u32", ValueError, lambda o: wait_any(o.all(), 0, owner=U32_MAX + 1)),
    ("owner str", TypeError, lambda o: wait_any(o.all(), 0, owner="77")),  # type: ignore[arg-type]
    ("owner float", TypeError, lambda o: wait_all(o.all(), 0, owner=77.0)),  # type: ignore[arg-type]
    ("owner bool", TypeError, lambda o: wait_any(o.all(), 0, owner=True)),
    ("timeout negative", ValueError, lambda o: wait_any(o.all(), -1, owner=OWNER)),
    ("timeout slightly negative", ValueError, lambda o: wait_all(o.all(), -0.001, owner=OWNER)),
    ("timeout NaN", ValueError, lambda o: wait_any(o.all(), math.nan, owner=OWNER)),
    ("timeout -inf", ValueError, lambda o: wait_all(o.all(), -math.inf, owner=OWNER)),
    ("timeout str", TypeError, lambda o: wait_any(o.all(), "1", owner=OWNER)),  # type: ignore[arg-type]
    ("timeout bool", TypeError, lambda o: wait_all(o.all(), True, owner=OWNER)),
    ("timeout list", TypeError, lambda o: wait_any(o.all(), [1], owner=OWNER)),  # type: ignore[arg-type]
    ("timeout complex", TypeError, lambda o: wait_any(o.all(), 1j, owner=OWNER)),  # type: ignore[arg-type]
    ("alert a semaphore", TypeError, lambda o: wait_any([o.sem], 0, owner=OWNER, alert=o.sem)),  # type: ignore[arg-type]
    ("alert a mutex", TypeError, lambda o: wait_all([o.sem], 0, owner=OWNER, alert=o.mutex)),  # type: ignore[arg-type]
    ("alert int", TypeError, lambda o: wait_any([o.sem], 0, owner=OWNER, alert=3)),  # type: ignore[arg-type]
    ("wait_all same object twice", ValueError, lambda o: wait_all([o.sem, o.manual, o.sem], 0, owner=OWNER)),
    ("wait_all alert in the list", ValueError, lambda o: wait_all([o.manual, o.sem], 0, owner=OWNER, alert=o.manual)),
]


@pytest.mark.parametrize(("exception", "call"), [c[1:] for c in BAD_WAITS], ids=[c[0] for c in BAD_WAITS])
def test_bad_wait(objs: Objects, exception: type[BaseException], call: Callable[[Objects], object]) -> None:
    refused(objs, exception, lambda: call(objs))


def test_wait_all_two_handles_of_one_named_object(
    objs: Objects, sync_backend: str, unique_name: Callable[..., str]
) -> None:
    name = unique_name("twice")
    first = Semaphore(2, 2, name=name, backend=sync_backend)
    second = Semaphore(2, 2, name=name, backend=sync_backend)
    opened = Semaphore.open(name, backend=sync_backend)
    assert (first.created, second.created, opened.created) == (True, False, False)
    for pair in ([first, second], [first, opened], [second, opened]):
        refused(objs, ValueError, lambda pair=pair: wait_all([objs.auto, *pair], 0, owner=OWNER))  # type: ignore[misc]
        assert first.read() == (2, 2)
    alert = Event(manual=True, signaled=True, name=unique_name("alert"), backend=sync_backend)
    alert_again = Event.open(alert.name or "", backend=sync_backend)
    refused(objs, ValueError, lambda: wait_all([objs.sem, alert_again], 0, owner=OWNER, alert=alert))
    assert alert.read() == (True, True)
    for obj in (first, second, opened, alert, alert_again):
        obj.close()


def test_what_wait_any_accepts(objs: Objects) -> None:
    """Not bad input, for contrast: ntsync lets wait_any name an object twice, the alert
    included (the object, checked first, answers)."""
    assert wait_any([objs.manual, objs.manual], 0, owner=OWNER) == 0
    assert wait_any([objs.auto], 0, owner=OWNER, alert=objs.auto) == 0
    assert objs.auto.read() == (False, False)
    assert wait_any([objs.sem] * MAX_WAIT_OBJECTS, 0, owner=OWNER) == 0
    assert objs.sem.read() == (0, 2)
    # 0 polls, inf waits forever (here: the manual event is signaled, so it returns at once)
    assert wait_all([objs.manual], math.inf, owner=OWNER) == 0
    assert wait_all([objs.manual], -0.0, owner=OWNER) == 0
    # a finite timeout the clock cannot count (threading.TIMEOUT_MAX) is refused as threading's
    # locks refuse it, on every backend alike (the server's wire format once failed with struct.error)
    for huge in (threading.TIMEOUT_MAX * 2, 2**63, 1e300, 10**400):
        with pytest.raises(OverflowError, match="TIMEOUT_MAX"):
            wait_any([objs.manual], huge, owner=OWNER)
    assert wait_any([objs.manual], threading.TIMEOUT_MAX, owner=OWNER) == 0


def test_wait_all_at_the_object_limit(sync_backend: str) -> None:
    sems = [Semaphore(1, 1, backend=sync_backend) for _ in range(MAX_WAIT_OBJECTS)]
    with pytest.raises(ValueError):
        wait_all([*sems, sems[0]], 0)
    assert [s.read() for s in sems] == [(1, 1)] * MAX_WAIT_OBJECTS
    assert wait_all(sems, 0) == 0
    assert [s.read() for s in sems] == [(0, 1)] * MAX_WAIT_OBJECTS
    for sem in sems:
        sem.close()


# --- closed objects ---------------------------------------------------------------------

CLOSED_CALLS: list[tuple[str, Callable[[Objects], object]]] = [
    ("release", lambda c: c.sem.release(1)),
    ("release", lambda c: c.sem.release(1)),
    ("sem read", lambda c: c.sem.read()),
    ("unlock", lambda c: c.mutex.unlock(OWNER)),
    ("kill", lambda c: c.mutex.kill(OWNER)),
    ("mutex read", lambda c: c.mutex.read()),
    ("set", lambda c: c.manual.set()),
    ("reset", lambda c: c.manual.reset()),
    ("pulse", lambda c: c.auto.pulse()),
    ("event read", lambda c: c.auto.read()),
    ("pickle", lambda c: pickle.dumps(c.sem)),
    ("wait_any", lambda c: wait_any([c.sem], 0, owner=OWNER)),
    ("wait_all", lambda c: wait_all([c.mutex], 0, owner=OWNER)),
]


@pytest.mark.parametrize("call", [c[1] for c in CLOSED_CALLS], ids=[c[0] for c in CLOSED_CALLS])
def test_closed_object(sync_backend: str, objs: Objects, call: Callable[[Objects], object]) -> None:
    closed = make_objects(sync_backend)
    for obj in closed.all():
        obj.close()
        assert obj.closed
    # the open objects of the same backend are untouched by the refusal
    refused(objs, ValueError, lambda: call(closed))
    with pytest.raises(ValueError, match="closed"):
        call(closed)


def test_closed_object_among_open_ones(sync_backend: str, objs: Objects) -> None:
    closed = make_objects(sync_backend)
    for obj in closed.all():
        obj.close()
    for wait in (wait_any, wait_all):
        refused(objs, ValueError, lambda wait=wait: wait([*objs.all(), closed.sem], 0, owner=OWNER))  # type: ignore[misc]
        refused(objs, ValueError, lambda wait=wait: wait([closed.manual, *objs.all()], 0, owner=OWNER))  # type: ignore[misc]
        refused(objs, ValueError, lambda wait=wait: wait(objs.all(), 0, owner=OWNER, alert=closed.auto))  # type: ignore[misc]


def test_close_is_idempotent_and_visible(sync_backend: str) -> None:
    with closing(Semaphore(0, 1, backend=sync_backend)) as sem:
        assert not sem.closed
        assert "count=0" in repr(sem)
    assert sem.closed
    sem.close()
    assert sem.closed
    assert "closed" in repr(sem)
    assert sem.backend == sync_backend  # still says what it was


# --- backends ---------------------------------------------------------------------------

PAIRS = list(itertools.permutations(registry.FAMILY.names, 2))


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_mixed_backends_in_one_wait(first: str, second: str) -> None:
    require_sync_backend(first)
    require_sync_backend(second)
    here = make_objects(first)
    there = make_objects(second)
    for wait in (wait_any, wait_all):
        for call in (
            lambda wait=wait: wait([here.sem, there.sem], 0, owner=OWNER),
            lambda wait=wait: wait([here.sem, there.manual, here.auto], 0, owner=OWNER),
            lambda wait=wait: wait([here.sem], 0, owner=OWNER, alert=there.manual),
        ):
            here_before, there_before = here.state(), there.state()
            with pytest.raises(ValueError, match="backend"):
                call()  # type: ignore[no-untyped-call]
            assert (here.state(), there.state()) == (here_before, there_before)
    for obj in here.all() + there.all():
        obj.close()


def test_unknown_backend(unique_name: Callable[..., str]) -> None:
    with pytest.raises(ValueError, match="nope"):
        Semaphore(1, 1, backend="nope")
    with pytest.raises(ValueError, match="nope"):
        Event.open(unique_name(), backend="nope")
    with pytest.raises(TypeError):
        Mutex(backend=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Event(manual=True, backend=b"server")  # type: ignore[arg-type]


def test_unknown_backend_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.ENV_VAR, "nope")
    with pytest.raises(ValueError, match=registry.ENV_VAR):
        Semaphore(1, 1)
    with pytest.raises(ValueError, match=registry.ENV_VAR):
        Mutex()


def test_backend_from_environment(sync_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.ENV_VAR, sync_backend)
    with closing(Semaphore(1, 1)) as sem:
        assert sem.backend == sync_backend
    # an explicit argument wins over the environment
    other = next(name for name in registry.FAMILY.names if name != sync_backend)
    monkeypatch.setenv(registry.ENV_VAR, other)
    with closing(Event(manual=True, backend=sync_backend)) as event:
        assert event.backend == sync_backend


# --- names ------------------------------------------------------------------------------

BAD_NAMES: list[tuple[str, type[BaseException], object]] = [
    ("empty", ValueError, ""),
    ("NUL", ValueError, "a\0b"),
    ("too long", ValueError, "x" * (MAX_NAME_BYTES + 1)),
    ("too long in UTF-8", ValueError, "\u00e9" * (MAX_NAME_BYTES // 2 + 1)),
    ("lone surrogate", ValueError, "\ud800"),
    ("bytes", TypeError, b"name"),
    ("int", TypeError, 3),
]


@pytest.mark.parametrize(("exception", "name"), [c[1:] for c in BAD_NAMES], ids=[c[0] for c in BAD_NAMES])
def test_bad_name(sync_backend: str, exception: type[BaseException], name: object) -> None:
    with pytest.raises(exception):
        Semaphore(1, 1, name=name, backend=sync_backend)  # type: ignore[arg-type]
    with pytest.raises(exception):
        Mutex(name=name, backend=sync_backend)  # type: ignore[arg-type]
    with pytest.raises(exception):
        Event(manual=True, name=name, backend=sync_backend)  # type: ignore[arg-type]
    for kind in (Semaphore, Mutex, Event):
        with pytest.raises(exception):
            kind.open(name, backend=sync_backend)  # type: ignore[arg-type]


def test_open_needs_a_name(sync_backend: str) -> None:
    with pytest.raises(TypeError):
        Semaphore.open(None, backend=sync_backend)  # type: ignore[arg-type]


def test_longest_name(sync_backend: str, unique_name: Callable[..., str]) -> None:
    stem = unique_name("long-")
    name = stem + "\u00e9" * ((MAX_NAME_BYTES - len(stem)) // 2)
    name += "x" * (MAX_NAME_BYTES - len(name.encode()))
    assert len(name.encode()) == MAX_NAME_BYTES
    with (
        closing(Semaphore(0, 3, name=name, backend=sync_backend)) as sem,
        closing(Semaphore.open(name, backend=sync_backend)) as again,
    ):
        assert sem.created
        assert sem.name == name
        again.release(2)
        assert sem.read() == (2, 3)


def test_names_are_opaque(sync_backend: str, unique_name: Callable[..., str]) -> None:
    """Slashes, dots and backslashes are ordinary characters: every name below is its own
    object (a backend that built file paths from names would mix them up, or escape)."""
    stem = unique_name("path")
    names = [
        f"{stem}",
        f"{stem}/..",
        f"{stem}/../{stem}",
        f"{stem}/.",
        f"{stem}\\x",
        f"{stem}/x",
        ".",
        "..",
        f"../{stem}",
        f"{stem} ",
        f"{stem}\n",
        f"{stem}\u00e9",
    ]
    made = []
    try:
        for i, name in enumerate(names):
            # "." and ".." are shared by every run of this test: create-or-open, then check.
            sem = Semaphore(0, 100, name=name, backend=sync_backend)
            made.append(sem)
            if name in (".", ".."):
                continue
            assert sem.created, name
            sem.release(i + 1)
        for i, name in enumerate(names):
            if name in (".", ".."):
                continue
            with closing(Semaphore.open(name, backend=sync_backend)) as again:
                assert again.read() == (i + 1, 100), name
    finally:
        for sem in made:
            sem.close()


@pytest.mark.parametrize("kind", [Semaphore, Mutex, Event], ids=["semaphore", "mutex", "event"])
def test_open_absent_name(sync_backend: str, unique_name: Callable[..., str], kind: type[SyncObject]) -> None:
    name = unique_name("absent")
    with pytest.raises(FileNotFoundError):
        kind.open(name, backend=sync_backend)
    # and it stays absent: a failed open creates nothing
    with pytest.raises(FileNotFoundError):
        kind.open(name, backend=sync_backend)


def test_name_of_another_kind(sync_backend: str, unique_name: Callable[..., str]) -> None:
    name = unique_name("kind")
    sem = Semaphore(1, 2, name=name, backend=sync_backend)
    for attempt in (
        lambda: Mutex(name=name, backend=sync_backend),
        lambda: Event(manual=True, signaled=True, name=name, backend=sync_backend),
        lambda: Mutex.open(name, backend=sync_backend),
        lambda: Event.open(name, backend=sync_backend),
    ):
        with pytest.raises(NameKindError) as info:
            attempt()
        assert isinstance(info.value, FileExistsError)
        assert sem.read() == (1, 2)
    with closing(Semaphore.open(name, backend=sync_backend)) as again:
        assert again.read() == (1, 2)
    sem.close()


# --- property: any value to release -----------------------------------------------------

JUNK = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=0, max_value=8),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(JUNK, min_size=1, max_size=6))
def test_release_anything(sync_backend: str, values: list[object]) -> None:
    """Whatever is passed to release, the semaphore ends exactly where a model of the rules
    says: valid counts add up to at most the maximum, everything else changes nothing."""
    maximum = 6
    with closing(Semaphore(0, maximum, backend=sync_backend)) as sem:
        count = 0
        for value in values:
            valid_int = isinstance(value, int) and not isinstance(value, bool)
            if not valid_int:
                with pytest.raises(TypeError):
                    sem.release(value)  # type: ignore[arg-type]
            elif not 1 <= value <= U32_MAX:  # type: ignore[operator]  # n < 1 as threading refuses it
                with pytest.raises(ValueError):
                    sem.release(value)  # type: ignore[arg-type]
            elif count + value > maximum:  # type: ignore[operator]
                with pytest.raises(OverflowError):
                    sem.release(value)  # type: ignore[arg-type]
            else:
                assert sem.release(value) == count  # type: ignore[arg-type]
                count += value  # type: ignore[operator]
            assert sem.read() == (count, maximum)
