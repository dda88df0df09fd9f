/* The Tracker type: one object per watched range, for every backend.  Three
 * kinds keep per-page state here (mprotect, uffd-sync, shadow); uffd-async
 * leaves it in the page tables and asks the kernel (PAGEMAP_SCAN).  All of
 * them take the same lock around every operation, so closing can never race
 * with a query.  This file keeps the lock discipline and the bookkeeping; what
 * differs by mechanism is the mechanism's nts_ww_ops (tracker.h), filled in by
 * its own file (mprotect.c, uffd.c, uffd_sync.c, shadow.c).
 *
 * Invariant for the write-protecting kinds (mprotect, uffd-sync), under the
 * lock: a page is write-protected exactly when it is clean and not inside a
 * kernel-write window (for mprotect: and its owner lets it be written at all).
 * Fault handlers take the same lock, mark the page dirty and release it, so
 * "protect, then clear DIRTY" cannot lose a write: a write that lands after
 * the protection faults and waits for the lock.
 *
 * Lock discipline.  The lock of an mprotect tracker (the SIGSEGV handler needs
 * it) and of a uffd-sync tracker (its fault thread needs it) is held only by
 * code that writes nothing but the tracker's book (nts_book, mapped for it
 * alone) and static memory: no malloc, no free, no Python.  Watched memory can
 * hold anything else, heap blocks included, and a write there would wait for a
 * fault resolver that waits for the lock.  Such a locked operation lets the lock
 * go to grow its result (scan).  The locks of the other kinds are needed by no
 * fault resolver, and their holders may allocate.  Nothing that holds a tracker
 * lock ever waits for the GIL.
 *
 * fork() takes the locks a forked child keeps using (fork_prepare): the shadow
 * trackers' own locks, then the mprotect kind's process-wide one, so that the
 * child finds them free.  The userfaultfd kinds are not tracked in a child (the
 * kernel drops their registration there) and refuse every operation but close
 * there; their locks are left alone: the forking thread may write to a page a
 * uffd-sync tracker protects, whose fault thread needs that tracker's lock. */
#include "tracker.h"
#include "snapshot/snapshot.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

pid_t nts_pid;

/* Trackers whose own lock fork() takes: the open shadow trackers. */
static int g_list_lock;
static nts_book *g_list;
static sigset_t g_fork_mask;

