/* Consistent (point-in-time) saves: the mechanism under
 * Checkpointer.save(consistent=True).
 *
 * A Freeze write-protects every watched range with mprotect (the instant), gets
 * and resets each tracker's written pages D (the generation's delta) while the
 * ranges stay protected, and then copies each page of D into a staging area
 * before anyone may change it: the saver copies them in order (Freeze.copy), and
 * a thread that writes a protected page first copies it itself, in the SIGSEGV
 * handler, then lets its write go.  Each page of D has a state byte (PENDING,
 * COPYING, COPIED) claimed with a compare-and-swap, so every page is copied
 * exactly once, before its first write.  Freeze.end gives every range its
 * protection back.
 *
 * The handler is the mprotect write watch's (mprotect.c calls nts_freeze_fault
 * before its own resolution): one SIGSEGV handler for ntshim, so the order is
 * fixed.  For a range the mprotect backend watches, the handler copies the page
 * and lets the mprotect backend's resolution run (it marks the page written and
 * gives it write access); for a range uffd-async watches, it gives the page its
 * owner's protection back, and the kernel's write-protection underneath (kept
 * across mprotect, verified on Linux 6.18) records the write for the next
 * generation.
 *
 * Faults taken while the freeze is being set up (protections being changed,
 * trackers being queried) wait until D is known: no write completes between
 * the first mprotect and the publication of D, so the image is the memory at
 * one instant, across every range.  Nothing here holds the GIL while a writer
 * may wait: a Python thread faulting with the GIL held must not wait for a
 * saver that needs it.
 *
 * Everything the handler touches lives in memory mapped here (never the malloc
 * heap) and is read under a user count that Freeze.end waits to drain before it
 * unmaps the tables.  Async-signal-safe: system calls, atomics, memcpy. */
#include "snapshot/snapshot.h"
#include "writewatch/tracker.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <linux/futex.h>
#include <sys/syscall.h>

enum { IDLE, FREEZING, COPYING };
enum { PENDING = 0, CLAIMED = 1, COPIED = 2 };

typedef struct {
    uintptr_t base, end; /* the tracker's range */
    nts_tracker *t;
    int by_mprotect; /* watched by the mprotect backend: its resolution thaws the page */
    size_t run0, nruns;
} fz_range;

typedef struct {
    uintptr_t start, end; /* absolute addresses of a run of D */
    size_t slot;          /* staging slot of its first page */
} fz_run;

/* The one active freeze (saves that freeze run one at a time, see the Python layer). */
static struct {
    int phase;
    unsigned users; /* handlers reading the tables */
    fz_range *ranges;
    size_t nranges;
    fz_run *runs;
    size_t nruns;
    uint8_t *state;  /* one byte per page of D */
    char *staging;   /* one page per page of D */
    size_t faulted;  /* pages copied by writers (in the handler or a settle) */
    size_t fallback; /* ranges thawed whole because a page could not be split off */
} g;
unsigned nts_freeze_epoch; /* +1 at each freeze */

/* Ranges frozen recently: a write that faulted during a freeze and runs its
 * handler only after the freeze ended retries once its page is writable. */
#define RECENT 64
static struct {
    uintptr_t start, end;
} g_recent[RECENT];
static unsigned g_recent_next;

static void enter(void) { __atomic_add_fetch(&g.users, 1, __ATOMIC_SEQ_CST); }
static void leave(void) { __atomic_sub_fetch(&g.users, 1, __ATOMIC_SEQ_CST); }

static fz_range *find_range(uintptr_t addr)
{
    for (size_t i = 0; i < g.nranges; i++)
        if (addr >= g.ranges[i].base && addr < g.ranges[i].end)
            return &g.ranges[i];
    return NULL;
}

/* The slot of the page at addr in D, or -1. */
static ssize_t find_slot(const fz_range *r, uintptr_t addr)
{
    size_t lo = r->run0, hi = r->run0 + r->nruns;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (g.runs[mid].end <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < r->run0 + r->nruns && g.runs[lo].start <= addr)
        return (ssize_t)(g.runs[lo].slot + (addr - g.runs[lo].start) / nts_page_size);
    return -1;
}

