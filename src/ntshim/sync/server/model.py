"""The ntsync state machine in pure Python, single-threaded: the heart of the ``server``
backend, and the reference the other backends are compared with.

It follows the Linux driver's algorithm (``drivers/misc/ntsync.c``) step for step, minus
its locking (one thread owns a :class:`Model`):

- every object keeps two FIFO queues of wait entries, *wait-all* and *wait-any*;
- a wait-any queues one entry per object (the alert last), then offers each object in
  index order to its whole any-queue until the new waiter is satisfied;
- a wait-all queues on every object's all-queue and the alert's any-queue, tries to take
  all objects at once, and only then offers the alert;
- every state change that can signal (release, unlock, kill, set, pulse) first offers the
  object to its wait-all waiters, then to its wait-any waiters, in queue order, and
  *completes* each satisfied waiter's acquisition before returning (hand-off).

Beyond ntsync, each wait and each owned creation names a *holder* (an opaque hashable: the
server uses the client connection of the acquiring thread), and each wait its *process* (the
server uses the process's record).  A mutex remembers the holder that took it from unowned;
a lock (``threading.Lock`` across processes: signaled when unlocked, never recursive,
released by anyone) remembers the process that took it, because it outlives the acquiring
thread.  :meth:`Model.abandon_holder` abandons every mutex or lock a vanished holder or
process still has, exactly as ``kill`` would, waking the next waiter.

Nothing here does I/O or knows about time: the server reacts to :attr:`Model.notify`
(called once for every waiter the moment it is satisfied) and cancels waiters whose deadline
passed with :meth:`Model.cancel`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from ..backend import U32_MAX, InitialState, Kind

#: Waiter states besides "satisfied with index i" (>= 0).
PENDING = -1
CANCELLED = -2


class ObjectState:
    """One semaphore, mutex, event or lock with its two wait queues.

    Queues are dicts used as ordered sets (insertion order is FIFO order; removal is O(1)).
    """

    __slots__ = (
        "__weakref__",
        "abandoned",
        "all_waiters",
        "any_waiters",
        "count",
        "holder",
        "kind",
        "manual",
        "maximum",
        "owner",
        "signaled",
        "taker",
    )

    def __init__(self, kind: Kind) -> None:
        self.kind: Kind = kind
        self.count = 0  # semaphore count, mutex recursion count, lock 1 when locked
        self.maximum = 0  # semaphore
        self.owner = 0  # mutex owner id, 0 when unowned
        self.abandoned = False  # mutex, lock
        self.holder: Hashable | None = None  # mutex: who took it from unowned; lock: whose process
        #: lock: the wait that took it, so that a rollback gives back only that acquisition
        #: (anyone may release a lock, and another may take it before the rollback comes).
        self.taker: Waiter | None = None
        self.manual = False  # event
        self.signaled = False  # event
        self.any_waiters: dict[Entry, None] = {}
        self.all_waiters: dict[Entry, None] = {}

    def is_signaled(self, owner: int) -> bool:
        if self.kind == "semaphore":
            return self.count > 0
        if self.kind == "mutex":
            if self.owner and self.owner != owner:
                return False
            return self.count < U32_MAX
        if self.kind == "lock":
            return self.count == 0  # whoever asks: a lock is not recursive
        return self.signaled

    def __repr__(self) -> str:
        if self.kind == "semaphore":
            return f"<semaphore {self.count}/{self.maximum}>"
        if self.kind == "mutex":
            return f"<mutex owner={self.owner} count={self.count}{' abandoned' if self.abandoned else ''}>"
        if self.kind == "lock":
            return f"<lock {'locked' if self.count else 'unlocked'}{' abandoned' if self.abandoned else ''}>"
        return f"<{'manual' if self.manual else 'auto'} event {'set' if self.signaled else 'unset'}>"


class Entry:
    """A waiter's place in one object's queue.  ``index`` is the object's position in the
    wait (``len(objects)`` for the alert)."""

    __slots__ = ("index", "obj", "waiter")

    def __init__(self, waiter: Waiter, obj: ObjectState, index: int) -> None:
        self.waiter = waiter
        self.obj = obj
        self.index = index


@dataclass(eq=False, slots=True)
class Waiter:
    """One wait.  ``signaled`` is :data:`PENDING`, :data:`CANCELLED` or the satisfied index;
    ``acquired`` lists what the wait took, with whether each mutex or lock was abandoned, so
    that an interrupted client's wait can be given back (:meth:`Model.rollback`)."""

    owner: int
    wait_all: bool
    count: int  # objects, the alert excluded
    holder: Hashable | None
    #: Who holds a lock the wait takes (None: nobody, it is never abandoned for a death).
    process: Hashable | None = None
    entries: list[Entry] = field(default_factory=list)
    signaled: int = PENDING
    abandoned: bool = False
    acquired: list[tuple[ObjectState, bool]] = field(default_factory=list)
    #: Free for the owner of the model (the server keeps its connection here).
    tag: object = None

    @property
    def pending(self) -> bool:
        return self.signaled == PENDING


