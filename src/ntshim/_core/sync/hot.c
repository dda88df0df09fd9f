/* The hot methods of ntshim.sync's objects, in C (issue 14): a Python program's most
 * frequent calls (`with lock:`, acquire(), release(), locked(), set(), is_set(), clear(),
 * wait()) go from the interpreter straight to the arena, without the Python layer's frames.
 *
 * The Python classes (Lock, Mutex/RLock, Semaphore/BoundedSemaphore, Event) derive from
 * these types and keep the policy: each C method serves the common case of an open object
 * on the futex backend (`_slot` set) and hands every other case, with the same arguments,
 * to the Python method of the same name prefixed `_slow_` (another backend, a closed
 * object, a timeout to check, a wait that must sleep, an error to explain, a mutex that a
 * task holds).  Handing over after a failed attempt is sound because a failed attempt
 * changes nothing: a wait that did not succeed acquired nothing, a release or a set that
 * failed changed nothing.  So both paths answer alike, exactly. */
#include "sync.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    uint32_t slot;  /* the futex arena's object while the Python object is open on it, else 0 */
    char abandoned; /* locks: this hold began by taking over an abandoned one */
} nts_hot;

static PyObject *s_slow_acquire, *s_slow_release, *s_slow_locked, *s_slow_set, *s_slow_is_set, *s_slow_clear,
    *s_slow_wait, *s_took_over, *s_give_up;

/* The Python method `name` with the caller's arguments (which it checks). */
static PyObject *slow(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *method = PyObject_GetAttr(self, name);
    if (!method)
        return NULL;
    PyObject *result = PyObject_Vectorcall(method, args, (size_t)nargs, kwnames);
    Py_DECREF(method);
    return result;
}

/* The arena, when the C path serves this object; NULL (no exception) otherwise. */
static nts_arena *arena_of(nts_hot *self)
{
    nts_arena *a = self->slot ? nts_sync_py_arena() : NULL;
    if (!a)
        PyErr_Clear(); /* (Python attaches the arena, or says why it cannot) */
    return a;
}

/* What a lock or a semaphore asks of a waiter's owner id: nothing but not 0. */
#define ANY_OWNER 1

enum { TAKEN = 1, NOT_NOW = 0, TO_PYTHON = -1, RAISED = -2 };

/* One attempt to acquire without sleeping, for `owner`; a lock or mutex taken over from a
 * dead holder is reported (self._took_over_abandoned(self._give_up)). */
static int try_acquire(nts_hot *self, uint32_t owner)
{
    static const struct timespec poll = {0, 0};
    nts_arena *a = arena_of(self);
    if (!a)
        return TO_PYTHON;
    int abandoned, err = nts_sync_wait_one(a, self->slot, &poll, owner, &abandoned);
    if (err)
        return err == ETIMEDOUT ? NOT_NOW : TO_PYTHON;
    if (abandoned) {
        PyObject *give_up = PyObject_GetAttr((PyObject *)self, s_give_up);
        PyObject *r = give_up ? PyObject_CallMethodOneArg((PyObject *)self, s_took_over, give_up) : NULL;
        Py_XDECREF(give_up);
        if (!r)
            return RAISED; /* the warning, made an error: raised, the lock left abandoned */
        Py_DECREF(r);
    }
    return TAKEN;
}

/* acquire(blocking=True, timeout=...) of the locks and semaphores: served here without a
 * timeout; a wait that must sleep, or a timeout to check, is Python's. */
