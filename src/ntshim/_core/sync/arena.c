/* NT synchronization objects in shared memory (the `futex` sync backend).
 *
 * One arena file per user (the Python layer creates, checks and opens it) holds
 * every object, every waiting thread's wait block and the name index; each process
 * maps it MAP_SHARED.  The algorithm is the ntsync driver's, moved to user space:
 *
 * - Every change that involves a queue happens under one lock, a futex word in the
 *   header holding its holder's identity (process slot and that slot's generation).
 *   With a single lock wait-all is atomic by construction.  A waiter that has waited
 *   a while looks whether the holder's process is still alive, and takes the lock
 *   over (and sweeps the dead) if not.
 * - Lock-free operations.  An object nobody waits for keeps its state in its word
 *   (W_*), and the operations that wake nobody (taking a free lock or a unit, a
 *   release or a set with no waiter, reads) are one compare-and-swap or one load on
 *   it, without the lock.  Whatever holds the lock and touches an object first
 *   *pins* it: copies the word's state into the object's fields and sets W_SLOW in
 *   the same compare-and-swap, so the copy is exact.  From then on the fields are
 *   the state, and the lock-free operations, seeing W_SLOW, take the lock instead.
 *   As the lock's holder lets go, it writes the state back into the word of each
 *   object it pinned that nobody queues on and that is not abandoned; the others
 *   keep W_SLOW.  So a lock-free grab can never split a wait-all or overtake a
 *   queued waiter, and a process that dies at any point leaves each object in one
 *   of two consistent forms.  A lock-free holder is a thread block and generation
 *   in the word, never a pid or tid; its death is found as a queued waiter's would
 *   be, once someone contends and pins.
 * - A waiter queues one entry per object (wait-all entries and wait-any entries
 *   in separate FIFO lists), then sleeps with futex_waitv on its `signaled` word.
 *   A signaller that can satisfy a waiter acquires the object(s) on its behalf,
 *   unlinks it, stores the index into `signaled` and wakes it: hand-off, so state
 *   read right after a release already shows the waiter's acquisition, a pulse
 *   reaches exactly the current waiters, and a woken waiter never takes the lock.
 * - Abandonment: a thread that waits or owns takes a block whose "token", a
 *   robust process-shared pthread mutex, it initializes and locks once and never
 *   unlocks.  glibc puts it on the thread's robust list, so when the thread ends,
 *   however it ends, the kernel marks the token FUTEX_OWNER_DIED and wakes a
 *   waiter of it.  A mutex records the thread block that acquired it; waiters in
 *   other processes add the holder's token to their futex_waitv set and wake at
 *   once when the holder dies.  A thread that exits normally abandons its mutexes
 *   and gives its block back in a pthread key destructor; the block is reused only
 *   once its token reads dead, so glibc never follows the list pointers of a token
 *   (never unlocking one is what keeps pthread_mutex_unlock from writing through
 *   pointers read from shared memory).
 * - Locks (threading.Lock across processes) are held by a process, not a thread:
 *   their holder is the process's *anchor*, a thread block whose token a thread of
 *   our own holds, started on the process's first wait that names a lock and asleep
 *   (every signal blocked) for the rest of the process's life.  Only the process's
 *   end, or exec, ends it; then its locks are abandoned exactly as a dead thread's
 *   mutexes are, and waiters in other processes watch its token the same way.
 * - Liveness: a process owns a slot of the process table by holding an OFD lock
 *   (fcntl F_OFD_SETLK) on byte <slot> of the arena file, through a descriptor it
 *   keeps open, close-on-exec, for its life (an open file description of its own
 *   that nothing maps: a mapping would keep the lock alive in forked children).  The kernel drops the lock when the
 *   process dies, in whatever PID namespace, and when it execs; a process is dead
 *   when F_OFD_GETLK finds no lock on its byte.  fork gives the child a slot (and
 *   a descriptor of its own) that the parent claims for it before the fork.
 * - Lifetime: each process records its references in the arena; an object goes
 *   with its last reference, and a dead process's references, wait blocks and
 *   mutexes are reclaimed by the next process that registers (or finds the arena
 *   full, or takes the lock over from it).  fork passes the parent's references to
 *   the child atomically.
 *
 * Trust.  Every process of the user can write the arena, so nothing read from it
 * is trusted: each index and count is checked against its table before use, list
 * walks check each step's back link (so they cannot loop) and hash probes stop
 * after one lap, and the private arrays are indexed only by checked values.  A
 * failed check marks this process's view *damaged*: the call fails with EUCLEAN,
 * so does every later one, sleeping waiters of this process wake, and the process
 * leaves the arena (it drops its liveness lock, so that the others reclaim what it
 * held).  A SIGBUS inside the mapping (the file was truncated) maps private zero
 * pages over it and does the same; every table reads as empty there.
 *
 * Storage.  The file is sparse; a table's pages are reserved (fallocate) in 64 KiB
 * chunks as the table grows, before they are touched, so a full tmpfs yields
 * ENOSPC, never a SIGBUS.
 *
 * Layout, version 7 (native-endian; entry 0 of each table is never used, 0 means
 * "none" everywhere; each table starts on a 64 KiB boundary):
 *   0          header: magic "NTSY", version, size (u64), high-water marks, free lists; the lock
 *              at 64 and the spinner count at 128 (cache lines of their own)
 *   4096       process table   [NPROC + 1]  {in_use, gen, pid, pad}
 *   OFF_HASH   name index      [NHASH] object slot, linear probing from the name's hash
 *   OFF_OBJ    objects         [NOBJ + 1]
 *   OFF_NAME   names           [NOBJ + 1]   {hash, len, bytes}, one per object slot
 *   OFF_THR    thread blocks   [NTHR + 1]
 *   OFF_REF    references      [NREF + 1]
 * Byte i (1 <= i < NTS_SYNC_LIVE_END) of the file carries the liveness lock of
 * process slot i, in every layout version: whatever the layout, a file is in use
 * when one of those bytes is locked.
 *
 * Entry points return 0 or an errno and never touch Python: they may be called
 * without the GIL, by native loops too. */
#include "sync.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct nts_futex_waitv {
    uint64_t val, uaddr;
    uint32_t flags, reserved;
};
#define NTS_FUTEX2_SIZE_U32 0x02
#define NTS_FUTEX2_PRIVATE  FUTEX_PRIVATE_FLAG
#define NTS_FUTEX_WAITV_MAX 128

#define MAGIC   0x4e545359u             /* "NTSY" */
#define NOBJ    16384u                  /* objects */
#define NTHR    4096u                   /* threads that wait or own mutexes, at once */
#define NREF    65536u                  /* (process, object) references */
#define NPROC   1024u                   /* processes attached at once */
#define NHASH   32768u                  /* name index slots: a power of two, twice NOBJ */
#define NQ      (NTS_SYNC_MAX_WAIT + 1) /* entries per waiter: objects and the alert */
#define WAITING 0xFFFFFFFFu
#define CHUNK   65536u /* storage is reserved this much at a time */

/* The lock word: 0 when free, else the holder's identity, its process slot and the
 * low bits of that slot's generation (which tell a process from the slot's previous
 * holders), with LOCK_WAITERS set when someone may sleep on it. */
#define LOCK_WAITERS  0x80000000u
#define ID_GEN_BITS   20
#define ID_GEN_MASK   ((1u << ID_GEN_BITS) - 1)
#define ID(proc, gen) (((proc) << ID_GEN_BITS) | (ID_GEN_MASK & (gen)))
#define ID_PROC(id)   (((id) & ~LOCK_WAITERS) >> ID_GEN_BITS)
/* An object's lock-free word (u64): W_SLOW set, or the object's state, which the
 * operations that need no queue change with one compare-and-swap:
 *   semaphore   the count (bits 0-31);
 *   event       signaled (bit 0);
 *   lock, mutex the count (bits 0-23: a lock's is 0 or 1), and when it is not 0 the
 *               holder's thread block (bits 24-36) and the low bits of that block's
 *               generation (bits 37-60).  A mutex held this way is owned by its holding
 *               thread's own id (the block's tid). */
#define W_SLOW       (1ull << 63)
#define W_COUNT_MASK 0xFFFFFFull
#define W_TI_SHIFT   24
#define W_TI_MASK    0x1FFFull
#define W_GEN_SHIFT  37
#define W_GEN_MASK   0xFFFFFFu
#define W_COUNT(w)   ((uint32_t)((w)&W_COUNT_MASK))
#define W_TI(w)      ((uint32_t)((w) >> W_TI_SHIFT & W_TI_MASK))
#define W_GEN(w)     ((uint32_t)((w) >> W_GEN_SHIFT & W_GEN_MASK))
#define W_HELD(ti, gen, count)                                                                                         \
    ((uint64_t)(count) | (uint64_t)(ti) << W_TI_SHIFT | (uint64_t)((gen)&W_GEN_MASK) << W_GEN_SHIFT)
/* How long a waiter for the lock sleeps before it looks whether the holder lives. */
#define LOCK_PATIENCE_NS 30000000

/* The lock and the spinner count each have a cache line of their own: every operation reads
 * the high-water marks, and a line that every lock and spin also writes would make each of
 * those reads a miss. */
struct header {
    uint32_t magic, version;
    uint64_t size;
    uint32_t obj_hw, obj_free, thr_hw, ref_hw, ref_free, proc_hw;
    _Alignas(64) uint32_t lock;
    _Alignas(64) uint32_t spinners; /* waiters spinning now, in every process (see may_spin) */
};

struct proc {
    uint32_t in_use;
    uint32_t gen; /* bumped by each process that claims the slot */
    uint32_t pid; /* for display only: liveness is the OFD lock */
    uint32_t pad;
};

struct obj {
    uint32_t kind, gen, refs, name; /* name: name-index slot + 1, 0 when unnamed */
    nts_sync_state state;
    uint32_t abandoned, holder, holder_gen;
    uint32_t any_head, any_tail, all_head, all_tail;
    uint32_t next_free;
    uint64_t word; /* the lock-free word: the state itself, or W_SLOW (see "Lock-free operations") */
};

struct name {
    uint32_t hash, len;
    char bytes[NTS_SYNC_MAX_NAME + 1];
};

struct entry {
    uint32_t obj, prev, next, linked;
};

struct thr {
    pthread_mutex_t token; /* locked by the thread for its life: its death is visible in the word */
    uint32_t gen, in_use, proc, tid;
    uint32_t signaled; /* futex: WAITING, or the index handed over */
    uint32_t poke;     /* futex: bumped when a mutex we wait for changes holder */
    uint32_t sleeping; /* in futex_waitv (else spinning or running): whether a hand-off must wake */
    uint32_t owner, all, count, alert, abandoned, held, queued;
    uint32_t anchor;   /* while it waits: its process's anchor block, the holder of the locks it acquires */
    uint32_t notify;   /* a request's block: its maker's own, whose poke word rings at a hand-over (else 0) */
    uint32_t spinning; /* counted in the header's spinners */
    uint32_t fast;     /* has held something through its object's word: abandon_thread looks at every object */
    struct entry e[NQ];
};

struct ref {
    uint32_t proc, obj, next_free, pad;
};

#define ROUNDC(x)  (((size_t)(x) + CHUNK - 1) & ~(size_t)(CHUNK - 1))
#define OFF_PROC   4096u
#define OFF_HASH   ROUNDC(OFF_PROC + sizeof(struct proc) * (NPROC + 1))
#define OFF_OBJ    (OFF_HASH + ROUNDC(sizeof(uint32_t) * NHASH))
#define OFF_NAME   (OFF_OBJ + ROUNDC(sizeof(struct obj) * (NOBJ + 1)))
#define OFF_THR    (OFF_NAME + ROUNDC(sizeof(struct name) * (NOBJ + 1)))
#define OFF_REF    (OFF_THR + ROUNDC(sizeof(struct thr) * (NTHR + 1)))
#define ARENA_SIZE (OFF_REF + ROUNDC(sizeof(struct ref) * (NREF + 1)))

_Static_assert(sizeof(struct header) <= OFF_PROC && offsetof(struct header, lock) == 64 &&
                   offsetof(struct header, spinners) == 128,
               "the header fits its page, its lock and spinner count on lines of their own");
_Static_assert(NPROC < (1u << (31 - ID_GEN_BITS)) && NPROC < NTS_SYNC_LIVE_END,
               "slots fit the lock word and the liveness bytes");
_Static_assert(sizeof(struct thr) <= CHUNK && sizeof(struct name) <= CHUNK, "one element fits a chunk");
_Static_assert(NTHR <= W_TI_MASK, "the lock-free word holds a block index");
_Static_assert(sizeof(struct obj) == 64 && offsetof(struct obj, word) == 56, "an object is one cache line");

/* This process's view.  Indexes into the tables are 1-based; 0 means none. */
struct nts_arena {
    char *base;
    struct header *h;
    struct proc *p;
    uint32_t *hash;
    struct obj *o;
    struct name *n;
    struct thr *t;
    struct ref *r;
    int fd;                      /* our own open file description, never mapped: it carries our liveness lock */
    int fd_err;                  /* why fd is -1 (a forked child that could not get one) */
    uint32_t proc;               /* our slot, 0 before we have one */
    uint32_t gen;                /* its generation when we claimed it */
    uint32_t me;                 /* our lock identity, ID(proc, gen) */
    uint32_t my_rec[NOBJ + 1];   /* our reference record per object */
    uint32_t my_count[NOBJ + 1]; /* our references per object (private: fork copies it exactly) */
    /* the kind of each object we reference (fixed while we do): a lock-free operation reads
     * it here, not on the object's line, which the other side of a race may hold */
    uint8_t my_kind[NOBJ + 1];
    uint8_t my_req[NTHR + 1];   /* the request blocks this process made */
    uint32_t req_gen[NTHR + 1]; /* and their generations */
    /* fork: the slot, descriptor and references prepared for the child */
    int child_fd;
    uint32_t child_proc, child_gen;
    uint32_t *inflight_obj, *inflight_ref;
    size_t ninflight;
    /* the objects the lock's current holding (ours) switched to the slow form, to publish
     * again as it ends (see pin) */
    uint32_t pinned[NOBJ];
    uint32_t npinned;
    uint8_t pin_mark[NOBJ + 1];
};

