/* writewatch/ internals: the Tracker object, its per-page bookkeeping and the hooks
 * between tracker.c (lock discipline, bookkeeping) and the mechanism files. */
#ifndef NTSHIM_TRACKER_H
#define NTSHIM_TRACKER_H

#include "writewatch/writewatch.h"

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

struct nts_tracker {
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
};

/* This process's id, kept current across fork() without a system call. */
extern pid_t nts_pid;

nts_tracker *nts_tracker_alloc(int kind, uintptr_t base, size_t size, PyObject *prots);
/* The mechanism is set up: mark the tracker open (and, if a forked child keeps
 * using its own lock, have fork() take that lock from now on). */
void nts_tracker_opened(nts_tracker *t);

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

/* Each mechanism's module functions (its tracker constructor, its probes) and
 * constants, added by nts_writewatch_module_init. */
extern PyMethodDef nts_mprotect_methods[], nts_uffd_sync_methods[], nts_shadow_methods[], nts_uffd_methods[];
int nts_mprotect_module_init(PyObject *mod);
/* fork(): take the process-wide lock before (last of all tracker locks), give it
 * back after, in the parent and in the child. */
void nts_mprotect_fork_prepare(void);
void nts_mprotect_fork_parent(void);
void nts_mprotect_fork_child(void);

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
int nts_pagemap_scan(int fd, uint64_t base, uint64_t start, uint64_t end, int reset, uint64_t max_pages,
                     size_t vec_len, nts_runs *out);

/* ---- native writer threads (writers.c) ---- */

#endif
