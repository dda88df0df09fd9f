/* The mprotect backend's mechanism: clean pages lose PROT_WRITE; the first
 * write raises SIGSEGV, whose handler marks the page dirty and gives the write
 * back.  Faults this backend does not own go to the handler installed before
 * it (Python's faulthandler, a debugger's, or the default action). */
#include "tracker.h"
#include "snapshot/snapshot.h"

#include <errno.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/mman.h>
#include <linux/futex.h>
#include <sys/syscall.h>

/* One lock guards the registry and the state of every mprotect tracker: the
 * signal handler must find the tracker and update it atomically.  A thread
 * holding it runs only our code, which writes nothing but static memory and
 * the trackers' books (tracker.c, "Lock discipline"), never watched memory, so
 * the handler can never find its own thread holding it, with one exception:
 * the thread inside fork(), which holds it from the prepare handler to the
 * parent or child one while glibc and other fork handlers run (see
 * lock_for_fault). */
static int g_lock;
static nts_tracker **g_reg; /* mmap'd, sorted by base; ranges never overlap */
static size_t g_nreg, g_cap;
static int g_fork_held; /* g_lock is held across fork() by g_fork_holder */
static pthread_t g_fork_holder;
/* Ranges whose watch ended recently (a ring), for faults that were waiting for
 * the lock meanwhile: see resolve(). */
#define RECENT 256
static struct {
    uintptr_t start, end;
} g_recent[RECENT];
static size_t g_recent_next;
static size_t g_ended; /* watches ended so far */
/* The last such fault each thread was told to retry (a small table: a collision
 * only costs a thread one more retry). */
#define RETRIED 64
static struct {
    pid_t tid;
    uintptr_t addr;
    size_t ended;
} g_retried[RETRIED];
static void on_sigsegv(int sig, siginfo_t *si, void *ctx);
static nts_sigchain g_chain = {.sig = SIGSEGV, .handler = on_sigsegv};