static nts_arena *g_arena;
/* getpid() is a system call in glibc; the fork handler keeps this current instead
 * (a child made by a raw clone() without fork handlers must not use the arena). */
static pid_t g_pid;
static __thread uint32_t tls_thr, tls_gen;
static __thread pid_t tls_pid;
static pthread_key_t g_thread_key;
/* How long (in pauses) a queued waiter spins before sleeping, when there is another CPU
 * for the signaller to run on: a contended hand-off then costs a cache-line transfer, not
 * two context switches.  At most g_max_spinners (CPUs - 1) spin at once, in all
 * processes: more would take the CPUs their signallers need, and on a busy machine turn
 * a hand-off of microseconds into one of scheduler ticks.  A single-object wait first
 * looks at the object's word (see look_unowned); a thread spins for the arena's lock
 * before it sleeps on it (see lock_slow).  Measured once (measure_spins, before any wait:
 * init_once). */
static nts_sync_spins g_spins;
static unsigned g_max_spinners;
/* Held while this process's reference counts change, and across fork, so that the
 * references prepared for a child are exactly those the child's copy counts. */
static int g_refs_lock;
/* Serializes (re)installing the SIGBUS handler. */
static int g_install_lock;

/* ---------------------------------------------------------------- damage */

/* A private futex word: 0, then 1 once this process's view of the arena is damaged
 * (every sleeping waiter of the process watches it). */
static uint32_t g_damaged;
static const char *g_damage;

static int damaged(void) { return __atomic_load_n(&g_damaged, __ATOMIC_ACQUIRE) != 0; }

/* Give up our process slot: the others then see us gone and reclaim what we held. */
static void leave(nts_arena *a)
{
    if (a && a->proc && a->fd >= 0) {
        struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = a->proc, .l_len = 1};
        fcntl(a->fd, F_OFD_SETLK, &fl);
    }
}

/* Mark this process's view damaged (the first reason stays); EUCLEAN.  Async-signal-safe. */
static int damage(const char *why)
{
    const char *none = NULL;
    __atomic_compare_exchange_n(&g_damage, &none, why, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    if (!__atomic_exchange_n(&g_damaged, 1, __ATOMIC_SEQ_CST)) {
        syscall(SYS_futex, &g_damaged, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        leave(g_arena);
    }
    return EUCLEAN;
}

const char *nts_sync_damage(void) { return damaged() ? g_damage : NULL; }

static const char BAD_OBJ[] = "an object index read from the arena is out of range";
static const char BAD_THR[] = "a thread-block index read from the arena is out of range";
static const char BAD_QUEUE[] = "a wait queue in the arena is inconsistent";
static const char BAD_NAMES[] = "the name index of the arena is inconsistent";
static const char BAD_FREE[] = "a free list of the arena is broken";
static const char BAD_HW[] = "a high-water mark of the arena is out of range";
static const char BAD_COUNT[] = "a count read from the arena is out of range";
static const char SWEPT[] = "the arena no longer lists this process: another process reclaimed its slot, as it does "
                            "for a dead process (was the descriptor ntshim keeps on the arena closed, by "
                            "os.closerange say?)";

/* A SIGBUS inside the arena: the file shrank under us.  Zeros over the whole
 * mapping, so that the access repeats and every table reads empty, and damaged. */
static char *g_base;
static void on_sigbus(int sig, siginfo_t *si, void *ctx);
static nts_sigchain g_bus_chain = {.sig = SIGBUS, .handler = on_sigbus};

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    int saved_errno = errno;
    char *base = __atomic_load_n(&g_base, __ATOMIC_ACQUIRE), *addr = si->si_addr;
    if (si->si_code > 0 && base && addr >= base && addr < base + ARENA_SIZE &&
        mmap(base, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
        damage("the arena file was truncated while in use (a SIGBUS in its mapping)");
        errno = saved_errno;
        return;
    }
    nts_sigchain_pass(&g_bus_chain, si, ctx);
    errno = saved_errno;
}

/* Ours on top (again: another handler may have been installed since). */
static int install_sigbus(void)
{
    nts_lock(&g_install_lock);
    int err = nts_sigchain_install(&g_bus_chain);
    nts_unlock(&g_install_lock);
    return err;
}

/* ---------------------------------------------------------------- futexes */

static long futex_wake(uint32_t *word, int n) { return syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0); }

static uint32_t load(const uint32_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
static void store(uint32_t *word, uint32_t v) { __atomic_store_n(word, v, __ATOMIC_RELEASE); }

/* The glibc robust mutex keeps its futex word (owner TID and flags) first. */
static uint32_t *token_word(struct thr *t) { return (uint32_t *)&t->token; }

static int token_dead(struct thr *t)
{
    uint32_t w = load(token_word(t));
    return (w & FUTEX_OWNER_DIED) || (w & FUTEX_TID_MASK) == 0;
}

/* ---------------------------------------------------------------- checked access */

/* One load of a value another process may change at any moment: a value checked and
 * then used must be the same value (a plain load could be repeated by the compiler). */
#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

/* High-water marks, checked against the capacity (damaged and 0 beyond it). */
static uint32_t hw_of(uint32_t *hw, uint32_t max)
{
    uint32_t v = READ_ONCE(*hw);
    if (v <= max)
        return v;
    damage(BAD_HW);
    return 0;
}
static uint32_t obj_hw(nts_arena *a) { return hw_of(&a->h->obj_hw, NOBJ); }
static uint32_t thr_hw(nts_arena *a) { return hw_of(&a->h->thr_hw, NTHR); }
static uint32_t ref_hw(nts_arena *a) { return hw_of(&a->h->ref_hw, NREF); }
static uint32_t proc_hw(nts_arena *a) { return hw_of(&a->h->proc_hw, NPROC); }

/* An index read from the arena: itself when it names a used entry (1..hw), else
 * damaged and 0, whose entry exists in every table and belongs to nobody. */
static uint32_t obj_index(nts_arena *a, uint32_t oi)
{
    if (oi >= 1 && oi <= obj_hw(a))
        return oi;
    damage(BAD_OBJ);
    return 0;
}
static uint32_t thr_index(nts_arena *a, uint32_t ti)
{
    if (ti >= 1 && ti <= thr_hw(a))
        return ti;
    damage(BAD_THR);
    return 0;
}

/* Wait-queue entries are numbered from 1 across all thread blocks. */
#define ENTRY_THR(id) (((id)-1) / NQ + 1)
#define ENTRY_IDX(id) (((id)-1) % NQ)
static uint32_t entry_id(uint32_t thr, uint32_t i) { return (thr - 1) * NQ + i + 1; }
static struct entry *entry_at(nts_arena *a, uint32_t id)
{
    if (id >= 1 && ENTRY_THR(id) <= thr_hw(a))
        return &a->t[ENTRY_THR(id)].e[ENTRY_IDX(id)];
    damage(BAD_QUEUE);
    return &a->t[0].e[0];
}

/* Whether entry id may be on object oi's list `all`, by its own wait block's word
 * (entry_ok without the back link, which a half-done change may have left stale). */
static int entry_fits(nts_arena *a, uint32_t oi, int all, uint32_t id, uint32_t thrs)
{
    if (id < 1 || ENTRY_THR(id) > thrs)
        return 0;
    struct thr *t = &a->t[ENTRY_THR(id)];
    uint32_t i = ENTRY_IDX(id), count = READ_ONCE(t->count);
    return t->in_use && t->queued && count <= NTS_SYNC_MAX_WAIT && (i < count || (i == count && t->alert)) &&
           t->e[i].obj == oi && t->e[i].linked && (t->all && i < count) == all;
}

/* Whether entry `id` can stand on object oi's wait-all (all) or wait-any list right
 * after `prev` (0: at its head): a walk that checks every step this way visits each
 * entry at most once (an entry's back link names one predecessor), in bounds. */
static int entry_ok(nts_arena *a, uint32_t oi, int all, uint32_t id, uint32_t prev)
{
    if (!entry_fits(a, oi, all, id, thr_hw(a)) || a->t[ENTRY_THR(id)].e[ENTRY_IDX(id)].prev != prev)
        return !damage(BAD_QUEUE);
    return 1;
}

/* ---------------------------------------------------------------- liveness */

/* Whether another open file description holds the liveness lock of slot i (a
 * description never conflicts with its own locks: not for our own slot). */
static int slot_held(int fd, uint32_t i)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1};
    if (fd < 0 || fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return 1; /* cannot tell: never reclaim on doubt */
    return fl.l_type != F_UNLCK;
}

static int process_dead(nts_arena *a, uint32_t pi) { return pi != a->proc && !slot_held(a->fd, pi); }

/* Take a free process slot for description fd: the kernel's lock on byte i is the
 * claim (nobody alive holds the slot, so its previous holder, if any, is dead).
 * First the slots the table shows free, then the others (their holders may have
 * died).  The slot and its new generation, or 0. */
static uint32_t claim_slot(nts_arena *a, int fd, uint32_t *gen)
{
    for (uint32_t pass = 0; pass < 2; pass++)
        for (uint32_t i = 1; i <= NPROC; i++) {
            if ((load(&a->p[i].in_use) != 0) != pass)
                continue;
            struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = i, .l_len = 1};
            if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
                /* Ours alone now: the generation tells our lock identity from a
                 * previous holder's that may still be in the lock word. */
                *gen = __atomic_add_fetch(&a->p[i].gen, 1, __ATOMIC_ACQ_REL);
                return i;
            }
        }
    return 0;
}

/* ---------------------------------------------------------------- lock */

static void gc_dead_processes(nts_arena *a);
static void repair(nts_arena *a);
static void publish_pinned(nts_arena *a);

/* Whether the holder named by a lock word that did not change for a while is gone. */
static int holder_gone(nts_arena *a, uint32_t id)
{
    uint32_t pi = ID_PROC(id);
    if ((id & ~LOCK_WAITERS) == a->me)
        return 0; /* another thread of ours */
    if ((load(&a->p[pi].gen) & ID_GEN_MASK) != (id & ID_GEN_MASK))
        return 1; /* the slot has been claimed since by another process */
    return process_dead(a, pi);
}

