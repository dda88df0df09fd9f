/* The Tracker type: dirty-page bookkeeping shared by the three backends that
 * keep their own per-page state (mprotect, uffd-sync, shadow).  The uffd-async
 * backend needs none of this: the kernel keeps its state in the page tables.
 *
 * Invariant for the write-protecting kinds (mprotect, uffd-sync), under the lock:
 * a page is write-protected exactly when it is clean and not inside a
 * kernel-write window (for mprotect: and its owner lets it be written at all).  Fault handlers take the same lock, mark the
 * page dirty and release it, so "protect, then clear DIRTY" cannot lose a write:
 * a write that lands after the protection faults and waits for the lock. */
#include "core.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

nts_tracker *nts_tracker_alloc(int kind, uintptr_t base, size_t size, PyObject *prots)
{
    Py_buffer p;
    if (base % nts_page_size || size == 0 || size % nts_page_size) {
        PyErr_Format(PyExc_ValueError, "tracked memory must be whole pages (address 0x%zx, size %zu)",
                     (size_t)base, size);
        return NULL;
    }
    if (PyObject_GetBuffer(prots, &p, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t npages = size / nts_page_size;
    if ((size_t)p.len != npages) {
        PyErr_Format(PyExc_ValueError, "prots must hold one byte per page (%zu), got %zd", npages, p.len);
        PyBuffer_Release(&p);
        return NULL;
    }
    nts_tracker *t = PyObject_New(nts_tracker, &nts_tracker_type);
    if (!t) {
        PyBuffer_Release(&p);
        return NULL;
    }
    t->kind = kind;
    t->closed = 1; /* until the mechanism is set up: dealloc then only frees memory */
    t->pid = getpid();
    t->base = base;
    t->npages = npages;
    t->pins = NULL;
    t->own_lock = 0;
    t->lock = &t->own_lock;
    t->uffd = t->stop_fd = -1;
    t->thread_started = t->handles_kernel_faults = t->populate = 0;
    t->shadow = NULL;
    t->state = malloc(npages);
    if (!t->state) {
        PyBuffer_Release(&p);
        Py_DECREF(t);
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < npages; i++)
        t->state[i] = ((const uint8_t *)p.buf)[i] & NTS_PROT_MASK;
    PyBuffer_Release(&p);
    return t;
}

typedef struct {
    sigset_t mask;
} lock_ctx;

static void tracker_lock(nts_tracker *t, lock_ctx *c)
{
    if (t->kind == NTS_MPROTECT)
        nts_mprotect_lock(t, &c->mask);
    else
        nts_lock(t->lock);
}

static void tracker_unlock(nts_tracker *t, lock_ctx *c)
{
    if (t->kind == NTS_MPROTECT)
        nts_mprotect_unlock(t, &c->mask);
    else
        nts_unlock(t->lock);
}

static int pinned(nts_tracker *t, size_t i) { return t->pins && t->pins[i]; }

/* What the kernel should enforce on page i, given its state: for mprotect the
 * protection bits, for uffd-sync 1 (write-protected) or 0. */
static int desired(nts_tracker *t, size_t i)
{
    uint8_t s = t->state[i];
    int prot = s & NTS_PROT_MASK, clean = !(s & NTS_DIRTY) && !pinned(t, i);
    if (t->kind == NTS_MPROTECT) /* only a write the owner allows needs taking away */
        return clean && (prot & PROT_WRITE) ? (prot & ~PROT_WRITE) : prot;
    return clean; /* uffd write-protection is independent of the page's protection */
}

int nts_tracker_sync_kernel(nts_tracker *t, size_t first, size_t n)
{
    size_t i = first, end = first + n;
    while (i < end) {
        int want = desired(t, i);
        size_t j = i + 1;
        while (j < end && desired(t, j) == want)
            j++;
        int err = t->kind == NTS_MPROTECT ? nts_mprotect_apply(t, i, j - i, want)
                                           : nts_uffd_sync_apply(t, i, j - i, want);
        if (err)
            return err;
        i = j;
    }
    return 0;
}

static int page_dirty(nts_tracker *t, size_t i)
{
    uint8_t s = t->state[i];
    if (s & NTS_DIRTY)
        return 1;
    return t->kind == NTS_SHADOW && (s & PROT_READ) && nts_shadow_page_differs(t, i);
}

static void mark_dirty(nts_tracker *t, size_t first, size_t n)
{
    for (size_t i = first; i < first + n; i++)
        t->state[i] |= NTS_DIRTY;
}

/* Make [first, first+n) clean: what is written from now on is reported again. */
static int reset_run(nts_tracker *t, size_t first, size_t n)
{
    for (size_t i = first; i < first + n; i++)
        t->state[i] &= ~NTS_DIRTY;
    if (t->kind == NTS_SHADOW) {
        nts_shadow_capture(t, first, n);
        return 0;
    }
    int err = nts_tracker_sync_kernel(t, first, n);
    if (err) /* dirty and (partly) protected is a safe state: a write only faults once more */
        mark_dirty(t, first, n);
    return err;
}

/* Collect dirty pages of [first, first+count) in ascending order, at most
 * `limit` (0: all), resetting exactly those when `reset`.  Lock held. */
static int scan(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out)
{
    const size_t ps = nts_page_size, end = first + count;
    size_t i = first, found = 0;
    int err = 0;
    while (i < end && (!limit || found < limit)) {
        if (t->kind != NTS_SHADOW) { /* skip clean pages eight at a time */
            uint64_t w;
            while (i + 8 <= end && (memcpy(&w, t->state + i, 8), !(w & 0x0808080808080808ULL)))
                i += 8;
            if (i >= end)
                break;
        }
        if (!page_dirty(t, i)) {
            i++;
            continue;
        }
        size_t j = i + 1;
        found++;
        while (j < end && (!limit || found < limit) && page_dirty(t, j)) {
            j++;
            found++;
        }
        if (reset && (err = reset_run(t, i, j - i)))
            break;
        if (nts_runs_add(out, i * ps, j * ps)) {
            err = ENOMEM;
            if (reset)
                mark_dirty(t, i, j - i);
            break;
        }
        i = j;
    }
    if (err && reset) /* the caller gets nothing: what this call reset must be reported again */
        for (size_t k = 0; k < out->n; k += 2)
            mark_dirty(t, out->v[k] / ps, (out->v[k + 1] - out->v[k]) / ps);
    return err;
}

static int parse_range(nts_tracker *t, PyObject *args, const char *fmt, size_t *first, size_t *count, void *extra1,
                       void *extra2)
{
    Py_ssize_t f, c;
    if (!PyArg_ParseTuple(args, fmt, &f, &c, extra1, extra2))
        return -1;
    if (f < 0 || c < 0 || (size_t)f > t->npages || (size_t)c > t->npages - (size_t)f) {
        PyErr_Format(PyExc_ValueError, "page range [%zd, %zd+%zd) is outside the %zu tracked pages", f, f, c,
                     t->npages);
        return -1;
    }
    *first = (size_t)f;
    *count = (size_t)c;
    return 0;
}

static int check_open(nts_tracker *t)
{
    if (!t->closed)
        return 0;
    PyErr_SetString(PyExc_ValueError, "tracker is closed");
    return -1;
}

static PyObject *tracker_dirty(nts_tracker *t, PyObject *args)
{
    size_t first, count;
    int reset;
    Py_ssize_t limit;
    if (parse_range(t, args, "nnpn", &first, &count, &reset, &limit))
        return NULL;
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be >= 0 (0: no limit)");
        return NULL;
    }
    nts_runs out = {0};
    int err = 0, closed;
    lock_ctx c;
    Py_BEGIN_ALLOW_THREADS
    tracker_lock(t, &c);
    closed = t->closed;
    if (!closed)
        err = scan(t, first, count, reset, (size_t)limit, &out);
    tracker_unlock(t, &c);
    Py_END_ALLOW_THREADS
    if (closed || err) {
        free(out.v);
        if (closed)
            return check_open(t), NULL;
        return err == ENOMEM ? PyErr_NoMemory() : nts_raise_errno(err, "write-protecting reset pages");
    }
    return nts_runs_finish(&out);
}

/* Change the owner's protection of a page range, keeping dirty state exact. */
static PyObject *tracker_protect(nts_tracker *t, PyObject *args)
{
    size_t first, count;
    int prot, unused = 0;
    if (parse_range(t, args, "nni|i", &first, &count, &prot, &unused))
        return NULL;
    if (prot & ~NTS_PROT_MASK) {
        PyErr_Format(PyExc_ValueError, "prot must combine PROT_READ, PROT_WRITE, PROT_EXEC, got %d", prot);
        return NULL;
    }
    uint8_t *saved = malloc(count ? count : 1);
    if (!saved)
        return PyErr_NoMemory();
    const size_t ps = nts_page_size;
    int err = 0, closed;
    lock_ctx c;
    Py_BEGIN_ALLOW_THREADS
    tracker_lock(t, &c);
    closed = t->closed;
    if (!closed) {
        memcpy(saved, t->state + first, count);
        if (t->kind == NTS_SHADOW)
            /* Pages about to lose read access cannot be compared later: settle
             * them now, keeping a difference as pending dirty state. */
            for (size_t i = first; i < first + count; i++)
                if ((t->state[i] & PROT_READ) && !(prot & PROT_READ) && nts_shadow_page_differs(t, i)) {
                    t->state[i] |= NTS_DIRTY;
                    nts_shadow_capture(t, i, 1);
                }
        for (size_t i = first; i < first + count; i++)
            t->state[i] = (t->state[i] & ~NTS_PROT_MASK) | (uint8_t)prot;
        if (t->kind == NTS_MPROTECT) {
            err = nts_tracker_sync_kernel(t, first, count);
        } else {
            if (t->populate) /* pages gaining access from none must be mapped to be protectable */
                for (size_t i = first; !err && i < first + count; i++)
                    if (!(saved[i - first] & (PROT_READ | PROT_WRITE)) && (prot & (PROT_READ | PROT_WRITE)))
                        err = nts_uffd_sync_populate(t, i, 1, prot);
            if (!err && mprotect((void *)(t->base + first * ps), count * ps, prot))
                err = errno;
        }
        if (err) { /* put the old protections back, keeping any dirty bit learnt meanwhile */
            for (size_t i = 0; i < count; i++)
                t->state[first + i] = (saved[i] & NTS_PROT_MASK) | (t->state[first + i] & NTS_DIRTY);
            if (t->kind == NTS_MPROTECT)
                nts_tracker_sync_kernel(t, first, count);
            else
                for (size_t i = first; i < first + count; i++)
                    mprotect((void *)(t->base + i * ps), ps, t->state[i] & NTS_PROT_MASK);
        }
    }
    tracker_unlock(t, &c);
    Py_END_ALLOW_THREADS
    free(saved);
    if (closed)
        return check_open(t), NULL;
    if (err)
        return nts_raise_errno(err, "mprotect(prot=%d)", prot);
    Py_RETURN_NONE;
}

/* Kernel-write windows: the pages count as written while the window is open
 * and once more when it closes, and the write-protecting kinds release them for
 * the kernel to write into (os.readv, readinto, recv_into fail with EFAULT on
 * protected pages). */
static PyObject *tracker_kernel_write(nts_tracker *t, PyObject *args)
{
    size_t first, count;
    int open_window, unused = 0;
    if (parse_range(t, args, "nnp|i", &first, &count, &open_window, &unused))
        return NULL;
    int err = 0, closed;
    lock_ctx c;
    Py_BEGIN_ALLOW_THREADS
    tracker_lock(t, &c);
    closed = t->closed;
    if (!closed && t->kind == NTS_SHADOW) { /* nothing is protected: only the marking */
        mark_dirty(t, first, count);
    } else if (!closed) {
        if (!t->pins && !(t->pins = calloc(t->npages, sizeof *t->pins)))
            err = ENOMEM;
        for (size_t i = first; !err && i < first + count; i++)
            if (open_window ? t->pins[i] == UINT16_MAX : t->pins[i] == 0)
                err = open_window ? EOVERFLOW : EINVAL;
        if (!err) {
            for (size_t i = first; i < first + count; i++)
                t->pins[i] += open_window ? 1 : -1;
            mark_dirty(t, first, count);
            if (open_window && (err = nts_tracker_sync_kernel(t, first, count)))
                for (size_t i = first; i < first + count; i++)
                    t->pins[i]--;
        }
    }
    tracker_unlock(t, &c);
    Py_END_ALLOW_THREADS
    if (closed)
        return check_open(t), NULL;
    if (err == EINVAL)
        return PyErr_Format(PyExc_ValueError, "no kernel-write window is open on these pages");
    if (err)
        return nts_raise_errno(err, "opening a kernel-write window");
    Py_RETURN_NONE;
}

/* Count the pages as written, as if something had just written them. */
static PyObject *tracker_mark(nts_tracker *t, PyObject *args)
{
    size_t first, count;
    int unused1 = 0, unused2 = 0;
    if (parse_range(t, args, "nn|ii", &first, &count, &unused1, &unused2))
        return NULL;
    int err = 0, closed;
    lock_ctx c;
    Py_BEGIN_ALLOW_THREADS
    tracker_lock(t, &c);
    closed = t->closed;
    if (!closed) {
        mark_dirty(t, first, count);
        if (t->kind != NTS_SHADOW) /* a dirty page is not write-protected */
            err = nts_tracker_sync_kernel(t, first, count);
    }
    tracker_unlock(t, &c);
    Py_END_ALLOW_THREADS
    if (closed)
        return check_open(t), NULL;
    if (err)
        return nts_raise_errno(err, "releasing marked pages");
    Py_RETURN_NONE;
}

/* Drop the pages' contents (MADV_DONTNEED: they read as zero afterwards) and
 * their write state, as decommitting does on Windows.  Re-arms the protection
 * the kernel loses with the contents. */
static PyObject *tracker_discard(nts_tracker *t, PyObject *args)
{
    size_t first, count;
    int unused1 = 0, unused2 = 0;
    if (parse_range(t, args, "nn|ii", &first, &count, &unused1, &unused2))
        return NULL;
    const size_t ps = nts_page_size;
    int err = 0, closed;
    lock_ctx c;
    Py_BEGIN_ALLOW_THREADS
    tracker_lock(t, &c);
    closed = t->closed;
    if (!closed && count) {
        if (madvise((void *)(t->base + first * ps), count * ps, MADV_DONTNEED)) {
            err = errno;
        } else {
            for (size_t i = first; i < first + count; i++)
                t->state[i] &= ~NTS_DIRTY;
            if (t->kind == NTS_SHADOW) {
                memset(t->shadow + first * ps, 0, count * ps);
            } else {
                if (t->populate) /* an unmapped page cannot be write-protected without WP_UNPOPULATED */
                    for (size_t i = first; i < first + count; i++)
                        if (t->state[i] & (PROT_READ | PROT_WRITE))
                            (void)*(volatile const char *)(t->base + i * ps);
                err = nts_tracker_sync_kernel(t, first, count);
            }
        }
    }
    tracker_unlock(t, &c);
    Py_END_ALLOW_THREADS
    if (closed)
        return check_open(t), NULL;
    if (err)
        return nts_raise_errno(err, "discarding pages");
    Py_RETURN_NONE;
}

static void tracker_teardown(nts_tracker *t)
{
    if (t->kind == NTS_MPROTECT) {
        nts_mprotect_unregister(t);
        return;
    }
    /* In a forked child no other thread can hold the lock for us: skip it. */
    int own_process = t->pid == getpid(), was_closed;
    if (own_process)
        nts_lock(t->lock);
    was_closed = t->closed;
    t->closed = 1;
    if (own_process)
        nts_unlock(t->lock);
    if (was_closed)
        return;
    if (t->kind == NTS_UFFD_SYNC)
        nts_uffd_sync_stop(t);
    else if (t->shadow)
        munmap(t->shadow, t->npages * nts_page_size);
    t->shadow = NULL;
}

static PyObject *tracker_close(nts_tracker *t, PyObject *unused)
{
    if (t->closed)
        Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    tracker_teardown(t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static void tracker_dealloc(nts_tracker *t)
{
    if (!t->closed)
        tracker_teardown(t);
    free(t->state);
    free(t->pins);
    PyObject_Free(t);
}

static PyObject *tracker_get_closed(nts_tracker *t, void *c) { return PyBool_FromLong(t->closed); }
static PyObject *tracker_get_npages(nts_tracker *t, void *c) { return PyLong_FromSize_t(t->npages); }
static PyObject *tracker_get_kernel_faults(nts_tracker *t, void *c)
{
    return PyBool_FromLong(t->kind == NTS_SHADOW || t->handles_kernel_faults);
}

static PyMethodDef tracker_methods[] = {
    {"dirty", (PyCFunction)tracker_dirty, METH_VARARGS,
     "dirty(first, count, reset, limit) -> bytes: uint64 [start, end) byte-offset runs of written pages"},
    {"protect", (PyCFunction)tracker_protect, METH_VARARGS, "protect(first, count, prot): change owner protection"},
    {"kernel_write", (PyCFunction)tracker_kernel_write, METH_VARARGS,
     "kernel_write(first, count, open): open or close a kernel-write window"},
    {"mark", (PyCFunction)tracker_mark, METH_VARARGS, "mark(first, count): count the pages as written"},
    {"discard", (PyCFunction)tracker_discard, METH_VARARGS,
     "discard(first, count): drop the pages' contents (they read as zero) and their write state"},
    {"close", (PyCFunction)tracker_close, METH_NOARGS, "Stop tracking and restore the owner's protections."},
    {NULL},
};

static PyGetSetDef tracker_getset[] = {
    {"closed", (getter)tracker_get_closed, NULL, NULL, NULL},
    {"npages", (getter)tracker_get_npages, NULL, NULL, NULL},
    {"kernel_writes_tracked", (getter)tracker_get_kernel_faults, NULL,
     "True when writes the kernel makes into protected pages succeed and are tracked without a window.", NULL},
    {NULL},
};

PyTypeObject nts_tracker_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ntshim._core.Tracker",
    .tp_basicsize = sizeof(nts_tracker),
    .tp_dealloc = (destructor)tracker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-page dirty tracking by the mprotect, uffd-sync or shadow mechanism.",
    .tp_methods = tracker_methods,
    .tp_getset = tracker_getset,
};
