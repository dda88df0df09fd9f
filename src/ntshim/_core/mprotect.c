/* The mprotect backend's mechanism: clean pages lose PROT_WRITE; the first
 * write raises SIGSEGV, whose handler marks the page dirty and gives the write
 * back.  Faults this backend does not own go to the handler installed before
 * it (Python's faulthandler, a debugger's, or the default action). */
#include "core.h"

#include <errno.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

/* One lock guards the registry and the state of every mprotect tracker: the
 * signal handler must find the tracker and update it atomically.  A thread
 * holding it runs only our code, which never touches watched memory, so the
 * handler can never find its own thread holding it. */
static int g_lock;
static nts_tracker **g_reg; /* sorted by base; ranges never overlap */
static size_t g_nreg, g_cap;
static struct sigaction g_prev; /* what we chain to */
static __thread sigset_t g_fork_mask;

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

int nts_mprotect_apply(nts_tracker *t, size_t first, size_t n, int prot)
{
    if (mprotect((void *)(t->base + first * nts_page_size), n * nts_page_size, prot))
        return errno;
    return 0;
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

static uintptr_t g_last_foreign_fault; /* 1 + address of the last fault we passed on; 0: none */
static pid_t g_chaining_tid;            /* thread inside a handler we chained to, 0: none */

static void default_action(int sig, siginfo_t *si)
{
    /* A hardware fault repeats when the instruction re-executes; a sent signal has
     * to be raised again. */
    signal(sig, SIG_DFL);
    if (si->si_code <= 0)
        raise(sig);
}

static void chain(const struct sigaction *prev, int sig, siginfo_t *si, void *ctx)
{
    /* The handler we chain to may hand the signal back to us.  faulthandler, enabled
     * after our first watch, restores its predecessor (us) and raises the signal
     * again: with SA_NODEFER that arrives while we are still calling it.  A handler
     * that just returns lets the instruction fault again at the same address.
     * Either way nobody else will deal with it: take the default action. */
    pid_t me = (pid_t)syscall(SYS_gettid);
    uintptr_t key = (uintptr_t)si->si_addr + 1;
    if (__atomic_load_n(&g_chaining_tid, __ATOMIC_RELAXED) == me ||
        (si->si_code > 0 && __atomic_exchange_n(&g_last_foreign_fault, key, __ATOMIC_RELAXED) == key)) {
        default_action(sig, si);
        return;
    }
    __atomic_store_n(&g_chaining_tid, me, __ATOMIC_RELAXED);
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, si, ctx);
    } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
    } else {
        default_action(sig, si);
    }
    __atomic_store_n(&g_chaining_tid, 0, __ATOMIC_RELAXED);
}

static void on_sigsegv(int sig, siginfo_t *si, void *ctx)
{
    int saved_errno = errno;
    struct sigaction prev;
    nts_lock(&g_lock);
    if (si->si_code == SEGV_ACCERR && fault_is_write(ctx)) {
        uintptr_t addr = (uintptr_t)si->si_addr;
        nts_tracker *t = lookup(addr);
        if (t) {
            size_t i = (addr - t->base) / nts_page_size;
            if (t->state[i] & PROT_WRITE) { /* our protection (or another thread fixed it already) */
                t->state[i] |= NTS_DIRTY;
                if (nts_mprotect_apply(t, i, 1, t->state[i] & NTS_PROT_MASK)) {
                    /* Splitting the mapping failed (vm.max_map_count): give
                     * the whole range back, reporting every page as written,
                     * which merges the mapping instead of splitting it. */
                    for (size_t k = 0; k < t->npages; k++)
                        t->state[k] |= NTS_DIRTY;
                    nts_tracker_sync_kernel(t, 0, t->npages);
                }
                nts_unlock(&g_lock);
                errno = saved_errno;
                return;
            }
        }
    }
    prev = g_prev;
    nts_unlock(&g_lock);
    chain(&prev, sig, si, ctx);
    errno = saved_errno;
}