static int lock_slow(nts_arena *a)
{
    uint32_t *w = &a->h->lock;
    for (unsigned spin = g_spins.lock; spin; spin--) {
        uint32_t expected = 0;
        if (!load(w) && __atomic_compare_exchange_n(w, &expected, a->me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return 0; /* (a sleeper sets the waiters bit again before it sleeps: none is missed) */
        nts_cpu_relax();
    }
    for (;;) {
        if (damaged())
            return EUCLEAN;
        uint32_t v = load(w), expected = 0;
        if (!v) {
            /* Others may sleep on it: keep the waiters bit, so that our unlock wakes one. */
            if (__atomic_compare_exchange_n(w, &expected, a->me | LOCK_WAITERS, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return 0;
            continue;
        }
        uint32_t pi = ID_PROC(v);
        if (pi < 1 || pi > NPROC)
            return damage("the arena lock word names no process");
        if (!(v & LOCK_WAITERS)) {
            expected = v;
            if (!__atomic_compare_exchange_n(w, &expected, v | LOCK_WAITERS, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                continue;
            v |= LOCK_WAITERS;
        }
        struct timespec patience = {0, LOCK_PATIENCE_NS};
        if (syscall(SYS_futex, w, FUTEX_WAIT, v, &patience, NULL, 0) == 0 || errno != ETIMEDOUT)
            continue;
        if (load(w) != v || !holder_gone(a, v))
            continue;
        /* Its holder died inside the lock: mend what it may have left half done, and
         * reclaim what it left behind. */
        expected = v;
        if (__atomic_compare_exchange_n(w, &expected, a->me | LOCK_WAITERS, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            repair(a);
            gc_dead_processes(a);
            return 0;
        }
    }
}

static int arena_lock(nts_arena *a)
{
    uint32_t expected = 0;
    if (__atomic_compare_exchange_n(&a->h->lock, &expected, a->me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return 0;
    return lock_slow(a);
}

static void arena_unlock(nts_arena *a)
{
    publish_pinned(a);
    uint32_t *w = &a->h->lock, v = a->me;
    if (__atomic_compare_exchange_n(w, &v, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
        return;
    /* Waiters came, or the lock is no longer ours (taken over): never release another's. */
    while ((v & ~LOCK_WAITERS) == a->me)
        if (__atomic_compare_exchange_n(w, &v, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
            if (v & LOCK_WAITERS)
                futex_wake(w, 1);
            return;
        }
}

/* The start of an entry point that works on the tables: EUCLEAN once damaged,
 * EBADF before this process has a slot (it has no objects then), else locked. */
static int begin(nts_arena *a)
{
    if (damaged())
        return EUCLEAN;
    if (!a->me)
        return a->fd < 0 ? a->fd_err : EBADF;
    return arena_lock(a);
}

/* begin() for the entry points that change this process's references: g_refs_lock
 * first (a fork waits on it to copy consistent counts), given back if begin fails. */
static int begin_refs(nts_arena *a)
{
    nts_lock(&g_refs_lock);
    int err = begin(a);
    if (err)
        nts_unlock(&g_refs_lock);
    return err;
}

/* Its end: unlock; damage found meanwhile wins over any other outcome. */
static int done(nts_arena *a, int err)
{
    arena_unlock(a);
    return damaged() ? EUCLEAN : err;
}

static int done_refs(nts_arena *a, int err)
{
    err = done(a, err);
    nts_unlock(&g_refs_lock);
    return err;
}

static int init_robust_shared(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int err = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return err;
}

/* ---------------------------------------------------------------- storage */

/* Make sure element i of the table at `off` has storage, before anything touches it.
 * A table grows one element at a time and its first chunk is reserved with the
 * file, so everything up to the chunk boundary after element i-1 has storage. */
static int reserve(nts_arena *a, size_t off, size_t size, uint32_t i)
{
    size_t have = ROUNDC(off + (size_t)i * size), need = off + ((size_t)i + 1) * size;
    if (need <= have)
        return 0;
    return fallocate(a->fd, 0, (off_t)have, (off_t)(ROUNDC(need) - have)) ? errno : 0;
}

/* ---------------------------------------------------------------- names */

static uint32_t name_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h | 1; /* never 0 */
}

#define NEXT_SLOT(i) (((i) + 1) & (NHASH - 1))

/* The object called s, or 0.  One lap of the index at most. */
static uint32_t name_find(nts_arena *a, const char *s, size_t len, uint32_t hash)
{
    uint32_t i = hash & (NHASH - 1);
    for (uint32_t lap = 0; lap < NHASH && !damaged(); lap++, i = NEXT_SLOT(i)) {
        uint32_t oi = READ_ONCE(a->hash[i]);
        if (!oi)
            return 0;
        struct name *n = &a->n[oi = obj_index(a, oi)];
        if (n->hash == hash && n->len == len && !memcmp(n->bytes, s, len)) {
            if (a->o[oi].name != i + 1 || !a->o[oi].kind)
                return !damage(BAD_NAMES);
            return oi;
        }
    }
    damage(BAD_NAMES); /* no empty slot: the index holds at most half its size */
    return 0;
}

static uint32_t name_insert(nts_arena *a, const char *s, size_t len, uint32_t hash, uint32_t oi)
{
    uint32_t i = hash & (NHASH - 1);
    for (uint32_t lap = 0; lap < NHASH; lap++, i = NEXT_SLOT(i))
        if (!a->hash[i]) {
            struct name *n = &a->n[oi];
            n->hash = hash;
            n->len = (uint32_t)len;
            memcpy(n->bytes, s, len);
            a->hash[i] = oi;
            return i + 1;
        }
    return !damage(BAD_NAMES);
}

/* Linear-probing delete without tombstones: move later members of the cluster back. */
static void name_remove(nts_arena *a, uint32_t slot)
{
    uint32_t hole = slot - 1, i = NEXT_SLOT(hole);
    a->hash[hole] = 0;
    for (uint32_t lap = 0, oi; lap < NHASH && (oi = READ_ONCE(a->hash[i])) && !damaged(); lap++, i = NEXT_SLOT(i)) {
        uint32_t home = a->n[oi = obj_index(a, oi)].hash & (NHASH - 1);
        /* Move i into the hole unless its home lies cyclically in (hole, i]. */
        int stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            a->hash[hole] = oi;
            a->o[oi].name = hole + 1;
            a->hash[i] = 0;
            hole = i;
        }
    }
}

/* ---------------------------------------------------------------- objects */

static void obj_free(nts_arena *a, uint32_t i)
{
    struct obj *o = &a->o[i];
    uint32_t slot = READ_ONCE(o->name);
    if (slot && (slot > NHASH || a->hash[slot - 1] != i))
        damage(BAD_NAMES);
    else if (slot)
        name_remove(a, slot);
    o->name = 0;
    o->kind = 0;
    o->gen++;
    __atomic_store_n(&o->word, W_SLOW, __ATOMIC_RELEASE); /* (nobody references it) */
    o->next_free = a->h->obj_free;
    a->h->obj_free = i;
}

static void obj_unref(nts_arena *a, uint32_t i)
{
    struct obj *o = &a->o[i];
    if (!o->refs || !o->kind)
        damage(BAD_COUNT);
    else if (--o->refs == 0)
        obj_free(a, i);
}

static int is_owned_kind(uint32_t kind) { return kind == NTS_SYNC_MUTEX || kind == NTS_SYNC_LOCK; }

static int is_held(struct obj *o) { return is_owned_kind(o->kind) && o->state.mutex.count; }

static uint64_t load64(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
static int cas64(uint64_t *word, uint64_t *expected, uint64_t v)
{
    return __atomic_compare_exchange_n(word, expected, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* The object's fields from its lock-free word w (a lock or mutex's holder checked). */
static void unpack_word(nts_arena *a, struct obj *o, uint64_t w)
{
    switch (READ_ONCE(o->kind)) {
    case NTS_SYNC_SEMAPHORE:
        o->state.sem.count = (uint32_t)w;
        break;
    case NTS_SYNC_EVENT:
        o->state.event.signaled = (uint32_t)(w & 1);
        break;
    case NTS_SYNC_MUTEX:
    case NTS_SYNC_LOCK: {
        uint32_t hi = W_COUNT(w) ? thr_index(a, W_TI(w)) : 0, gen = hi ? a->t[hi].gen : 0;
        o->state.mutex.count = hi ? W_COUNT(w) : 0;
        o->state.mutex.owner = hi && o->kind == NTS_SYNC_MUTEX ? a->t[hi].tid : 0;
        o->holder = hi;
        /* The latest generation with the word's low bits: the block's own when they agree,
         * an older one (a holder gone, which check_holder abandons) when not. */
        o->holder_gen = gen - ((gen - W_GEN(w)) & W_GEN_MASK);
        break;
    }
    }
}

/* The slow form for object oi, for the rest of this holding of the lock: its state in
 * its fields, W_SLOW in its word.  Called by whatever holding the lock touches an object
 * first (pinning one already slow only notes it, to publish).  Lock held. */
static void pin(nts_arena *a, uint32_t oi)
{
    if (oi < 1 || oi > NOBJ || a->pin_mark[oi])
        return;
    a->pin_mark[oi] = 1;
    a->pinned[a->npinned++] = oi;
    struct obj *o = &a->o[oi];
    for (uint64_t w = load64(&o->word); !(w & W_SLOW);) {
        unpack_word(a, o, w); /* (a lock-free operation meanwhile fails the swap: unpack again) */
        if (cas64(&o->word, &w, w | W_SLOW)) {
            if (is_held(o) && o->holder && a->t[o->holder].gen == o->holder_gen)
                a->t[o->holder].held++; /* counted as a hold the fields record */
            break;
        }
    }
}

/* Object oi's word from its fields, when nobody queues on it and it is not abandoned
 * (and, held, its holder fits the word); else it stays slow.  Lock held. */
static void publish(nts_arena *a, uint32_t oi)
{
    struct obj *o = &a->o[oi];
    uint64_t w;
    if (READ_ONCE(o->any_head) || READ_ONCE(o->all_head) || o->abandoned)
        return;
    switch (READ_ONCE(o->kind)) {
    case NTS_SYNC_SEMAPHORE:
        w = o->state.sem.count;
        break;
    case NTS_SYNC_EVENT:
        w = o->state.event.signaled != 0;
        break;
    case NTS_SYNC_MUTEX:
    case NTS_SYNC_LOCK: {
        uint32_t count = o->state.mutex.count, hi = READ_ONCE(o->holder);
        if (!count) {
            w = 0;
            break;
        }
        if (count > W_COUNT_MASK || !hi || hi > thr_hw(a))
            return;
        struct thr *h = &a->t[hi];
        if (h->gen != o->holder_gen || !h->in_use || (o->kind == NTS_SYNC_MUTEX && o->state.mutex.owner != h->tid))
            return; /* (a mutex a task holds: its owner id is not the thread's) */
        store(&h->fast, 1);
        if (h->held)
            h->held--;
        w = W_HELD(hi, h->gen, count);
        break;
    }
    default:
        return; /* freed */
    }
    __atomic_store_n(&o->word, w, __ATOMIC_RELEASE);
}

/* As the lock is let go: publish what this holding pinned (nothing once damaged, or if
 * the lock is no longer ours: the fields stay the state). */
static void publish_pinned(nts_arena *a)
{
    int ours = !damaged() && (load(&a->h->lock) & ~LOCK_WAITERS) == a->me;
    for (uint32_t k = 0; k < a->npinned; k++) {
        uint32_t oi = a->pinned[k];
        a->pin_mark[oi] = 0;
        if (ours)
            publish(a, oi);
    }
    a->npinned = 0;
}

static int is_signaled(struct obj *o, uint32_t owner)
{
    switch (o->kind) {
    case NTS_SYNC_SEMAPHORE:
        return o->state.sem.count > 0;
    case NTS_SYNC_MUTEX:
        return o->state.mutex.count == 0 || (o->state.mutex.owner == owner && o->state.mutex.count < UINT32_MAX);
    case NTS_SYNC_LOCK:
        return o->state.mutex.count == 0;
    default:
        return o->state.event.signaled != 0;
    }
}

static void link_entry(nts_arena *a, uint32_t oi, int all, uint32_t id)
{
    pin(a, oi); /* (an object with waiters stays slow) */
    struct obj *o = &a->o[oi];
    uint32_t *head = all ? &o->all_head : &o->any_head, *tail = all ? &o->all_tail : &o->any_tail;
    uint32_t last_id = READ_ONCE(*tail);
    struct entry *e = &a->t[ENTRY_THR(id)].e[ENTRY_IDX(id)], *last = last_id ? entry_at(a, last_id) : NULL;
    if (last ? last->next != 0 : *head != 0) {
        damage(BAD_QUEUE);
        return;
    }
    e->linked = 1;
    e->prev = last_id;
    e->next = 0;
    if (last)
        last->next = id;
    else
        *head = id;
    *tail = id;
}

static void unlink_entry(nts_arena *a, uint32_t oi, int all, uint32_t id)
{
    pin(a, oi); /* (its last waiter gone, it may be published) */
    struct obj *o = &a->o[oi];
    uint32_t *head = all ? &o->all_head : &o->any_head, *tail = all ? &o->all_tail : &o->any_tail;
    struct entry *e = entry_at(a, id);
    uint32_t prev_id = READ_ONCE(e->prev), next_id = READ_ONCE(e->next);
    struct entry *prev = prev_id ? entry_at(a, prev_id) : NULL, *next = next_id ? entry_at(a, next_id) : NULL;
    if ((prev ? prev->next : *head) != id || (next ? next->prev : *tail) != id) {
        damage(BAD_QUEUE);
        return;
    }
    if (prev)
        prev->next = next_id;
    else
        *head = next_id;
    if (next)
        next->prev = prev_id;
    else
        *tail = prev_id;
    e->linked = 0;
}

/* Take the waiter off every queue, dropping the references its wait held. */
static void dequeue(nts_arena *a, uint32_t ti)
{
    struct thr *t = &a->t[ti];
    if (!t->queued)
        return;
    uint32_t count = READ_ONCE(t->count);
    if (count > NTS_SYNC_MAX_WAIT) {
        damage(BAD_COUNT);
        return;
    }
    for (uint32_t i = 0; i < count + (t->alert != 0) && !damaged(); i++) {
        struct entry *e = &t->e[i];
        if (!e->linked)
            continue;
        uint32_t oi = obj_index(a, READ_ONCE(e->obj));
        unlink_entry(a, oi, t->all && i < count, entry_id(ti, i));
        obj_unref(a, oi);
    }
    t->queued = 0;
}

/* Wake a waiter to look again; a request's maker sleeps on its own poke word for all
 * its requests. */
static void poke(nts_arena *a, uint32_t ti)
{
    struct thr *t = &a->t[ti];
    uint32_t maker = READ_ONCE(t->notify);
    if (maker && (maker = thr_index(a, maker)) != 0)
        t = &a->t[maker];
    __atomic_add_fetch(&t->poke, 1, __ATOMIC_RELEASE);
    futex_wake(&t->poke, 1);
}

/* Waiters in other processes watch the token of a mutex's holder: tell them the
 * holder changed so they watch the new one. */
static void poke_other_processes(nts_arena *a, uint32_t oi, uint32_t holder_proc)
{
    struct obj *o = &a->o[oi];
    for (int all = 0; all < 2; all++)
        for (uint32_t id = READ_ONCE(*(all ? &o->all_head : &o->any_head)), prev = 0;
             id && entry_ok(a, oi, all, id, prev); prev = id, id = READ_ONCE(entry_at(a, id)->next))
            if (a->t[ENTRY_THR(id)].proc != holder_proc)
                poke(a, ENTRY_THR(id));
}

/* The block that holds what waiter ti acquires of o: the waiter for a mutex, its
 * process's anchor for a lock (the waiter itself if the anchor it names is no live
 * block of its process, which only a damaged arena shows). */
static uint32_t holder_for(nts_arena *a, uint32_t ti, struct obj *o)
{
    struct thr *t = &a->t[ti];
    uint32_t ai = o->kind == NTS_SYNC_LOCK ? READ_ONCE(t->anchor) : 0;
    if (ai && (ai = thr_index(a, ai)) && a->t[ai].in_use && a->t[ai].proc == t->proc)
        return ai;
    return ti;
}

static void acquire(nts_arena *a, uint32_t ti, uint32_t oi)
{
    pin(a, oi);
    struct thr *t = &a->t[ti];
    struct obj *o = &a->o[oi];
    switch (o->kind) {
    case NTS_SYNC_SEMAPHORE:
        o->state.sem.count--;
        break;
    case NTS_SYNC_MUTEX:
    case NTS_SYNC_LOCK:
        if (o->abandoned) {
            t->abandoned = 1;
            o->abandoned = 0;
        }
        if (o->kind == NTS_SYNC_MUTEX)
            o->state.mutex.owner = t->owner;
        if (o->state.mutex.count++ == 0) {
            uint32_t hi = holder_for(a, ti, o);
            struct thr *h = &a->t[hi];
            o->holder = hi;
            o->holder_gen = h->gen;
            h->held++;
            poke_other_processes(a, oi, h->proc);
        }
        break;
    default:
        if (!o->state.event.manual)
            o->state.event.signaled = 0; /* auto-reset */
    }
}

static void hand_over(nts_arena *a, uint32_t ti, uint32_t index)
{
    struct thr *t = &a->t[ti];
    dequeue(a, ti);
    if (t->notify) { /* a request: its maker looks at its word when its poke word rings */
        __atomic_store_n(&t->signaled, index, __ATOMIC_SEQ_CST);
        poke(a, ti);
        return;
    }
    /* Store, then look whether it sleeps; the waiter says it sleeps, then futex_waitv
     * looks at the word: with full fences one of the two sees the other's store. */
    __atomic_store_n(&t->signaled, index, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&t->sleeping, __ATOMIC_SEQ_CST))
        futex_wake(&t->signaled, 1);
}

static int waiter_dead(nts_arena *a, uint32_t ti)
{
    if (!token_dead(&a->t[ti]))
        return 0;
    /* Its process died while it waited: nothing may be handed to it. */
    dequeue(a, ti);
    return 1;
}

/* 1 if the wait-all waiter was taken off the queues (satisfied or dead). */
static int try_wake_all(nts_arena *a, uint32_t ti)
{
    struct thr *t = &a->t[ti];
    if (waiter_dead(a, ti))
        return 1;
    uint32_t count = READ_ONCE(t->count), objs[NTS_SYNC_MAX_WAIT];
    if (count > NTS_SYNC_MAX_WAIT)
        return !damage(BAD_COUNT);
    for (uint32_t i = 0; i < count; i++)
        if (!is_signaled(&a->o[objs[i] = obj_index(a, READ_ONCE(t->e[i].obj))], t->owner) || damaged())
            return 0;
    for (uint32_t i = 0; i < count; i++)
        acquire(a, ti, objs[i]);
    hand_over(a, ti, 0);
    return 1;
}

/* Serve the waiters of an object that may have become signaled: wait-all waiters
 * first, then wait-any waiters in order.  Taking a waiter off the queues unlinks
 * all its entries (a wait-any may name an object twice), so a walk restarts from
 * the head after each: the waiters it passed stay unsatisfied, order is kept.
 * Each restart follows the removal of an entry, so the walks end. */
static void try_wake(nts_arena *a, uint32_t oi)
{
    pin(a, oi);
    struct obj *o = &a->o[oi];
    for (uint32_t id = READ_ONCE(o->all_head), prev = 0; id && entry_ok(a, oi, 1, id, prev);) {
        if (!try_wake_all(a, ENTRY_THR(id))) {
            prev = id;
            id = READ_ONCE(entry_at(a, id)->next);
            continue;
        }
        if (entry_at(a, id)->linked) {
            damage(BAD_QUEUE);
            return;
        }
        id = READ_ONCE(o->all_head);
        prev = 0;
    }
    for (uint32_t id = READ_ONCE(o->any_head), prev = 0; id && entry_ok(a, oi, 0, id, prev);) {
        uint32_t ti = ENTRY_THR(id);
        if (!is_signaled(o, a->t[ti].owner)) {
            if (o->kind != NTS_SYNC_MUTEX)
                break; /* nobody else can take it either (a lock included) */
            prev = id; /* a mutex may still be signaled for another owner */
            id = READ_ONCE(entry_at(a, id)->next);
            continue;
        }
        if (!waiter_dead(a, ti)) {
            acquire(a, ti, oi);
            hand_over(a, ti, ENTRY_IDX(id));
        }
        if (entry_at(a, id)->linked) {
            damage(BAD_QUEUE);
            return;
        }
        id = READ_ONCE(o->any_head);
        prev = 0;
    }
}

static void drop_holder(nts_arena *a, struct obj *o)
{
    uint32_t hi = READ_ONCE(o->holder);
    if (hi) {
        struct thr *h = &a->t[thr_index(a, hi)];
        if (h->gen == o->holder_gen && h->held)
            h->held--;
    }
    o->holder = 0;
}

static void abandon(nts_arena *a, uint32_t oi)
{
    pin(a, oi);
    struct obj *o = &a->o[oi];
    drop_holder(a, o);
    o->state.mutex.owner = 0;
    o->state.mutex.count = 0;
    o->abandoned = 1;
    try_wake(a, oi);
}

/* Abandon every mutex (and, for an anchor, every lock) the thread holds: those the
 * fields record (t->held counts them), and those a word records, if it ever held one so. */
static void abandon_thread(nts_arena *a, uint32_t ti)
{
    struct thr *t = &a->t[ti];
    uint32_t hw = obj_hw(a);
    for (uint32_t i = 1; i <= hw && (t->held || load(&t->fast)) && !damaged(); i++) {
        struct obj *o = &a->o[i];
        uint64_t w = load64(&o->word);
        if (!(w & W_SLOW)) {
            if (!is_owned_kind(READ_ONCE(o->kind)) || !W_COUNT(w) || W_TI(w) != ti || W_GEN(w) != (t->gen & W_GEN_MASK))
                continue;
            pin(a, i);
        }
        if (is_held(o) && o->holder == ti && o->holder_gen == t->gen)
            abandon(a, i);
    }
}

/* A mutex whose holding thread is gone (a lock whose process is) is abandoned
 * before anyone looks at it. */
static void check_holder(nts_arena *a, uint32_t oi)
{
    pin(a, oi);
    struct obj *o = &a->o[oi];
    if (!is_held(o) || !o->holder)
        return;
    uint32_t hi = thr_index(a, READ_ONCE(o->holder));
    struct thr *h = &a->t[hi];
    if (!hi)
        return;
    if (h->gen != o->holder_gen) {
        abandon(a, oi);
    } else if (token_dead(h)) {
        abandon_thread(a, hi);
        /* The kernel woke one watcher of the token; the others must look too. */
        futex_wake(token_word(h), INT32_MAX);
    }
}

/* ---------------------------------------------------------------- reclaiming */

static void stop_spinning(nts_arena *a, struct thr *t);

static void free_thread_block(nts_arena *a, uint32_t ti)
{
    struct thr *t = &a->t[ti];
    stop_spinning(a, t); /* (a process killed while it spun) */
    dequeue(a, ti);
    abandon_thread(a, ti);
    t->in_use = 0;
    t->gen++;
}

static void free_ref(nts_arena *a, uint32_t ri)
{
    struct ref *r = &a->r[ri];
    uint32_t oi = obj_index(a, READ_ONCE(r->obj));
    r->proc = 0;
    r->next_free = a->h->ref_free;
    a->h->ref_free = ri;
    if (oi)
        obj_unref(a, oi);
}

static void release_process(nts_arena *a, uint32_t pi)
{
    uint32_t thr = thr_hw(a), refs = ref_hw(a);
    for (uint32_t i = 1; i <= thr && !damaged(); i++)
        if (a->t[i].in_use && a->t[i].proc == pi)
            free_thread_block(a, i);
    for (uint32_t i = 1; i <= refs && !damaged(); i++)
        if (a->r[i].proc == pi)
            free_ref(a, i);
    a->p[pi].in_use = 0;
}

static void gc_dead_processes(nts_arena *a)
{
    uint32_t hw = proc_hw(a);
    for (uint32_t i = 1; i <= hw && !damaged(); i++)
        if (a->p[i].in_use && process_dead(a, i))
            release_process(a, i);
}

/* After a process died inside the lock, what it was changing may be half done: a
 * queue half linked, the name index half shifted, a count not yet updated.  Rebuild
 * them from what cannot be half done (each wait block's entries, each object's own
 * name, the reference records), keeping each queue's order as far as its links
 * agree, then serve the waiters.  Lock held, after a takeover. */
static void repair(nts_arena *a)
{
    uint32_t objs = obj_hw(a), thrs = thr_hw(a), refs = ref_hw(a);
    uint8_t *seen = calloc((size_t)thrs * NQ + 1, 1);
    if (!seen) {
        damage("no memory to repair the arena after a process died inside its lock");
        return;
    }
    for (uint32_t oi = 1; oi <= objs; oi++) {
        struct obj *o = &a->o[oi];
        o->refs = 0;
        for (int all = 0; all < 2; all++) {
            uint32_t *head = all ? &o->all_head : &o->any_head, last = 0;
            for (uint32_t id = READ_ONCE(*head); entry_fits(a, oi, all, id, thrs) && !seen[id];
                 id = READ_ONCE(a->t[ENTRY_THR(id)].e[ENTRY_IDX(id)].next)) {
                seen[id] = 1;
                a->t[ENTRY_THR(id)].e[ENTRY_IDX(id)].prev = last;
                *(last ? &a->t[ENTRY_THR(last)].e[ENTRY_IDX(last)].next : head) = id;
                last = id;
            }
            *(last ? &a->t[ENTRY_THR(last)].e[ENTRY_IDX(last)].next : head) = 0;
            *(all ? &o->all_tail : &o->any_tail) = last;
        }
    }
    /* Entries their block says are queued but that no walk reached go to the tail;
     * each queued entry, and each reference record, holds a reference. */
    for (uint32_t ti = 1; ti <= thrs; ti++) {
        struct thr *t = &a->t[ti];
        uint32_t count = READ_ONCE(t->count);
        for (uint32_t i = 0; t->in_use && t->queued && count <= NTS_SYNC_MAX_WAIT && i < count + (t->alert != 0); i++) {
            uint32_t oi = READ_ONCE(t->e[i].obj), id = entry_id(ti, i);
            if (!t->e[i].linked)
                continue;
            if (oi < 1 || oi > objs || !a->o[oi].kind) {
                t->e[i].linked = 0;
                continue;
            }
            if (!seen[id]) {
                t->e[i].linked = 0;
                link_entry(a, oi, t->all && i < count, id);
            }
            a->o[oi].refs++;
        }
    }
    free(seen);
    for (uint32_t ri = 1; ri <= refs; ri++) {
        uint32_t oi = READ_ONCE(a->r[ri].obj);
        if (a->r[ri].proc && oi >= 1 && oi <= objs)
            a->o[oi].refs++;
    }
    memset(a->hash, 0, sizeof(uint32_t) * NHASH);
    for (uint32_t oi = 1; oi <= objs; oi++) {
        struct obj *o = &a->o[oi];
        char bytes[NTS_SYNC_MAX_NAME];
        uint32_t len = READ_ONCE(a->n[oi].len);
        if (o->kind && o->name && len <= NTS_SYNC_MAX_NAME) {
            memcpy(bytes, a->n[oi].bytes, len);
            o->name = name_insert(a, bytes, len, name_hash(bytes, len), oi);
        } else {
            o->name = 0;
        }
    }
    for (uint32_t oi = 1; oi <= objs && !damaged(); oi++)
        if (a->o[oi].kind && !a->o[oi].refs)
            obj_free(a, oi); /* nobody references it any more */
        else if (a->o[oi].kind)
            try_wake(a, oi); /* a release may have been cut short before it served them */
}

/* Record slot pi (claimed by its process, or by us for a child) in the table,
 * reclaiming first what its dead previous holder left.  Lock held. */
static void enroll_slot(nts_arena *a, uint32_t pi, uint32_t pid)
{
    struct proc *p = &a->p[pi];
    if (p->in_use)
        release_process(a, pi);
    p->pid = pid;
    p->in_use = 1;
    if (pi > proc_hw(a))
        a->h->proc_hw = pi;
}

/* This process's slot, claimed on attach (and again by a forked child that could
 * not be given one): 0, ENOSPC when every slot is held, or the lock's errors. */
static int enroll(nts_arena *a)
{
    if (damaged())
        return EUCLEAN;
    if (a->me)
        return 0;
    if (a->fd < 0)
        return a->fd_err;
    uint32_t gen, pi = claim_slot(a, a->fd, &gen);
    if (!pi)
        return ENOSPC;
    a->proc = pi;
    a->gen = gen;
    a->me = ID(pi, gen);
    int err = arena_lock(a);
    if (err)
        return err;
    enroll_slot(a, pi, (uint32_t)g_pid);
    gc_dead_processes(a); /* a new process is a good moment to sweep */
    return done(a, 0);
}

/* ---------------------------------------------------------------- allocation */

/* Entry i off the free list at *head, whose next link is next and which must not
 * be in use; a bad link (another process may have written anything there) damages
 * the arena.  (Index 0 stands in for an out-of-range i when reading its entry.) */
static uint32_t pop_free(uint32_t *head, uint32_t i, uint32_t hw, uint32_t next, uint32_t in_use)
{
    if (i > hw || in_use || next > hw)
        return !damage(BAD_FREE);
    *head = next;
    return i;
}

static uint32_t take_obj(nts_arena *a, int *err)
{
    uint32_t hw = obj_hw(a), i = READ_ONCE(a->h->obj_free), j = i <= hw ? i : 0;
    if (i)
        return pop_free(&a->h->obj_free, i, hw, READ_ONCE(a->o[j].next_free), a->o[j].kind);
    if (hw >= NOBJ || damaged())
        return 0;
    if ((*err = reserve(a, OFF_OBJ, sizeof(struct obj), hw + 1)) ||
        (*err = reserve(a, OFF_NAME, sizeof(struct name), hw + 1)))
        return 0;
    a->h->obj_hw = hw + 1;
    return hw + 1;
}

static uint32_t take_ref(nts_arena *a, int *err)
{
    uint32_t hw = ref_hw(a), i = READ_ONCE(a->h->ref_free), j = i <= hw ? i : 0;
    if (i)
        return pop_free(&a->h->ref_free, i, hw, READ_ONCE(a->r[j].next_free), a->r[j].proc);
    if (hw >= NREF || damaged() || (*err = reserve(a, OFF_REF, sizeof(struct ref), hw + 1)))
        return 0;
    a->h->ref_hw = hw + 1;
    return hw + 1;
}

/* A free entry, sweeping the dead when there is none; 0 with *err ENOSPC (or the
 * error of reserving storage) when the table is full. */
static uint32_t alloc_entry(nts_arena *a, uint32_t (*take)(nts_arena *, int *), int *err)
{
    *err = 0;
    uint32_t i = take(a, err);
    if (!i && !*err) {
        gc_dead_processes(a);
        i = take(a, err);
    }
    if (!i && !*err)
        *err = ENOSPC;
    return i;
}

/* A new record of pi's references to oi.  Lock held. */
static uint32_t new_ref(nts_arena *a, uint32_t pi, uint32_t oi, int *err)
{
    uint32_t ri = alloc_entry(a, take_ref, err);
    if (ri) {
        a->r[ri].proc = pi;
        a->r[ri].obj = oi;
        a->o[oi].refs++;
    }
    return ri;
}

/* One more reference of this process to object oi.  Lock and g_refs_lock held. */
static int ref_object(nts_arena *a, uint32_t oi)
{
    if (!a->my_rec[oi]) {
        int err;
        uint32_t ri = new_ref(a, a->proc, oi, &err);
        if (!ri)
            return err;
        a->my_rec[oi] = ri;
    }
    a->my_count[oi]++;
    a->my_kind[oi] = (uint8_t)a->o[oi].kind;
    return 0;
}

/* ---------------------------------------------------------------- threads */

static void thread_exit(void *value)
{
    nts_arena *a = g_arena;
    uint32_t ti = (uint32_t)(uintptr_t)value;
    if (!a || tls_pid != g_pid || begin(a))
        return;
    struct thr *t = &a->t[ti];
    if (t->in_use && t->proc == a->proc && t->gen == tls_gen)
        free_thread_block(a, ti);
    done(a, 0);
    /* The token stays locked: the kernel marks it dead as the thread ends, and only
     * then is the block taken again. */
}

/* A block nobody uses whose token is dead (its last thread has ended), or a new one. */
static uint32_t take_thr(nts_arena *a, int *err)
{
    uint32_t hw = thr_hw(a);
    for (uint32_t i = 1; i <= hw; i++)
        if (!a->t[i].in_use && token_dead(&a->t[i]))
            return i;
    if (hw >= NTHR || damaged() || (*err = reserve(a, OFF_THR, sizeof(struct thr), hw + 1)))
        return 0;
    a->h->thr_hw = hw + 1;
    return hw + 1;
}

/* Make block ti, just taken, the calling thread's: its token locked by this thread.
 * Lock held. */
static int claim_block(nts_arena *a, uint32_t ti, uint32_t notify)
{
    struct thr *t = &a->t[ti];
    int err = 0;
    /* Nobody's robust list holds a dead token: it is ours to initialize.  Locked once
     * here, never unlocked (see the top of this file). */
    if (init_robust_shared(&t->token) || pthread_mutex_trylock(&t->token))
        err = damage("a thread token in the arena could not be taken");
    t->gen += !t->gen; /* generations start at 1 */
    t->in_use = 1;
    t->proc = a->proc;
    t->tid = (uint32_t)syscall(SYS_gettid);
    t->held = 0;
    store(&t->fast, 0);
    t->queued = 0;
    t->count = 0;
    t->alert = 0;
    t->notify = notify;
    store(&t->signaled, 0);
    return err;
}

/* The calling thread's block, taken (and its token locked) on first use. */
static int self_thread(nts_arena *a, uint32_t *out)
{
    pid_t pid = g_pid;
    if (tls_thr && tls_pid == pid) {
        *out = tls_thr;
        return 0;
    }
    int err = enroll(a);
    if (err || (err = begin(a)))
        return err;
    uint32_t ti = alloc_entry(a, take_thr, &err);
    if (ti && !(err = claim_block(a, ti, 0)))
        tls_gen = a->t[ti].gen;
    if ((err = done(a, err)))
        return err;
    tls_thr = ti;
    tls_pid = pid;
    pthread_setspecific(g_thread_key, (void *)(uintptr_t)ti);
    *out = ti;
    return 0;
}

uint32_t nts_sync_thread_id(void)
{
    static __thread uint32_t tid;
    static __thread pid_t tid_pid;
    if (!tid || tid_pid != g_pid) { /* (a forked child's thread has another id) */
        tid = (uint32_t)syscall(SYS_gettid);
        tid_pid = g_pid;
    }
    return tid;
}

/* ---------------------------------------------------------------- the anchor */

/* This process's anchor block, 0 until its thread holds the token (and again in a
 * forked child, which has no such thread); g_anchor_lock serializes starting it. */
static uint32_t g_anchor;
static int g_anchor_lock;
#define ANCHOR_STACK 65536 /* enough for self_thread's sweep of dead processes */

struct anchor_start {
    nts_arena *a;
    uint32_t done; /* futex: set once ti and err are */
    uint32_t ti;
    int err;
};

static void *anchor_main(void *arg)
{
    struct anchor_start *start = arg;
    static uint32_t never; /* (nothing wakes it) */
    uint32_t ti = 0;
    int err = self_thread(start->a, &ti);
    start->ti = ti;
    start->err = err;
    __atomic_store_n(&start->done, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &start->done, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    /* Our token stays locked while this thread lives: for the rest of the process. */
    while (!err)
        syscall(SYS_futex, &never, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    return NULL;
}

/* The anchor block, its thread started on first use (with every signal blocked, so
 * that signals go to the threads that expect them). */
static int anchor(nts_arena *a, uint32_t *out)
{
    if ((*out = __atomic_load_n(&g_anchor, __ATOMIC_ACQUIRE)) != 0)
        return 0;
    int err = 0;
    nts_lock(&g_anchor_lock);
    if (!g_anchor) {
        struct anchor_start start = {.a = a};
        pthread_attr_t attr;
        pthread_t thread;
        sigset_t all, old;
        sigfillset(&all);
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, ANCHOR_STACK);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        err = pthread_create(&thread, &attr, anchor_main, &start);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        while (!err && !__atomic_load_n(&start.done, __ATOMIC_ACQUIRE))
            syscall(SYS_futex, &start.done, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        if (!err && !(err = start.err))
            __atomic_store_n(&g_anchor, start.ti, __ATOMIC_RELEASE);
    }
    *out = g_anchor;
    nts_unlock(&g_anchor_lock);
    return err;
}

/* ---------------------------------------------------------------- fork */

/* Before fork: claim a process slot for the child on a descriptor of its own, and
 * give it its own references, so that nothing the child inherits can disappear
 * before it runs (the parent may close right away).  If the child dies, or execs
 * (the descriptor is close-on-exec), its slot is free and all of it is reclaimed. */
static void fork_prepare(void)
{
    nts_arena *a = g_arena;
    if (!a)
        return;
    nts_lock(&g_refs_lock); /* until after the fork: the child's counts are these */
    a->child_fd = -1;
    a->child_proc = 0;
    a->ninflight = 0;
    if (a->fd < 0 || damaged())
        return;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", a->fd);
    a->child_fd = open(path, O_RDWR | O_CLOEXEC); /* a new open file description of the arena */
    if (a->child_fd < 0) {
        a->fd_err = errno;
        return;
    }
    if (!a->me)
        return; /* we have no objects to pass on */
    uint32_t gen, pi = claim_slot(a, a->child_fd, &gen);
    if (!pi || arena_lock(a))
        return; /* the child has no slot (the table is full): it inherits no objects */
    enroll_slot(a, pi, 0);
    a->child_proc = pi;
    a->child_gen = gen;
    uint32_t hw = obj_hw(a);
    for (uint32_t oi = 1; oi <= hw && !damaged(); oi++) {
        if (!a->my_count[oi])
            continue;
        int err;
        uint32_t ri = new_ref(a, pi, oi, &err);
        if (!ri)
            break; /* the child keeps only these: its operations on the others report EBADF */
        a->inflight_obj[a->ninflight] = oi;
        a->inflight_ref[a->ninflight++] = ri;
    }
    arena_unlock(a);
}

static void fork_parent(void)
{
    nts_arena *a = g_arena;
    if (!a)
        return;
    if (a->child_fd >= 0)
        close(a->child_fd); /* the child's now, with its slot (or nobody's, if fork failed) */
    a->child_fd = -1;
    a->ninflight = 0;
    nts_unlock(&g_refs_lock);
}

/* In the child: only async-signal-safe calls. */
static void fork_child(void)
{
    nts_arena *a = g_arena;
    g_pid = getpid();
    tls_thr = 0;  /* the parent thread's block is not ours */
    g_anchor = 0; /* nor its anchor, whose thread did not come along */
    g_anchor_lock = 0;
    if (a) {
        memset(a->my_req, 0, sizeof a->my_req);     /* nor the requests, whose maker did not either */
        memset(a->pin_mark, 0, sizeof a->pin_mark); /* nor a holding of the lock */
        a->npinned = 0;
    }
    pthread_setspecific(g_thread_key, NULL);
    if (!a)
        return;
    /* The parent's description carries the parent's liveness: not ours to keep. */
    if (a->child_fd >= 0 && dup3(a->child_fd, a->fd, O_CLOEXEC) >= 0) {
        close(a->child_fd);
    } else {
        if (a->child_fd >= 0) {
            a->fd_err = errno;
            close(a->child_fd);
        }
        close(a->fd);
        a->fd = -1;
    }
    a->child_fd = -1;
    a->proc = a->fd >= 0 ? a->child_proc : 0;
    a->gen = a->child_gen;
    a->me = a->proc ? ID(a->proc, a->gen) : 0;
    memset(a->my_rec, 0, sizeof a->my_rec);
    if (a->proc)
        for (size_t k = 0; k < a->ninflight; k++)
            a->my_rec[a->inflight_obj[k]] = a->inflight_ref[k];
    for (uint32_t oi = 1; oi <= NOBJ; oi++)
        if (!a->my_rec[oi])
            a->my_count[oi] = 0; /* not passed on: gone for us */
    a->ninflight = 0;
    if (a->proc && !damaged())
        a->p[a->proc].pid = (uint32_t)g_pid;
    nts_unlock(&g_refs_lock);
}

/* ---------------------------------------------------------------- entry points */

int nts_sync_format(int fd)
{
    /* The header, process table and name index, and the first chunk of each growing table. */
    static const size_t first[] = {OFF_OBJ, OFF_NAME, OFF_THR, OFF_REF};
    struct header h = {.magic = MAGIC, .version = NTS_SYNC_LAYOUT, .size = ARENA_SIZE};
    if (ftruncate(fd, (off_t)ARENA_SIZE) < 0 || fallocate(fd, 0, 0, (off_t)OFF_OBJ) < 0)
        return errno;
    for (size_t i = 0; i < sizeof first / sizeof *first; i++)
        if (fallocate(fd, 0, (off_t)first[i], CHUNK) < 0)
            return errno;
    ssize_t written = pwrite(fd, &h, sizeof h, 0);
    return written < 0 ? errno : written == (ssize_t)sizeof h ? 0 : EIO;
}

int nts_sync_layout(int fd, uint32_t *magic, uint32_t *version, uint64_t *size)
{
    struct header h;
    memset(&h, 0, sizeof h);
    struct stat st;
    if (fstat(fd, &st) < 0 || pread(fd, &h, sizeof h, 0) < 0)
        return errno;
    *magic = h.magic;
    *version = h.version;
    /* A file shorter than its header says is not of its layout either. */
    *size = (uint64_t)st.st_size == h.size ? h.size : (uint64_t)st.st_size;
    return 0;
}

int nts_sync_in_use(int fd, int *in_use)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 1, .l_len = NTS_SYNC_LIVE_END - 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return errno;
    *in_use = fl.l_type != F_UNLCK;
    return 0;
}

/* The pauses that take `ns`, at `ps` picoseconds a pause (at least one). */
static unsigned pauses_for(unsigned ns, uint64_t ps)
{
    uint64_t n = (uint64_t)ns * 1000 / ps;
    return n ? (unsigned)n : 1;
}

static pthread_once_t g_spins_once = PTHREAD_ONCE_INIT;

/* A pause's cost: the fastest of a few short runs (a run the scheduler interrupts only
 * reads longer), kept within 0.1 ns .. 1 us. */
static void measure_spins(void)
{
    if (sysconf(_SC_NPROCESSORS_ONLN) <= 1)
        return;
    uint64_t best = UINT64_MAX;
    for (int run = 0; run < 5; run++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < 256; i++)
            nts_cpu_relax();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        uint64_t ns = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u + (uint64_t)(t1.tv_nsec - t0.tv_nsec);
        best = ns < best ? ns : best;
    }
    uint64_t ps = best * 1000 / 256;
    ps = ps < 100 ? 100 : ps > 1000000 ? 1000000 : ps;
    g_spins = (nts_sync_spins){pauses_for(NTS_SYNC_WORD_SPIN_NS, ps), pauses_for(NTS_SYNC_LOCK_SPIN_NS, ps),
                               pauses_for(NTS_SYNC_SPIN_NS, ps)};
}

void nts_sync_spin_counts(nts_sync_spins *out)
{
    pthread_once(&g_spins_once, measure_spins);
    *out = g_spins;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void init_once(void)
{
    g_pid = getpid();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    pthread_once(&g_spins_once, measure_spins);
    g_max_spinners = cpus > 1 ? (unsigned)(cpus - 1) : 0;
    pthread_key_create(&g_thread_key, thread_exit);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void arena_free(nts_arena *a)
{
    if (a->fd >= 0)
        close(a->fd);
    free(a->inflight_obj);
    free(a->inflight_ref);
    free(a);
}

int nts_sync_attach(int fd, nts_arena **out)
{
    uint32_t magic, version;
    uint64_t size;
    int err = nts_sync_layout(fd, &magic, &version, &size);
    if (err)
        return err;
    if (magic != MAGIC || version != NTS_SYNC_LAYOUT || size != ARENA_SIZE)
        return EPROTO;
    if (g_arena)
        return EBUSY;
    nts_arena *a = calloc(1, sizeof *a);
    if (!a)
        return ENOMEM;
    /* The liveness lock lives on a description of its own that nothing maps: a
     * mapping holds its description open, and fork copies mappings, so a lock on the
     * mapped one would outlive a closed descriptor and survive in forked children. */
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    a->fd = open(path, O_RDWR | O_CLOEXEC);
    a->fd_err = EBADF;
    a->child_fd = -1;
    a->inflight_obj = calloc(NOBJ, sizeof *a->inflight_obj);
    a->inflight_ref = calloc(NOBJ, sizeof *a->inflight_ref);
    if (a->fd < 0 || !a->inflight_obj || !a->inflight_ref) {
        err = a->fd < 0 ? errno : ENOMEM;
        arena_free(a);
        return err;
    }
    char *m = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        err = errno;
        arena_free(a);
        return err;
    }
    a->base = m;
    a->h = (struct header *)m;
    a->p = (struct proc *)(m + OFF_PROC);
    a->hash = (uint32_t *)(m + OFF_HASH);
    a->o = (struct obj *)(m + OFF_OBJ);
    a->n = (struct name *)(m + OFF_NAME);
    a->t = (struct thr *)(m + OFF_THR);
    a->r = (struct ref *)(m + OFF_REF);
    pthread_once(&g_once, init_once);
    /* The file may shrink from now on: the handler first. */
    __atomic_store_n(&g_base, m, __ATOMIC_RELEASE);
    g_arena = a;
    /* Damage found by the first sweep still attaches: every call then reports it. */
    if ((err = install_sigbus()) == 0 && ((err = enroll(a)) == 0 || err == EUCLEAN)) {
        *out = a;
        return 0;
    }
    leave(a);
    g_arena = NULL;
    __atomic_store_n(&g_base, NULL, __ATOMIC_RELEASE);
    munmap(m, ARENA_SIZE);
    arena_free(a);
    return err;
}

/* Drop every reference of this process (at interpreter exit). */
void nts_sync_detach(nts_arena *a)
{
    if (!begin_refs(a)) {
        uint32_t hw = obj_hw(a);
        for (uint32_t oi = 1; oi <= hw && !damaged(); oi++)
            if (a->my_rec[oi]) {
                if (a->r[a->my_rec[oi]].proc == a->proc && a->r[a->my_rec[oi]].obj == oi)
                    free_ref(a, a->my_rec[oi]);
                a->my_rec[oi] = 0;
                a->my_count[oi] = 0;
            }
        done_refs(a, 0);
    }
}

/* Whether slot oi is an object this process references (EBADF if not), of `kind`
 * (0: any).  Lock held.  The arena must agree with our own books: a record that no
 * longer names us means that our slot was reclaimed as a dead process's. */
static int valid(nts_arena *a, uint32_t oi, int kind)
{
    if (oi < 1 || oi > NOBJ || !a->my_count[oi])
        return EBADF;
    struct ref *r = &a->r[a->my_rec[oi]];
    struct proc *p = &a->p[a->proc];
    if (r->proc != a->proc || r->obj != oi || p->gen != a->gen || !p->in_use)
        return damage(SWEPT);
    if (!obj_index(a, oi) || !a->o[oi].kind)
        return damage(BAD_OBJ);
    if (kind && a->o[oi].kind != (uint32_t)kind)
        return EBADF;
    pin(a, oi);
    return 0;
}

int nts_sync_create(nts_arena *a, int kind, nts_sync_state initial, const char *name, size_t len, uint32_t *slot,
                    uint32_t *gen, int *created)
{
    if (kind < NTS_SYNC_SEMAPHORE || kind > NTS_SYNC_LOCK || len > NTS_SYNC_MAX_NAME ||
        (kind == NTS_SYNC_LOCK && (initial.mutex.owner || initial.mutex.count)))
        return EINVAL; /* (a lock is made unlocked) */
    int err = install_sigbus();
    uint32_t holder = 0;
    if (!err && kind == NTS_SYNC_MUTEX && initial.mutex.count)
        err = self_thread(a, &holder);
    if (err || (err = enroll(a)))
        return err;
    if ((err = begin_refs(a)))
        return err;
    uint32_t hash = name ? name_hash(name, len) : 0, oi = 0;
    if (name && (oi = name_find(a, name, len, hash)) != 0) {
        if (a->o[oi].kind != (uint32_t)kind)
            err = EEXIST;
        else if (!(err = ref_object(a, oi)))
            *created = 0;
    } else if (!damaged() && (oi = alloc_entry(a, take_obj, &err)) != 0) {
        struct obj *o = &a->o[oi];
        uint32_t g = o->gen;
        memset(o, 0, sizeof *o);
        o->gen = g;
        o->kind = (uint32_t)kind;
        o->state = initial;
        o->word = W_SLOW; /* the fields hold the state: published as the lock is let go */
        pin(a, oi);
        if (holder) {
            o->holder = holder;
            o->holder_gen = a->t[holder].gen;
            a->t[holder].held++;
        }
        if ((err = ref_object(a, oi)) != 0)
            obj_free(a, oi);
        else {
            if (name)
                o->name = name_insert(a, name, len, hash, oi);
            *created = 1;
        }
    }
    if (!err) {
        *slot = oi;
        *gen = a->o[oi].gen;
    }
    return done_refs(a, err);
}

int nts_sync_open(nts_arena *a, int kind, const char *name, size_t len, uint32_t *slot, uint32_t *gen)
{
    int err = install_sigbus();
    if (err || (err = enroll(a)))
        return err;
    if ((err = begin_refs(a)))
        return err;
    uint32_t oi = len <= NTS_SYNC_MAX_NAME ? name_find(a, name, len, name_hash(name, len)) : 0;
    if (!oi) {
        err = ENOENT;
    } else {
        if (a->o[oi].kind != (uint32_t)kind)
            err = EEXIST;
        else if (!(err = ref_object(a, oi))) {
            *slot = oi;
            *gen = a->o[oi].gen;
        }
    }
    return done_refs(a, err);
}

int nts_sync_ref(nts_arena *a, int kind, uint32_t slot, uint32_t gen)
{
    int err = enroll(a);
    if (err)
        return err;
    if ((err = begin_refs(a)))
        return err;
    if (slot < 1 || slot > obj_hw(a) || a->o[slot].kind != (uint32_t)kind || a->o[slot].gen != gen || !a->o[slot].refs)
        err = ENOENT;
    else
        err = ref_object(a, slot);
    return done_refs(a, err);
}

int nts_sync_unref(nts_arena *a, uint32_t slot)
{
    int err = begin_refs(a);
    if (err)
        return err;
    if (!(err = valid(a, slot, 0)) && --a->my_count[slot] == 0) {
        free_ref(a, a->my_rec[slot]);
        a->my_rec[slot] = 0;
    }
    return done_refs(a, err);
}

/* ---------------------------------------------------------------- lock-free operations */

/* The kind of object `slot` for a lock-free operation: one this process references; 0
 * for the locked path to handle (and explain).  (Our own books, read without g_refs_lock:
 * as for a locked call, closing an object while another thread uses it is the caller's
 * race.) */
static inline uint32_t fast_kind(nts_arena *a, uint32_t slot)
{
    if (slot < 1 || slot > NOBJ || !a->my_count[slot] || damaged())
        return 0;
    return a->my_kind[slot];
}

/* Object `slot` for a lock-free operation, if it is of `kind`; else NULL. */
static inline struct obj *fast_obj(nts_arena *a, uint32_t slot, int kind)
{
    return fast_kind(a, slot) == (uint32_t)kind ? &a->o[slot] : NULL;
}

enum { FAST_DONE = 1, FAST_NOT_SIGNALED = 0, FAST_LOCKED = -1, FAST_UNTRIED = -2 };

/* One lock-free attempt on a semaphore or an event (`kind`), which need no thread block,
 * from word *w as last seen (a failed swap looks at the new word): FAST_DONE;
 * FAST_NOT_SIGNALED, as the locked path would find it too; FAST_LOCKED, the word is
 * slow.  *w is left as last seen. */
static inline __attribute__((always_inline)) int take_unowned(struct obj *o, uint32_t kind, uint64_t *w)
{
    uint64_t next;
    do {
        if (*w & W_SLOW)
            return FAST_LOCKED;
        if (kind == NTS_SYNC_SEMAPHORE) {
            if (!(uint32_t)*w)
                return FAST_NOT_SIGNALED;
            next = *w - 1;
        } else {
            if (!(*w & 1))
                return FAST_NOT_SIGNALED;
            if (READ_ONCE(o->state.event.manual)) /* (set at creation, never changed) */
                return FAST_DONE;
            next = 0;
        }
    } while (!cas64(&o->word, w, next));
    return FAST_DONE;
}

/* What a lock-free acquisition of a lock or a mutex needs: the object, its kind, the
 * block that would hold it and that block's generation. */
struct owned {
    struct obj *o;
    uint32_t kind, ti, gen;
};

/* Get ready to acquire lock or mutex `slot` (of `kind`) lock-free for `owner`: 0, else
 * FAST_LOCKED (an owner that only the locked path serves). */
static int owned_begin(nts_arena *a, uint32_t slot, uint32_t kind, uint32_t owner, struct owned *f)
{
    uint32_t ti; /* (not &f->ti: f stays in registers for the look) */
    if (kind == NTS_SYNC_LOCK ? anchor(a, &ti) : self_thread(a, &ti))
        return FAST_LOCKED;
    struct thr *t = &a->t[ti];
    if (kind == NTS_SYNC_MUTEX && owner != t->tid)
        return FAST_LOCKED; /* another owner id than the thread's own (a task's) */
    *f = (struct owned){&a->o[slot], kind, ti, t->gen};
    if (!load(&t->fast))
        store(&t->fast, 1); /* before the swap: abandon_thread must look at the words */
    return 0;
}

/* One lock-free attempt on a lock or a mutex, as take_unowned says; a held one (whose
 * holder may be dead: the locked path looks) is FAST_LOCKED too. */
static inline __attribute__((always_inline)) int take_owned(struct owned *f, uint64_t *w)
{
    uint64_t next;
    do {
        if (*w & W_SLOW)
            return FAST_LOCKED;
        if (f->kind == NTS_SYNC_LOCK) {
            if (*w)
                return FAST_LOCKED;
            next = W_HELD(f->ti, f->gen, 1);
        } else if (!W_COUNT(*w)) { /* a mutex: free, or ours one level more */
            next = W_HELD(f->ti, f->gen, 1);
        } else if (W_TI(*w) == f->ti && W_GEN(*w) == (f->gen & W_GEN_MASK) && W_COUNT(*w) < W_COUNT_MASK) {
            next = *w + 1;
        } else {
            return FAST_LOCKED;
        }
    } while (!cas64(&f->o->word, w, next));
    return FAST_DONE;
}

/* Whether a word's holder is alive (a lock-free read must not call a dead holder's lock
 * locked: the locked path would abandon it first). */
static int word_holder_alive(nts_arena *a, uint64_t w)
{
    uint32_t hi = W_TI(w);
    if (hi < 1 || hi > thr_hw(a))
        return 0;
    struct thr *h = &a->t[hi];
    return (READ_ONCE(h->gen) & W_GEN_MASK) == W_GEN(w) && !token_dead(h);
}

/* Run one operation on an object of this process under the lock.  The locked half of an
 * operation that tries the object's word first is a function of its own (NOINLINE), so
 * that the lock-free half needs no stack frame. */
#define NOINLINE __attribute__((noinline))
#define OBJECT_OP(a, slot, kind, body)                                                                                 \
    do {                                                                                                               \
        int err_ = begin(a);                                                                                           \
        if (err_)                                                                                                      \
            return err_;                                                                                               \
        if (!(err_ = valid(a, slot, kind))) {                                                                          \
            struct obj *o = &(a)->o[slot];                                                                             \
            body                                                                                                       \
        }                                                                                                              \
        return done(a, err_);                                                                                          \
    } while (0)

static NOINLINE int sem_release_locked(nts_arena *a, uint32_t slot, uint32_t n, uint32_t *prev)
{
    OBJECT_OP(a, slot, NTS_SYNC_SEMAPHORE, {
        if ((uint64_t)o->state.sem.count + n > o->state.sem.max) {
            err_ = EOVERFLOW;
        } else {
            *prev = o->state.sem.count;
            o->state.sem.count += n;
            try_wake(a, slot);
        }
    });
}

int nts_sync_sem_release(nts_arena *a, uint32_t slot, uint32_t n, uint32_t *prev)
{
    struct obj *fo = fast_obj(a, slot, NTS_SYNC_SEMAPHORE);
    for (uint64_t w = fo ? load64(&fo->word) : W_SLOW; !(w & W_SLOW);) {
        if ((uint64_t)(uint32_t)w + n > READ_ONCE(fo->state.sem.max)) /* (set at creation) */
            return EOVERFLOW;
        if (cas64(&fo->word, &w, w + n)) {
            *prev = (uint32_t)w;
            return 0;
        }
    }
    return sem_release_locked(a, slot, n, prev);
}

int nts_sync_sem_read(nts_arena *a, uint32_t slot, uint32_t *count, uint32_t *max)
{
    struct obj *fo = fast_obj(a, slot, NTS_SYNC_SEMAPHORE);
    uint64_t w = fo ? load64(&fo->word) : W_SLOW;
    if (!(w & W_SLOW)) {
        *count = (uint32_t)w;
        *max = READ_ONCE(fo->state.sem.max);
        return 0;
    }
    OBJECT_OP(a, slot, NTS_SYNC_SEMAPHORE, {
        *count = o->state.sem.count;
        *max = o->state.sem.max;
    });
}

static NOINLINE int mutex_unlock_locked(nts_arena *a, uint32_t slot, uint32_t owner, uint32_t *prev)
{
    OBJECT_OP(a, slot, NTS_SYNC_MUTEX, {
        check_holder(a, slot);
        if (!o->state.mutex.count || o->state.mutex.owner != owner) {
            err_ = EPERM;
        } else {
            *prev = o->state.mutex.count;
            if (--o->state.mutex.count == 0) {
                o->state.mutex.owner = 0;
                drop_holder(a, o);
                try_wake(a, slot);
            }
        }
    });
}

int nts_sync_mutex_unlock(nts_arena *a, uint32_t slot, uint32_t owner, uint32_t *prev)
{
    struct obj *fo = fast_obj(a, slot, NTS_SYNC_MUTEX);
    uint32_t ti = tls_pid == g_pid ? tls_thr : 0; /* (a mutex held in the word is held by a block of ours) */
    for (uint64_t w = fo && ti ? load64(&fo->word) : W_SLOW;
         !(w & W_SLOW) && W_COUNT(w) && W_TI(w) == ti && W_GEN(w) == (tls_gen & W_GEN_MASK) && owner == a->t[ti].tid;)
        if (cas64(&fo->word, &w, W_COUNT(w) == 1 ? 0 : w - 1)) {
            *prev = W_COUNT(w);
            return 0;
        }
    return mutex_unlock_locked(a, slot, owner, prev);
}

int nts_sync_mutex_kill(nts_arena *a, uint32_t slot, uint32_t owner)
{
    OBJECT_OP(a, slot, NTS_SYNC_MUTEX, {
        check_holder(a, slot);
        if (!o->state.mutex.count || o->state.mutex.owner != owner)
            err_ = EPERM;
        else
            abandon(a, slot);
    });
}

int nts_sync_mutex_read(nts_arena *a, uint32_t slot, uint32_t *owner, uint32_t *count, int *abandoned)
{
    struct obj *fo = fast_obj(a, slot, NTS_SYNC_MUTEX);
    uint64_t w = fo ? load64(&fo->word) : W_SLOW;
    if (!(w & W_SLOW) && (!W_COUNT(w) || word_holder_alive(a, w))) {
        *owner = W_COUNT(w) ? READ_ONCE(a->t[W_TI(w)].tid) : 0;
        *count = W_COUNT(w);
        *abandoned = 0; /* (an abandoned mutex stays slow until taken) */
        return 0;
    }
    OBJECT_OP(a, slot, NTS_SYNC_MUTEX, {
        check_holder(a, slot);
        *owner = o->state.mutex.owner;
        *count = o->state.mutex.count;
        *abandoned = (int)o->abandoned;
    });
}

static NOINLINE int lock_release_locked(nts_arena *a, uint32_t slot, int leave_abandoned)
{
    OBJECT_OP(a, slot, NTS_SYNC_LOCK, {
        check_holder(a, slot);
        if (!o->state.mutex.count) {
            err_ = EPERM;
        } else if (leave_abandoned) {
            abandon(a, slot);
        } else {
            o->state.mutex.count = 0;
            drop_holder(a, o);
            try_wake(a, slot);
        }
    });
}

int nts_sync_lock_release(nts_arena *a, uint32_t slot, int leave_abandoned)
{
    /* Anyone may release a lock: held in its word, it is released there. */
    struct obj *fo = leave_abandoned ? NULL : fast_obj(a, slot, NTS_SYNC_LOCK);
    for (uint64_t w = fo ? load64(&fo->word) : W_SLOW; !(w & W_SLOW);) {
        if (!W_COUNT(w))
            return EPERM;
        if (cas64(&fo->word, &w, 0))
            return 0;
    }
    return lock_release_locked(a, slot, leave_abandoned);
}

int nts_sync_lock_read(nts_arena *a, uint32_t slot, int *locked, int *abandoned)
{
    struct obj *fo = fast_obj(a, slot, NTS_SYNC_LOCK);
    uint64_t w = fo ? load64(&fo->word) : W_SLOW;
    if (!(w & W_SLOW) && (!W_COUNT(w) || word_holder_alive(a, w))) {
        *locked = W_COUNT(w) != 0;
        *abandoned = 0;
        return 0;
    }
    OBJECT_OP(a, slot, NTS_SYNC_LOCK, {
        check_holder(a, slot);
        *locked = o->state.mutex.count != 0;
        *abandoned = (int)o->abandoned;
    });
}

static NOINLINE int event_op_locked(nts_arena *a, uint32_t slot, int op, int *prev)
{
    OBJECT_OP(a, slot, NTS_SYNC_EVENT, {
        *prev = o->state.event.signaled != 0;
        o->state.event.signaled = op != NTS_SYNC_EVENT_RESET;
        if (op != NTS_SYNC_EVENT_RESET)
            try_wake(a, slot);
        if (op == NTS_SYNC_EVENT_PULSE)
            o->state.event.signaled = 0;
    });
}

int nts_sync_event_op(nts_arena *a, uint32_t slot, int op, int *prev)
{
    /* Nobody waits while the word holds the state: a pulse leaves it unsignaled. */
    struct obj *fo = fast_obj(a, slot, NTS_SYNC_EVENT);
    for (uint64_t w = fo ? load64(&fo->word) : W_SLOW; !(w & W_SLOW);)
        if (cas64(&fo->word, &w, op == NTS_SYNC_EVENT_SET)) {
            *prev = (int)(w & 1);
            return 0;
        }
    return event_op_locked(a, slot, op, prev);
}

int nts_sync_event_read(nts_arena *a, uint32_t slot, int *manual, int *signaled)
{
    struct obj *fo = fast_obj(a, slot, NTS_SYNC_EVENT);
    uint64_t w = fo ? load64(&fo->word) : W_SLOW;
    if (!(w & W_SLOW)) {
        *manual = READ_ONCE(fo->state.event.manual) != 0;
        *signaled = (int)(w & 1);
        return 0;
    }
    OBJECT_OP(a, slot, NTS_SYNC_EVENT, {
        *manual = o->state.event.manual != 0;
        *signaled = o->state.event.signaled != 0;
    });
}

/* Acquire now if possible: the lowest signaled index (wait-any), everything
 * (wait-all), else the alert.  Lock held.  1 when acquired, *index set. */
static int try_now(nts_arena *a, uint32_t ti, const uint32_t *slots, uint32_t count, int all, uint32_t alert,
                   uint32_t *index)
{
    struct thr *t = &a->t[ti];
    if (all) {
        uint32_t i = 0;
        while (i < count && is_signaled(&a->o[slots[i]], t->owner))
            i++;
        if (i == count) {
            for (i = 0; i < count; i++)
                acquire(a, ti, slots[i]);
            *index = 0;
            return 1;
        }
    } else {
        for (uint32_t i = 0; i < count; i++)
            if (is_signaled(&a->o[slots[i]], t->owner)) {
                acquire(a, ti, slots[i]);
                *index = i;
                return 1;
            }
    }
    if (alert && is_signaled(&a->o[alert], t->owner)) {
        acquire(a, ti, alert);
        *index = count;
        return 1;
    }
    return 0;
}

/* Add to w[n..] the tokens of the holders, in other processes than `proc`, of the
 * mutexes and locks among `slots` (a waiter wakes at once when one dies); *partial set
 * when some did not fit.  The new n, or 0 if a holder died since we looked (the
 * kernel's wake-up is spent: look again).  Lock held. */
static size_t watch_holders(nts_arena *a, uint32_t proc, const uint32_t *slots, uint32_t count,
                            struct nts_futex_waitv *w, size_t n, int *partial)
{
    for (uint32_t i = 0; i < count; i++) {
        struct obj *o = &a->o[slots[i]];
        if (!is_held(o) || !o->holder)
            continue;
        struct thr *h = &a->t[thr_index(a, READ_ONCE(o->holder))];
        if (h->proc == proc)
            continue;
        if (n == NTS_FUTEX_WAITV_MAX) {
            *partial = 1;
            break;
        }
        uint32_t *word = token_word(h);
        /* The kernel wakes a token's waiters at its owner's death only if
         * FUTEX_WAITERS is set; setting it is harmless to glibc. */
        uint32_t v = __atomic_fetch_or(word, FUTEX_WAITERS, __ATOMIC_ACQ_REL) | FUTEX_WAITERS;
        if (v & FUTEX_OWNER_DIED)
            return 0;
        w[n++] = (struct nts_futex_waitv){v, (uintptr_t)word, NTS_FUTEX2_SIZE_U32, 0};
    }
    return n;
}

/* The futex words a waiter sleeps on: its own, its poke word, this process's damage
 * word, and the tokens of the holders of what it waits for.  0: look again.  Lock held. */
static size_t watch_set(nts_arena *a, uint32_t ti, const uint32_t *slots, uint32_t count, struct nts_futex_waitv *w)
{
    struct thr *t = &a->t[ti];
    size_t n = 0;
    int partial = 0; /* (cannot happen: see the assertion below) */
    w[n++] = (struct nts_futex_waitv){WAITING, (uintptr_t)&t->signaled, NTS_FUTEX2_SIZE_U32, 0};
    w[n++] = (struct nts_futex_waitv){load(&t->poke), (uintptr_t)&t->poke, NTS_FUTEX2_SIZE_U32, 0};
    w[n++] = (struct nts_futex_waitv){0, (uintptr_t)&g_damaged, NTS_FUTEX2_SIZE_U32 | NTS_FUTEX2_PRIVATE, 0};
    return watch_holders(a, t->proc, slots, count, w, n, &partial);
}
_Static_assert(3 + NTS_SYNC_MAX_WAIT <= NTS_FUTEX_WAITV_MAX, "a thread's wait watches every holder");

/* Whether waiter t may spin now: a place among the spinners, taken.  (The count is
 * shared memory: a value past any real count only means no spinning, never damage.) */
static int may_spin(nts_arena *a, struct thr *t)
{
    uint32_t n = load(&a->h->spinners);
    while (n < g_max_spinners)
        if (__atomic_compare_exchange_n(&a->h->spinners, &n, n + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            store(&t->spinning, 1);
            return 1;
        }
    return 0;
}

static void stop_spinning(nts_arena *a, struct thr *t)
{
    if (!__atomic_exchange_n(&t->spinning, 0, __ATOMIC_ACQ_REL))
        return;
    uint32_t n = load(&a->h->spinners);
    while (n && !__atomic_compare_exchange_n(&a->h->spinners, &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
}

/* The anchor, if one of the objects is a lock (a look without the lock: the kinds of
 * the objects we reference do not change, and valid() checks the slots later). */
static int anchor_for(nts_arena *a, const uint32_t *slots, uint32_t count, uint32_t *anchor_ti)
{
    *anchor_ti = 0;
    for (uint32_t i = 0; i < count; i++)
        if (slots[i] >= 1 && slots[i] <= NOBJ && a->my_count[slots[i]] &&
            READ_ONCE(a->o[slots[i]].kind) == NTS_SYNC_LOCK)
            return anchor(a, anchor_ti);
    return 0;
}

/* Check a wait's objects and note the wait in waiter ti's block.  Lock held. */
static int prepare(nts_arena *a, uint32_t ti, const uint32_t *slots, uint32_t count, int all, uint32_t owner,
                   uint32_t alert, uint32_t anchor_ti)
{
    int err = 0;
    for (uint32_t i = 0; i < count && !err; i++)
        err = valid(a, slots[i], 0);
    if (!err && alert)
        err = valid(a, alert, NTS_SYNC_EVENT);
    if (err)
        return err;
    for (uint32_t i = 0; i < count; i++)
        check_holder(a, slots[i]);
    struct thr *t = &a->t[ti];
    t->owner = owner;
    t->all = all;
    t->count = count;
    t->alert = alert;
    t->abandoned = 0;
    t->anchor = anchor_ti;
    return 0;
}

/* Queue waiter ti: one entry per object (and the alert), each holding a reference so
 * that closing the last handle during the wait frees nothing under it.  Lock held. */
static void enqueue(nts_arena *a, uint32_t ti, const uint32_t *slots, uint32_t count, int all, uint32_t alert)
{
    struct thr *t = &a->t[ti];
    store(&t->signaled, WAITING);
    t->queued = 1;
    for (uint32_t i = 0; i < count + (alert != 0) && !damaged(); i++) {
        uint32_t oi = i < count ? slots[i] : alert;
        t->e[i].obj = oi;
        link_entry(a, oi, all && i < count, entry_id(ti, i));
        a->o[oi].refs++;
    }
}

/* What a satisfied waiter's block says it took: 0, or EUCLEAN when the index, which came
 * through shared memory, names nothing it waited for. */
static int outcome(nts_arena *a, uint32_t ti, uint32_t *index, int *abandoned)
{
    struct thr *t = &a->t[ti];
    uint32_t count = READ_ONCE(t->count), alert = READ_ONCE(t->alert);
    *index = load(&t->signaled);
    *abandoned = (int)t->abandoned;
    if (t->all ? *index != 0 && !(alert && *index == count) : *index > count || (*index == count && !alert))
        return damage(BAD_COUNT);
    return damaged() ? EUCLEAN : 0;
}

/* The wait through the arena's lock: acquire now, or queue, spin, sleep.  Kept out of
 * nts_sync_wait, whose lock-free part then needs no large frame (the futex_waitv array). */
static NOINLINE int wait_locked(nts_arena *a, const uint32_t *slots, uint32_t count, int all,
                                const struct timespec *deadline, uint32_t owner, uint32_t alert, uint32_t *index,
                                int *abandoned)
{
    uint32_t ti, anchor_ti;
    int err = anchor_for(a, slots, count, &anchor_ti);
    if (err || (err = self_thread(a, &ti)) || (err = begin(a)))
        return err;
    struct thr *t = &a->t[ti];
    if (!t->in_use || t->proc != a->proc || t->gen != tls_gen)
        err = damage(SWEPT);
    if (err || (err = prepare(a, ti, slots, count, all, owner, alert, anchor_ti)))
        return done(a, err);
    if (try_now(a, ti, slots, count, all, alert, index)) {
        *abandoned = (int)t->abandoned;
        return done(a, 0);
    }
    if (deadline) { /* (the clock is read under the lock only when a deadline needs it) */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec))
            return done(a, ETIMEDOUT);
    }
    enqueue(a, ti, slots, count, all, alert);
    for (unsigned spin = g_spins.queued;; spin = 0) {
        struct nts_futex_waitv w[NTS_FUTEX_WAITV_MAX];
        size_t n = watch_set(a, ti, slots, count, w);
        if ((err = done(a, 0)))
            return err;
        if (spin && may_spin(a, t)) {
            for (unsigned i = 0; i < spin && load(&t->signaled) == WAITING; i++)
                nts_cpu_relax();
            stop_spinning(a, t);
        }
        if (load(&t->signaled) != WAITING)
            break;
        __atomic_store_n(&t->sleeping, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        long r = n ? syscall(SYS_futex_waitv, w, n, 0, deadline, CLOCK_MONOTONIC) : -1;
        __atomic_store_n(&t->sleeping, 0, __ATOMIC_RELAXED);
        int why = n == 0 ? EAGAIN : r < 0 ? errno : 0;
        if (why == EFAULT)
            damage("a futex word of the arena could not be read");
        if (damaged())
            return EUCLEAN; /* this process left the arena: the others reclaim the wait */
        if (load(&t->signaled) != WAITING)
            break; /* handed over: the signaller did everything */
        if ((err = arena_lock(a)))
            return err;
        if (load(&t->signaled) != WAITING) {
            arena_unlock(a);
            break;
        }
        if (why && why != EAGAIN) { /* ETIMEDOUT, EINTR, or a failure: nothing acquired */
            dequeue(a, ti);
            return done(a, why);
        }
        for (uint32_t i = 0; i < count; i++)
            check_holder(a, slots[i]);
        if (load(&t->signaled) != WAITING) {
            arena_unlock(a);
            break;
        }
    }
    return outcome(a, ti, index, abandoned);
}

/* A poll: a deadline at the clock's start (NULL: none). */
static int is_poll(const struct timespec *deadline) { return deadline && !deadline->tv_sec && !deadline->tv_nsec; }

/* A single-object wait on a lock or a mutex, lock-free: one attempt, then the look as
 * look_unowned makes it.  What take_owned says of the last attempt. */
static int wait_owned_fast(nts_arena *a, uint32_t slot, uint32_t kind, uint32_t owner, int poll)
{
    struct owned f;
    if (owned_begin(a, slot, kind, owner, &f))
        return FAST_LOCKED;
    uint64_t w = load64(&f.o->word);
    int got = take_owned(&f, &w);
    for (unsigned i = 0; i < (poll ? 0 : g_spins.look) && got != FAST_DONE && !(w & W_SLOW); i++) {
        nts_cpu_relax();
        w = load64(&f.o->word);
        got = take_owned(&f, &w); /* (no swap unless the word says it can be taken) */
    }
    return got;
}

/* A single-object wait past nts_sync_wait_one's lock-free part (`tried`: what that said
 * of a semaphore or an event, or FAST_UNTRIED for the other kinds, whose lock-free part
 * is here), then through the lock. */
static NOINLINE int wait_one(nts_arena *a, uint32_t slot, const struct timespec *deadline, uint32_t owner,
                             int *abandoned, int tried)
{
    if (!owner)
        return EINVAL;
    int fast = tried;
    if (tried == FAST_UNTRIED) {
        uint32_t kind = fast_kind(a, slot);
        fast = is_owned_kind(kind) ? wait_owned_fast(a, slot, kind, owner, is_poll(deadline)) : FAST_LOCKED;
    }
    if (fast == FAST_DONE) {
        *abandoned = 0;
        return 0;
    }
    uint32_t index; /* (a poll of a lock or mutex: the locked path finds the deadline passed) */
    return wait_locked(a, &slot, 1, 0, deadline, owner, 0, &index, abandoned);
}

/* The look: a semaphore or an event that a wait (not a poll) found unsignaled is watched
 * (unless the object is queued on) for NTS_SYNC_WORD_SPIN_NS before the
 * waiter queues, and taken lock-free if it is signaled meanwhile.  The other side of a
 * ping-pong answers within a few hundred nanoseconds, and then neither side takes the
 * arena's lock: the answer is a lock-free set or release (nobody is queued) that wakes
 * nobody.  Nobody is overtaken: the word goes slow (W_SLOW) as soon as anyone queues, and
 * the look then ends, to queue behind them.  Like the spin for the arena's lock, the look
 * is short and needs no place among the spinners; the long spin, once queued, does.  Each
 * read follows a pause (a read takes the line from whoever holds the object).  A function
 * of its own, which keeps everything in registers. */
static NOINLINE int look_unowned(nts_arena *a, uint32_t slot, const struct timespec *deadline, uint32_t owner,
                                 int *abandoned, uint32_t kind)
{
    struct obj *o = &a->o[slot];
    int got = FAST_NOT_SIGNALED;
    for (unsigned i = 0; i < g_spins.look && got == FAST_NOT_SIGNALED; i++) {
        nts_cpu_relax();
        uint64_t w = load64(&o->word);
        got = take_unowned(o, kind, &w);
    }
    if (got == FAST_DONE) {
        *abandoned = 0;
        return 0;
    }
    return wait_one(a, slot, deadline, owner, abandoned, got);
}

/* A semaphore or an event is waited for here up to the end of the look, without a stack
 * frame, reading nothing on the object's line but its word: in a race for the object, the
 * span between one side's release and its next acquisition is when the other side's look
 * takes the line away, and in a ping-pong every answer waits for the path from a look's
 * hit back to the caller; both are kept to a few instructions. */
int nts_sync_wait_one(nts_arena *a, uint32_t slot, const struct timespec *deadline, uint32_t owner, int *abandoned)
{
    uint32_t kind = fast_kind(a, slot);
    int tried = FAST_UNTRIED;
    if ((kind == NTS_SYNC_SEMAPHORE || kind == NTS_SYNC_EVENT) && owner) {
        uint64_t w = load64(&a->o[slot].word);
        if ((tried = take_unowned(&a->o[slot], kind, &w)) == FAST_DONE) {
            *abandoned = 0;
            return 0;
        }
        if (tried == FAST_NOT_SIGNALED) /* (a poll is answered: no look, no lock) */
            return is_poll(deadline) ? ETIMEDOUT : look_unowned(a, slot, deadline, owner, abandoned, kind);
    }
    return wait_one(a, slot, deadline, owner, abandoned, tried);
}

int nts_sync_wait(nts_arena *a, const uint32_t *slots, uint32_t count, int all, const struct timespec *deadline,
                  uint32_t owner, uint32_t alert, uint32_t *index, int *abandoned)
{
    if (count > NTS_SYNC_MAX_WAIT || !owner)
        return EINVAL;
    if (count == 1 && !all && !alert) {
        int err = nts_sync_wait_one(a, slots[0], deadline, owner, abandoned);
        if (!err)
            *index = 0;
        return err;
    }
    return wait_locked(a, slots, count, all, deadline, owner, alert, index, abandoned);
}

/* ---------------------------------------------------------------- requests */

/* A request is a wait nobody sleeps in: a wait block of its own, made by a thread that
 * holds its token (so that what the request acquires is held as that thread's would be),
 * queued and served exactly as a thread's wait, whose hand-over rings its maker's poke
 * word.  The maker sleeps on that one word for all its requests, and collects them. */

/* Whether req is a request block of ours, still ours.  Lock held. */
static int valid_request(nts_arena *a, uint32_t req)
{
    if (req < 1 || req > NTHR || !a->my_req[req])
        return EBADF;
    struct thr *t = &a->t[req];
    if (req > thr_hw(a) || !t->in_use || t->proc != a->proc || t->gen != a->req_gen[req])
        return damage(SWEPT);
    return 0;
}

int nts_sync_request_new(nts_arena *a, uint32_t *req)
{
    uint32_t maker;
    int err = self_thread(a, &maker);
    if (err || (err = begin(a)))
        return err;
    uint32_t ri = alloc_entry(a, take_thr, &err);
    if (ri && !(err = claim_block(a, ri, maker))) {
        a->my_req[ri] = 1;
        a->req_gen[ri] = a->t[ri].gen;
        *req = ri;
    }
    return done(a, err);
}

int nts_sync_request_start(nts_arena *a, uint32_t req, const uint32_t *slots, uint32_t count, int all, uint32_t owner,
                           uint32_t alert, int *now, uint32_t *index, int *abandoned)
{
    if (count > NTS_SYNC_MAX_WAIT || !owner)
        return EINVAL;
    uint32_t anchor_ti;
    int err = anchor_for(a, slots, count, &anchor_ti);
    if (err || (err = begin(a)))
        return err;
    if (!(err = valid_request(a, req)) && a->t[req].queued)
        err = EBUSY;
    if (err || (err = prepare(a, req, slots, count, all, owner, alert, anchor_ti)))
        return done(a, err);
    *now = try_now(a, req, slots, count, all, alert, index);
    if (*now)
        *abandoned = (int)a->t[req].abandoned;
    else
        enqueue(a, req, slots, count, all, alert);
    return done(a, 0);
}

int nts_sync_request_ready(nts_arena *a, uint32_t req)
{
    return req >= 1 && req <= NTHR && a->my_req[req] && load(&a->t[req].signaled) != WAITING;
}

int nts_sync_request_end(nts_arena *a, uint32_t req, int *acquired, uint32_t *index, int *abandoned)
{
    int err = begin(a);
    if (err)
        return err;
    if ((err = valid_request(a, req)))
        return done(a, err);
    *acquired = load(&a->t[req].signaled) != WAITING;
    if (*acquired)
        err = outcome(a, req, index, abandoned);
    else
        dequeue(a, req);
    return done(a, err);
}

/* The doorbell: a private word the request thread sleeps on beside its requests. */
static uint32_t g_bell;

uint32_t nts_sync_bell(void) { return load(&g_bell); }

void nts_sync_ring(void)
{
    __atomic_add_fetch(&g_bell, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &g_bell, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

int nts_sync_request_sleep(nts_arena *a, const uint32_t *reqs, uint32_t n, const struct timespec *deadline,
                           uint32_t bell)
{
    uint32_t maker;
    int err = self_thread(a, &maker);
    if (err || (err = begin(a)))
        return err;
    struct nts_futex_waitv w[NTS_FUTEX_WAITV_MAX];
    size_t k = 0;
    int ready = 0, partial = 0;
    w[k++] = (struct nts_futex_waitv){bell, (uintptr_t)&g_bell, NTS_FUTEX2_SIZE_U32 | NTS_FUTEX2_PRIVATE, 0};
    w[k++] = (struct nts_futex_waitv){0, (uintptr_t)&g_damaged, NTS_FUTEX2_SIZE_U32 | NTS_FUTEX2_PRIVATE, 0};
    w[k++] = (struct nts_futex_waitv){load(&a->t[maker].poke), (uintptr_t)&a->t[maker].poke, NTS_FUTEX2_SIZE_U32, 0};
    for (uint32_t i = 0; i < n && !err && !ready; i++) {
        if ((err = valid_request(a, reqs[i])))
            break;
        struct thr *t = &a->t[reqs[i]];
        if (t->notify != maker) {
            err = EINVAL; /* another thread's request: its hand-over rings that thread */
            break;
        }
        if (load(&t->signaled) != WAITING) {
            ready = 1;
            break;
        }
        uint32_t count = READ_ONCE(t->count), objs[NTS_SYNC_MAX_WAIT];
        if (count > NTS_SYNC_MAX_WAIT) {
            err = damage(BAD_COUNT);
            break;
        }
        for (uint32_t j = 0; j < count; j++)
            check_holder(a, objs[j] = obj_index(a, READ_ONCE(t->e[j].obj)));
        size_t more = load(&t->signaled) == WAITING ? watch_holders(a, t->proc, objs, count, w, k, &partial) : 0;
        ready = more == 0; /* satisfied, or a holder died as we looked: the caller looks again */
        k = more;
    }
    if (err || ready || damaged())
        return done(a, err);
    if ((err = done(a, 0)))
        return err;
    /* Every holder that did not fit is looked at again after the patience a lock waiter has. */
    struct timespec patience;
    const struct timespec *until = deadline;
    if (partial) {
        clock_gettime(CLOCK_MONOTONIC, &patience);
        patience.tv_nsec += LOCK_PATIENCE_NS;
        patience.tv_sec += patience.tv_nsec / 1000000000;
        patience.tv_nsec %= 1000000000;
        if (!deadline || patience.tv_sec < deadline->tv_sec ||
            (patience.tv_sec == deadline->tv_sec && patience.tv_nsec < deadline->tv_nsec))
            until = &patience;
    }
    long r = syscall(SYS_futex_waitv, w, k, 0, until, CLOCK_MONOTONIC);
    int why = r < 0 ? errno : 0;
    if (why == EFAULT)
        damage("a futex word of the arena could not be read");
    if (damaged())
        return EUCLEAN;
    return why == EAGAIN || (why == ETIMEDOUT && until != deadline) ? 0 : why;
}

size_t nts_sync_arena_size(void) { return ARENA_SIZE; }

void nts_sync_usage(nts_arena *a, uint32_t used[4], uint32_t capacity[4], uint32_t *tids, size_t *ntids)
{
    size_t max_tids = *ntids;
    *ntids = 0;
    memset(used, 0, 4 * sizeof *used);
    capacity[0] = NOBJ;
    capacity[1] = NTHR;
    capacity[2] = NREF;
    capacity[3] = NPROC;
    if (begin(a))
        return;
    uint32_t objs = obj_hw(a), thrs = thr_hw(a), refs = ref_hw(a), procs = proc_hw(a);
    for (uint32_t i = 1; i <= objs; i++)
        used[0] += a->o[i].kind != 0;
    for (uint32_t i = 1; i <= thrs; i++) {
        used[1] += a->t[i].in_use != 0;
        if (a->t[i].in_use && a->t[i].proc == a->proc && *ntids < max_tids)
            tids[(*ntids)++] = a->t[i].tid;
    }
    for (uint32_t i = 1; i <= refs; i++)
        used[2] += a->r[i].proc != 0;
    for (uint32_t i = 1; i <= procs; i++)
        used[3] += a->p[i].in_use != 0;
    done(a, 0);
}