nts_tracker *nts_tracker_alloc(const nts_ww_ops *ops, uintptr_t base, size_t size, PyObject *prots)
{
    if (base % nts_page_size || size == 0 || size % nts_page_size) {
        PyErr_Format(PyExc_ValueError, "tracked memory must be whole pages (address 0x%zx, size %zu)", (size_t)base,
                     size);
        return NULL;
    }
    const size_t npages = size / nts_page_size;
    /* A Mapping's protections are shared; other memory's are copied into the book. */
    nts_prot_table *shared = NULL;
    Py_buffer p = {0};
    if (PyObject_TypeCheck(prots, &nts_mapping_type)) {
        if (!(shared = nts_mapping_prot_table(prots, base, npages)))
            return NULL;
    } else {
        if (PyObject_GetBuffer(prots, &p, PyBUF_SIMPLE) < 0)
            return NULL;
        if ((size_t)p.len != npages) {
            PyErr_Format(PyExc_ValueError, "prots must hold one byte per page (%zu), got %zd", npages, p.len);
            PyBuffer_Release(&p);
            return NULL;
        }
    }
    /* The book: header, state bytes, the copied protections and, for the kinds
     * with kernel-write windows, the pins.  Pages of it never written are never backed. */
    const int has_pins = ops->protects;
    const size_t prots_at = sizeof(nts_book) + npages;
    const size_t pins_at = (prots_at + (shared ? 0 : npages) + 1) & ~(size_t)1;
    const size_t book_size = pins_at + (has_pins ? npages * sizeof(uint16_t) : 0);
    nts_book *book = mmap(NULL, book_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    nts_tracker *t = book == MAP_FAILED ? NULL : PyObject_New(nts_tracker, &nts_tracker_type);
    if (!t) {
        if (book == MAP_FAILED)
            PyErr_Format(PyExc_MemoryError, "no memory for the bookkeeping of %zu watched pages", npages);
        else
            munmap(book, book_size);
        nts_prot_table_release(shared);
        PyBuffer_Release(&p);
        return NULL;
    }
    book->size = book_size;
    book->closed = 1; /* until the mechanism is set up: dealloc then only frees memory */
    t->ops = ops;
    t->pid = nts_pid;
    t->base = base;
    t->npages = npages;
    t->book = book;
    t->shared_prots = shared;
    t->prots = shared ? shared->prot : (uint8_t *)book + prots_at;
    if (!shared)
        for (size_t i = 0; i < npages; i++)
            t->prots[i] = ((const uint8_t *)p.buf)[i] & NTS_PROT_MASK;
    PyBuffer_Release(&p);
    t->lock = &book->lock;
    t->state = (uint8_t *)(book + 1);
    t->pins = has_pins ? (uint16_t *)((char *)book + pins_at) : NULL;
    t->uffd = t->pagemap = t->stop_fd = -1;
    t->thread_started = t->handles_kernel_faults = t->populate = 0;
    t->shadow = NULL;
    return t;
}

void nts_tracker_opened(nts_tracker *t)
{
    t->book->closed = 0;
    /* A forked child keeps using a tracker that is not fork-bound; fork() takes the
     * mprotect kind's process-wide lock itself (nts_mprotect_fork_prepare). */
    if (t->ops->fork_bound || t->lock != &t->book->lock)
        return;
    nts_lock(&g_list_lock);
    t->book->next = g_list;
    t->book->prev = NULL;
    if (g_list)
        g_list->prev = t->book;
    g_list = t->book;
    t->book->listed = 1;
    nts_unlock(&g_list_lock);
}

static void unlist(nts_tracker *t)
{
    nts_book *b = t->book;
    nts_lock(&g_list_lock);
    if (b->listed) {
        if (b->prev)
            b->prev->next = b->next;
        else
            g_list = b->next;
        if (b->next)
            b->next->prev = b->prev;
        b->listed = 0;
    }
    nts_unlock(&g_list_lock);
}

int nts_tracker_in_forked_child(nts_tracker *t) { return t->ops->fork_bound && t->pid != nts_pid; }

/* What the kernel should enforce on page i, given its state. */
static int desired(nts_tracker *t, size_t i)
{
    return t->ops->want(t->prots[i], !(t->state[i] & NTS_DIRTY) && !t->pins[i]);
}

int nts_tracker_sync_kernel(nts_tracker *t, size_t first, size_t n)
{
    size_t i = first, end = first + n;
    while (i < end) {
        int want = desired(t, i);
        size_t j = i + 1;
        while (j < end && desired(t, j) == want)
            j++;
        int err = t->ops->apply(t, i, j - i, want);
        if (err)
            return err;
        i = j;
    }
    return 0;
}

static int page_dirty(nts_tracker *t, size_t i)
{
    if (t->state[i] & NTS_DIRTY)
        return 1;
    return t->ops->differs && (t->prots[i] & PROT_READ) && t->ops->differs(t, i);
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
    int err = t->ops->rearm(t, first, n);
    if (err) /* dirty and (partly) protected is a safe state: a write only faults once more */
        mark_dirty(t, first, n);
    return err;
}

/* Collect dirty pages of [first, first+count) in ascending order, at most
 * `limit` (0: all), resetting exactly those when `reset` (then with the lock
 * held; a query that does not reset may run without it, see
 * nts_tracker_query). */
static int scan(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out)
{
    const size_t ps = nts_page_size, end = first + count;
    size_t i = first, found = 0;
    int err = 0;
    while (i < end && (!limit || found < limit)) {
        if (!t->ops->differs) { /* skip clean pages eight at a time */
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
        /* A reset of the write-protecting kinds lets the lock go between runs: it
         * lets waiting fault handlers in, so writers are not held up for the whole
         * scan, and growing `out` may touch a watched heap page, whose fault needs
         * the lock.  Each run was reset atomically; a page written meanwhile is
         * reported by this scan if it lies ahead, else by the next. */
        const int unlocked = reset && t->ops->protects;
        if (unlocked)
            nts_unlock(t->lock);
        int full = nts_runs_add(out, i * ps, j * ps);
        if (unlocked)
            nts_lock(t->lock);
        if (full) {
            err = ENOMEM;
            if (reset)
                mark_dirty(t, i, j - i);
            break;
        }
        i = j;
        if (unlocked && t->book->closed)
            break;
    }
    if (err && reset) /* the caller gets nothing: what this call reset must be reported again */
        for (size_t k = 0; k < out->n; k += 2)
            mark_dirty(t, out->v[k] / ps, (out->v[k + 1] - out->v[k]) / ps);
    return err;
}

static int check_range(nts_tracker *t, Py_ssize_t f, Py_ssize_t c, size_t *first, size_t *count)
{
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
    if (!t->book->closed)
        return 0;
    PyErr_SetString(PyExc_ValueError, "WriteWatch is closed");
    return -1;
}

/* An operation on [first, first+count) run with the lock held and the GIL
 * released: 0, an errno, or NOT_OPEN. */
typedef int (*locked_op)(nts_tracker *t, size_t first, size_t count, void *arg);
#define NOT_OPEN (-1) /* closing a kernel-write window that is not open */

/* Operations on up to this many pages keep the GIL: they take microseconds,
 * and giving the GIL up and back costs as much.  Keeping it cannot deadlock:
 * nothing that holds a tracker lock ever waits for the GIL. */
#define KEEP_GIL_PAGES 1024

static PyObject *forked_child_error(nts_tracker *t)
{
    return PyErr_Format(PyExc_RuntimeError,
                        "this tracker was made in process %ld; a forked child cannot use it (the kernel drops "
                        "userfaultfd registrations on fork)",
                        (long)t->pid);
}

static PyObject *run_locked(nts_tracker *t, size_t first, size_t count, locked_op op, void *arg, const char *what)
{
    int err = 0, closed;
    if (nts_tracker_in_forked_child(t))
        return forked_child_error(t);
    /* Each of these operations changes the pages' protection or contents: a
     * consistent save running now copies them first (snapshot/freeze.c).  Its
     * waits never need the GIL: a freeze is set up and copies without it. */
    PyThreadState *saved = count > KEEP_GIL_PAGES ? PyEval_SaveThread() : NULL;
    for (;;) {
        unsigned epoch = nts_freeze_settle(t->base + first * nts_page_size, count * nts_page_size);
        nts_lock(t->lock);
        if (__atomic_load_n(&nts_freeze_epoch, __ATOMIC_SEQ_CST) == epoch)
            break;
        nts_unlock(t->lock); /* a freeze began meanwhile: settle with it */
    }
    closed = t->book->closed;
    if (!closed)
        err = op(t, first, count, arg);
    nts_unlock(t->lock);
    if (saved)
        PyEval_RestoreThread(saved);
    if (closed)
        return check_open(t), NULL;
    if (err == NOT_OPEN)
        return PyErr_Format(PyExc_ValueError, "no kernel-write window is open on these pages");
    if (err == ENOMEM)
        return PyErr_NoMemory();
    if (err)
        return nts_raise_errno(err, "%s", what);
    Py_RETURN_NONE;
}

/* ---- dirty: the query (and get-and-reset) ---- */

int nts_tracker_query(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out)
{
    int err;
    *out = (nts_runs){0};
    if (nts_tracker_in_forked_child(t))
        return ECHILD;
    if (!reset && t->ops->protects) {
        /* Reading needs no lock: bits turn dirty behind our back only (they are
         * cleared under the lock), and each bit read is the page's state at that
         * moment.  Without it a reader does not queue behind every faulting writer. */
        return t->book->closed ? EBADF : scan(t, first, count, 0, limit, out);
    }
    nts_lock(t->lock);
    if (t->book->closed)
        err = EBADF;
    else if (t->ops->query)
        err = t->ops->query(t, first, count, reset, limit, out);
    else
        err = scan(t, first, count, reset, limit, out);
    nts_unlock(t->lock);
    return err;
}

static PyObject *tracker_dirty(nts_tracker *t, PyObject *args)
{
    Py_ssize_t f, c, limit;
    size_t first, count;
    int reset, err;
    nts_runs out;
    if (!PyArg_ParseTuple(args, "nnpn", &f, &c, &reset, &limit) || check_range(t, f, c, &first, &count))
        return NULL;
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "limit must be >= 0 (0: no limit)");
        return NULL;
    }
    PyThreadState *saved = count > KEEP_GIL_PAGES ? PyEval_SaveThread() : NULL;
    err = nts_tracker_query(t, first, count, reset, (size_t)limit, &out);
    if (saved)
        PyEval_RestoreThread(saved);
    if (err) {
        free(out.v);
        if (err == EBADF)
            return check_open(t), NULL;
        if (err == ECHILD)
            return forked_child_error(t);
        if (err == ENOMEM)
            return PyErr_NoMemory();
        return nts_raise_errno_step(err, t->ops->query_step, "%s",
                                    t->ops->query ? "querying written pages" : "write-protecting reset pages");
    }
    return nts_runs_finish(&out);
}