/* Copy page `addr` (slot `slot`) unless someone did or does; returns once it is copied. */
static void copy_page(uintptr_t addr, size_t slot, int by_writer)
{
    uint8_t expect = PENDING;
    if (__atomic_compare_exchange_n(&g.state[slot], &expect, CLAIMED, 0, __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE)) {
        memcpy(g.staging + slot * nts_page_size, (const void *)addr, nts_page_size);
        __atomic_store_n(&g.state[slot], COPIED, __ATOMIC_RELEASE);
        if (by_writer)
            __atomic_add_fetch(&g.faulted, 1, __ATOMIC_RELAXED);
        return;
    }
    while (__atomic_load_n(&g.state[slot], __ATOMIC_ACQUIRE) != COPIED)
        nts_cpu_relax();
}

static void copy_range(const fz_range *r, int by_writer)
{
    for (size_t k = r->run0; k < r->run0 + r->nruns; k++)
        for (uintptr_t a = g.runs[k].start; a < g.runs[k].end; a += nts_page_size)
            copy_page(a, g.runs[k].slot + (a - g.runs[k].start) / nts_page_size, by_writer);
}

/* Owner protections back on pages [first, first+n) of t, one mprotect per run of equal protection. */
static int restore_owner_runs(nts_tracker *t, size_t first, size_t n)
{
    int err = 0;
    for (size_t i = first; i < first + n;) {
        size_t j = i + 1;
        while (j < first + n && t->prots[j] == t->prots[i])
            j++;
        if (nts_tracker_mprotect(t, i, j - i, t->prots[i]) && !err)
            err = errno;
        i = j;
    }
    return err;
}

/* A writer needs page addr of r: copy it (if in D), then give it its owner's
 * protection back (uffd-async; the mprotect backend's resolution does that for
 * its ranges).  Splitting the mapping may fail (vm.max_map_count): then every
 * page of D in the range is copied and the whole range thawed, which merges. */
static void thaw_page(fz_range *r, uintptr_t addr)
{
    ssize_t slot = find_slot(r, addr);
    if (slot >= 0)
        copy_page(addr, (size_t)slot, 1);
    if (r->by_mprotect)
        return;
    size_t i = (addr - r->base) / nts_page_size;
    if (nts_tracker_mprotect(r->t, i, 1, r->t->prots[i]) == 0)
        return;
    copy_range(r, 1);
    restore_owner_runs(r->t, 0, r->t->npages);
    __atomic_add_fetch(&g.fallback, 1, __ATOMIC_RELAXED);
}

static int writable_now(uintptr_t addr)
{
    static int unused;
    return syscall(SYS_futex, &unused, FUTEX_WAKE_OP_PRIVATE, 0, (void *)0, (int *)(addr & ~(uintptr_t)3),
                   FUTEX_OP(FUTEX_OP_ADD, 0, FUTEX_OP_CMP_EQ, 0)) >= 0;
}

int nts_freeze_fault(uintptr_t addr)
{
    const uintptr_t page = addr & ~(uintptr_t)(nts_page_size - 1);
    int phase;
    enter();
    if ((phase = __atomic_load_n(&g.phase, __ATOMIC_SEQ_CST)) != IDLE) {
        fz_range *r = find_range(addr);
        if (r) {
            size_t i = (page - r->base) / nts_page_size;
            if (!(r->t->prots[i] & PROT_WRITE)) { /* the owner forbids the write: a real fault */
                leave();
                return 0;
            }
            while ((phase = __atomic_load_n(&g.phase, __ATOMIC_ACQUIRE)) == FREEZING)
                nts_cpu_relax();
            if (phase == COPYING) {
                thaw_page(r, page);
                leave();
                return r->by_mprotect ? 0 : 1;
            }
        }
    }
    leave();
    /* A fault of a freeze that ended since: retry once the page is writable
     * (otherwise its watch's resolution, or the chain, decides). */
    for (unsigned k = 0; k < RECENT; k++)
        if (addr >= g_recent[k].start && addr < g_recent[k].end)
            return writable_now(addr);
    return 0;
}

