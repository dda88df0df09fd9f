"""Helpers the sync tests share: threads that wait while the test checks they have not
returned yet (the ntsync selftests' idiom), keeping them off the CPU, and child processes
that report back."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

#: How long a waiter thread is given to block before we check that it has not returned.  The
#: waiter announces itself just before it calls the wait (``WaiterThread.started``), so this
#: only covers the last few Python lines and the backend's registration of the wait.
SETTLE = 0.1
#: Upper bound for something that must happen (a woken waiter returning): generous, because
#: our machines are noisy; it is a bound, never a speed claim.
BOUND = 5.0


class WaiterThread:
    """Run ``call`` in a thread and record what it returned or raised.

    The thread stays alive after the call until :meth:`finish`: a mutex acquired by a thread
    is abandoned when that thread exits (ntshim's rule beyond ntsync), and the selftests read
    the mutex state after the waiter has acquired it, which must not race with its exit.
    """

    def __init__(self, call: Callable[[], Any]) -> None:
        self._call = call
        self.started = threading.Event()
        self.returned = threading.Event()
        self._may_exit = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.native_id = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.started.wait(BOUND), "the waiter thread did not start"

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        self.started.set()
        try:
            self.result = self._call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test by outcome()
            self.error = exc
        finally:
            self.returned.set()
            self._may_exit.wait()

    def still_waiting(self, settle: float = SETTLE) -> bool:
        """True if the call has not returned after ``settle`` seconds (the selftests'
        ``wait_for_thread(thread, 100) == ETIMEDOUT``)."""
        return not self.returned.wait(settle)

    def outcome(self, bound: float = BOUND) -> Any:
        """What the call returned; re-raises what it raised.  Fails if it has not returned
        within ``bound`` seconds."""
        assert self.returned.wait(bound), f"the waiter did not return within {bound} s"
        if self.error is not None:
            raise self.error
        return self.result

    def finish(self) -> None:
        """Let the thread exit and join it."""
        self._may_exit.set()
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the waiter thread did not exit"


def _can_take_realtime_priority() -> bool:
    """Whether this thread may switch to SCHED_FIFO (root, CAP_SYS_NICE or RLIMIT_RTPRIO)."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    os.sched_setscheduler(0, policy, param)
    return True


#: Whether :func:`sidelined` can guarantee that the waiters do not run (see there).
SIDELINE_IS_STRICT = _can_take_realtime_priority()


@contextlib.contextmanager
def sidelined(*group: WaiterThread) -> Iterator[None]:
    """Keep the waiters of ``group`` off the CPU while the block runs, unless it sleeps.

    For "signal, then read the state at once" checks.  A backend that hands signals over has
    done the woken waiter's acquisition inside the signalling call, so what the block reads
    must not depend on whether the waiter got to run; one that left the woken waiter to take
    the object itself (as the esync design does) would show it untaken, every time, instead
    of passing now and then when its waiter happened to win the race with the read.

    How: this thread and the waiters share one CPU, where this thread runs with a real-time
    priority (SCHED_FIFO), so the waiters get the CPU only when this thread blocks (a backend
    that blocks in a signalling call, say for a server's answer, lets them run: harmless, the
    acquisition is the signaller's job).  Where real-time priority is not allowed, the
    waiters get SCHED_IDLE instead, which only makes their running unlikely
    (:data:`SIDELINE_IS_STRICT` tells which).
    """
    me = threading.get_native_id()
    my_cpus = os.sched_getaffinity(me)
    my_policy, my_param = os.sched_getscheduler(me), os.sched_getparam(me)
    cpu = {min(my_cpus)}
    saved = [
        (
            w.native_id,
            os.sched_getaffinity(w.native_id),
            os.sched_getscheduler(w.native_id),
            os.sched_getparam(w.native_id),
        )
        for w in group
    ]
    os.sched_setaffinity(me, cpu)
    try:
        for waiter in group:
            os.sched_setaffinity(waiter.native_id, cpu)
        if SIDELINE_IS_STRICT:
            os.sched_setscheduler(me, os.SCHED_FIFO, os.sched_param(1))
        else:
            for waiter in group:
                os.sched_setscheduler(waiter.native_id, os.SCHED_IDLE, os.sched_param(0))
        yield
    finally:
        os.sched_setscheduler(me, my_policy, my_param)
        for tid, cpus, policy, param in saved:
            os.sched_setscheduler(tid, policy, param)
            os.sched_setaffinity(tid, cpus)
        os.sched_setaffinity(me, my_cpus)


def _report(results: Any, function: Callable[..., Any], *args: Any) -> None:
    """What a child process runs: ``function(*args)``, its result or traceback sent back."""
    try:
        results.put(("ok", function(*args)))
    except BaseException:  # noqa: BLE001 - the parent reports it
        results.put(("error", traceback.format_exc()))


class Child:
    """A multiprocessing child (``method``: "fork" or "spawn") running ``function(*args)``.

    ``function`` must be importable by module and name for spawn children (a module-level
    function of a test module); :meth:`result` returns what it returned, or fails the test
    with the child's traceback.
    """

    def __init__(self, method: str, function: Callable[..., Any], *args: Any) -> None:
        context: Any = multiprocessing.get_context(method)
        self.results = context.Queue()
        self.process = context.Process(target=_report, args=(self.results, function, *args), daemon=True)
        self.process.start()

    def result(self, bound: float = 4 * BOUND) -> Any:
        # a spawn child starts a fresh interpreter first: a generous bound
        status, value = self.results.get(timeout=bound)
        assert status == "ok", f"the child failed:\n{value}"
        return value

    def join(self, bound: float = 4 * BOUND) -> int | None:
        self.process.join(bound)
        assert not self.process.is_alive(), "the child did not exit"
        return self.process.exitcode

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(BOUND)


#: What the ``waiters`` fixture gives a test: start a :class:`WaiterThread` running a call.
StartWaiter = Callable[[Callable[[], Any]], WaiterThread]
