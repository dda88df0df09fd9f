"""Many threads in several processes on one set of objects, bounded in time: no double
acquisition, no lost wake-up, wait-all never takes a partial set.

Every test runs PROCESSES forked children × THREADS threads.  Shared counters live in
``multiprocessing.Value`` shared memory *without* a lock of their own, updated with plain
read-modify-write steps inside the critical section: only the sync object under test keeps
them consistent, so a double acquisition shows as a lost update or a second holder seen.  A
lost wake-up shows as a waiter that never returns (each wait has a generous timeout, and
every thread must finish within a bound), or as final counts that do not add up.
"""

from __future__ import annotations

import functools
import multiprocessing
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from ntshim.errors import AbandonedWarning
from ntshim.sync import Event, Lock, Mutex, RLock, Semaphore, wait_all, wait_any

from .helpers import BOUND, SETTLE, Child

PROCESSES = 3
THREADS = 4
#: How long the time-bounded loops run (every thread, once all have started).
DURATION = 0.5
#: A single wait that takes longer than this has lost its wake-up.
WAIT_BOUND = 4 * BOUND
#: Each thread's loops, capped for fast backends (the time bound caps the slow ones).
LOOPS = 5000

Worker = Callable[[int], Any]


def _threads(workers: list[Worker], base: int) -> list[Any]:
    """Run ``workers`` (each called with its global thread number) in threads of this
    process; return what each returned, or raise with every thread's traceback."""
    results: list[Any] = [None] * len(workers)
    errors: list[str] = []

    def run(slot: int) -> None:
        try:
            results[slot] = workers[slot](base + slot)
        except BaseException:  # noqa: BLE001 - reported by the parent
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION + 2 * WAIT_BOUND)
        if thread.is_alive():
            errors.append("a thread did not finish within its bound (a lost wake-up?)")
    if errors:
        raise AssertionError("\n".join(errors))
    return results


def run_everywhere(worker: Worker, go: Event) -> list[Any]:
    """``worker`` in PROCESSES forked children × THREADS threads, started together when
    ``go`` (a manual event) is set; the list of every thread's result."""
    children = [Child("fork", _threads, [worker] * THREADS, process * THREADS) for process in range(PROCESSES)]
    try:
        go.set()
        results: list[Any] = []
        for child in children:
            results.extend(child.result(DURATION + 3 * WAIT_BOUND))
        for child in children:
            assert child.join() == 0
        return results
    finally:
        for child in children:
            child.kill()


def _timed(go: Event) -> float:
    """Wait for the start signal; the time this thread's loop must stop."""
    wait_any([go], WAIT_BOUND)
    return time.monotonic() + DURATION


def _shared(typecode: str, value: Any = 0) -> Any:
    # fork children inherit it; no lock: the object under test is the only protection
    return multiprocessing.get_context("fork").Value(typecode, value, lock=False)


# --- mutual exclusion ---------------------------------------------------------------------


def _inside(counter: Any, holders: Any, me: int, loop: int) -> int:
    """The critical section: check we are alone, a read-modify-write; intruders seen."""
    seen = holders.value != 0
    holders.value = me + 1
    value = counter.value
    if loop % 64 == 0:
        time.sleep(0)  # give another thread a chance to run inside, if the lock lets it
    counter.value = value + 1
    seen += holders.value != me + 1
    holders.value = 0
    return seen


def _exclusive(
    take: Callable[[], object], give: Callable[[], object], go: Event, counter: Any, holders: Any, me: int
) -> tuple[int, int]:
    """Loop: take, the critical section, give.  (loops, intruders seen)"""
    stop = _timed(go)
    loops = seen = 0
    while loops < LOOPS and time.monotonic() < stop:
        take()
        seen += _inside(counter, holders, me, loops)
        give()
        loops += 1
    return loops, seen


def check_exclusive(results: list[tuple[int, int]], counter: Any) -> None:
    loops = [r[0] for r in results]
    assert sum(r[1] for r in results) == 0, "two holders at once"
    assert counter.value == sum(loops), "lost updates: two holders at once"
    assert len(loops) == PROCESSES * THREADS