static PyObject *acquire(nts_hot *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, uint32_t owner)
{
    if (nargs > 2) { /* (said here: the Python method's name is not the caller's business) */
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *blocking_arg = nargs == 1 ? args[0] : NULL;
    int plain = nargs <= 1;
    if (kwnames) {
        plain = nargs == 0 && PyTuple_GET_SIZE(kwnames) == 1 &&
                PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "blocking") == 0;
        blocking_arg = args[0];
    }
    if (plain) {
        int blocking = blocking_arg ? PyObject_IsTrue(blocking_arg) : 1;
        if (blocking < 0)
            return NULL;
        switch (try_acquire(self, owner)) {
        case TAKEN:
            Py_RETURN_TRUE;
        case NOT_NOW:
            if (!blocking)
                Py_RETURN_FALSE;
            break; /* to sleep: Python's wait releases the GIL, and answers signals */
        case RAISED:
            return NULL;
        }
    }
    return slow((PyObject *)self, s_slow_acquire, args, nargs, kwnames);
}

/* __enter__: acquire(), then the object. */
static PyObject *enter(PyObject *self, PyObject *acquired)
{
    if (!acquired)
        return NULL;
    Py_DECREF(acquired);
    return Py_NewRef(self);
}

/* ---------------------------------------------------------------- Lock */

static PyObject *lock_acquire(nts_hot *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return acquire(self, args, nargs, kwnames, ANY_OWNER);
}

static PyObject *lock_release(nts_hot *self, PyObject *unused)
{
    nts_arena *a = arena_of(self);
    if (a) {
        char was = self->abandoned;
        self->abandoned = 0; /* (before: the next holder may set it) */
        int err = nts_sync_lock_release(a, self->slot, 0);
        if (!err)
            Py_RETURN_NONE;
        self->abandoned = was;
        if (err == EPERM) {
            PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
            return NULL;
        }
    }
    return slow((PyObject *)self, s_slow_release, NULL, 0, NULL);
}

static PyObject *lock_locked(nts_hot *self, PyObject *unused)
{
    nts_arena *a = arena_of(self);
    int locked, abandoned;
    if (a && !nts_sync_lock_read(a, self->slot, &locked, &abandoned))
        return PyBool_FromLong(locked);
    return slow((PyObject *)self, s_slow_locked, NULL, 0, NULL);
}

static PyObject *lock_enter(nts_hot *self, PyObject *unused)
{
    return enter((PyObject *)self, lock_acquire(self, NULL, 0, NULL));
}

static PyObject *lock_exit(nts_hot *self, PyObject *const *args, Py_ssize_t nargs) { return lock_release(self, NULL); }

/* ---------------------------------------------------------------- Mutex (RLock) */

static PyObject *mutex_acquire(nts_hot *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return acquire(self, args, nargs, kwnames, nts_sync_thread_id());
}

static PyObject *mutex_release(nts_hot *self, PyObject *unused)
{
    /* This thread's hold, here; anything else (a task's hold through asyncio's dispatcher,
     * whose owner id is the dispatcher's; no hold at all) Python sorts out. */
    nts_arena *a = arena_of(self);
    uint32_t prev;
    char was = self->abandoned;
    self->abandoned = 0; /* (before the last level goes, as the Python form does) */
    if (a && !nts_sync_mutex_unlock(a, self->slot, nts_sync_thread_id(), &prev)) {
        if (prev > 1)
            self->abandoned = was; /* still held */
        Py_RETURN_NONE;
    }
    self->abandoned = was;
    return slow((PyObject *)self, s_slow_release, NULL, 0, NULL);
}

static PyObject *mutex_locked(nts_hot *self, PyObject *unused)
{
    nts_arena *a = arena_of(self);
    uint32_t owner, count;
    int abandoned;
    if (a && !nts_sync_mutex_read(a, self->slot, &owner, &count, &abandoned))
        return PyBool_FromLong(count > 0);
    return slow((PyObject *)self, s_slow_locked, NULL, 0, NULL);
}

static PyObject *mutex_enter(nts_hot *self, PyObject *unused)
{
    return enter((PyObject *)self, mutex_acquire(self, NULL, 0, NULL));
}

static PyObject *mutex_exit(nts_hot *self, PyObject *const *args, Py_ssize_t nargs)
{
    return mutex_release(self, NULL);
}

/* ---------------------------------------------------------------- Semaphore */

