/* ntshim._core, the pieces every subsystem uses (common/): the Python and kernel
 * headers, kernel interfaces newer than the installed uapi headers, errno -> OSError,
 * byte-range runs, the signal-safe lock and signal chaining.  Each subsystem
 * directory (memory/, writewatch/, sync/) has one header of its own declaring what
 * the others use.  Mechanism, not policy: every entry point does one kernel-facing
 * job and reports failure as OSError(errno, ...); the Python layer decides what to
 * call and when. */
#ifndef NTSHIM_COMMON_H
#define NTSHIM_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <pthread.h>
#include <signal.h>

/* ---- Kernel interfaces newer than the installed uapi headers (Linux 6.7+) ---- */
#include <linux/userfaultfd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

/* The pagemap scan interface (include/uapi/linux/fs.h, Linux 6.7). */
struct nts_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct nts_page_region {
    uint64_t start, end, categories;
};
#define NTS_PAGEMAP_SCAN          _IOWR('f', 16, struct nts_pm_scan_arg)
#define NTS_PM_SCAN_WP_MATCHING   (1ULL << 0)
#define NTS_PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define NTS_PAGE_IS_WRITTEN       (1ULL << 1)

/* ---- Shared helpers (common.c) ---- */
extern size_t nts_page_size;

/* Raise OSError(err, "<what>: <strerror>"); the OSError constructor maps errno
 * to the matching subclass (PermissionError, FileNotFoundError, ...). */
PyObject *nts_raise_errno(int err, const char *fmt, ...);
/* The same with the failing step as data: OSError.filename is `step` (the system
 * call or ioctl that failed, "UFFDIO_REGISTER"), for Python to branch on with the
 * errno instead of reading the message. */
PyObject *nts_raise_errno_step(int err, const char *step, const char *fmt, ...);

/* A growing list of [start, end) byte ranges that merges touching ranges, the
 * compact form every dirty-page query returns (as bytes of uint64 pairs). */
typedef struct {
    uint64_t *v;
    size_t n, cap; /* n counts uint64 values, two per range */
} nts_runs;
int nts_runs_add(nts_runs *r, uint64_t start, uint64_t end); /* 0, or -1 on ENOMEM */
PyObject *nts_runs_finish(nts_runs *r);                      /* bytes; frees r */

/* A futex lock that may be taken inside a SIGSEGV handler (only syscalls and
 * atomics): 0 free, 1 held, 2 held with waiters. */
void nts_lock(int *word);
void nts_unlock(int *word);

/* Block every signal on this thread except the fault signals (SIGSEGV, SIGBUS,
 * SIGILL, SIGFPE), saving the old mask in *saved.  For threads of ours and for
 * pthread_create: asynchronous signals belong to the application's threads, but a
 * fault must reach its handler (the mprotect watch's, faulthandler) where it
 * happens: one taken with its signal blocked kills the process without a word, and
 * glibc writes heap memory a watch may protect (a cached thread stack's DTV). */
void nts_block_async_signals(sigset_t *saved);

/* ---- Sharing a fault signal with the rest of the process (sigchain.c) ---- */
#define NTS_SIGCHAIN_THREADS 16
typedef struct {
    int sig;
    void (*handler)(int, siginfo_t *, void *);
    /* The action we pass foreign signals to, read by handlers under a sequence
     * lock (odd while an install rewrites it). */
    struct sigaction prev;
    unsigned seq;
    int prev_spent; /* prev had SA_RESETHAND and ran once: the default action from now on */
    /* Threads inside that action now, and where their stack stood when they entered it. */
    struct {
        pid_t tid;
        uintptr_t sp;
    } passing[NTS_SIGCHAIN_THREADS];
} nts_sigchain;
/* Put c->handler on top for c->sig (unless it is there already), keeping the
 * action found as the one to pass to.  Callers serialize calls.  0 or an errno. */
int nts_sigchain_install(nts_sigchain *c);
/* From c->handler: hand a signal that is not ours to the previous action as the
 * kernel would have delivered it (its mask and flags; SIG_DFL and SIG_IGN as the
 * kernel treats them).  A re-entry from inside that action, on the same thread,
 * takes the default action. */
void nts_sigchain_pass(nts_sigchain *c, siginfo_t *si, void *ctx);

/* A spin-wait hint to the CPU (lets the other hyperthread run, saves power). */
static inline void nts_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#else
    __asm__ volatile("" ::: "memory");
#endif
}

#endif