unsigned nts_freeze_settle(uintptr_t start, size_t len)
{
    unsigned epoch = __atomic_load_n(&nts_freeze_epoch, __ATOMIC_ACQUIRE);
    /* No freeze (every tracker operation passes here): nothing to read, so no user count
     * to take.  A freeze that begins after this look bumped the epoch first, and the
     * caller, seeing it changed under its lock, settles again. */
    if (__atomic_load_n(&g.phase, __ATOMIC_SEQ_CST) == IDLE)
        return epoch;
    enter();
    if (__atomic_load_n(&g.phase, __ATOMIC_SEQ_CST) != IDLE) {
        while (__atomic_load_n(&g.phase, __ATOMIC_ACQUIRE) == FREEZING)
            nts_cpu_relax();
        if (__atomic_load_n(&g.phase, __ATOMIC_ACQUIRE) == COPYING)
            for (uintptr_t a = start & ~(uintptr_t)(nts_page_size - 1); a < start + len; a += nts_page_size) {
                fz_range *r = find_range(a);
                if (r && (r->t->prots[(a - r->base) / nts_page_size] & PROT_WRITE))
                    thaw_page(r, a);
            }
    }
    leave();
    return epoch;
}

void nts_freeze_settle_tracker(nts_tracker *t)
{
    enter();
    if (__atomic_load_n(&g.phase, __ATOMIC_SEQ_CST) == COPYING)
        for (size_t i = 0; i < g.nranges; i++)
            if (g.ranges[i].t == t)
                copy_range(&g.ranges[i], 1);
    leave();
}

/* ---- the Freeze object ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *trackers; /* tuple: kept alive while the ranges name them */
    PyObject *runs;     /* list of bytes, one per tracker: D as byte-offset runs */
    fz_range *ranges;
    size_t nranges, ranges_size;
    void *tables; /* runs and state bytes */
    size_t tables_size;
    char *staging;
    size_t pages; /* |D|: staging pages */
    int active;   /* the tables are g's: end() not done */
    Py_ssize_t exports;
    size_t faulted, fallback;
} nts_freeze;

static PyTypeObject nts_freeze_type;
static int g_busy; /* a Freeze holds g */

/* Protect (frozen) or give back every range: `freeze` 1 takes write access from
 * every page whose owner allows writes, 0 restores what the watch wants. */
static int set_ranges(fz_range *ranges, size_t n, int freeze)
{
    int err = 0, e;
    for (size_t k = 0; k < n; k++) {
        nts_tracker *t = ranges[k].t;
        if (freeze) {
            /* Under the mprotect backend's lock: a write it is resolving now either
             * got its page before this (frozen again here) or sees the new epoch
             * under the lock and faults again (mprotect.c). */
            if (ranges[k].by_mprotect)
                nts_lock(t->lock);
            for (size_t i = 0; i < t->npages && !err;) {
                size_t j = i + 1;
                while (j < t->npages && t->prots[j] == t->prots[i])
                    j++;
                if (t->prots[i] & PROT_WRITE)
                    err = nts_tracker_mprotect(t, i, j - i, t->prots[i] & ~PROT_WRITE);
                i = j;
            }
            if (ranges[k].by_mprotect)
                nts_unlock(t->lock);
            if (err)
                return err;
        } else if (ranges[k].by_mprotect) { /* its clean pages read-only, the written ones writable */
            nts_lock(t->lock);
            e = nts_tracker_sync_kernel(t, 0, t->npages);
            nts_unlock(t->lock);
            err = err ? err : e;
        } else {
            e = restore_owner_runs(t, 0, t->npages);
            err = err ? err : e;
        }
    }
    return err;
}

static void drain_users(void)
{
    while (__atomic_load_n(&g.users, __ATOMIC_SEQ_CST))
        nts_cpu_relax();
}

/* Give every range back and let go of g (the GIL released or not: nothing waits for it). */
static int freeze_finish(nts_freeze *f)
{
    if (!f->active)
        return 0;
    int err = set_ranges(f->ranges, f->nranges, 0);
    for (size_t k = 0; k < f->nranges; k++) {
        unsigned at = g_recent_next++ % RECENT;
        g_recent[at].start = f->ranges[k].base;
        g_recent[at].end = f->ranges[k].end;
    }
    __atomic_store_n(&g.phase, IDLE, __ATOMIC_SEQ_CST);
    drain_users();
    f->faulted = g.faulted;
    f->fallback = g.fallback;
    memset(&g, 0, sizeof g);
    f->active = 0;
    __atomic_store_n(&g_busy, 0, __ATOMIC_RELEASE);
    return err;
}