static PyObject *sem_acquire(nts_hot *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return acquire(self, args, nargs, kwnames, ANY_OWNER);
}

static PyObject *sem_release(nts_hot *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* release(): one unit, here; a count to check, or a count past the maximum (whose
     * message is the class's), Python's. */
    nts_arena *a = nargs || kwnames ? NULL : arena_of(self);
    uint32_t prev;
    if (a && !nts_sync_sem_release(a, self->slot, 1, &prev))
        return PyLong_FromUnsignedLong(prev);
    return slow((PyObject *)self, s_slow_release, args, nargs, kwnames);
}

static PyObject *sem_enter(nts_hot *self, PyObject *unused)
{
    return enter((PyObject *)self, sem_acquire(self, NULL, 0, NULL));
}

static PyObject *sem_exit(nts_hot *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *prev = sem_release(self, NULL, 0, NULL);
    if (!prev)
        return NULL;
    Py_DECREF(prev);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- Event */

static PyObject *event_op(nts_hot *self, int op, PyObject *name, int want_previous)
{
    nts_arena *a = arena_of(self);
    int prev;
    if (a && !nts_sync_event_op(a, self->slot, op, &prev)) {
        if (want_previous)
            return PyBool_FromLong(prev);
        Py_RETURN_NONE;
    }
    return slow((PyObject *)self, name, NULL, 0, NULL);
}

static PyObject *event_set(nts_hot *self, PyObject *unused)
{
    return event_op(self, NTS_SYNC_EVENT_SET, s_slow_set, 1);
}

static PyObject *event_clear(nts_hot *self, PyObject *unused)
{
    return event_op(self, NTS_SYNC_EVENT_RESET, s_slow_clear, 0);
}

static PyObject *event_is_set(nts_hot *self, PyObject *unused)
{
    nts_arena *a = arena_of(self);
    int manual, signaled;
    if (a && !nts_sync_event_read(a, self->slot, &manual, &signaled))
        return PyBool_FromLong(signaled);
    return slow((PyObject *)self, s_slow_is_set, NULL, 0, NULL);
}

static PyObject *event_wait(nts_hot *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* Served here: wait() and wait(0) (a poll); a wait that must sleep, and any other
     * timeout, Python's. */
    PyObject *timeout = nargs == 1 && !kwnames ? args[0] : NULL;
    int poll_only = timeout && (PyLong_CheckExact(timeout) || PyFloat_CheckExact(timeout)) &&
                    PyObject_Not(timeout) == 1; /* 0 or 0.0 */
    if ((nargs == 0 && !kwnames) || poll_only) {
        switch (try_acquire(self, ANY_OWNER)) {
        case TAKEN:
            Py_RETURN_TRUE;
        case NOT_NOW:
            if (poll_only)
                Py_RETURN_FALSE;
            break;
        case RAISED:
            return NULL;
        }
    }
    return slow((PyObject *)self, s_slow_wait, args, nargs, kwnames);
}

/* ---------------------------------------------------------------- wait_any, wait_all */

#define FAST (PyCFunction)(void (*)(void))

static PyTypeObject lock_type, mutex_type, sem_type, event_type;

/* The deadline for a timeout of None or a plain number of seconds (0 to 1e9: the common
 * ones); 0 with *out NULL for None, 1 for a deadline, -1 for anything else (Python checks
 * it and says what is wrong). */
static int hot_deadline(PyObject *timeout, struct timespec *ts, struct timespec **out)
{
    *out = NULL;
    if (timeout == Py_None)
        return 0;
    double seconds;
    if (PyLong_CheckExact(timeout)) {
        long v = PyLong_AsLong(timeout);
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
        seconds = (double)v;
    } else if (PyFloat_CheckExact(timeout)) {
        seconds = PyFloat_AS_DOUBLE(timeout);
    } else {
        return -1;
    }
    if (!(seconds >= 0 && seconds <= 1e9)) /* (NaN fails too) */
        return -1;
    clock_gettime(CLOCK_MONOTONIC, ts);
    long long ns = (long long)ts->tv_nsec + (long long)ceil(seconds * 1e9);
    ts->tv_sec += (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
    *out = ts;
    return 1;
}

/* sync_wait_hot(objects, timeout, all) -> (index, abandoned) | None: wait_any/wait_all for
 * a list or tuple of open futex objects, the calling thread as owner, no alert, and a
 * timeout of None or a plain number; None (nothing taken) for anything else, and for an
 * error of the arena: the Python function then serves the call, and checks and explains. */
static PyObject *wait_hot(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !(PyList_CheckExact(args[0]) || PyTuple_CheckExact(args[0])))
        Py_RETURN_NONE;
    PyObject *seq = args[0];
    int all = PyObject_IsTrue(args[2]);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (all < 0 || count < 1 || count > NTS_SYNC_MAX_WAIT) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    uint32_t slots[NTS_SYNC_MAX_WAIT];
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *obj = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyObject_TypeCheck(obj, &lock_type) && !PyObject_TypeCheck(obj, &mutex_type) &&
            !PyObject_TypeCheck(obj, &sem_type) && !PyObject_TypeCheck(obj, &event_type))
            Py_RETURN_NONE;
        if (!(slots[i] = ((nts_hot *)obj)->slot))
            Py_RETURN_NONE; /* closed, or on another backend */
        for (Py_ssize_t j = 0; all && j < i; j++)
            if (slots[j] == slots[i])
                Py_RETURN_NONE; /* wait_all names it twice: Python says so */
    }
    struct timespec deadline, *dp;
    nts_arena *a = hot_deadline(args[1], &deadline, &dp) < 0 ? NULL : nts_sync_py_arena();
    if (!a) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int failed;
    PyObject *outcome = nts_sync_py_wait(a, slots, (uint32_t)count, all, dp, nts_sync_thread_id(), 0, &failed);
    if (!outcome && failed) { /* nothing taken: Python waits again and explains the error */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return outcome;
}

static PyMethodDef hot_functions[] = {
    {"sync_wait_hot", FAST wait_hot, METH_FASTCALL,
     "sync_wait_hot(objects, timeout, all) -> (index, abandoned) | None\n\nwait_any/wait_all for open futex "
     "objects, the calling thread as owner, no alert; None when it cannot serve the call (nothing taken)."},
    {NULL},
};

/* ---------------------------------------------------------------- the types */

static PyMethodDef lock_methods[] = {
    {"acquire", FAST lock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool\n\nLock, waiting while it is locked (at most timeout seconds; "
     "-1: for ever); False if not locked.  An abandoned lock is acquired (True) with abandoned set and an "
     "AbandonedWarning."},
    {"release", (PyCFunction)lock_release, METH_NOARGS, "release()\n\nUnlock; RuntimeError if it is not locked."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, "locked() -> bool\n\nWhether some thread holds the lock."},
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, "Acquire, waiting as long as it takes."},
    {"__exit__", FAST lock_exit, METH_FASTCALL, "Release."},
    {NULL},
};

static PyMethodDef mutex_methods[] = {
    {"acquire", FAST mutex_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool\n\nAcquire one level for the calling thread, waiting while "
     "another thread holds it (at most timeout seconds; -1: for ever); False if not acquired.  An abandoned "
     "mutex is acquired (True) with abandoned set and an AbandonedWarning."},
    {"release", (PyCFunction)mutex_release, METH_NOARGS,
     "release()\n\nRelease one level; RuntimeError if the calling thread (or, in a coroutine, the task that took "
     "it with acquire_async) does not hold it."},
    {"locked", (PyCFunction)mutex_locked, METH_NOARGS, "locked() -> bool\n\nWhether some thread holds it."},
    {"__enter__", (PyCFunction)mutex_enter, METH_NOARGS, "Acquire, waiting as long as it takes."},
    {"__exit__", FAST mutex_exit, METH_FASTCALL, "Release."},
    {NULL},
};

static PyMethodDef sem_methods[] = {
    {"acquire", FAST sem_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=None) -> bool\n\nTake one from the count, waiting (at most timeout "
     "seconds; None: for ever) while it is 0; False if none was taken."},
    {"release", FAST sem_release, METH_FASTCALL | METH_KEYWORDS,
     "release(n=1) -> int\n\nAdd n (at least 1) to the count, waking waiters; return the previous count.  "
     "SemaphoreOverflowError, and no change, if the count would pass the maximum."},
    {"__enter__", (PyCFunction)sem_enter, METH_NOARGS, "Acquire, waiting as long as it takes."},
    {"__exit__", FAST sem_exit, METH_FASTCALL, "Release one."},
    {NULL},
};

static PyMethodDef event_methods[] = {
    {"set", (PyCFunction)event_set, METH_NOARGS, "set() -> bool\n\nSignal the event; return the previous state."},
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS, "is_set() -> bool\n\nWhether the event is signaled."},
    {"clear", (PyCFunction)event_clear, METH_NOARGS, "clear()\n\nUnsignal the event (reset, as threading names it)."},
    {"wait", FAST event_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None) -> bool\n\nWait until the event is signaled (at most timeout seconds; None: for ever); "
     "return whether it was.  Waiting on an auto-reset event resets it."},
    {NULL},
};

