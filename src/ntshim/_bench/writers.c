/* Native writer threads: each stores a fresh 8-byte value into one page after
 * another (sequentially or at random) until stopped, without the GIL.  The
 * stress tests use them to write while Python gets and resets; the benchmarks
 * time them (writewatch.c drives the same pool under its kernel floors).  Thread k
 * writes at byte 64*k of a page (its own cache line), and every store changes
 * the page's contents (which the shadow backend needs to see it). */
#include "bench.h"

#include <errno.h>
#include <time.h>

uint64_t nts_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *writer_main(void *arg)
{
    nts_writer *me = arg;
    nts_writer_pool *pool = me->pool;
    char *base = pool->base;
    const size_t ps = nts_page_size, npages = pool->npages;
    const size_t slot = (64 * me->index) % ps; /* a cache line each: no false sharing between writers */
    uint64_t rng = 0x9E3779B97F4A7C15ull * (me->index + 1), value = (uint64_t)me->index << 48, page = 0;
    uint64_t n = 0, t0 = nts_now_ns();
    while (!__atomic_load_n(&pool->stop, __ATOMIC_RELAXED)) {
        if (pool->random) { /* xorshift64: cheap next to the write being measured */
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
    me->ns = nts_now_ns() - t0;
    me->writes = n;
    return NULL;
}

int nts_writers_start(nts_writer_pool *pool, char *base, size_t npages, unsigned nthreads, int random)
{
    pool->base = base;
    pool->npages = npages;
    pool->random = random;
    pool->stop = 0;
    pool->nthreads = 0;
    pool->w = calloc(nthreads, sizeof *pool->w);
    if (!pool->w)
        return ENOMEM;
    /* Writers take no asynchronous signals (Python handles those on its own
     * threads); faults on watched pages still reach the SIGSEGV handler. */
    sigset_t saved;
    nts_block_async_signals(&saved);
    int err = 0;
    for (unsigned i = 0; i < nthreads && !err; i++) {
        pool->w[i].pool = pool;
        pool->w[i].index = i;
        err = pthread_create(&pool->w[i].thread, NULL, writer_main, &pool->w[i]);
        if (!err)
            pool->nthreads++;
    }
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (err)
        nts_writers_stop(pool, NULL, NULL);
    return err;
}

void nts_writers_stop(nts_writer_pool *pool, uint64_t *writes, uint64_t *ns)
{
    __atomic_store_n(&pool->stop, 1, __ATOMIC_RELAXED);
    uint64_t total_writes = 0, total_ns = 0;
    for (unsigned i = 0; i < pool->nthreads; i++) {
        pthread_join(pool->w[i].thread, NULL);
        total_writes += pool->w[i].writes;
        total_ns += pool->w[i].ns;
    }
    free(pool->w);
    pool->w = NULL;
    pool->nthreads = 0;
    if (writes)
        *writes = total_writes;
    if (ns)
        *ns = total_ns;
}

/* ---- the Python type: a pool over a buffer it holds while running ---- */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    nts_writer_pool pool;
    int running;
    uint64_t writes, ns;
} Writers;

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
    Writers *self = (Writers *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    size_t npages = (size_t)self->view.len / nts_page_size;
    if (npages == 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "the buffer must hold at least one page");
        return NULL;
    }
    int err = nts_writers_start(&self->pool, self->view.buf, npages, nthreads, random);
    if (err) {
        Py_DECREF(self);
        return nts_raise_errno(err, "starting writer threads");
    }
    self->running = 1;
    return (PyObject *)self;
}

static PyObject *writers_stop(Writers *self, PyObject *unused)
{
    if (self->running) {
        Py_BEGIN_ALLOW_THREADS
        nts_writers_stop(&self->pool, &self->writes, &self->ns);
        Py_END_ALLOW_THREADS
        self->running = 0;
        PyBuffer_Release(&self->view);
    }
    return Py_BuildValue("(KK)", (unsigned long long)self->writes, (unsigned long long)self->ns);
}

static void writers_dealloc(Writers *self)
{
    if (self->running) {
        Py_BEGIN_ALLOW_THREADS
        nts_writers_stop(&self->pool, NULL, NULL);
        Py_END_ALLOW_THREADS
    }
    if (self->view.obj)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef writers_methods[] = {
    {"stop", (PyCFunction)writers_stop, METH_NOARGS,
     "Stop and join the threads; -> (writes, ns): total stores and summed thread run time."},
    {NULL},
};

PyTypeObject nts_writers_type = {
    PyVarObject_HEAD_INIT(NULL, 0) // the macro ends with its own comma
        .tp_name = "ntshim._bench.Writers",
    .tp_basicsize = sizeof(Writers),
    .tp_dealloc = (destructor)writers_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Writers(buffer, threads, *, random=True): native threads writing pages until stop().",
    .tp_methods = writers_methods,
    .tp_new = writers_new,
};
