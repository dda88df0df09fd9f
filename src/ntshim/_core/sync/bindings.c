/* Python bindings of arena.c: one arena per process, objects named by slot.
 * Errors become OSError subclasses by errno, except EOVERFLOW.
 *
 * The GIL: waits release it, after one attempt with it held (an object that is
 * already signaled costs no GIL round trip).  Releases, sets, reads keep it, as
 * threading.Lock.release does: they hold the arena lock for a few hundred
 * nanoseconds, and handing the GIL to the thread they wake and taking it back
 * would cost far more.  Creation and opening, which may sweep dead processes
 * (a liveness query per process slot), release it. */
#include "sync.h"

#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

static nts_arena *g_py_arena;

nts_arena *nts_sync_py_arena(void)
{
    if (!g_py_arena)
        PyErr_SetString(PyExc_RuntimeError, "the sync arena is not attached (ntshim.sync.futex attaches it)");
    return g_py_arena;
}

/* Parse the arguments (PyArg_ParseTuple's format), then return the attached arena;
 * NULL with the exception set when either fails. */
static nts_arena *parse(PyObject *args, const char *format, ...)
{
    va_list va;
    va_start(va, format);
    int ok = PyArg_VaParse(args, format, va);
    va_end(va);
    return ok ? nts_sync_py_arena() : NULL;
}

static PyObject *fail(int err, const char *what)
{
    if (err == EOVERFLOW) {
        PyErr_SetString(PyExc_OverflowError, "the count would exceed the semaphore's maximum");
        return NULL;
    }
    return nts_raise_errno(err, "%s", what);
}

#define CALL(expr)                                                                                                     \
    ({                                                                                                                 \
        int err_;                                                                                                      \
        Py_BEGIN_ALLOW_THREADS                                                                                         \
        err_ = (expr);                                                                                                 \
        Py_END_ALLOW_THREADS                                                                                           \
        err_;                                                                                                          \
    })

static PyObject *py_format(PyObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    int err = CALL(nts_sync_format(fd));
    return err ? fail(err, "sync arena format") : Py_NewRef(Py_None);
}

static PyObject *py_layout(PyObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    uint32_t magic, version;
    uint64_t size;
    int err = nts_sync_layout(fd, &magic, &version, &size);
    return err ? fail(err, "sync arena layout") : Py_BuildValue("IIK", magic, version, (unsigned long long)size);
}

static PyObject *py_in_use(PyObject *self, PyObject *args)
{
    int fd, in_use;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    int err = nts_sync_in_use(fd, &in_use);
    return err ? fail(err, "sync arena liveness locks") : PyBool_FromLong(in_use);
}

static PyObject *py_damage(PyObject *self, PyObject *unused)
{
    const char *why = nts_sync_damage();
    return why ? PyUnicode_FromString(why) : Py_NewRef(Py_None);
}

static PyObject *py_attach(PyObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    if (g_py_arena) {
        PyErr_SetString(PyExc_RuntimeError, "a sync arena is already attached in this process");
        return NULL;
    }
    nts_arena *a;
    int err = CALL(nts_sync_attach(fd, &a));
    if (err)
        return fail(err, "sync arena attach");
    g_py_arena = a;
    Py_RETURN_NONE;
}

