/* The helpers every subsystem uses (declared in common.h).  Also compiled into
 * ntshim._bench, so nothing here keeps state beyond the page size each module sets. */
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

size_t nts_page_size;

static PyObject *raise_errno(int err, const char *step, const char *fmt, va_list ap)
{
    char what[256];
    vsnprintf(what, sizeof what, fmt, ap);
    PyObject *msg = PyUnicode_FromFormat("%s: %s", what, strerror(err));
    PyObject *args = !msg ? NULL : step ? Py_BuildValue("(iNs)", err, msg, step) : Py_BuildValue("(iN)", err, msg);
    if (args) {
        /* OSError.__new__ turns (errno, text[, filename]) into the errno's own subclass. */
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}

PyObject *nts_raise_errno(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    raise_errno(err, NULL, fmt, ap);
    va_end(ap);
    return NULL;
}

PyObject *nts_raise_errno_step(int err, const char *step, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    raise_errno(err, step, fmt, ap);
    va_end(ap);
    return NULL;
}

int nts_runs_add(nts_runs *r, uint64_t start, uint64_t end)
{
    if (r->n && r->v[r->n - 1] == start) { /* touches the previous range: extend it */
        r->v[r->n - 1] = end;
        return 0;
    }
    if (r->n + 2 > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        uint64_t *v = realloc(r->v, cap * sizeof *v);
        if (!v)
            return -1;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = start;
    r->v[r->n++] = end;
    return 0;
}

PyObject *nts_runs_finish(nts_runs *r)
{
    PyObject *out = PyBytes_FromStringAndSize((const char *)r->v, (Py_ssize_t)(r->n * sizeof(uint64_t)));
    free(r->v);
    r->v = NULL;
    r->n = r->cap = 0;
    return out;
}

static long futex(int *word, int op, int val) { return syscall(SYS_futex, word, op, val, NULL, NULL, 0); }

void nts_lock(int *word)
{
    int c = 0;
    if (__atomic_compare_exchange_n(word, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    if (c != 2)
        c = __atomic_exchange_n(word, 2, __ATOMIC_ACQUIRE);
    while (c != 0) {
        futex(word, FUTEX_WAIT_PRIVATE, 2);
        c = __atomic_exchange_n(word, 2, __ATOMIC_ACQUIRE);
    }
}

void nts_unlock(int *word)
{
    if (__atomic_exchange_n(word, 0, __ATOMIC_RELEASE) == 2)
        futex(word, FUTEX_WAKE_PRIVATE, 1);
}

void nts_block_async_signals(sigset_t *saved)
{
    sigset_t async;
    sigfillset(&async);
    sigdelset(&async, SIGSEGV);
    sigdelset(&async, SIGBUS);
    sigdelset(&async, SIGILL);
    sigdelset(&async, SIGFPE);
    pthread_sigmask(SIG_BLOCK, &async, saved);
}
