/* ntshim._core: the only C in ntshim.  Mechanism, not policy: every entry point
 * does one kernel-facing job and reports failure as OSError(errno, ...); the
 * Python layer decides what to call and when. */
#ifndef NTSHIM_CORE_H
#define NTSHIM_CORE_H

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
#define NTS_PAGEMAP_SCAN _IOWR('f', 16, struct nts_pm_scan_arg)
#define NTS_PM_SCAN_WP_MATCHING (1ULL << 0)
#define NTS_PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define NTS_PAGE_IS_WRITTEN (1ULL << 1)

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* ---- Shared helpers (module.c) ---- */
extern size_t nts_page_size;

/* Raise OSError(err, "<what>: <strerror>"); the OSError constructor maps errno
 * to the matching subclass (PermissionError, FileNotFoundError, ...). */
PyObject *nts_raise_errno(int err, const char *fmt, ...);

/* A growing list of [start, end) byte ranges that merges touching ranges, the
 * compact form every dirty-page query returns (as bytes of uint64 pairs). */
typedef struct {
    uint64_t *v;
    size_t n, cap; /* n counts uint64 values, two per range */
} nts_runs;
int nts_runs_add(nts_runs *r, uint64_t start, uint64_t end); /* 0, or -1 on ENOMEM */
PyObject *nts_runs_finish(nts_runs *r);                       /* bytes; frees r */

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

/* ---- Memory objects (mapping.c) ---- */
extern PyTypeObject nts_mapping_type, nts_view_type, nts_pin_type;

/* ---- Page trackers (tracker.c + one mechanism file each) ---- */
enum nts_tracker_kind { NTS_UFFD_ASYNC, NTS_UFFD_SYNC, NTS_MPROTECT, NTS_SHADOW };

/* Per-page state byte: the owner's protection (PROT_READ|PROT_WRITE|PROT_EXEC in
 * the low three bits) and whether the page was written since its last reset.
 * The three bits above are scratch for an operation that holds the lock. */
#define NTS_PROT_MASK 0x07
#define NTS_DIRTY 0x08
#define NTS_SCRATCH_SHIFT 4

/* A tracker's mutable bookkeeping: everything its lock holders, the mprotect
 * fault handler and the uffd-sync fault thread write.  It lives in memory the
 * tracker maps for itself, never in the Python object or on the malloc heap: a
 * watch of a heap buffer also covers the rest of the buffer's first and last
 * pages, which other heap blocks share, and a write there by a thread that holds
 * the lock the fault's resolver needs (or by the resolver) would never finish. */
typedef struct nts_book {
    int lock;   /* the tracker's own lock; mprotect trackers share mprotect.c's instead */
    int closed;
    int listed; /* on the list of trackers whose locks fork() takes (tracker.c) */
    struct nts_book *next, *prev;
    size_t size; /* bytes mapped: this header, then the state bytes, then the pins */
} nts_book;

typedef struct nts_tracker {
    PyObject_HEAD
    int kind;
    pid_t pid;          /* the process whose address space this tracks */
    uintptr_t base;
    size_t npages;
    nts_book *book;
    int *lock;          /* &book->lock, or the process-wide lock of the mprotect kind (mprotect.c) */
    uint8_t *state;     /* in book: npages bytes, see NTS_DIRTY */
    uint16_t *pins;     /* in book: open kernel-write windows per page (mprotect, uffd-sync; else NULL) */
    /* userfaultfd */
    int uffd, pagemap, stop_fd, thread_started, handles_kernel_faults, populate;
    pthread_t thread;
    /* shadow */
    uint8_t *shadow;
} nts_tracker;

/* This process's id, kept current across fork() without a system call. */
extern pid_t nts_pid;

extern PyTypeObject nts_tracker_type;
/* What Tracker.dirty does, for native callers (no GIL needed): the written
 * pages of [first, first+count) into `out`, reset when `reset`; 0 or an errno
 * (EBADF once closed; ECHILD for a userfaultfd tracker in a forked child, where
 * the registration belongs to the parent). */
int nts_tracker_query(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out);
nts_tracker *nts_tracker_alloc(int kind, uintptr_t base, size_t size, PyObject *prots);
/* The mechanism is set up: mark the tracker open (and, if a forked child keeps
 * using its own lock, have fork() take that lock from now on). */
void nts_tracker_opened(nts_tracker *t);
/* The fork() handlers for every kind of tracker; once per process. */
int nts_tracker_module_init(PyObject *mod);

/* Bring the kernel's protection of [first, first+n) in line with the pages'
 * state (tracker.c); the lock is held.  0 or an errno. */
