/* The hot methods of ntshim.sync's objects, in C (issue 14): a Python program's most
 * frequent calls (`with lock:`, acquire(), release(), locked()) go from the interpreter
 * straight to the arena, without the Python layer's frames.
 *
 * The Python classes derive from these types and keep the policy: each C method serves
 * the common case of an open object on the futex backend (`_slot` set) and hands every
 * other case, with the same arguments, to the Python method of the same name prefixed
 * `_slow_` (another backend, a closed object, a timeout to check, a wait that must
 * sleep, an error to explain).  Handing over after a failed attempt is sound because a
 * failed attempt changes nothing: a wait that did not succeed acquired nothing, a release
 * that failed released nothing.  So both paths answer alike, exactly. */
#include "sync.h"

#include <errno.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    uint32_t slot;  /* the futex arena's object while the Python object is open on it, else 0 */
    char abandoned; /* Lock.abandoned: this hold began by taking over an abandoned lock */
} nts_lock_base;

static PyObject *s_slow_acquire, *s_slow_release, *s_slow_locked, *s_took_over, *s_give_up;

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

/* A lock has no owner: a wait for it only needs a nonzero id. */
#define ANY_OWNER 1

/* One attempt to take the lock without sleeping: 1 taken, 0 not free, -1 hand the call
 * to Python (an error to explain).  The abandonment of a lock taken over is reported. */
static int try_lock(nts_lock_base *self)
{
    static const struct timespec poll = {0, 0};
    nts_arena *a = nts_sync_py_arena();
    if (!a) {
        PyErr_Clear(); /* (Python attaches the arena, or says why it cannot) */
        return -1;
    }
    uint32_t slot = self->slot, index;
    int abandoned, err = nts_sync_wait(a, &slot, 1, 0, &poll, ANY_OWNER, 0, &index, &abandoned);
    if (err)
        return err == ETIMEDOUT ? 0 : -1;
    if (abandoned) {
        PyObject *give_up = PyObject_GetAttr((PyObject *)self, s_give_up);
        PyObject *r = give_up ? PyObject_CallMethodOneArg((PyObject *)self, s_took_over, give_up) : NULL;
        Py_XDECREF(give_up);
        if (!r)
            return -2; /* the warning, made an error: raised, the lock left abandoned */
        Py_DECREF(r);
    }
    return 1;
}

static PyObject *lock_acquire(nts_lock_base *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    /* Served here: acquire(), acquire(blocking) and acquire(blocking=...), without a timeout. */
    PyObject *blocking_arg = nargs == 1 ? args[0] : NULL;
    int plain = nargs <= 1 && self->slot;
    if (plain && kwnames) {
        plain = nargs == 0 && PyTuple_GET_SIZE(kwnames) == 1 &&
                PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "blocking") == 0;
        blocking_arg = args[0];
    }
    if (nargs > 2) { /* (said here: the Python method's name is not the caller's business) */
        PyErr_Format(PyExc_TypeError, "acquire() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!plain)
        return slow((PyObject *)self, s_slow_acquire, args, nargs, kwnames);
    int blocking = blocking_arg ? PyObject_IsTrue(blocking_arg) : 1;
    if (blocking < 0)
        return NULL;
    switch (try_lock(self)) {
    case 1:
        Py_RETURN_TRUE;
    case 0:
        if (!blocking)
            Py_RETURN_FALSE;
        break; /* to sleep: Python's wait releases the GIL, and answers signals */
    case -2:
        return NULL;
    }
    return slow((PyObject *)self, s_slow_acquire, args, nargs, kwnames);
}

static PyObject *lock_release(nts_lock_base *self, PyObject *unused)
{
    nts_arena *a = self->slot ? nts_sync_py_arena() : NULL;
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
    PyErr_Clear();
    return slow((PyObject *)self, s_slow_release, NULL, 0, NULL);
}

static PyObject *lock_enter(nts_lock_base *self, PyObject *unused)
{
    PyObject *r = lock_acquire(self, NULL, 0, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    return Py_NewRef(self);
}

static PyObject *lock_exit(nts_lock_base *self, PyObject *const *args, Py_ssize_t nargs)
{
    return lock_release(self, NULL);
}

static PyObject *lock_locked(nts_lock_base *self, PyObject *unused)
{
    nts_arena *a = self->slot ? nts_sync_py_arena() : NULL;
    int locked, abandoned;
    if (a && !nts_sync_lock_read(a, self->slot, &locked, &abandoned))
        return PyBool_FromLong(locked);
    PyErr_Clear();
    return slow((PyObject *)self, s_slow_locked, NULL, 0, NULL);
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool\n\nLock, waiting while it is locked (at most timeout seconds; "
     "-1: for ever); False if not locked.  An abandoned lock is acquired (True) with abandoned set and an "
     "AbandonedWarning."},
    {"release", (PyCFunction)lock_release, METH_NOARGS, "release()\n\nUnlock; RuntimeError if it is not locked."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, "locked() -> bool\n\nWhether some thread holds the lock."},
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, "Acquire, waiting as long as it takes."},
    {"__exit__", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL, "Release."},
    {NULL},
};

static PyMemberDef lock_members[] = {
    {"_slot", T_UINT, offsetof(nts_lock_base, slot), 0,
     "the futex arena's object the C methods use (0: they hand every call to Python)"},
    {"abandoned", T_BOOL, offsetof(nts_lock_base, abandoned), 0,
     "whether this process's current hold began by taking over an abandoned lock: what the dead holder "
     "protected may be half changed (False again once it is released)"},
    {NULL},
};

static PyTypeObject lock_base_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ntshim._core.LockBase",
    .tp_basicsize = sizeof(nts_lock_base),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The hot methods of ntshim.sync.Lock (see ntshim/_core/sync/hot.c).",
    .tp_methods = lock_methods,
    .tp_members = lock_members,
    .tp_new = PyType_GenericNew,
};

int nts_sync_hot_init(PyObject *mod)
{
    struct {
        PyObject **var;
        const char *text;
    } names[] = {{&s_slow_acquire, "_slow_acquire"},
                 {&s_slow_release, "_slow_release"},
                 {&s_slow_locked, "_slow_locked"},
                 {&s_took_over, "_took_over_abandoned"},
                 {&s_give_up, "_give_up"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!*names[i].var && !(*names[i].var = PyUnicode_InternFromString(names[i].text)))
            return -1;
    if (PyType_Ready(&lock_base_type) < 0)
        return -1;
    return PyModule_AddObjectRef(mod, "LockBase", (PyObject *)&lock_base_type);
}