def test_mutex(sync_backend: str) -> None:
    mutex = Mutex(backend=sync_backend)
    go = Event(manual=True, backend=sync_backend)
    counter, holders = _shared("q"), _shared("q")

    def take() -> object:
        return wait_any([mutex], WAIT_BOUND)

    worker = functools.partial(_exclusive, take, mutex.unlock, go, counter, holders)
    check_exclusive(run_everywhere(worker, go), counter)
    assert mutex.read() == (0, 0)


@pytest.mark.parametrize("make", [Lock, RLock], ids=lambda c: c.__name__)
def test_threading_protocol(sync_backend: str, make: Callable[..., Any]) -> None:
    """``acquire()`` / ``release()`` as threading's users call them (on futex, a Lock's come
    from C, which hands the waits that must sleep to Python: both paths mix here)."""
    lock = make(backend=sync_backend)
    go = Event(manual=True, backend=sync_backend)
    counter, holders = _shared("q"), _shared("q")
    worker = functools.partial(_exclusive, lock.acquire, lock.release, go, counter, holders)
    check_exclusive(run_everywhere(worker, go), counter)
    assert not lock.locked()


def _hold_until_killed(lock: Lock | RLock, holding: Event) -> None:
    with lock:
        holding.set()
        threading.Event().wait()  # until SIGKILL


@pytest.mark.parametrize("make", [Lock, RLock], ids=lambda c: c.__name__)
def test_a_holder_killed_while_everyone_waits(sync_backend: str, make: Callable[..., Any]) -> None:
    """A process holding the lock is killed while every thread of the others waits for it:
    exactly one of them takes it over (told so by ``abandoned``), and mutual exclusion, the
    count of updates and every later wait are as if nothing had happened."""
    lock, holding = make(backend=sync_backend), Event(manual=True, backend=sync_backend)
    go = Event(manual=True, backend=sync_backend)
    counter, holders, taken_over = _shared("q"), _shared("q"), _shared("q")
    victim = Child("fork", _hold_until_killed, lock, holding)
    assert holding.wait(WAIT_BOUND)
    holders.value = 999  # the victim's mark, which it never clears

    def take() -> None:
        warnings.simplefilter("ignore", AbandonedWarning)  # (process-wide, in a forked child)
        lock.acquire()
        if lock.abandoned:  # what the dead holder was doing may be half done: here, its mark
            taken_over.value += 1
            holders.value = 0

    def kill_soon() -> None:
        time.sleep(SETTLE)  # every thread is queued behind the victim by now, or soon
        victim.kill()

    killer = threading.Thread(target=kill_soon)
    killer.start()
    worker = functools.partial(_exclusive, take, lock.release, go, counter, holders)
    results = run_everywhere(worker, go)
    killer.join()
    check_exclusive(results, counter)
    assert taken_over.value == 1
    assert not lock.locked()


def _hold_twice_until_killed(lock: RLock, holding: Event) -> None:
    lock.acquire()
    lock.acquire()
    holding.set()
    threading.Event().wait()  # until SIGKILL


