/* writewatch/ internals: the Tracker object, its per-page bookkeeping and the hooks
 * between tracker.c (lock discipline, bookkeeping) and the mechanism files. */
#ifndef NTSHIM_TRACKER_H
#define NTSHIM_TRACKER_H

#include "memory/memory.h"
#include "writewatch/writewatch.h"

typedef struct nts_ww_ops nts_ww_ops;

/* Per-page state byte: whether the page was written since its last reset, and
 * scratch for an operation that holds the lock.  The owner's protection of each
 * page is in `prots`, not here. */
#define NTS_PROT_MASK     0x07 /* PROT_READ | PROT_WRITE | PROT_EXEC */
#define NTS_DIRTY         0x08
#define NTS_SCRATCH_SHIFT 4
/* The protection a page had before the operation that holds the lock changed it. */
#define NTS_OLD_PROT(state) ((state) >> NTS_SCRATCH_SHIFT & NTS_PROT_MASK)

/* A tracker's mutable bookkeeping: everything its lock holders, the mprotect
 * fault handler and the uffd-sync fault thread write.  It lives in memory the
 * tracker maps for itself, never in the Python object or on the malloc heap: a
 * watch of a heap buffer also covers the rest of the buffer's first and last
 * pages, which other heap blocks share, and a write there by a thread that holds
 * the lock the fault's resolver needs (or by the resolver) would never finish. */
typedef struct nts_book {
    int lock; /* the tracker's own lock; mprotect trackers share mprotect.c's instead */
    int closed;
    int listed; /* on the list of trackers whose locks fork() takes (tracker.c) */
    struct nts_book *next, *prev;
    size_t size; /* bytes mapped: this header, the state bytes, the protections if copied, the pins */
} nts_book;

struct nts_tracker {
    PyObject_HEAD
    const nts_ww_ops *ops; /* the mechanism */
    pid_t pid;             /* the process whose address space this tracks */
    uintptr_t base;
    size_t npages;
    nts_book *book;
    int *lock;      /* &book->lock, or the process-wide lock of the mprotect kind (mprotect.c) */
    uint8_t *state; /* in book: npages bytes, see NTS_DIRTY */
    /* The owner's protection of each page: the watched Mapping's table, shared
     * (the tracker changes it, under its lock, while it lives), or a copy in the
     * book for memory ntshim does not own (shared_prots NULL). */
    nts_prot_table *shared_prots;
    uint8_t *prots;
    uint16_t *pins; /* in book: open kernel-write windows per page (mprotect, uffd-sync; else NULL) */
    /* userfaultfd */
    int uffd, pagemap, stop_fd, thread_started, handles_kernel_faults, populate;
    pthread_t thread;
    /* shadow */
    uint8_t *shadow;
};

/* This process's id, kept current across fork() without a system call. */
extern pid_t nts_pid;

/* What each mechanism does for tracker.c, which keeps the lock discipline and the
 * per-page bookkeeping and calls these with the tracker's lock held (unless said
 * otherwise); each returns 0 or an errno.  Optional hooks may be NULL. */