static PyObject *freeze_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"trackers", "full", NULL};
    PyObject *seq;
    int full;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Op", kwlist, &seq, &full))
        return NULL;
    PyObject *trackers = PySequence_Tuple(seq);
    if (!trackers)
        return NULL;
    const size_t n = (size_t)PyTuple_GET_SIZE(trackers), ps = nts_page_size;
    for (size_t k = 0; k < n; k++) {
        PyObject *o = PyTuple_GET_ITEM(trackers, k);
        if (!PyObject_TypeCheck(o, &nts_tracker_type)) {
            Py_DECREF(trackers);
            return PyErr_Format(PyExc_TypeError, "trackers[%zu] is not a Tracker", k);
        }
        nts_tracker *t = (nts_tracker *)o;
        if (t->book->closed || nts_tracker_in_forked_child(t)) {
            Py_DECREF(trackers);
            return PyErr_Format(PyExc_ValueError, "trackers[%zu] is closed or belongs to the parent process", k);
        }
        if (t->ops != &nts_mprotect_ops && t->ops != &nts_uffd_async_ops) {
            Py_DECREF(trackers);
            return PyErr_Format(PyExc_ValueError, "trackers[%zu]: only uffd-async and mprotect trackers can freeze", k);
        }
        for (size_t i = 0; i < t->npages; i++)
            if (!(t->prots[i] & PROT_READ)) {
                Py_DECREF(trackers);
                return PyErr_Format(PyExc_ValueError, "trackers[%zu]: page %zu cannot be read (protection %d)", k, i,
                                    t->prots[i]);
            }
        for (size_t j = 0; j < k; j++) {
            nts_tracker *u = (nts_tracker *)PyTuple_GET_ITEM(trackers, j);
            if (u->base < t->base + t->npages * ps && t->base < u->base + u->npages * ps) {
                Py_DECREF(trackers);
                return PyErr_Format(PyExc_ValueError, "trackers[%zu] overlaps trackers[%zu]", k, j);
            }
        }
    }
    int busy = 0;
    if (!__atomic_compare_exchange_n(&g_busy, &busy, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        Py_DECREF(trackers);
        return PyErr_Format(PyExc_RuntimeError, "another consistent save is running in this process");
    }
    nts_freeze *f = (nts_freeze *)type->tp_alloc(type, 0);
    nts_runs *d = f ? PyMem_Calloc(n ? n : 1, sizeof *d) : NULL;
    int err = 0;
    if (!d || (err = nts_mprotect_install_handler())) {
        __atomic_store_n(&g_busy, 0, __ATOMIC_RELEASE);
        Py_DECREF(trackers);
        Py_XDECREF(f);
        if (err)
            return nts_raise_errno(err, "installing the SIGSEGV handler");
        return PyErr_NoMemory();
    }
    f->trackers = trackers;
    f->ranges_size = (n * sizeof(fz_range) + ps - 1) / ps * ps;
    f->ranges =
        mmap(NULL, f->ranges_size ? f->ranges_size : ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->ranges == MAP_FAILED) {
        f->ranges = NULL;
        __atomic_store_n(&g_busy, 0, __ATOMIC_RELEASE);
        PyMem_Free(d);
        Py_DECREF(f);
        return PyErr_NoMemory();
    }
    f->nranges = n;
    for (size_t k = 0; k < n; k++) {
        nts_tracker *t = (nts_tracker *)PyTuple_GET_ITEM(trackers, k);
        f->ranges[k] = (fz_range){t->base, t->base + t->npages * ps, t, t->ops == &nts_mprotect_ops, 0, 0};
    }
    const char *step = "mprotect";
    Py_BEGIN_ALLOW_THREADS
    /* The freeze: faults in the ranges wait from here until D is published. */
    g.ranges = f->ranges;
    g.nranges = n;
    __atomic_add_fetch(&nts_freeze_epoch, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g.phase, FREEZING, __ATOMIC_SEQ_CST);
    err = set_ranges(f->ranges, n, 1);
    /* D: get and reset (every tracker is reset, also for a base, where D is every page). */
    for (size_t k = 0; k < n && !err; k++) {
        nts_tracker *t = f->ranges[k].t;
        if ((err = nts_tracker_query(t, 0, t->npages, 1, 0, &d[k])))
            step = "querying written pages";
        if (!err && full) {
            d[k].n = 0;
            if (nts_runs_add(&d[k], 0, t->npages * ps))
                err = ENOMEM;
        }
    }
    size_t nruns = 0, pages = 0;
    for (size_t k = 0; k < n && !err; k++) {
        nruns += d[k].n / 2;
        for (size_t r = 0; r < d[k].n; r += 2)
            pages += (d[k].v[r + 1] - d[k].v[r]) / ps;
    }
    if (!err) {
        f->tables_size = ((nruns ? nruns : 1) * sizeof(fz_run) + pages + ps - 1) / ps * ps;
        f->tables = mmap(NULL, f->tables_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        f->staging = pages ? mmap(NULL, pages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;
        if (f->tables == MAP_FAILED || f->staging == MAP_FAILED) {
            err = ENOMEM;
            step = "mapping the staging area";
        }
    }
    if (!err) {
        fz_run *runs = f->tables;
        size_t at = 0, slot = 0;
        for (size_t k = 0; k < n; k++) {
            f->ranges[k].run0 = at;
            for (size_t r = 0; r < d[k].n; r += 2) {
                runs[at] = (fz_run){f->ranges[k].base + d[k].v[r], f->ranges[k].base + d[k].v[r + 1], slot};
                slot += (d[k].v[r + 1] - d[k].v[r]) / ps;
                at++;
            }
            f->ranges[k].nruns = at - f->ranges[k].run0;
        }
        f->pages = pages;
        g.runs = runs;
        g.nruns = nruns;
        g.state = (uint8_t *)(runs + (nruns ? nruns : 1));
        g.staging = f->staging;
        f->active = 1;
        __atomic_store_n(&g.phase, COPYING, __ATOMIC_SEQ_CST); /* D is published: writers copy and go */
    } else {
        f->active = 1;
        freeze_finish(f);
    }
    Py_END_ALLOW_THREADS
    if (!err) {
        f->runs = PyList_New((Py_ssize_t)n);
        for (size_t k = 0; k < n && f->runs; k++) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)d[k].v, (Py_ssize_t)(d[k].n * sizeof(uint64_t)));
            if (!b)
                Py_CLEAR(f->runs);
            else
                PyList_SET_ITEM(f->runs, (Py_ssize_t)k, b);
        }
    }
    for (size_t k = 0; k < n; k++)
        free(d[k].v);
    PyMem_Free(d);
    if (err || !f->runs) {
        if (!err) { /* no memory for the answer: give everything back */
            Py_BEGIN_ALLOW_THREADS
            freeze_finish(f);
            Py_END_ALLOW_THREADS
        }
        Py_DECREF(f);
        if (err == ENOMEM)
            return PyErr_NoMemory();
        return err ? nts_raise_errno(err, "freezing for a consistent save: %s", step) : NULL;
    }
    return (PyObject *)f;
}