@dataclass
class Rollback:
    """What :meth:`Model.rollback` gave back: ``returned`` objects, and those it could not
    (a semaphore refilled to its maximum meanwhile, a mutex no longer owned by the waiter, a
    lock released meanwhile)."""

    returned: int = 0
    kept: int = 0


class Model:
    """All objects and waiters of one namespace.  Not thread-safe: one thread drives it."""

    def __init__(self, notify: Callable[[Waiter], None] | None = None) -> None:
        #: Called once for each waiter as it is satisfied (its acquisition already done).
        self.notify: Callable[[Waiter], None] = notify or (lambda waiter: None)
        #: holder -> mutexes it took from unowned and still owns; process -> locks it holds.
        self._held: dict[Hashable, set[ObjectState]] = {}

    # ----- objects -----------------------------------------------------------------

    def create(self, kind: Kind, initial: InitialState, holder: Hashable | None = None) -> ObjectState:
        """A new object in the state ``initial`` (:data:`~ntshim.sync.backend.InitialState`),
        assumed valid.  An owned mutex is held by ``holder``; a lock starts unlocked."""
        obj = ObjectState(kind)
        if kind == "semaphore":
            obj.count, obj.maximum = initial
        elif kind == "mutex":
            obj.owner, obj.count = initial
            if obj.count:
                self._hold(obj, holder)
        elif kind == "event":
            manual, signaled = initial
            obj.manual, obj.signaled = bool(manual), bool(signaled)
        return obj

    def destroy(self, obj: ObjectState) -> None:
        """Forget an object nobody references any more (no waiter can be queued on it: a
        wait references its objects)."""
        assert not obj.any_waiters and not obj.all_waiters, "destroying an object with waiters"
        self._unhold(obj)

    def _hold(self, mutex: ObjectState, holder: Hashable | None) -> None:
        mutex.holder = holder
        if holder is not None:
            self._held.setdefault(holder, set()).add(mutex)

    def _unhold(self, mutex: ObjectState) -> None:
        holder, mutex.holder = mutex.holder, None
        if holder is not None:
            held = self._held.get(holder)
            if held is not None:
                held.discard(mutex)
                if not held:
                    del self._held[holder]

    # ----- acquisition -------------------------------------------------------------

    def _take(self, waiter: Waiter, obj: ObjectState) -> None:
        """Consume ``obj`` for ``waiter`` (it is signaled for the waiter's owner)."""
        abandoned = False
        if obj.kind == "semaphore":
            obj.count -= 1
        elif obj.kind == "event":
            if not obj.manual:
                obj.signaled = False
        else:
            abandoned, obj.abandoned = obj.abandoned, False
            waiter.abandoned |= abandoned
            if obj.kind == "lock":
                obj.count = 1
                obj.taker = waiter
                self._hold(obj, waiter.process)
            else:
                if obj.count == 0:
                    self._hold(obj, waiter.holder)
                obj.count += 1
                obj.owner = waiter.owner
        waiter.acquired.append((obj, abandoned))

    def _satisfy(self, waiter: Waiter, index: int) -> None:
        waiter.signaled = index
        self._dequeue(waiter)
        self.notify(waiter)

    def _dequeue(self, waiter: Waiter) -> None:
        for i, entry in enumerate(waiter.entries):
            queue = entry.obj.all_waiters if waiter.wait_all and i < waiter.count else entry.obj.any_waiters
            queue.pop(entry, None)

    def _try_wake_all(self, waiter: Waiter) -> None:
        if not waiter.pending:
            return
        objects = [entry.obj for entry in waiter.entries[: waiter.count]]
        if all(obj.is_signaled(waiter.owner) for obj in objects):
            for obj in objects:
                self._take(waiter, obj)
            self._satisfy(waiter, 0)

    def _try_wake_all_obj(self, obj: ObjectState) -> None:
        # A snapshot: satisfied waiters leave the queue as we go.
        for entry in list(obj.all_waiters):
            self._try_wake_all(entry.waiter)

    def _try_wake_any(self, obj: ObjectState) -> None:
        for entry in list(obj.any_waiters):
            waiter = entry.waiter
            if obj.kind == "semaphore":
                if not obj.count:
                    break
            elif obj.kind == "mutex":
                if obj.count == U32_MAX:
                    break
                if obj.owner and obj.owner != waiter.owner:
                    continue
            elif obj.kind == "lock":
                if obj.count:
                    break  # locked for every waiter alike
            elif not obj.signaled:
                break
            if waiter.pending:
                self._take(waiter, obj)
                self._satisfy(waiter, entry.index)

    def _signal(self, obj: ObjectState) -> None:
        """``obj`` may have become signaled: wait-all waiters first, then wait-any."""
        self._try_wake_all_obj(obj)
        self._try_wake_any(obj)

    # ----- waits -------------------------------------------------------------------

    def wait(
        self,
        objects: Sequence[ObjectState],
        wait_all: bool,
        owner: int,
        alert: ObjectState | None = None,
        holder: Hashable | None = None,
        tag: object = None,
        process: Hashable | None = None,
    ) -> Waiter:
        """Queue a wait and try it at once.  The returned waiter is satisfied already (and
        :attr:`notify` was called) or pending until a signal or :meth:`cancel`.  Assumes
        valid input: 1..64 objects (or none, for a wait-any on its alert alone), distinct for wait-all (the alert included), an event as
        alert, owner nonzero.  A mutex it takes is held by ``holder``, a lock by ``process``."""
        waiter = Waiter(owner=owner, wait_all=wait_all, count=len(objects), holder=holder, process=process, tag=tag)
        waiter.entries = [Entry(waiter, obj, i) for i, obj in enumerate(objects)]
        if alert is not None:
            waiter.entries.append(Entry(waiter, alert, len(objects)))
        if not wait_all:
            for entry in waiter.entries:
                entry.obj.any_waiters[entry] = None
            # Objects before the alert, in index order: the lowest signaled index wins.
            for entry in waiter.entries:
                if not waiter.pending:
                    break
                self._try_wake_any(entry.obj)
        else:
            for entry in waiter.entries[: waiter.count]:
                entry.obj.all_waiters[entry] = None
            if alert is not None:
                alert.any_waiters[waiter.entries[-1]] = None
            self._try_wake_all(waiter)
            # The alert only after the objects: when both could be taken, the objects win.
            if alert is not None and waiter.pending:
                self._try_wake_any(alert)
        return waiter

    def cancel(self, waiter: Waiter) -> bool:
        """End a wait that timed out or was abandoned by its client.  True if it was still
        pending (nothing acquired); False if it had been satisfied already."""
        if not waiter.pending:
            return False
        waiter.signaled = CANCELLED
        self._dequeue(waiter)
        return True

    def rollback(self, waiter: Waiter) -> Rollback:
        """Give back what a satisfied wait acquired, with ordinary operations, as if its
        client had released everything the moment it woke: a semaphore unit is released, a
        mutex unlocked once (killed again if the wait had taken it abandoned, so the next
        owner still learns), a lock released (left abandoned again likewise) unless it is no
        longer this wait's, an auto-reset event set again.  Used when the client was
        interrupted and will never learn that it acquired anything."""
        result = Rollback()
        taken, waiter.acquired = waiter.acquired, []
        for obj, abandoned in taken:
            try:
                if obj.kind == "semaphore":
                    self.sem_release(obj, 1)
                elif obj.kind == "mutex":
                    if abandoned and obj.owner == waiter.owner and obj.count == 1:
                        self.mutex_kill(obj, waiter.owner)
                    else:
                        self.mutex_unlock(obj, waiter.owner)
                elif obj.kind == "lock":
                    if obj.taker is not waiter:
                        # Released meanwhile (anyone may), perhaps taken again by another
                        # wait: that acquisition is not this one's to give back.
                        result.kept += 1
                        continue
                    self.lock_release(obj, abandon=abandoned)
                elif not obj.manual:
                    self.event_set(obj)
                else:
                    continue  # a manual event is not consumed by a wait
            except (OverflowError, PermissionError):
                result.kept += 1
            else:
                result.returned += 1
        return result

    # ----- operations --------------------------------------------------------------

    def sem_release(self, sem: ObjectState, count: int) -> int:
        previous = sem.count
        if previous + count > sem.maximum:  # the maximum is at most U32_MAX: overflow too
            raise OverflowError(f"releasing {count} would take the count past the maximum ({sem.maximum})")
        sem.count = previous + count
        self._signal(sem)
        return previous

    @staticmethod
    def sem_read(sem: ObjectState) -> tuple[int, int]:
        return sem.count, sem.maximum

    def mutex_unlock(self, mutex: ObjectState, owner: int) -> int:
        if mutex.owner != owner:
            raise PermissionError(f"owner {owner} does not own this mutex")
        previous = mutex.count
        mutex.count -= 1
        if not mutex.count:
            mutex.owner = 0
            self._unhold(mutex)
        self._signal(mutex)
        return previous

    def mutex_kill(self, mutex: ObjectState, owner: int) -> None:
        if mutex.owner != owner:
            raise PermissionError(f"owner {owner} does not own this mutex")
        self._abandon(mutex)

    def _abandon(self, obj: ObjectState) -> None:
        """Leave a mutex or lock free and abandoned, and hand it on."""
        obj.abandoned = True
        obj.owner = 0
        obj.count = 0
        obj.taker = None
        self._unhold(obj)
        self._signal(obj)

    def abandon_holder(self, holder: Hashable) -> int:
        """``holder`` is gone (its thread exited, its process died): abandon every mutex it
        still owns, or every lock if it is a process.  Returns how many."""
        held = self._held.pop(holder, set())
        for obj in held:
            obj.holder = None  # already out of the index
            if obj.count:
                self._abandon(obj)
        return len(held)

    @staticmethod
    def mutex_read(mutex: ObjectState) -> tuple[int, int, bool]:
        return mutex.owner, mutex.count, mutex.abandoned

    def lock_release(self, lock: ObjectState, abandon: bool = False) -> None:
        """Unlock (anyone may); with ``abandon``, leave it abandoned as if its holder died."""
        if not lock.count:
            raise PermissionError("the lock is not locked")
        if abandon:
            self._abandon(lock)
            return
        lock.count = 0
        lock.taker = None
        self._unhold(lock)
        self._signal(lock)

    @staticmethod
    def lock_read(lock: ObjectState) -> tuple[bool, bool]:
        return bool(lock.count), lock.abandoned

    def event_set(self, event: ObjectState, pulse: bool = False) -> bool:
        previous = event.signaled
        event.signaled = True
        self._signal(event)
        if pulse:
            event.signaled = False
        return previous

    def event_pulse(self, event: ObjectState) -> bool:
        return self.event_set(event, pulse=True)

    @staticmethod
    def event_reset(event: ObjectState) -> bool:
        previous, event.signaled = event.signaled, False
        return previous

    @staticmethod
    def event_read(event: ObjectState) -> tuple[bool, bool]:
        return event.manual, event.signaled