def test_lock_free_and_queued_operations_mixed(sync_backend: str) -> None:
    """Issue 14's fast path.  Every thread mixes operations the futex backend serves
    without its arena lock (a lock of the thread's own, never contended; a private
    auto-reset event; the shared objects whenever nobody waits for them) with ones that
    queue (the same shared objects while others hold them).  A process that took the shared
    RLock twice, lock-free, is killed in the middle.  Mutual exclusion holds for the RLock
    (taken twice, recursively) and for a semaphore of one; no wait loses its wake-up;
    exactly one thread takes the dead owner's RLock over; every count ends as it began."""
    rlock, unit = RLock(backend=sync_backend), Semaphore(1, 1, backend=sync_backend)
    holding, go = Event(manual=True, backend=sync_backend), Event(manual=True, backend=sync_backend)
    counter, holders, taken_over = _shared("q"), _shared("q"), _shared("q")
    unit_counter, unit_holders = _shared("q"), _shared("q")
    victim = Child("fork", _hold_twice_until_killed, rlock, holding)
    assert holding.wait(WAIT_BOUND)
    holders.value = 999  # the victim's mark, which it never clears

    def worker(me: int) -> tuple[int, int, int]:
        warnings.simplefilter("ignore", AbandonedWarning)  # (process-wide, in a forked child)
        mine, flag = Lock(backend=sync_backend), Event(manual=False, backend=sync_backend)
        stop = _timed(go)
        loops = seen = private = 0
        while loops < LOOPS // 4 and time.monotonic() < stop:
            with mine:  # never contended
                private += mine.locked()
            flag.set()
            private += flag.wait(0) and not flag.is_set() and not flag.wait(0)
            assert rlock.acquire(timeout=WAIT_BOUND)
            if rlock.abandoned:  # what the dead owner was doing may be half done: its mark
                taken_over.value += 1
                holders.value = 0
            assert rlock.acquire(blocking=False)  # (ours: one level more)
            seen += _inside(counter, holders, me, loops)
            rlock.release()
            rlock.release()
            assert unit.acquire(timeout=WAIT_BOUND)
            seen += _inside(unit_counter, unit_holders, me, loops)
            unit.release()
            loops += 1
        return loops, seen, private

    killer = threading.Timer(SETTLE, victim.kill)  # every thread is at work, or queued on the RLock
    killer.start()
    results = run_everywhere(worker, go)
    killer.join()
    loops = [r[0] for r in results]
    assert len(results) == PROCESSES * THREADS and min(loops) > 0
    assert sum(r[1] for r in results) == 0, "two holders at once"
    assert counter.value == unit_counter.value == sum(loops), "lost updates: two holders at once"
    assert [r[2] for r in results] == [2 * n for n in loops], "a private lock or event misbehaved"
    assert taken_over.value == 1
    assert not rlock.locked()
    assert unit.read() == (1, 1)


def test_auto_event_as_a_lock(sync_backend: str) -> None:
    """An auto-reset event hands itself to one waiter at a time."""
    event = Event(manual=False, signaled=True, backend=sync_backend)
    go = Event(manual=True, backend=sync_backend)
    counter, holders = _shared("q"), _shared("q")

    def take() -> object:
        return wait_any([event], WAIT_BOUND)

    worker = functools.partial(_exclusive, take, event.set, go, counter, holders)
    check_exclusive(run_everywhere(worker, go), counter)
    assert event.read() == (False, True)


def test_semaphore_as_a_pool(sync_backend: str) -> None:
    """A semaphore of 3 never lets a 4th in, and every release finds its way back."""
    size = 3
    sem = Semaphore(size, size, backend=sync_backend)
    guard = Mutex(backend=sync_backend)  # protects the shared tally of holders
    go = Event(manual=True, backend=sync_backend)
    holders, peak = _shared("q"), _shared("q")

    def worker(me: int) -> int:
        stop = _timed(go)
        loops = 0
        while loops < LOOPS // 4 and time.monotonic() < stop:
            wait_any([sem], WAIT_BOUND)
            wait_any([guard], WAIT_BOUND)
            holders.value += 1
            peak.value = max(peak.value, holders.value)
            guard.unlock()
            time.sleep(0)
            wait_any([guard], WAIT_BOUND)
            holders.value -= 1
            guard.unlock()
            sem.release(1)  # OverflowError here would mean a double acquisition
            loops += 1
        return loops

    results = run_everywhere(worker, go)
    assert len(results) == PROCESSES * THREADS
    assert sum(results) > 0
    assert 1 <= peak.value <= size
    assert holders.value == 0
    assert sem.read() == (size, size)


# --- no lost wake-up ----------------------------------------------------------------------

ITEMS = 150  # per producer thread, and per consumer thread