/* ---- protect: change the owner's protection, keeping dirty state exact ---- */

static int protect_op(nts_tracker *t, size_t first, size_t count, void *arg)
{
    const int prot = *(int *)arg;
    int err;
    if (prot & ~NTS_PROT_MASK) /* as mprotect(2) answers bits it does not know */
        return EINVAL;
    /* The old protections wait in the state bytes' scratch bits, clear until now
     * (no allocation under the lock: see the lock discipline). */
    for (size_t i = first; i < first + count; i++)
        t->state[i] |= (uint8_t)(t->prots[i] << NTS_SCRATCH_SHIFT);
    if (t->ops->before_protect)
        t->ops->before_protect(t, first, count, prot);
    memset(t->prots + first, prot, count);
    err = t->ops->protect(t, first, count, prot);
    /* On failure, the old protections back; the dirty bits learnt meanwhile stay. */
    for (size_t i = first; i < first + count; i++) {
        if (err)
            t->prots[i] = NTS_OLD_PROT(t->state[i]);
        t->state[i] &= NTS_DIRTY;
    }
    if (err)
        t->ops->restore(t, first, count);
    return err;
}

int nts_tracker_mprotect(nts_tracker *t, size_t first, size_t n, int prot)
{
    return mprotect((void *)(t->base + first * nts_page_size), n * nts_page_size, prot) ? errno : 0;
}

