/* Native writer threads: each stores a fresh 8-byte value into one page after
 * another (sequentially or at random) until stopped, without the GIL.  The
 * stress tests use them to write while Python gets and resets; the benchmarks
 * time them.  Thread k writes at byte 8*k of a page, so every store changes
 * the page's contents (which the shadow backend needs to see it). */
#include "core.h"

#include <errno.h>
#include <time.h>

typedef struct writers writers;

typedef struct {
    writers *owner;
    pthread_t thread;
    unsigned index;
    uint64_t writes, ns;
} writer;

struct writers {
    PyObject_HEAD
    Py_buffer view;
    size_t npages;
    int random, running;
    unsigned nthreads;
    writer *w;
    int stop;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *writer_main(void *arg)
{
    writer *me = arg;
    writers *ws = me->owner;
    char *base = ws->view.buf;
    const size_t ps = nts_page_size, npages = ws->npages;
    const size_t slot = (8 * me->index) % ps;
    uint64_t rng = 0x9E3779B97F4A7C15ull * (me->index + 1), value = (uint64_t)me->index << 48, page = 0;
    uint64_t n = 0, t0 = now_ns();
    while (!__atomic_load_n(&ws->stop, __ATOMIC_RELAXED)) {
        if (ws->random) { /* xorshift64: cheap next to the write being measured */
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            page = rng % npages;
        } else if (++page == npages) {
            page = 0;
        }
        *(volatile uint64_t *)(base + page * ps + slot) = ++value;
        n++;
    }
    me->ns = now_ns() - t0;
    __atomic_store_n(&me->writes, n, __ATOMIC_RELEASE);
    return NULL;
}

static PyObject *writers_stop(writers *self, PyObject *unused);

static PyObject *writers_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *buffer;
    unsigned nthreads;
    int random = 1;
    static char *kwlist[] = {"buffer", "threads", "random", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OI|$p", kwlist, &buffer, &nthreads, &random))
        return NULL;
    if (nthreads < 1 || nthreads > 512) {
        PyErr_SetString(PyExc_ValueError, "threads must be between 1 and 512");
        return NULL;
    }
    writers *self = (writers *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    self->npages = (size_t)self->view.len / nts_page_size;
    if (self->npages == 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "the buffer must hold at least one page");
        return NULL;
    }
    self->random = random;
    self->w = PyMem_RawCalloc(nthreads, sizeof *self->w);
    if (!self->w) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    /* Writers take no asynchronous signals (Python handles those on its own
     * threads); faults on watched pages still reach the SIGSEGV handler. */
    sigset_t block, saved;
    sigfillset(&block);
    sigdelset(&block, SIGSEGV);
    sigdelset(&block, SIGBUS);
    pthread_sigmask(SIG_BLOCK, &block, &saved);
    int err = 0;
    for (unsigned i = 0; i < nthreads && !err; i++) {
        self->w[i].owner = self;
        self->w[i].index = i;
        err = pthread_create(&self->w[i].thread, NULL, writer_main, &self->w[i]);
        if (!err)
            self->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    self->running = 1;
    if (err) {
        PyObject *r = writers_stop(self, NULL);
        Py_XDECREF(r);
        Py_DECREF(self);
        return nts_raise_errno(err, "pthread_create");
    }
    return (PyObject *)self;
}

static PyObject *writers_stop(writers *self, PyObject *unused)
{
    if (self->running) {
        __atomic_store_n(&self->stop, 1, __ATOMIC_RELAXED);
        Py_BEGIN_ALLOW_THREADS
        for (unsigned i = 0; i < self->nthreads; i++)
            pthread_join(self->w[i].thread, NULL);
        Py_END_ALLOW_THREADS
        self->running = 0;
        PyBuffer_Release(&self->view);
    }
    uint64_t writes = 0, ns = 0;
    for (unsigned i = 0; i < self->nthreads; i++) {
        writes += self->w[i].writes;
        ns += self->w[i].ns;
    }
    return Py_BuildValue("(KK)", (unsigned long long)writes, (unsigned long long)ns);
}

static void writers_dealloc(writers *self)
{
    if (self->running) {
        PyObject *r = writers_stop(self, NULL);
        Py_XDECREF(r);
    } else if (self->view.obj) {
        PyBuffer_Release(&self->view);
    }
    PyMem_RawFree(self->w);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef writers_methods[] = {
    {"stop", (PyCFunction)writers_stop, METH_NOARGS,
     "Stop and join the threads; -> (writes, ns): total stores and summed thread run time."},
    {NULL},
};

PyTypeObject nts_writers_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ntshim._core.Writers",
    .tp_basicsize = sizeof(writers),
    .tp_dealloc = (destructor)writers_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writers(buffer, threads, *, random=True): native threads writing pages until stop().",
    .tp_methods = writers_methods,
    .tp_new = writers_new,
};
