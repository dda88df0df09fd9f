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
static void on_sigsegv(int sig, siginfo_t *si, void *ctx);
static nts_sigchain g_chain = {.sig = SIGSEGV, .handler = on_sigsegv};
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

static void on_sigsegv(int sig, siginfo_t *si, void *ctx)
{
    int saved_errno = errno;
    /* Only a write fault can be ours; a sent SIGSEGV never is, and must not wait
     * for the lock (the thread it landed on may be holding it). */
    if (si->si_code == SEGV_ACCERR && fault_is_write(ctx)) {
        uintptr_t addr = (uintptr_t)si->si_addr;
        nts_lock(&g_lock);
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
        nts_unlock(&g_lock);
    }
    nts_sigchain_pass(&g_chain, si, ctx);
    errno = saved_errno;
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
    /* Ours goes on top again at every registration, so that a handler installed
     * after ours (faulthandler.enable(), say) cannot swallow our faults. */
    err = nts_sigchain_install(&g_chain);
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