void nts_tracker_restore_owner(nts_tracker *t, size_t first, size_t n)
{
    const size_t ps = nts_page_size;
    for (size_t i = first; i < first + n; i++)
        mprotect((void *)(t->base + i * ps), ps, t->prots[i]);
}

/* The methods that take (first, count[, one int]) and run an operation locked. */
static PyObject *range_method(nts_tracker *t, PyObject *args, const char *format, locked_op op, const char *what)
{
    Py_ssize_t f, c;
    size_t first, count;
    int value = 0;
    if (!PyArg_ParseTuple(args, format, &f, &c, &value) || check_range(t, f, c, &first, &count))
        return NULL;
    return run_locked(t, first, count, op, &value, what);
}

static PyObject *tracker_protect(nts_tracker *t, PyObject *args)
{
    return range_method(t, args, "nni", protect_op, "mprotect");
}

/* ---- kernel_write: windows for writes the kernel makes ---- */

/* The pages count as written while the window is open and once more when it
 * closes, and the write-protecting kinds release them for the kernel to write
 * into (os.readv, readinto, recv_into fail with EFAULT on protected pages). */
static int mark_op(nts_tracker *t, size_t first, size_t count, void *arg);

static int kernel_write_op(nts_tracker *t, size_t first, size_t count, void *arg)
{
    const int open_window = *(int *)arg;
    if (!t->ops->protects) /* the kernel's writes are seen: only mark */
        return mark_op(t, first, count, NULL);
    for (size_t i = first; i < first + count; i++)
        if (open_window ? t->pins[i] == UINT16_MAX : t->pins[i] == 0)
            return open_window ? EOVERFLOW : NOT_OPEN;
    for (size_t i = first; i < first + count; i++)
        t->pins[i] += open_window ? 1 : -1;
    mark_dirty(t, first, count);
    int err = open_window ? nts_tracker_sync_kernel(t, first, count) : 0;
    if (err)
        for (size_t i = first; i < first + count; i++)
            t->pins[i]--;
    return err;
}

static PyObject *tracker_kernel_write(nts_tracker *t, PyObject *args)
{
    return range_method(t, args, "nnp", kernel_write_op, "opening a kernel-write window");
}

/* ---- mark: count pages as written ---- */

static int mark_op(nts_tracker *t, size_t first, size_t count, void *arg)
{
    if (t->ops->mark)
        return t->ops->mark(t, first, count);
    mark_dirty(t, first, count);
    return t->ops->protects ? nts_tracker_sync_kernel(t, first, count) : 0; /* dirty: not protected */
}

/* ---- discard: drop contents and write state (decommit) ---- */

/* MADV_DONTNEED: the pages read as zero afterwards, as decommitted pages do on
 * Windows, and lose their write state with their contents.  Re-arms the
 * protection the kernel drops with the contents. */
static int discard_op(nts_tracker *t, size_t first, size_t count, void *arg)
{
    const size_t ps = nts_page_size;
    if (count && madvise((void *)(t->base + first * ps), count * ps, MADV_DONTNEED))
        return errno;
    for (size_t i = first; i < first + count; i++)
        t->state[i] &= ~NTS_DIRTY;
    return t->ops->discarded(t, first, count);
}

static PyObject *tracker_mark(nts_tracker *t, PyObject *args)
{
    return range_method(t, args, "nn", mark_op, "releasing marked pages");
}