int nts_tracker_sync_kernel(nts_tracker *t, size_t first, size_t n);

/* Mechanism hooks, lock held, 0 or an errno.  mprotect: give the pages `prot`;
 * uffd-sync: write-protect them (wp=1) or release them (wp=0). */
int nts_mprotect_apply(nts_tracker *t, size_t first, size_t n, int prot);
int nts_uffd_sync_apply(nts_tracker *t, size_t first, size_t n, int wp);
/* uffd-sync without UFFD_FEATURE_WP_UNPOPULATED: map pages that are gaining
 * access so that the kernel can write-protect them. */
int nts_uffd_sync_populate(nts_tracker *t, size_t first, size_t n, int prot);

/* Stop tracking (marks the tracker closed) and restore the owner's protections. */
void nts_mprotect_unregister(nts_tracker *t);
/* Drop the registration and stop the fault thread, if started (tracker closed,
 * or not open yet). */
void nts_uffd_sync_stop(nts_tracker *t);
int nts_shadow_page_differs(nts_tracker *t, size_t page);
void nts_shadow_capture(nts_tracker *t, size_t first, size_t n);

PyObject *nts_mprotect_tracker_new(PyObject *mod, PyObject *args);
PyObject *nts_uffd_sync_tracker_new(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *nts_shadow_tracker_new(PyObject *mod, PyObject *args);
int nts_mprotect_module_init(PyObject *mod);
/* fork(): take the process-wide lock before (last of all tracker locks), give it
 * back after, in the parent and in the child. */
void nts_mprotect_fork_prepare(void);
void nts_mprotect_fork_parent(void);
void nts_mprotect_fork_child(void);

/* ---- userfaultfd and pagemap (uffd.c) ---- */
extern PyMethodDef nts_uffd_methods[];
int nts_uffd_module_init(PyObject *mod);
/* Open t->uffd (limited to user-mode faults if asked), enable `features`
 * (EOPNOTSUPP unless all of `required` come back) and register the tracker's
 * range for write-protection.  0, or an errno with *step naming what failed. */
int nts_uffd_setup(nts_tracker *t, int user_mode_only, uint64_t features, uint64_t required, const char **step);
/* UFFDIO_WRITEPROTECT: protect (wp=1) or release (wp=0); 0 or an errno. */
int nts_uffd_writeprotect(int uffd, uintptr_t addr, size_t len, int wp);
/* Written pages of [start, end) (uffd-async registered) as [start, end) runs
 * relative to `base`, at most max_pages (0: all), write-protecting exactly
 * those when `reset`.  Resumes where the kernel stopped when its output vector
 * filled (vec_len 0: room for every run of the range, at most 512).  0 or an errno. */
int nts_pagemap_scan(int fd, uint64_t base, uint64_t start, uint64_t end, int reset, uint64_t max_pages,
                     size_t vec_len, nts_runs *out);
PyObject *nts_uffd_async_tracker_new(PyObject *mod, PyObject *args, PyObject *kw);

/* ---- native writer threads (writers.c) ---- */
typedef struct nts_writer_pool nts_writer_pool;
typedef struct {
    nts_writer_pool *pool;
    pthread_t thread;
    unsigned index;
    uint64_t writes, ns;
} nts_writer;
struct nts_writer_pool {
    char *base;
    size_t npages;
    int random, stop;
    unsigned nthreads;
    nts_writer *w;
};
extern PyTypeObject nts_writers_type;
uint64_t nts_now_ns(void);
/* Start `nthreads` writers over `npages` pages at `base`; 0 or an errno. */
int nts_writers_start(nts_writer_pool *pool, char *base, size_t npages, unsigned nthreads, int random);
/* Stop and join them; total stores and summed per-thread running time. */
void nts_writers_stop(nts_writer_pool *pool, uint64_t *writes, uint64_t *ns);

/* ---- kernel floors and native readers for the benchmarks (bench.c) ---- */
PyObject *nts_floor_writewatch(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *nts_native_reader(PyObject *mod, PyObject *args);

/* ---- address-space placement (placement.c) ---- */
extern PyMethodDef nts_placement_methods[];

/* A spin-wait hint to the CPU (lets the other hyperthread run, saves power). */
static inline void nts_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#else
    __asm__ volatile("" ::: "memory");
#endif
}

/* ---- NT synchronization objects in shared memory (sync.c; bindings in sync_module.c) ---- */
#include <time.h>
#define NTS_SYNC_MAX_WAIT 64
#define NTS_SYNC_MAX_NAME 255
/* Pauses a waiter spins before it sleeps, on machines with more than one CPU. */
#define NTS_SYNC_SPIN 300
/* The arena layout this build reads and writes (the header's version field). */
#define NTS_SYNC_LAYOUT 2u
/* Bytes [1, NTS_SYNC_LIVE_END) of an arena file carry the OFD locks of the processes
 * attached to it, in every layout version. */
#define NTS_SYNC_LIVE_END 65536
enum { NTS_SYNC_SEMAPHORE = 1, NTS_SYNC_MUTEX = 2, NTS_SYNC_EVENT = 3 };
enum { NTS_SYNC_EVENT_SET, NTS_SYNC_EVENT_RESET, NTS_SYNC_EVENT_PULSE };
typedef struct nts_arena nts_arena;
/* Every call returns 0 or an errno and runs without the GIL.  Objects are named by
 * slot (1-based) and must be referenced by this process (EBADF otherwise).
 * EUCLEAN: this process's view of the arena is damaged (an index or count read from
 * it was out of range, the file shrank, or another process reclaimed our slot); every
 * later call fails the same way and nts_sync_damage() says what was wrong. */
size_t nts_sync_arena_size(void);
int nts_sync_format(int fd); /* size a new arena file, reserve its first chunks, write its header */
/* The header fields of an arena file of any layout (size: the file's, when it differs). */
int nts_sync_layout(int fd, uint32_t *magic, uint32_t *version, uint64_t *size);
int nts_sync_in_use(int fd, int *in_use); /* whether any process holds a liveness lock on it */
/* Map it and claim a process slot; EPROTO if not an arena of this layout, ENOSPC if
 * every process slot is taken.  Keeps a close-on-exec descriptor of its own (a new
 * open file description, opened through /proc/self/fd) for the liveness lock. */
int nts_sync_attach(int fd, nts_arena **out);
void nts_sync_detach(nts_arena *a); /* drop this process's references */
const char *nts_sync_damage(void);  /* NULL, or why the arena is damaged for this process */
/* x, y: semaphore count, maximum; mutex owner, count; event manual, signaled.
 * EEXIST: the name belongs to another kind; ENOSPC: the arena (or its file system) is full. */
int nts_sync_create(nts_arena *a, int kind, uint32_t x, uint32_t y, const char *name, size_t len, uint32_t *slot,
                    uint32_t *gen, int *created);
int nts_sync_open(nts_arena *a, int kind, const char *name, size_t len, uint32_t *slot, uint32_t *gen);
int nts_sync_ref(nts_arena *a, int kind, uint32_t slot, uint32_t gen); /* ENOENT if gone */
int nts_sync_unref(nts_arena *a, uint32_t slot);
int nts_sync_sem_release(nts_arena *a, uint32_t slot, uint32_t n, uint32_t *prev);  /* EOVERFLOW */
int nts_sync_sem_read(nts_arena *a, uint32_t slot, uint32_t *count, uint32_t *max);
int nts_sync_mutex_unlock(nts_arena *a, uint32_t slot, uint32_t owner, uint32_t *prev); /* EPERM */
int nts_sync_mutex_kill(nts_arena *a, uint32_t slot, uint32_t owner);                   /* EPERM */
int nts_sync_mutex_read(nts_arena *a, uint32_t slot, uint32_t *owner, uint32_t *count, int *abandoned);
int nts_sync_event_op(nts_arena *a, uint32_t slot, int op, int *prev);
int nts_sync_event_read(nts_arena *a, uint32_t slot, int *manual, int *signaled);
/* Wait for any/all of `slots` (or the `alert` event slot, 0 for none) until the
 * CLOCK_MONOTONIC `deadline` (NULL: forever).  ETIMEDOUT, or EINTR when a signal
 * arrived first: then nothing was acquired. */
int nts_sync_wait(nts_arena *a, const uint32_t *slots, uint32_t count, int all, const struct timespec *deadline,
                  uint32_t owner, uint32_t alert, uint32_t *index, int *abandoned);
/* Objects, thread blocks, references and processes in use, and the capacities;
 * and the thread ids of this process's blocks (at most *ntids; *ntids set to the number). */
void nts_sync_usage(nts_arena *a, uint32_t used[4], uint32_t capacity[4], uint32_t *tids, size_t *ntids);
extern PyMethodDef nts_sync_methods[];
/* The arena ntshim.sync.futex attached, or NULL with RuntimeError set. */
nts_arena *nts_sync_py_arena(void);
/* Native loops of `ntshim bench sync` (bench_sync.c). */
PyObject *nts_bench_sync(PyObject *mod, PyObject *args);
int nts_sync_module_init(PyObject *mod);

#endif
