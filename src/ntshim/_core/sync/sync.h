/* ntshim._core sync/: NT synchronization objects in shared memory; the arena and the
 * algorithm in arena.c, the Python bindings in bindings.c. */
#ifndef NTSHIM_SYNC_H
#define NTSHIM_SYNC_H

#include "common/common.h"

#include <sys/syscall.h>
#include <time.h>

#ifndef SYS_futex_waitv /* Linux 5.16; older C headers lack it */
#define SYS_futex_waitv 449
#endif
#define NTS_SYNC_MAX_WAIT 64
#define NTS_SYNC_MAX_NAME 255
/* How long a queued waiter spins before it sleeps, on machines with more than one CPU (and
 * with a place among CPUs - 1 spinners): longer than the wake-up of a sleeping thread
 * (20-30 us on a VM).  A hand-off to a waiter that sleeps costs that wake-up, during which
 * the next waiter in line would fall asleep too, and so on: a convoy in which every
 * acquisition costs a wake-up (oversubscribed waits, median 20-50 us with a 9 us spin); a
 * spin outlasting the wake-up breaks it. */
#define NTS_SYNC_SPIN_NS 45000
/* How long a single-object wait looks at the object's word before it queues (same machines). */
#define NTS_SYNC_WORD_SPIN_NS 1000
/* How long a thread spins for the arena's lock before it sleeps on it (same machines). */
#define NTS_SYNC_LOCK_SPIN_NS 6000
/* Those spins in pauses (nts_cpu_relax) on this CPU, measured once: a pause takes 30 ns on
 * an AMD EPYC, ~40 on recent Intel, a few on older ones, so a count of pauses is no length
 * of time.  All 0 on a machine with one CPU, where nobody can answer a spinner. */
typedef struct {
    unsigned look, lock, queued;
} nts_sync_spins;
void nts_sync_spin_counts(nts_sync_spins *out);
/* The arena layout this build reads and writes (the header's version field). */
#define NTS_SYNC_LAYOUT 7u
/* Bytes [1, NTS_SYNC_LIVE_END) of an arena file carry the OFD locks of the processes
 * attached to it, in every layout version. */
#define NTS_SYNC_LIVE_END 65536
/* A lock is threading.Lock across processes: signaled when unlocked (not recursive),
 * held by the acquiring thread's process, released by anyone, abandoned when the
 * process ends.  Its state is a mutex's with owner 0. */
enum { NTS_SYNC_SEMAPHORE = 1, NTS_SYNC_MUTEX = 2, NTS_SYNC_EVENT = 3, NTS_SYNC_LOCK = 4 };
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
/* An object's state: two words, read by kind (as the ntsync driver's union).  A
 * mutex is unowned when its count is 0 (a lock: owner 0, count 0 or 1); an event's
 * words are 0 or 1. */
typedef union {
    struct {
        uint32_t count, max;
    } sem;
    struct {
        uint32_t owner, count; /* owner: the caller's owner id (a thread id for Win32) */
    } mutex;
    struct {
        uint32_t manual, signaled;
    } event;
    uint32_t words[2]; /* as Python passes it: ntshim.sync.backend.InitialState */
} nts_sync_state;

int nts_sync_in_use(int fd, int *in_use); /* whether any process holds a liveness lock on it */
/* Map it and claim a process slot; EPROTO if not an arena of this layout, ENOSPC if
 * every process slot is taken.  Keeps a close-on-exec descriptor of its own (a new
 * open file description, opened through /proc/self/fd) for the liveness lock. */
int nts_sync_attach(int fd, nts_arena **out);
void nts_sync_detach(nts_arena *a); /* drop this process's references */
const char *nts_sync_damage(void);  /* NULL, or why the arena is damaged for this process */
/* EEXIST: the name belongs to another kind; ENOSPC: the arena (or its file system) is full. */
int nts_sync_create(nts_arena *a, int kind, nts_sync_state initial, const char *name, size_t len, uint32_t *slot,
                    uint32_t *gen, int *created);