static PyObject *tracker_discard(nts_tracker *t, PyObject *args)
{
    return range_method(t, args, "nn", discard_op, "discarding pages");
}

static void tracker_teardown(nts_tracker *t)
{
    /* A userfaultfd tracker's lock may have been held at fork(): in a forked child
     * nobody else uses that tracker (nts_tracker_in_forked_child), so skip the lock. */
    int own_process = !nts_tracker_in_forked_child(t), was_closed;
    if (own_process)
        for (;;) { /* closing gives every page back: a consistent save copies them first */
            unsigned epoch = nts_freeze_settle(t->base, t->npages * nts_page_size);
            nts_lock(t->lock);
            if (__atomic_load_n(&nts_freeze_epoch, __ATOMIC_SEQ_CST) == epoch)
                break;
            nts_unlock(t->lock);
        }
    was_closed = t->book->closed;
    t->book->closed = 1;
    if (!was_closed && t->ops->close_locked)
        t->ops->close_locked(t);
    if (own_process)
        nts_unlock(t->lock);
    if (was_closed)
        return;
    unlist(t);
    if (t->ops->close)
        t->ops->close(t);
}

static PyObject *tracker_close(nts_tracker *t, PyObject *unused)
{
    if (t->book->closed)
        Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    tracker_teardown(t);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static void tracker_dealloc(nts_tracker *t)
{
    if (!t->book->closed)
        tracker_teardown(t);
    munmap(t->book, t->book->size);
    nts_prot_table_release(t->shared_prots);
    PyObject_Free(t);
}

static PyObject *tracker_get_closed(nts_tracker *t, void *c) { return PyBool_FromLong(t->book->closed); }
static PyObject *tracker_get_npages(nts_tracker *t, void *c) { return PyLong_FromSize_t(t->npages); }
static PyObject *tracker_get_kernel_faults(nts_tracker *t, void *c)
{
    return PyBool_FromLong(t->handles_kernel_faults);
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
    PyVarObject_HEAD_INIT(NULL, 0) // the macro ends with its own comma
        .tp_name = "ntshim._core.Tracker",
    .tp_basicsize = sizeof(nts_tracker),
    .tp_dealloc = (destructor)tracker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One watched range, tracked by the uffd-async, uffd-sync, mprotect or shadow mechanism.",
    .tp_methods = tracker_methods,
    .tp_getset = tracker_getset,
};

/* ---- fork(): the child must not inherit a lock held by a thread it does not have ---- */

static void fork_prepare(void)
{
    /* Asynchronous signals wait, so that no handler runs on this thread while it
     * holds the locks.  Faults stay deliverable: one taken with its signal blocked
     * kills the process, and the mprotect handler resolves one that this thread
     * takes while it holds the locks (nts_mprotect_fork_prepare). */
    sigset_t saved;
    nts_block_async_signals(&saved);
    /* The list lock first (it serializes forks); the shadow locks before the
     * mprotect one, because a shadow lock holder may allocate and fault on a page
     * an mprotect watch protects. */
    nts_lock(&g_list_lock);
    for (nts_book *b = g_list; b; b = b->next)
        nts_lock(&b->lock);
    nts_mprotect_fork_prepare();
    g_fork_mask = saved;
}

static void fork_release(void)
{
    for (nts_book *b = g_list; b; b = b->next)
        nts_unlock(&b->lock);
    sigset_t saved = g_fork_mask;
    nts_unlock(&g_list_lock);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

static void fork_parent(void)
{
    nts_mprotect_fork_parent();
    fork_release();
}

static void fork_child(void)
{
    nts_pid = getpid();
    nts_mprotect_fork_child();
    fork_release();
}

int nts_writewatch_module_init(PyObject *mod)
{
    static int done;
    if (PyType_Ready(&nts_tracker_type) < 0 ||
        PyModule_AddObjectRef(mod, "Tracker", (PyObject *)&nts_tracker_type) < 0 ||
        PyModule_AddFunctions(mod, nts_uffd_methods) < 0 || PyModule_AddFunctions(mod, nts_uffd_sync_methods) < 0 ||
        PyModule_AddFunctions(mod, nts_mprotect_methods) < 0 || PyModule_AddFunctions(mod, nts_shadow_methods) < 0 ||
        nts_uffd_module_init(mod) < 0 || nts_mprotect_module_init(mod) < 0)
        return -1;
    nts_pid = getpid();
    if (!done && pthread_atfork(fork_prepare, fork_parent, fork_child)) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return -1;
    }
    done = 1;
    return 0;
}