def test_producers_and_consumers(sync_backend: str) -> None:
    """Half the threads release a semaphore ITEMS times, half wait on it ITEMS times: every
    consumer must get every item it waits for (a lost wake-up leaves one blocked), and the
    count ends at zero."""
    sem = Semaphore(0, 1 << 20, backend=sync_backend)
    go = Event(manual=True, backend=sync_backend)

    def worker(me: int) -> str:
        wait_any([go], WAIT_BOUND)
        if me % 2:
            for i in range(ITEMS):
                sem.release(1)
                if i % 16 == 0:
                    time.sleep(0)
            return "produced"
        for _ in range(ITEMS):
            wait_any([sem], WAIT_BOUND)
        return "consumed"

    results = run_everywhere(worker, go)
    assert sorted(results) == sorted(["produced", "consumed"] * (PROCESSES * THREADS // 2))
    assert sem.read() == (0, 1 << 20)


ROUNDS = 40


def test_manual_event_wakes_everyone(sync_backend: str) -> None:
    """Rounds of "everyone waits on a manual event, the parent sets it": each set must wake
    every waiter of every process.  Two events alternate so that a round's event can be
    reset while nobody can still be waiting on it."""
    gates = [Event(manual=True, backend=sync_backend), Event(manual=True, backend=sync_backend)]
    arrived = Semaphore(0, 1 << 20, backend=sync_backend)
    go = Event(manual=True, backend=sync_backend)
    everyone = PROCESSES * THREADS

    def worker(me: int) -> int:
        wait_any([go], WAIT_BOUND)
        for round_ in range(ROUNDS):
            wait_any([gates[round_ % 2]], WAIT_BOUND)
            arrived.release(1)
        return ROUNDS

    children = [Child("fork", _threads, [worker] * THREADS, p * THREADS) for p in range(PROCESSES)]
    try:
        go.set()
        for round_ in range(ROUNDS):
            gates[(round_ + 1) % 2].reset()
            gates[round_ % 2].set()
            for _ in range(everyone):
                wait_any([arrived], WAIT_BOUND)
        results = [r for child in children for r in child.result(WAIT_BOUND)]
        assert results == [ROUNDS] * everyone
        for child in children:
            assert child.join() == 0
    finally:
        for child in children:
            child.kill()
    assert arrived.read() == (0, 1 << 20)


# --- wait-all atomicity -------------------------------------------------------------------

PAIRS = 200  # per releasing thread, and taken per consuming thread
STOCK = 50
LOOKS = 3  # looks at A and B per hold of M by a releaser


def test_wait_all_is_atomic(sync_backend: str) -> None:
    """Two semaphores A and B change only together: releasers add one to each while holding
    a mutex M (taken with wait_any), consumers take A, B and M in one wait_all.  Whoever
    holds M must therefore always see A and B equal; a wait_all that took A or B before M
    (or let go of a partial set) would show them unequal to the holder of M.  Every pair
    released is taken: the counts end where they started."""
    # A stock of pairs, so that consumers contend for M rather than wait for counts.
    a = Semaphore(STOCK, 1 << 20, backend=sync_backend)
    b = Semaphore(STOCK, 1 << 20, backend=sync_backend)
    m = Mutex(backend=sync_backend)
    go = Event(manual=True, backend=sync_backend)

    def worker(me: int) -> int:
        wait_any([go], WAIT_BOUND)
        unequal = 0
        for _ in range(PAIRS):
            if me % 2:
                wait_any([m], WAIT_BOUND)
                for _ in range(LOOKS):
                    unequal += a.read()[0] != b.read()[0]
                a.release(1)
                b.release(1)
            else:
                # M in the middle: a wait_all done object by object would hold one count
                # while it tries M (and put it back when M is taken)
                wait_all([a, m, b] if me % 4 else [b, m, a], WAIT_BOUND)
                unequal += a.read()[0] != b.read()[0]
            m.unlock()
        return unequal

    results = run_everywhere(worker, go)
    assert results == [0] * (PROCESSES * THREADS), "a holder of M saw A and B differ"
    assert a.read() == (STOCK, 1 << 20)
    assert b.read() == (STOCK, 1 << 20)
    assert m.read() == (0, 0)