struct nts_ww_ops {
    /* Write-protecting mechanisms (mprotect, uffd-sync): the kernel's protection
     * follows the state bytes (clean pages protected), fault resolvers take the
     * lock (tracker.c, "Lock discipline"), pages have kernel-write windows, and a
     * query that does not reset reads the state bytes without the lock. */
    int protects;
    /* The registration belongs to the process that made it (userfaultfd): a forked
     * child refuses every operation but close. */
    int fork_bound;
    /* The system call or ioctl a failed query (or its reset) reports as its step
     * (OSError.filename). */
    const char *query_step;
    /* protects: what the kernel should enforce on a page of owner protection `prot`
     * (clean: not written since its reset and in no kernel-write window), and
     * enforcing it on [first, first+n). */
    int (*want)(int prot, int clean);
    int (*apply)(nts_tracker *t, size_t first, size_t n, int want);
    /* The pages became clean (DIRTY cleared by a reset): watch them again.  NULL
     * with query. */
    int (*rearm)(nts_tracker *t, size_t first, size_t n);
    /* The same after MADV_DONTNEED dropped the pages' contents (they read as zero)
     * and with them the protection the kernel kept. */
    int (*discarded)(nts_tracker *t, size_t first, size_t n);
    /* Optional: a page of readable state whose dirtiness only a comparison shows
     * (shadow); the scan asks it of every page not marked dirty. */
    int (*differs)(nts_tracker *t, size_t page);
    /* Optional: the query itself, when the kernel keeps the dirty state (uffd-async). */
    int (*query)(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out);
    /* Optional: count the pages as written where the kernel keeps the state (uffd-async:
     * tracker.c keeps no DIRTY bits then). */
    int (*mark)(nts_tracker *t, size_t first, size_t n);
    /* Owner protections: before they change (optional; shadow settles pages losing
     * read access), the change itself (prots hold `prot`, the state bytes the old one
     * in NTS_OLD_PROT), and bringing the kernel back to prots after a failure. */
    void (*before_protect)(nts_tracker *t, size_t first, size_t n, int prot);
    int (*protect)(nts_tracker *t, size_t first, size_t n, int prot);
    void (*restore)(nts_tracker *t, size_t first, size_t n);
    /* Closing, once.  close_locked (optional) runs under the lock as the tracker turns
     * closed; close after it, without the lock (in a forked child too, for the
     * fork-bound: it must leave the parent's registration alone). */
    void (*close_locked)(nts_tracker *t);
    void (*close)(nts_tracker *t);
};
extern const nts_ww_ops nts_mprotect_ops, nts_uffd_async_ops, nts_uffd_sync_ops, nts_shadow_ops;

/* prots: the Mapping watched (whose protection table the tracker shares), or
 * the memory's protections, one byte per page. */
nts_tracker *nts_tracker_alloc(const nts_ww_ops *ops, uintptr_t base, size_t size, PyObject *prots);
/* The mechanism is set up: mark the tracker open (and, if a forked child keeps
 * using its own lock, have fork() take that lock from now on). */
void nts_tracker_opened(nts_tracker *t);
/* A userfaultfd tracker in a forked child: its registration (and, for uffd-async,
 * its pagemap file) belong to the parent, whose memory an operation would change. */
int nts_tracker_in_forked_child(nts_tracker *t);

/* Bring the kernel's protection of [first, first+n) in line with the pages'
 * state (ops->want, ops->apply); the lock is held.  0 or an errno. */
int nts_tracker_sync_kernel(nts_tracker *t, size_t first, size_t n);
/* mprotect [first, first+n) to `prot`: 0 or an errno; async-signal-safe (the
 * mprotect kind's fault handler uses it).  restore_owner: for mechanisms whose
 * kernel protection is the owner's (uffd-*, shadow), each page its recorded one back. */
int nts_tracker_mprotect(nts_tracker *t, size_t first, size_t n, int prot);
void nts_tracker_restore_owner(nts_tracker *t, size_t first, size_t n);

/* Each mechanism's module functions (its tracker constructor, its probes) and
 * constants, added by nts_writewatch_module_init. */
extern PyMethodDef nts_mprotect_methods[], nts_uffd_sync_methods[], nts_shadow_methods[], nts_uffd_methods[];
int nts_mprotect_module_init(PyObject *mod);
/* fork(): take the process-wide lock before (last of all tracker locks), give it
 * back after, in the parent and in the child. */
void nts_mprotect_fork_prepare(void);
void nts_mprotect_fork_parent(void);
void nts_mprotect_fork_child(void);
/* Put the mprotect backend's SIGSEGV handler on top (a freeze needs it even with
 * no mprotect watch); 0 or an errno. */
int nts_mprotect_install_handler(void);

/* ---- userfaultfd and pagemap (uffd.c) ---- */
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
int nts_pagemap_scan(int fd, uint64_t base, uint64_t start, uint64_t end, int reset, uint64_t max_pages, size_t vec_len,
                     nts_runs *out);

#endif