static int fault_is_write(const void *ctx)
{
#if defined(__x86_64__)
    /* x86 page-fault error code: bit 1 set for a write access. */
    return (((const ucontext_t *)ctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
    (void)ctx;
    return 0;
#endif
}

static nts_tracker *lookup(uintptr_t addr)
{
    size_t lo = 0, hi = g_nreg;
    while (lo < hi) { /* first tracker with base > addr */
        size_t mid = (lo + hi) / 2;
        if (g_reg[mid]->base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    nts_tracker *t = g_reg[lo - 1];
    return addr < t->base + t->npages * nts_page_size ? t : NULL;
}

/* Whether a write to addr would succeed now, without changing memory: futex
 * FUTEX_WAKE_OP adds 0 to the word at addr atomically (no data race with a
 * writer) and fails with EFAULT unless the page can be written; it wakes nobody
 * (both counts are 0). */
static int writable_now(uintptr_t addr)
{
    static int unused;
    return syscall(SYS_futex, &unused, FUTEX_WAKE_OP_PRIVATE, 0, (void *)0, (int *)(addr & ~(uintptr_t)3),
                   FUTEX_OP(FUTEX_OP_ADD, 0, FUTEX_OP_CMP_EQ, 0)) >= 0;
}

static int recently_unwatched(uintptr_t addr)
{
    for (size_t i = 0; i < RECENT; i++)
        if (addr >= g_recent[i].start && addr < g_recent[i].end)
            return 1;
    return 0;
}

/* A write fault at addr, under the lock: 1 if it was ours and the write may run
 * again, 0 to pass it on. */
static int resolve(uintptr_t addr)
{
    nts_tracker *t = lookup(addr);
    if (t) {
        size_t i = (addr - t->base) / nts_page_size;
        if (!(t->prots[i] & PROT_WRITE)) /* the owner's protection forbids the write: a real fault */
            return 0;
        /* Our protection (or another thread lifted it already). */
        t->state[i] |= NTS_DIRTY;
        if (nts_tracker_mprotect(t, i, 1, t->prots[i])) {
            /* Splitting the mapping failed (vm.max_map_count): give the whole
             * range back, reporting every page as written, which merges the
             * mapping instead of splitting it (after a consistent save running
             * now has copied every page it still needs there). */
            nts_freeze_settle_tracker(t);
            for (size_t k = 0; k < t->npages; k++)
                t->state[k] |= NTS_DIRTY;
            nts_tracker_sync_kernel(t, 0, t->npages);
        }
        return 1;
    }
    /* No watch covers addr now.  A write that faulted on a page of a watch that
     * ended since (closed, freed, collected, or a registration undone) waited
     * here for the lock meanwhile; the page has its owner's protection back and
     * the write must simply run again.  Only ranges watched recently qualify:
     * another library's fault goes to its handler every time, even when its page
     * is writable by now (its handler may count the faults). */
    if (!recently_unwatched(addr))
        return 0;
    if (writable_now(addr))
        return 1;
    /* Not writable for the kernel — which may still mean writable for the thread: a
     * userfaultfd watch started since may have write-protected the page (a kernel
     * access then fails; the thread's write waits for that watch's resolver).  Retry
     * once; the same fault again on this thread, with no watch ended in between, is
     * real. */
    pid_t tid = (pid_t)syscall(SYS_gettid);
    __typeof__(g_retried[0]) *last = &g_retried[(size_t)tid % RETRIED];
    if (last->tid == tid && last->addr == addr && last->ended == g_ended) {
        last->tid = 0;
        return 0;
    }
    last->tid = tid;
    last->addr = addr;
    last->ended = g_ended;
    return 1;
}

/* Take g_lock in the handler: 1, or 0 when this thread already holds it because
 * it is inside fork().  Between the prepare and the parent or child handlers,
 * glibc (malloc's arena locks, which can share a page with a watched heap
 * buffer) and the fork handlers registered before ours write memory; the fault
 * is resolved under the forking thread's hold, which excludes every other
 * thread.  pthread_self() names the thread in the child too. */
static int lock_for_fault(void)
{
    if (__atomic_load_n(&g_fork_held, __ATOMIC_ACQUIRE) && pthread_equal(g_fork_holder, pthread_self()))
        return 0;
    nts_lock(&g_lock);
    return 1;
}

static void on_sigsegv(int sig, siginfo_t *si, void *ctx)
{
    int saved_errno = errno;
    /* Only a write fault can be ours; a sent SIGSEGV never is, and must not wait
     * for the lock (the thread it landed on may be holding it). */
    if (si->si_code == SEGV_ACCERR && fault_is_write(ctx)) {
        /* A consistent save's freeze first (snapshot/freeze.c): it copies the page
         * before the write may run.  A freeze that began after that look protected
         * the page again: under the lock, a new epoch means "fault again". */
        const unsigned epoch = __atomic_load_n(&nts_freeze_epoch, __ATOMIC_SEQ_CST);
        if (nts_freeze_fault((uintptr_t)si->si_addr)) {
            errno = saved_errno;
            return;
        }
        int locked = lock_for_fault(), ours;
        ours = __atomic_load_n(&nts_freeze_epoch, __ATOMIC_SEQ_CST) != epoch ? 1 : resolve((uintptr_t)si->si_addr);
        if (locked)
            nts_unlock(&g_lock);
        if (ours) {
            errno = saved_errno;
            return;
        }
    }
    nts_sigchain_pass(&g_chain, si, ctx);
    errno = saved_errno;
}

/* Room for one more tracker.  The registry grows by mremap, not realloc: it is
 * written under g_lock (see the lock discipline in tracker.c). */
static int registry_reserve(void)
{
    if (g_nreg < g_cap)
        return 0;
    size_t cap = g_cap ? 2 * g_cap : nts_page_size / sizeof *g_reg;
    void *r = g_reg ? mremap(g_reg, g_cap * sizeof *g_reg, cap * sizeof *g_reg, MREMAP_MAYMOVE)
                    : mmap(NULL, cap * sizeof *g_reg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return ENOMEM;
    g_reg = r;
    g_cap = cap;
    return 0;
}

static int registry_insert(nts_tracker *t)
{
    size_t at = 0;
    while (at < g_nreg && g_reg[at]->base < t->base)
        at++;
    uintptr_t end = t->base + t->npages * nts_page_size;
    if ((at < g_nreg && g_reg[at]->base < end) ||
        (at > 0 && g_reg[at - 1]->base + g_reg[at - 1]->npages * nts_page_size > t->base))
        return EEXIST;
    int err = registry_reserve();
    if (err)
        return err;
    memmove(g_reg + at + 1, g_reg + at, (g_nreg - at) * sizeof *g_reg);
    g_reg[at] = t;
    g_nreg++;
    return 0;
}

/* Stop tracking t (closed from now on) and give every page its owner's protection. */
static void registry_remove(nts_tracker *t)
{
    t->book->closed = 1;
    for (size_t i = 0; i < g_nreg; i++)
        if (g_reg[i] == t) {
            memmove(g_reg + i, g_reg + i + 1, (g_nreg - i - 1) * sizeof *g_reg);
            g_nreg--;
            break;
        }
    g_recent[g_recent_next].start = t->base;
    g_recent[g_recent_next].end = t->base + t->npages * nts_page_size;
    g_recent_next = (g_recent_next + 1) % RECENT;
    g_ended++;
    for (size_t i = 0; i < t->npages; i++)
        t->state[i] |= NTS_DIRTY;
    nts_tracker_sync_kernel(t, 0, t->npages);
}

/* Only a write the owner allows needs taking away. */
static int mprotect_want(int prot, int clean) { return clean && (prot & PROT_WRITE) ? (prot & ~PROT_WRITE) : prot; }

/* The kernel's protection is derived from the owner's: bring it in line. */
static int mprotect_protect(nts_tracker *t, size_t first, size_t n, int prot)
{
    return nts_tracker_sync_kernel(t, first, n);
}

static void mprotect_restore(nts_tracker *t, size_t first, size_t n) { nts_tracker_sync_kernel(t, first, n); }

const nts_ww_ops nts_mprotect_ops = {
    .protects = 1,
    .query_step = "mprotect",
    .want = mprotect_want,
    .apply = nts_tracker_mprotect,
    .rearm = nts_tracker_sync_kernel,
    .discarded = nts_tracker_sync_kernel,
    .protect = mprotect_protect,
    .restore = mprotect_restore,
    .close_locked = registry_remove, /* t->lock is g_lock */
};

static PyObject *mprotect_tracker_new(PyObject *mod, PyObject *args)
{
    unsigned long long base, size;
    PyObject *prots;
    if (!PyArg_ParseTuple(args, "KKO", &base, &size, &prots))
        return NULL;
#if !defined(__x86_64__)
    PyErr_SetString(PyExc_NotImplementedError, "the mprotect backend decodes write faults only on x86-64");
    return NULL;
#endif
    nts_tracker *t = nts_tracker_alloc(&nts_mprotect_ops, (uintptr_t)base, (size_t)size, prots);
    if (!t)
        return NULL;
    int err;
    t->lock = &g_lock; /* the handler finds the tracker and updates it under one lock */
    nts_lock(&g_lock);
    /* Ours goes on top again at every registration, so that a handler installed
     * after ours (faulthandler.enable(), say) cannot swallow our faults. */
    err = nts_sigchain_install(&g_chain);
    if (!err)
        err = registry_insert(t);
    if (!err) {
        nts_tracker_opened(t);
        if ((err = nts_tracker_sync_kernel(t, 0, t->npages))) /* undo: owner protections back */
            registry_remove(t);
    }
    nts_unlock(&g_lock);
    if (err) {
        Py_DECREF(t);
        if (err == EEXIST)
            return PyErr_Format(PyExc_ValueError, "memory at 0x%llx is already watched by the mprotect backend", base);
        return nts_raise_errno(err, "mprotect backend: protecting 0x%llx+%llu", base, size);
    }
    return (PyObject *)t;
}

int nts_mprotect_install_handler(void)
{
    nts_lock(&g_lock);
    int err = nts_sigchain_install(&g_chain);
    nts_unlock(&g_lock);
    return err;
}

void nts_mprotect_fork_prepare(void)
{
    nts_lock(&g_lock);
    g_fork_holder = pthread_self();
    __atomic_store_n(&g_fork_held, 1, __ATOMIC_RELEASE);
}

void nts_mprotect_fork_parent(void)
{
    __atomic_store_n(&g_fork_held, 0, __ATOMIC_RELAXED);
    nts_unlock(&g_lock);
}

void nts_mprotect_fork_child(void)
{
    g_fork_held = 0;
    g_lock = 0;
}

PyMethodDef nts_mprotect_methods[] = {
    {"mprotect_tracker", mprotect_tracker_new, METH_VARARGS,
     "mprotect_tracker(address, size, prots) -> Tracker (write-protect + SIGSEGV)"},
    {NULL},
};

int nts_mprotect_module_init(PyObject *mod)
{
#if defined(__x86_64__)
    return PyModule_AddIntConstant(mod, "MPROTECT_SUPPORTED", 1);
#else
    return PyModule_AddIntConstant(mod, "MPROTECT_SUPPORTED", 0);
#endif
}