/* Put our handler on top, keeping whatever was there as the one to chain to.
 * Done at every registration so a handler installed after ours (for example
 * faulthandler.enable()) cannot swallow our faults.  Lock held. */
static int install_handler(void)
{
    struct sigaction cur, ours;
    if (sigaction(SIGSEGV, NULL, &cur))
        return errno;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigsegv)
        return 0;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_sigsegv;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER; /* see chain() */
    sigemptyset(&ours.sa_mask);
    if (sigaction(SIGSEGV, &ours, NULL))
        return errno;
    g_prev = cur;
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
    if (g_nreg == g_cap) {
        size_t cap = g_cap ? 2 * g_cap : 16;
        nts_tracker **r = realloc(g_reg, cap * sizeof *r);
        if (!r)
            return ENOMEM;
        g_reg = r;
        g_cap = cap;
    }
    memmove(g_reg + at + 1, g_reg + at, (g_nreg - at) * sizeof *g_reg);
    g_reg[at] = t;
    g_nreg++;
    return 0;
}

static void registry_remove(nts_tracker *t)
{
    for (size_t i = 0; i < g_nreg; i++)
        if (g_reg[i] == t) {
            memmove(g_reg + i, g_reg + i + 1, (g_nreg - i - 1) * sizeof *g_reg);
            g_nreg--;
            return;
        }
}

void nts_mprotect_unregister(nts_tracker *t)
{
    nts_lock(&g_lock);
    if (!t->closed) {
        t->closed = 1;
        registry_remove(t);
        for (size_t i = 0; i < t->npages; i++) /* every page at its owner's protection */
            t->state[i] |= NTS_DIRTY;
        nts_tracker_sync_kernel(t, 0, t->npages);
    }
    nts_unlock(&g_lock);
}

PyObject *nts_mprotect_tracker_new(PyObject *mod, PyObject *args)
{
    unsigned long long base, size;
    PyObject *prots;
    if (!PyArg_ParseTuple(args, "KKO", &base, &size, &prots))
        return NULL;
#if !defined(__x86_64__)
    PyErr_SetString(PyExc_NotImplementedError, "the mprotect backend decodes write faults only on x86-64");
    return NULL;
#endif
    nts_tracker *t = nts_tracker_alloc(NTS_MPROTECT, (uintptr_t)base, (size_t)size, prots);
    if (!t)
        return NULL;
    int err;
    t->lock = &g_lock; /* the handler finds the tracker and updates it under one lock */
    nts_lock(&g_lock);
    err = install_handler();
    if (!err)
        err = registry_insert(t);
    if (!err) {
        t->closed = 0;
        if ((err = nts_tracker_sync_kernel(t, 0, t->npages))) { /* undo: owner protections back */
            t->closed = 1;
            registry_remove(t);
            for (size_t i = 0; i < t->npages; i++)
                t->state[i] |= NTS_DIRTY;
            nts_tracker_sync_kernel(t, 0, t->npages);
        }
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

/* fork(): the child must not inherit a lock held by a thread it does not have. */
static void fork_prepare(void)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &g_fork_mask);
    nts_lock(&g_lock);
}

static void fork_parent(void)
{
    nts_unlock(&g_lock);
    pthread_sigmask(SIG_SETMASK, &g_fork_mask, NULL);
}

static void fork_child(void)
{
    g_lock = 0;
    pthread_sigmask(SIG_SETMASK, &g_fork_mask, NULL);
}

int nts_mprotect_module_init(PyObject *mod)
{
    static int done;
    if (!done && pthread_atfork(fork_prepare, fork_parent, fork_child)) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return -1;
    }
    done = 1;
#if defined(__x86_64__)
    return PyModule_AddIntConstant(mod, "MPROTECT_SUPPORTED", 1);
#else
    return PyModule_AddIntConstant(mod, "MPROTECT_SUPPORTED", 0);
#endif
}