static PyMemberDef members[] = {
    {"_slot", T_UINT, offsetof(nts_hot, slot), 0,
     "the futex arena's object the C methods use (0: they hand every call to Python)"},
    {NULL},
};

static PyMemberDef lock_members[] = {
    {"_slot", T_UINT, offsetof(nts_hot, slot), 0,
     "the futex arena's object the C methods use (0: they hand every call to Python)"},
    {"abandoned", T_BOOL, offsetof(nts_hot, abandoned), 0,
     "whether this process's current hold began by taking over an abandoned lock: what the dead holder "
     "protected may be half changed (False again once it is released)"},
    {NULL},
};

#define HOT_TYPE(var, name, methods_, members_)                                                                        \
    static PyTypeObject var = {                                                                                        \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ntshim._core." name,                                                 \
        .tp_basicsize = sizeof(nts_hot),                                                                               \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,                                                          \
        .tp_doc = "The hot methods of ntshim.sync's " name " (see ntshim/_core/sync/hot.c).",                          \
        .tp_methods = methods_,                                                                                        \
        .tp_members = members_,                                                                                        \
        .tp_new = PyType_GenericNew,                                                                                   \
    }

HOT_TYPE(lock_type, "LockBase", lock_methods, lock_members);
HOT_TYPE(mutex_type, "MutexBase", mutex_methods, lock_members);
HOT_TYPE(sem_type, "SemaphoreBase", sem_methods, members);
HOT_TYPE(event_type, "EventBase", event_methods, members);

int nts_sync_hot_init(PyObject *mod)
{
    struct {
        PyObject **var;
        const char *text;
    } names[] = {
        {&s_slow_acquire, "_slow_acquire"}, {&s_slow_release, "_slow_release"},     {&s_slow_locked, "_slow_locked"},
        {&s_slow_set, "_slow_set"},         {&s_slow_is_set, "_slow_is_set"},       {&s_slow_clear, "_slow_clear"},
        {&s_slow_wait, "_slow_wait"},       {&s_took_over, "_took_over_abandoned"}, {&s_give_up, "_give_up"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!*names[i].var && !(*names[i].var = PyUnicode_InternFromString(names[i].text)))
            return -1;
    if (PyModule_AddFunctions(mod, hot_functions) < 0)
        return -1;
    PyTypeObject *types[] = {&lock_type, &mutex_type, &sem_type, &event_type};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (PyType_Ready(types[i]) < 0 ||
            PyModule_AddObjectRef(mod, strrchr(types[i]->tp_name, '.') + 1, (PyObject *)types[i]) < 0)
            return -1;
    return 0;
}