static PyObject *freeze_copy(nts_freeze *f, PyObject *unused)
{
    if (!f->active)
        return PyErr_Format(PyExc_ValueError, "the freeze has ended");
    Py_BEGIN_ALLOW_THREADS
    for (size_t k = 0; k < f->nranges; k++)
        copy_range(&f->ranges[k], 0);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *freeze_end(nts_freeze *f, PyObject *unused)
{
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = freeze_finish(f);
    Py_END_ALLOW_THREADS
    if (err)
        return nts_raise_errno(err, "giving the frozen ranges their protection back");
    Py_RETURN_NONE;
}

static void freeze_dealloc(nts_freeze *f)
{
    if (f->active) {
        Py_BEGIN_ALLOW_THREADS
        freeze_finish(f);
        Py_END_ALLOW_THREADS
    }
    if (f->staging && f->staging != MAP_FAILED)
        munmap(f->staging, f->pages * nts_page_size);
    if (f->tables && f->tables != MAP_FAILED)
        munmap(f->tables, f->tables_size);
    if (f->ranges)
        munmap(f->ranges, f->ranges_size ? f->ranges_size : nts_page_size);
    Py_XDECREF(f->runs);
    Py_XDECREF(f->trackers);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static int freeze_getbuffer(nts_freeze *f, Py_buffer *view, int flags)
{
    if (f->active) {
        PyErr_SetString(PyExc_BufferError, "the staging area is read after end()");
        return -1;
    }
    static char empty;
    int r = PyBuffer_FillInfo(view, (PyObject *)f, f->staging ? f->staging : &empty,
                              (Py_ssize_t)(f->pages * nts_page_size), 1, flags);
    if (r == 0)
        f->exports++;
    return r;
}

static void freeze_releasebuffer(nts_freeze *f, Py_buffer *view) { f->exports--; }

static PyObject *freeze_get_runs(nts_freeze *f, void *c)
{
    if (!f->runs)
        Py_RETURN_NONE;
    return Py_NewRef(f->runs);
}
static PyObject *freeze_get_pages(nts_freeze *f, void *c) { return PyLong_FromSize_t(f->pages); }
static PyObject *freeze_get_faulted(nts_freeze *f, void *c)
{
    return PyLong_FromSize_t(f->active ? __atomic_load_n(&g.faulted, __ATOMIC_RELAXED) : f->faulted);
}
static PyObject *freeze_get_fallback(nts_freeze *f, void *c)
{
    return PyLong_FromSize_t(f->active ? __atomic_load_n(&g.fallback, __ATOMIC_RELAXED) : f->fallback);
}
static PyObject *freeze_get_active(nts_freeze *f, void *c) { return PyBool_FromLong(f->active); }

static PyMethodDef freeze_methods[] = {
    {"copy", (PyCFunction)freeze_copy, METH_NOARGS, "Copy every page of D not copied yet into the staging area."},
    {"end", (PyCFunction)freeze_end, METH_NOARGS, "Give every range its protection back (idempotent)."},
    {NULL},
};

static PyGetSetDef freeze_getset[] = {
    {"runs", (getter)freeze_get_runs, NULL, "D of each tracker: bytes of uint64 [start, end) byte-offset runs", NULL},
    {"pages", (getter)freeze_get_pages, NULL, "pages of D: the staging area's size in pages", NULL},
    {"faulted", (getter)freeze_get_faulted, NULL, "pages a writer copied before its write", NULL},
    {"fallback", (getter)freeze_get_fallback, NULL, "ranges thawed whole (a mapping could not be split)", NULL},
    {"active", (getter)freeze_get_active, NULL, "protections are changed (end() not called)", NULL},
    {NULL},
};

static PyBufferProcs freeze_as_buffer = {(getbufferproc)freeze_getbuffer, (releasebufferproc)freeze_releasebuffer};

static PyTypeObject nts_freeze_type = {
    PyVarObject_HEAD_INIT(NULL, 0) // the macro ends with its own comma
        .tp_name = "ntshim._core.Freeze",
    .tp_basicsize = sizeof(nts_freeze),
    .tp_dealloc = (destructor)freeze_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Freeze(trackers, full): write-protect the trackers' ranges, get and reset their written pages "
              "(D; every page if full) and copy each page of D before its first write; end() gives the ranges "
              "back, then the object is a read-only buffer of the copies, in the order of runs.",
    .tp_methods = freeze_methods,
    .tp_getset = freeze_getset,
    .tp_as_buffer = &freeze_as_buffer,
    .tp_new = freeze_new,
};

/* fork() during a freeze: the child has no saver; give it its memory back. */
static void freeze_fork_child(void)
{
    if (__atomic_load_n(&g.phase, __ATOMIC_RELAXED) == IDLE)
        return;
    for (size_t k = 0; k < g.nranges; k++) {
        nts_tracker *t = g.ranges[k].t;
        if (g.ranges[k].by_mprotect)
            nts_tracker_sync_kernel(t, 0, t->npages); /* the child's only thread: no lock needed */
        else
            restore_owner_runs(t, 0, t->npages);
    }
    g.phase = IDLE;
    g.users = 0;
    g_busy = 0;
}

int nts_freeze_module_init(PyObject *mod)
{
    static int done;
    if (PyType_Ready(&nts_freeze_type) < 0 || PyModule_AddObjectRef(mod, "Freeze", (PyObject *)&nts_freeze_type) < 0)
        return -1;
    if (!done && pthread_atfork(NULL, NULL, freeze_fork_child)) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return -1;
    }
    done = 1;
    return 0;
}