static PyObject *py_detach(PyObject *self, PyObject *unused)
{
    nts_arena *a = nts_sync_py_arena();
    if (!a)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    nts_sync_detach(a);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_create(PyObject *self, PyObject *args)
{
    int kind;
    nts_sync_state initial;
    const char *name = NULL;
    Py_ssize_t len = 0;
    nts_arena *a = parse(args, "i(II)z#", &kind, &initial.words[0], &initial.words[1], &name, &len);
    if (!a)
        return NULL;
    uint32_t slot, gen;
    int created;
    int err = CALL(nts_sync_create(a, kind, initial, name, (size_t)len, &slot, &gen, &created));
    if (err)
        return fail(err, "sync create");
    return Py_BuildValue("IIO", slot, gen, created ? Py_True : Py_False);
}

static PyObject *py_open(PyObject *self, PyObject *args)
{
    int kind;
    const char *name;
    Py_ssize_t len;
    nts_arena *a = parse(args, "iy#", &kind, &name, &len);
    if (!a)
        return NULL;
    uint32_t slot, gen;
    int err = CALL(nts_sync_open(a, kind, name, (size_t)len, &slot, &gen));
    return err ? fail(err, "sync open") : Py_BuildValue("II", slot, gen);
}

static PyObject *py_ref(PyObject *self, PyObject *args)
{
    int kind;
    unsigned int slot, gen;
    nts_arena *a = parse(args, "iII", &kind, &slot, &gen);
    if (!a)
        return NULL;
    int err = CALL(nts_sync_ref(a, kind, slot, gen));
    return err ? fail(err, "sync reopen") : Py_NewRef(Py_None);
}

static PyObject *py_unref(PyObject *self, PyObject *args)
{
    unsigned int slot;
    nts_arena *a = parse(args, "I", &slot);
    if (!a)
        return NULL;
    int err = nts_sync_unref(a, slot);
    return err ? fail(err, "sync close") : Py_NewRef(Py_None);
}

static PyObject *py_sem_release(PyObject *self, PyObject *args)
{
    unsigned int slot, n;
    nts_arena *a = parse(args, "II", &slot, &n);
    if (!a)
        return NULL;
    uint32_t prev;
    int err = nts_sync_sem_release(a, slot, n, &prev);
    return err ? fail(err, "semaphore release") : PyLong_FromUnsignedLong(prev);
}

static PyObject *py_sem_read(PyObject *self, PyObject *args)
{
    unsigned int slot;
    nts_arena *a = parse(args, "I", &slot);
    if (!a)
        return NULL;
    uint32_t count, max;
    int err = nts_sync_sem_read(a, slot, &count, &max);
    return err ? fail(err, "semaphore read") : Py_BuildValue("II", count, max);
}

static PyObject *py_mutex_unlock(PyObject *self, PyObject *args)
{
    unsigned int slot, owner;
    nts_arena *a = parse(args, "II", &slot, &owner);
    if (!a)
        return NULL;
    uint32_t prev;
    int err = nts_sync_mutex_unlock(a, slot, owner, &prev);
    return err ? fail(err, "mutex unlock: not the owner") : PyLong_FromUnsignedLong(prev);
}

static PyObject *py_mutex_kill(PyObject *self, PyObject *args)
{
    unsigned int slot, owner;
    nts_arena *a = parse(args, "II", &slot, &owner);
    if (!a)
        return NULL;
    int err = nts_sync_mutex_kill(a, slot, owner);
    return err ? fail(err, "mutex kill: not the owner") : Py_NewRef(Py_None);
}

static PyObject *py_mutex_read(PyObject *self, PyObject *args)
{
    unsigned int slot;
    nts_arena *a = parse(args, "I", &slot);
    if (!a)
        return NULL;
    uint32_t owner, count;
    int abandoned;
    int err = nts_sync_mutex_read(a, slot, &owner, &count, &abandoned);
    return err ? fail(err, "mutex read") : Py_BuildValue("IIO", owner, count, abandoned ? Py_True : Py_False);
}

static PyObject *py_lock_release(PyObject *self, PyObject *args)
{
    unsigned int slot;
    int leave_abandoned;
    nts_arena *a = parse(args, "Ip", &slot, &leave_abandoned);
    if (!a)
        return NULL;
    int err = nts_sync_lock_release(a, slot, leave_abandoned);
    return err ? fail(err, "lock release: not locked") : Py_NewRef(Py_None);
}

static PyObject *py_lock_read(PyObject *self, PyObject *args)
{
    unsigned int slot;
    nts_arena *a = parse(args, "I", &slot);
    if (!a)
        return NULL;
    int locked, abandoned;
    int err = nts_sync_lock_read(a, slot, &locked, &abandoned);
    return err ? fail(err, "lock read")
               : Py_BuildValue("OO", locked ? Py_True : Py_False, abandoned ? Py_True : Py_False);
}

static PyObject *py_event(PyObject *self, PyObject *args)
{
    unsigned int slot;
    int op;
    nts_arena *a = parse(args, "Ii", &slot, &op);
    if (!a)
        return NULL;
    if (op < NTS_SYNC_EVENT_SET || op > NTS_SYNC_EVENT_PULSE) {
        PyErr_SetString(PyExc_ValueError, "unknown event operation");
        return NULL;
    }
    int prev;
    int err = nts_sync_event_op(a, slot, op, &prev);
    return err ? fail(err, "event") : PyBool_FromLong(prev);
}

static PyObject *py_event_read(PyObject *self, PyObject *args)
{
    unsigned int slot;
    nts_arena *a = parse(args, "I", &slot);
    if (!a)
        return NULL;
    int manual, signaled;
    int err = nts_sync_event_read(a, slot, &manual, &signaled);
    return err ? fail(err, "event read")
               : Py_BuildValue("OO", manual ? Py_True : Py_False, signaled ? Py_True : Py_False);
}

/* A sequence of at most `max` u32 (slots, requests) into out: its length, or -1 with
 * the exception set. */
static Py_ssize_t parse_u32s(PyObject *seq, uint32_t *out, Py_ssize_t max, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    if (count > max) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %zd items (%s)", max, what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == (unsigned long)-1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        out[i] = (uint32_t)v;
    }
    Py_DECREF(fast);
    return count;
}