int nts_sync_open(nts_arena *a, int kind, const char *name, size_t len, uint32_t *slot, uint32_t *gen);
int nts_sync_ref(nts_arena *a, int kind, uint32_t slot, uint32_t gen); /* ENOENT if gone */
int nts_sync_unref(nts_arena *a, uint32_t slot);
int nts_sync_sem_release(nts_arena *a, uint32_t slot, uint32_t n, uint32_t *prev); /* EOVERFLOW */
int nts_sync_sem_read(nts_arena *a, uint32_t slot, uint32_t *count, uint32_t *max);
int nts_sync_mutex_unlock(nts_arena *a, uint32_t slot, uint32_t owner, uint32_t *prev); /* EPERM */
int nts_sync_mutex_kill(nts_arena *a, uint32_t slot, uint32_t owner);                   /* EPERM */
int nts_sync_mutex_read(nts_arena *a, uint32_t slot, uint32_t *owner, uint32_t *count, int *abandoned);
/* EPERM: not locked.  abandon: leave it abandoned, as nts_sync_mutex_kill does. */
int nts_sync_lock_release(nts_arena *a, uint32_t slot, int abandon);
int nts_sync_lock_read(nts_arena *a, uint32_t slot, int *locked, int *abandoned);
int nts_sync_event_op(nts_arena *a, uint32_t slot, int op, int *prev);
int nts_sync_event_read(nts_arena *a, uint32_t slot, int *manual, int *signaled);
/* Wait for any/all of `slots` (or the `alert` event slot, 0 for none) until the
 * CLOCK_MONOTONIC `deadline` (NULL: forever).  ETIMEDOUT, or EINTR when a signal
 * arrived first: then nothing was acquired. */
int nts_sync_wait(nts_arena *a, const uint32_t *slots, uint32_t count, int all, const struct timespec *deadline,
                  uint32_t owner, uint32_t alert, uint32_t *index, int *abandoned);
/* nts_sync_wait for one object, without an alert: WaitForSingleObject, and the cheapest
 * call when the object is free. */
int nts_sync_wait_one(nts_arena *a, uint32_t slot, const struct timespec *deadline, uint32_t owner, int *abandoned);
/* Requests: waits that no thread sleeps in, for asyncio's dispatcher.  A request is a
 * wait block made by the calling thread (which holds what it acquires, as its own wait
 * would: that thread should live as long as the process); it is started like a wait,
 * without a deadline, satisfied at once (*now) or queued; the maker sleeps on all its
 * requests and the doorbell at once, and ends each: *acquired, or taken off the queues.
 * ENOSPC from request_new: no free wait block in the arena. */
int nts_sync_request_new(nts_arena *a, uint32_t *req);
int nts_sync_request_start(nts_arena *a, uint32_t req, const uint32_t *slots, uint32_t count, int all, uint32_t owner,
                           uint32_t alert, int *now, uint32_t *index, int *abandoned); /* EBUSY: still pending */
int nts_sync_request_ready(nts_arena *a, uint32_t req); /* satisfied (a look without the lock) */
int nts_sync_request_end(nts_arena *a, uint32_t req, int *acquired, uint32_t *index, int *abandoned);
/* Until a request of `reqs` (the caller's) may be ready, the doorbell moves past `bell`,
 * or the deadline: 0 (perhaps spuriously), ETIMEDOUT or EINTR. */
int nts_sync_request_sleep(nts_arena *a, const uint32_t *reqs, uint32_t n, const struct timespec *deadline,
                           uint32_t bell);
uint32_t nts_sync_bell(void); /* this process's doorbell */
void nts_sync_ring(void);     /* ring it: a request_sleep that saw the old value returns */
/* Objects, thread blocks, references and processes in use, and the capacities;
 * and the thread ids of this process's blocks (at most *ntids; *ntids set to the number). */
void nts_sync_usage(nts_arena *a, uint32_t used[4], uint32_t capacity[4], uint32_t *tids, size_t *ntids);
/* The arena ntshim.sync.futex attached, or NULL with RuntimeError set. */
nts_arena *nts_sync_py_arena(void);
/* A wait from Python: one attempt with the GIL held, then (unless the deadline has passed:
 * a poll) the wait without it, answering
 * signals (EINTR: their handlers run, then it waits again); (index, abandoned), or NULL
 * with TimeoutError, a signal handler's exception, or the arena's error raised (then
 * *failed is its errno, else 0).  deadline: NULL for none. */
PyObject *nts_sync_py_wait(nts_arena *a, const uint32_t *slots, uint32_t count, int all,
                           const struct timespec *deadline, uint32_t owner, uint32_t alert, int *failed);
/* The calling thread's id (gettid, cached per thread and process): threading.get_native_id(). */
uint32_t nts_sync_thread_id(void);
/* Add the types with the objects' hot methods (hot.c) to the module. */
int nts_sync_hot_init(PyObject *mod);
/* Add the sync functions and constants to the module. */
int nts_sync_module_init(PyObject *mod);

#endif