/* A deadline in CLOCK_MONOTONIC ns (None: none) as a timespec: *out NULL for none; -1
 * with the exception set. */
static int parse_deadline(PyObject *obj, struct timespec *ts, struct timespec **out)
{
    *out = NULL;
    if (obj == Py_None)
        return 0;
    long long ns = PyLong_AsLongLong(obj);
    if (ns == -1 && PyErr_Occurred())
        return -1;
    if (ns < 0)
        ns = 0;
    ts->tv_sec = (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
    *out = ts;
    return 0;
}

static PyObject *outcome(uint32_t index, int abandoned)
{
    return Py_BuildValue("IO", index, abandoned ? Py_True : Py_False);
}

static PyObject *py_wait(PyObject *self, PyObject *args)
{
    PyObject *seq, *deadline_obj;
    int all;
    unsigned int owner, alert;
    nts_arena *a = parse(args, "OpOII", &seq, &all, &deadline_obj, &owner, &alert);
    if (!a)
        return NULL;
    uint32_t slots[NTS_SYNC_MAX_WAIT];
    Py_ssize_t count = parse_u32s(seq, slots, NTS_SYNC_MAX_WAIT, "slots must be a sequence");
    struct timespec deadline, *dp;
    if (count < 0 || parse_deadline(deadline_obj, &deadline, &dp) < 0)
        return NULL;
    int failed;
    return nts_sync_py_wait(a, slots, (uint32_t)count, all, dp, owner, alert, &failed);
}

/* Whether a deadline (NULL: none) has passed: a poll is answered by its first attempt. */
static int passed(const struct timespec *dp)
{
    struct timespec now;
    if (!dp)
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > dp->tv_sec || (now.tv_sec == dp->tv_sec && now.tv_nsec >= dp->tv_nsec);
}

PyObject *nts_sync_py_wait(nts_arena *a, const uint32_t *slots, uint32_t count, int all, const struct timespec *dp,
                           uint32_t owner, uint32_t alert, int *failed)
{
    *failed = 0;
    static const struct timespec poll = {0, 0};
    for (int attempt = 0;; attempt++) {
        uint32_t index;
        int abandoned;
        int err = attempt == 0 ? nts_sync_wait(a, slots, count, all, &poll, owner, alert, &index, &abandoned)
                               : CALL(nts_sync_wait(a, slots, count, all, dp, owner, alert, &index, &abandoned));
        if (err == ETIMEDOUT && attempt == 0 && !passed(dp))
            continue; /* nothing signaled yet: now wait for real, without the GIL */
        if (!err)
            return outcome(index, abandoned);
        if (err == ETIMEDOUT) {
            PyErr_SetString(PyExc_TimeoutError, "the wait timed out");
            return NULL;
        }
        if (err != EINTR) {
            *failed = err;
            return fail(err, "wait");
        }
        /* A signal arrived and nothing was acquired: run its handler (which may
         * raise, e.g. KeyboardInterrupt), then wait again. */
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

static PyObject *py_usage(PyObject *self, PyObject *unused)
{
    nts_arena *a = nts_sync_py_arena();
    if (!a)
        return NULL;
    uint32_t used[4], cap[4];
    size_t ntids = 4096; /* every thread block could be ours */
    uint32_t *tids = PyMem_RawMalloc(ntids * sizeof *tids);
    if (!tids)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    nts_sync_usage(a, used, cap, tids, &ntids);
    Py_END_ALLOW_THREADS
    PyObject *ids = PyList_New((Py_ssize_t)ntids);
    for (size_t i = 0; ids && i < ntids; i++) {
        PyObject *tid = PyLong_FromUnsignedLong(tids[i]);
        if (!tid)
            Py_CLEAR(ids);
        else
            PyList_SET_ITEM(ids, (Py_ssize_t)i, tid);
    }
    PyMem_RawFree(tids);
    if (!ids)
        return NULL;
    return Py_BuildValue("{s(II)s(II)s(II)s(II)sN}", "objects", used[0], cap[0], "threads", used[1], cap[1],
                         "references", used[2], cap[2], "processes", used[3], cap[3], "thread_ids_here", ids);
}

static PyObject *py_spins(PyObject *self, PyObject *unused)
{
    nts_sync_spins s;
    Py_BEGIN_ALLOW_THREADS
    nts_sync_spin_counts(&s); /* (measured on first use: ~40 us) */
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(III)", s.look, s.lock, s.queued);
}

/* futex_waitv(NULL, 0, ...) fails with EINVAL where the call exists (Linux 5.16+), ENOSYS where not. */
static PyObject *py_futex_waitv_errno(PyObject *self, PyObject *unused)
{
    long r = syscall(SYS_futex_waitv, NULL, 0, 0, NULL, 0);
    return PyLong_FromLong(r < 0 ? errno : 0);
}

static PyObject *py_request_new(PyObject *self, PyObject *args)
{
    nts_arena *a = parse(args, "");
    if (!a)
        return NULL;
    uint32_t req;
    int err = CALL(nts_sync_request_new(a, &req)); /* (it may sweep dead processes) */
    return err ? fail(err, "sync request") : PyLong_FromUnsignedLong(req);
}

static PyObject *py_request_start(PyObject *self, PyObject *args)
{
    PyObject *seq;
    int all;
    unsigned int req, owner, alert;
    nts_arena *a = parse(args, "IOpII", &req, &seq, &all, &owner, &alert);
    if (!a)
        return NULL;
    uint32_t slots[NTS_SYNC_MAX_WAIT], index;
    Py_ssize_t count = parse_u32s(seq, slots, NTS_SYNC_MAX_WAIT, "slots must be a sequence");
    if (count < 0)
        return NULL;
    int now, abandoned;
    int err = nts_sync_request_start(a, req, slots, (uint32_t)count, all, owner, alert, &now, &index, &abandoned);
    if (err)
        return fail(err, "sync request start");
    return now ? outcome(index, abandoned) : Py_NewRef(Py_None);
}

static PyObject *py_request_ready(PyObject *self, PyObject *args)
{
    unsigned int req;
    nts_arena *a = parse(args, "I", &req);
    return a ? PyBool_FromLong(nts_sync_request_ready(a, req)) : NULL;
}

static PyObject *py_request_end(PyObject *self, PyObject *args)
{
    unsigned int req;
    nts_arena *a = parse(args, "I", &req);
    if (!a)
        return NULL;
    uint32_t index;
    int acquired, abandoned;
    int err = nts_sync_request_end(a, req, &acquired, &index, &abandoned);
    if (err)
        return fail(err, "sync request end");
    return acquired ? outcome(index, abandoned) : Py_NewRef(Py_None);
}

static PyObject *py_request_sleep(PyObject *self, PyObject *args)
{
    PyObject *seq, *deadline_obj;
    unsigned int bell;
    nts_arena *a = parse(args, "OOI", &seq, &deadline_obj, &bell);
    if (!a)
        return NULL;
    Py_ssize_t max = PySequence_Size(seq);
    if (max < 0)
        return NULL;
    uint32_t *reqs = PyMem_Malloc(sizeof *reqs * (size_t)(max + 1));
    if (!reqs)
        return PyErr_NoMemory();
    struct timespec deadline, *dp;
    Py_ssize_t n = parse_u32s(seq, reqs, max, "requests must be a sequence");
    if (n < 0 || parse_deadline(deadline_obj, &deadline, &dp) < 0) {
        PyMem_Free(reqs);
        return NULL;
    }
    int err = CALL(nts_sync_request_sleep(a, reqs, (uint32_t)n, dp, bell));
    PyMem_Free(reqs);
    if (err && err != ETIMEDOUT && err != EINTR)
        return fail(err, "sync request sleep");
    return Py_NewRef(Py_None);
}

static PyObject *py_bell(PyObject *self, PyObject *args) { return PyLong_FromUnsignedLong(nts_sync_bell()); }

static PyObject *py_ring(PyObject *self, PyObject *args)
{
    nts_sync_ring();
    return Py_NewRef(Py_None);
}

static PyMethodDef sync_methods[] = {
    {"futex_waitv_errno", py_futex_waitv_errno, METH_NOARGS,
     "futex_waitv_errno() -> errno of an empty futex_waitv call: EINVAL where the call exists, ENOSYS where not"},
    {"sync_format", py_format, METH_VARARGS, "sync_format(fd): size and initialize a new sync arena file"},
    {"sync_layout", py_layout, METH_VARARGS,
     "sync_layout(fd) -> (magic, version, size) of an arena file of any layout (size: the file's if it differs)"},
    {"sync_in_use", py_in_use, METH_VARARGS,
     "sync_in_use(fd) -> whether any process holds a liveness lock on the arena file (any layout)"},
    {"sync_attach", py_attach, METH_VARARGS,
     "sync_attach(fd): map the sync arena and claim a process slot (once per process); "
     "OSError EPROTO for another layout, ENOSPC when every process slot is taken"},
    {"sync_damage", py_damage, METH_NOARGS,
     "sync_damage() -> None, or why this process's view of the arena is damaged (every call then fails "
     "with errno EUCLEAN)"},
    {"sync_usage", py_usage, METH_NOARGS,
     "sync_usage() -> {table: (used, capacity)} for objects, threads, references, processes, and "
     "thread_ids_here: the threads of this process that have a block (reclaims nothing)"},
    {"sync_spins", py_spins, METH_NOARGS,
     "sync_spins() -> (look, lock, queued): the futex backend's spins in pauses on this CPU (NTS_SYNC_*_SPIN_NS "
     "over the measured cost of a pause; all 0 with one CPU)"},
    {"sync_detach", py_detach, METH_NOARGS, "sync_detach(): drop every reference this process holds"},
    {"sync_create", py_create, METH_VARARGS,
     "sync_create(kind, initial, name) -> (slot, gen, created): initial as ntshim.sync.backend.InitialState; "
     "FileExistsError: the name is another kind"},
    {"sync_open", py_open, METH_VARARGS, "sync_open(kind, name) -> (slot, gen)"},
    {"sync_ref", py_ref, METH_VARARGS, "sync_ref(kind, slot, gen): one more reference (FileNotFoundError if gone)"},
    {"sync_unref", py_unref, METH_VARARGS, "sync_unref(slot): one reference less"},
    {"sync_sem_release", py_sem_release, METH_VARARGS, "sync_sem_release(slot, n) -> previous count"},
    {"sync_sem_read", py_sem_read, METH_VARARGS, "sync_sem_read(slot) -> (count, maximum)"},
    {"sync_mutex_unlock", py_mutex_unlock, METH_VARARGS, "sync_mutex_unlock(slot, owner) -> previous count"},
    {"sync_mutex_kill", py_mutex_kill, METH_VARARGS, "sync_mutex_kill(slot, owner)"},
    {"sync_mutex_read", py_mutex_read, METH_VARARGS, "sync_mutex_read(slot) -> (owner, count, abandoned)"},
    {"sync_lock_release", py_lock_release, METH_VARARGS, "sync_lock_release(slot, leave_abandoned)"},
    {"sync_lock_read", py_lock_read, METH_VARARGS, "sync_lock_read(slot) -> (locked, abandoned)"},
    {"sync_event", py_event, METH_VARARGS, "sync_event(slot, op) -> previous state (op: SYNC_SET/RESET/PULSE)"},
    {"sync_event_read", py_event_read, METH_VARARGS, "sync_event_read(slot) -> (manual, signaled)"},
    {"sync_wait", py_wait, METH_VARARGS,
     "sync_wait(slots, all, deadline_ns|None, owner, alert_slot) -> (index, abandoned); TimeoutError"},
    {"sync_request_new", py_request_new, METH_VARARGS, "sync_request_new() -> request: a wait block of this thread's"},
    {"sync_request_start", py_request_start, METH_VARARGS,
     "sync_request_start(req, slots, all, owner, alert_slot) -> (index, abandoned) if satisfied now, else None"},
    {"sync_request_ready", py_request_ready, METH_VARARGS, "sync_request_ready(req) -> bool"},
    {"sync_request_end", py_request_end, METH_VARARGS,
     "sync_request_end(req) -> (index, abandoned) if it was satisfied, else None (dequeued)"},
    {"sync_request_sleep", py_request_sleep, METH_VARARGS,
     "sync_request_sleep(reqs, deadline_ns|None, bell): until one may be ready, the bell rings or the deadline"},
    {"sync_bell", py_bell, METH_NOARGS, "sync_bell() -> the doorbell's count"},
    {"sync_ring", py_ring, METH_NOARGS, "sync_ring(): wake the request thread's sleep"},
    {NULL},
};

int nts_sync_module_init(PyObject *m)
{
    return PyModule_AddFunctions(m, sync_methods) < 0 || nts_sync_hot_init(m) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_SEMAPHORE", NTS_SYNC_SEMAPHORE) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_MUTEX", NTS_SYNC_MUTEX) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_EVENT", NTS_SYNC_EVENT) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_LOCK", NTS_SYNC_LOCK) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_SET", NTS_SYNC_EVENT_SET) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_RESET", NTS_SYNC_EVENT_RESET) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_PULSE", NTS_SYNC_EVENT_PULSE) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_MAX_NAME", NTS_SYNC_MAX_NAME) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_MAX_WAIT", NTS_SYNC_MAX_WAIT) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_LAYOUT", NTS_SYNC_LAYOUT) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_LIVE_END", NTS_SYNC_LIVE_END) < 0 ||
                   PyModule_AddIntConstant(m, "SYNC_ARENA_SIZE", (long)nts_sync_arena_size()) < 0
               ? -1
               : 0;
}
