/* NT synchronization objects in shared memory (the `futex` sync backend).
 *
 * One arena file per user (the Python layer creates and opens it) holds every
 * object, every waiting thread's wait block and the name table; each process maps
 * it MAP_SHARED.  The algorithm is the ntsync driver's, moved to user space:
 *
 * - All object state changes under one robust, process-shared lock (a process
 *   that dies holding it costs its successor a pthread_mutex_consistent, not a
 *   deadlock).  With a single lock wait-all is atomic by construction.
 * - A waiter queues one entry per object (wait-all entries and wait-any entries
 *   in separate FIFO lists), then sleeps with futex_waitv on its `signaled` word.
 *   A signaller that can satisfy a waiter acquires the object(s) on its behalf,
 *   unlinks it, stores the index into `signaled` and wakes it: hand-off, so state
 *   read right after a release already shows the waiter's acquisition, a pulse
 *   reaches exactly the current waiters, and a woken waiter never takes the lock.
 * - Abandonment: each thread that waits or owns holds a robust process-shared
 *   pthread mutex, its "token", for its whole life.  glibc puts it on the
 *   thread's robust list, so when the thread dies the kernel marks the token
 *   FUTEX_OWNER_DIED and wakes a waiter of it.  A mutex records the thread block
 *   that acquired it; waiters in other processes add the holder's token to their
 *   futex_waitv set and wake at once when the holder dies.  A thread that exits
 *   normally abandons its mutexes in a pthread key destructor.
 * - Lifetime: each process records its references in the arena; an object goes
 *   with its last reference, and a dead process's references, wait blocks and
 *   mutexes are reclaimed by the next process that registers (or finds the arena
 *   full).  fork passes the parent's references to the child atomically.
 *
 * Entry points return 0 or an errno and never touch Python: they may be called
 * without the GIL, by native loops too. */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
struct nts_futex_waitv {
    uint64_t val, uaddr;
    uint32_t flags, reserved;
};
#define NTS_FUTEX2_SIZE_U32 0x02
#define NTS_FUTEX_WAITV_MAX 128

#define MAGIC 0x4e545359u /* "NTSY" */
#define VERSION 1u
#define NOBJ 16384u  /* objects */
#define NTHR 4096u   /* threads that wait or own mutexes, at once */
#define NREF 65536u  /* (process, object) references */
#define NPROC 1024u  /* processes attached at once */
#define NNAME 32768u /* name table slots: a power of two, twice NOBJ */
#define NQ (NTS_SYNC_MAX_WAIT + 1) /* entries per waiter: objects and the alert */
#define WAITING 0xFFFFFFFFu

struct obj {
    uint32_t kind, gen, refs, name;
    uint32_t x, y;                /* sem: count, max; mutex: owner, count; event: manual, signaled */
    uint32_t abandoned, holder, holder_gen;
    uint32_t any_head, any_tail, all_head, all_tail;
    uint32_t next_free, pad[2];
};

struct entry {
    uint32_t obj, prev, next, linked;
};

struct thr {
    pthread_mutex_t token; /* held by the thread for its life: its death is visible in the word */
    uint32_t gen, in_use, proc, tid;
    uint32_t signaled;     /* futex: WAITING, or the index handed over */
    uint32_t poke;         /* futex: bumped when a mutex we wait for changes holder */
    uint32_t sleeping;     /* in futex_waitv (else spinning or running): whether a hand-off must wake */
    uint32_t owner, all, count, alert, abandoned, held, queued, next_free;
    struct entry e[NQ];
};

struct ref {
    uint32_t proc, obj, count, next_free;
};

struct proc {
    uint32_t pid, in_use;
    uint64_t start; /* /proc/<pid>/stat starttime: a reused pid is another process */
};

struct name {
    uint32_t obj, hash, len;
    char bytes[NTS_SYNC_MAX_NAME];
};

struct header {
    uint32_t magic, version;
    uint64_t size;
    pthread_mutex_t lock;
    uint32_t obj_hw, obj_free, thr_hw, thr_free, ref_hw, ref_free, proc_hw;
};

#define ROUND(x) (((x) + 4095) & ~(size_t)4095)
#define OFF_OBJ ROUND(sizeof(struct header))
#define OFF_THR (OFF_OBJ + ROUND(sizeof(struct obj) * (NOBJ + 1)))
#define OFF_REF (OFF_THR + ROUND(sizeof(struct thr) * (NTHR + 1)))
#define OFF_PROC (OFF_REF + ROUND(sizeof(struct ref) * (NREF + 1)))
#define OFF_NAME (OFF_PROC + ROUND(sizeof(struct proc) * (NPROC + 1)))
#define ARENA_SIZE (OFF_NAME + ROUND(sizeof(struct name) * NNAME))

/* This process's view.  Indexes into the tables are 1-based; 0 means none. */
struct nts_arena {
    char *base;
    struct header *h;
    struct obj *o;
    struct thr *t;
    struct ref *r;
    struct proc *p;
    struct name *n;
    pid_t pid;            /* the process `proc` was registered for (fork changes getpid) */
    uint32_t proc;
    uint32_t my_rec[NOBJ + 1];   /* our reference record per object */
    uint32_t my_count[NOBJ + 1]; /* our references per object (private: fork copies it exactly) */
    uint32_t *inflight;          /* records prepared for a child during fork */
    size_t ninflight;
};

static nts_arena *g_arena;
/* getpid() is a system call in glibc; the fork handler keeps this current instead
 * (a child made by a raw clone() without fork handlers must not use the arena). */
static pid_t g_pid;
static __thread uint32_t tls_thr;
static __thread pid_t tls_pid;
static pthread_key_t g_thread_key;
/* How long a waiter spins before sleeping, when there is another CPU for the
 * signaller to run on: a contended hand-off then costs a cache-line transfer, not
 * two context switches. */
static unsigned g_spin;

/* ---------------------------------------------------------------- futexes */

static long futex_wake(uint32_t *word, int n) { return syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0); }

static uint32_t load(const uint32_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
static void store(uint32_t *word, uint32_t v) { __atomic_store_n(word, v, __ATOMIC_RELEASE); }

/* The glibc robust mutex keeps its futex word (owner TID and flags) first. */
static uint32_t *token_word(struct thr *t) { return (uint32_t *)&t->token; }

static int token_dead(struct thr *t) {
    uint32_t w = load(token_word(t));
    return (w & FUTEX_OWNER_DIED) || (w & FUTEX_TID_MASK) == 0;
}

/* ---------------------------------------------------------------- lock */

static void gc_dead_processes(nts_arena *a);

static void arena_lock(nts_arena *a) {
    int err = pthread_mutex_lock(&a->h->lock);
    if (err == EOWNERDEAD) {
        /* A process died inside a critical section.  Every step below leaves the
         * tables walkable, so carry on, and reclaim what the dead left behind. */
        pthread_mutex_consistent(&a->h->lock);
        gc_dead_processes(a);
    }
}

static void arena_unlock(nts_arena *a) { pthread_mutex_unlock(&a->h->lock); }

static int init_robust_shared(pthread_mutex_t *m) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    int err = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return err;
}

/* ---------------------------------------------------------------- processes */

static uint64_t process_start(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    /* Field 22; the command name (field 2) may contain spaces, so count from its ')'. */
    char *s = strrchr(buf, ')');
    if (!s)
        return 0;
    for (int field = 2; field < 22 && s; field++)
        s = strchr(s + 1, ' ');
    return s ? strtoull(s + 1, NULL, 10) : 0;
}

static int process_dead(struct proc *p) {
    if (kill((pid_t)p->pid, 0) < 0 && errno == ESRCH)
        return 1;
    return process_start((pid_t)p->pid) != p->start;
}

/* ---------------------------------------------------------------- objects */

static struct thr *thr_at(nts_arena *a, uint32_t i) { return &a->t[i]; }
static struct entry *entry_at(nts_arena *a, uint32_t id) { return &a->t[(id - 1) / NQ + 1].e[(id - 1) % NQ]; }
static uint32_t entry_id(uint32_t thr, uint32_t i) { return (thr - 1) * NQ + i + 1; }

static uint32_t name_hash(const char *s, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h | 1; /* never 0 */
}

static uint32_t name_find(nts_arena *a, const char *s, size_t len, uint32_t hash) {
    for (uint32_t i = hash & (NNAME - 1);; i = (i + 1) & (NNAME - 1)) {
        struct name *n = &a->n[i];
        if (!n->obj)
            return 0;
        if (n->hash == hash && n->len == len && !memcmp(n->bytes, s, len))
            return i + 1;
    }
}

static uint32_t name_insert(nts_arena *a, const char *s, size_t len, uint32_t hash, uint32_t obj) {
    uint32_t i = hash & (NNAME - 1);
    while (a->n[i].obj)
        i = (i + 1) & (NNAME - 1);
    a->n[i].hash = hash;
    a->n[i].len = (uint32_t)len;
    memcpy(a->n[i].bytes, s, len);
    a->n[i].obj = obj;
    return i + 1;
}

/* Linear-probing delete without tombstones: move later members of the cluster back. */
static void name_remove(nts_arena *a, uint32_t slot) {
    uint32_t hole = slot - 1;
    a->n[hole].obj = 0;
    for (uint32_t i = (hole + 1) & (NNAME - 1); a->n[i].obj; i = (i + 1) & (NNAME - 1)) {
        uint32_t home = a->n[i].hash & (NNAME - 1);
        /* Move i into the hole unless its home lies cyclically in (hole, i]. */
        int stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (!stays) {
            a->n[hole] = a->n[i];
            a->o[a->n[hole].obj].name = hole + 1;
            a->n[i].obj = 0;
            hole = i;
        }
    }
}

static void obj_free(nts_arena *a, uint32_t i) {
    struct obj *o = &a->o[i];
    if (o->name)
        name_remove(a, o->name);
    o->name = 0;
    o->kind = 0;
    o->gen++;
    o->next_free = a->h->obj_free;
    a->h->obj_free = i;
}

static void obj_unref(nts_arena *a, uint32_t i) {
    if (--a->o[i].refs == 0)
        obj_free(a, i);
}

static int is_signaled(struct obj *o, uint32_t owner) {
    switch (o->kind) {
    case NTS_SYNC_SEMAPHORE:
        return o->x > 0;
    case NTS_SYNC_MUTEX:
        return o->y == 0 || (o->x == owner && o->y < UINT32_MAX);
    default:
        return o->y != 0;
    }
}

static void link_entry(nts_arena *a, uint32_t *head, uint32_t *tail, uint32_t id) {
    struct entry *e = entry_at(a, id);
    e->prev = *tail;
    e->next = 0;
    if (*tail)
        entry_at(a, *tail)->next = id;
    else
        *head = id;
    *tail = id;
    e->linked = 1;
}

static void unlink_entry(nts_arena *a, uint32_t *head, uint32_t *tail, uint32_t id) {
    struct entry *e = entry_at(a, id);
    if (e->prev)
        entry_at(a, e->prev)->next = e->next;
    else
        *head = e->next;
    if (e->next)
        entry_at(a, e->next)->prev = e->prev;
    else
        *tail = e->prev;
    e->linked = 0;
}

/* Take the waiter off every queue, dropping the references its wait held. */
static void dequeue(nts_arena *a, uint32_t ti) {
    struct thr *t = thr_at(a, ti);
    if (!t->queued)
        return;
    for (uint32_t i = 0; i < t->count + (t->alert != 0); i++) {
        struct entry *e = &t->e[i];
        struct obj *o = &a->o[e->obj];
        if (!e->linked)
            continue;
        int in_all = t->all && i < t->count;
        unlink_entry(a, in_all ? &o->all_head : &o->any_head, in_all ? &o->all_tail : &o->any_tail, entry_id(ti, i));
        obj_unref(a, e->obj);
    }
    t->queued = 0;
}

static void poke(nts_arena *a, uint32_t ti) {
    struct thr *t = thr_at(a, ti);
    __atomic_add_fetch(&t->poke, 1, __ATOMIC_RELEASE);
    futex_wake(&t->poke, 1);
}

/* Waiters in other processes watch the token of a mutex's holder: tell them the
 * holder changed so they watch the new one. */
static void poke_other_processes(nts_arena *a, struct obj *o, uint32_t holder_proc) {
    for (int list = 0; list < 2; list++)
        for (uint32_t id = list ? o->all_head : o->any_head; id; id = entry_at(a, id)->next) {
            uint32_t ti = (id - 1) / NQ + 1;
            if (thr_at(a, ti)->proc != holder_proc)
                poke(a, ti);
        }
}

static void acquire(nts_arena *a, uint32_t ti, uint32_t oi) {
    struct thr *t = thr_at(a, ti);
    struct obj *o = &a->o[oi];
    switch (o->kind) {
    case NTS_SYNC_SEMAPHORE:
        o->x--;
        break;
    case NTS_SYNC_MUTEX:
        if (o->abandoned) {
            t->abandoned = 1;
            o->abandoned = 0;
        }
        o->x = t->owner;
        if (o->y++ == 0) {
            o->holder = ti;
            o->holder_gen = t->gen;
            t->held++;
            poke_other_processes(a, o, t->proc);
        }
        break;
    default:
        if (!o->x)
            o->y = 0; /* auto-reset */
    }
}

static void hand_over(nts_arena *a, uint32_t ti, uint32_t index) {
    struct thr *t = thr_at(a, ti);
    dequeue(a, ti);
    /* Store, then look whether it sleeps; the waiter says it sleeps, then futex_waitv
     * looks at the word: with full fences one of the two sees the other's store. */
    __atomic_store_n(&t->signaled, index, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&t->sleeping, __ATOMIC_SEQ_CST))
        futex_wake(&t->signaled, 1);
}

static int waiter_dead(nts_arena *a, uint32_t ti) {
    if (!token_dead(thr_at(a, ti)))
        return 0;
    /* Its process died while it waited: nothing may be handed to it. */
    dequeue(a, ti);
    return 1;
}

/* 1 if the wait-all waiter was taken off the queues (satisfied or dead). */
static int try_wake_all(nts_arena *a, uint32_t ti) {
    struct thr *t = thr_at(a, ti);
    if (waiter_dead(a, ti))
        return 1;
    for (uint32_t i = 0; i < t->count; i++)
        if (!is_signaled(&a->o[t->e[i].obj], t->owner))
            return 0;
    for (uint32_t i = 0; i < t->count; i++)
        acquire(a, ti, t->e[i].obj);
    hand_over(a, ti, 0);
    return 1;
}

/* Serve the waiters of an object that may have become signaled: wait-all waiters
 * first, then wait-any waiters in order.  Taking a waiter off the queues unlinks
 * all its entries (a wait-any may name an object twice), so a walk restarts from
 * the head after each: the waiters it passed stay unsatisfied, order is kept. */
static void try_wake(nts_arena *a, uint32_t oi) {
    struct obj *o = &a->o[oi];
    for (uint32_t id = o->all_head; id;)
        id = try_wake_all(a, (id - 1) / NQ + 1) ? o->all_head : entry_at(a, id)->next;
    for (uint32_t id = o->any_head; id;) {
        uint32_t ti = (id - 1) / NQ + 1;
        struct thr *t = thr_at(a, ti);
        if (!is_signaled(o, t->owner)) {
            if (o->kind != NTS_SYNC_MUTEX)
                break; /* nobody else can take it either */
            id = entry_at(a, id)->next; /* a mutex may still be signaled for another owner */
            continue;
        }
        if (!waiter_dead(a, ti)) {
            acquire(a, ti, oi);
            hand_over(a, ti, (id - 1) % NQ);
        }
        id = o->any_head;
    }
}

static void drop_holder(nts_arena *a, struct obj *o) {
    if (o->holder) {
        struct thr *h = thr_at(a, o->holder);
        if (h->gen == o->holder_gen && h->held)
            h->held--;
    }
    o->holder = 0;
}

static void abandon(nts_arena *a, uint32_t oi) {
    struct obj *o = &a->o[oi];
    drop_holder(a, o);
    o->x = 0;
    o->y = 0;
    o->abandoned = 1;
    try_wake(a, oi);
}

/* Abandon every mutex the thread holds. */
static void abandon_thread(nts_arena *a, uint32_t ti) {
    struct thr *t = thr_at(a, ti);
    for (uint32_t i = 1; i <= a->h->obj_hw && t->held; i++) {
        struct obj *o = &a->o[i];
        if (o->kind == NTS_SYNC_MUTEX && o->y && o->holder == ti && o->holder_gen == t->gen)
            abandon(a, i);
    }
}

/* A mutex whose holding thread is gone is abandoned before anyone looks at it. */
static void check_holder(nts_arena *a, uint32_t oi) {
    struct obj *o = &a->o[oi];
    if (o->kind != NTS_SYNC_MUTEX || !o->y || !o->holder)
        return;
    struct thr *h = thr_at(a, o->holder);
    if (h->gen != o->holder_gen) {
        abandon(a, oi);
    } else if (token_dead(h)) {
        abandon_thread(a, o->holder);
        /* The kernel woke one watcher of the token; the others must look too. */
        futex_wake(token_word(h), INT32_MAX);
    }
}

/* ---------------------------------------------------------------- reclaiming */

static void free_thread_block(nts_arena *a, uint32_t ti) {
    struct thr *t = thr_at(a, ti);
    dequeue(a, ti);
    abandon_thread(a, ti);
    t->in_use = 0;
    t->gen++;
    t->next_free = a->h->thr_free;
    a->h->thr_free = ti;
}

static void free_ref(nts_arena *a, uint32_t ri) {
    struct ref *r = &a->r[ri];
    uint32_t oi = r->obj;
    r->proc = 0;
    r->next_free = a->h->ref_free;
    a->h->ref_free = ri;
    obj_unref(a, oi);
}

static void release_process(nts_arena *a, uint32_t pi) {
    for (uint32_t i = 1; i <= a->h->thr_hw; i++)
        if (a->t[i].in_use && a->t[i].proc == pi)
            free_thread_block(a, i);
    for (uint32_t i = 1; i <= a->h->ref_hw; i++)
        if (a->r[i].proc == pi)
            free_ref(a, i);
    a->p[pi].in_use = 0;
}

static void gc_dead_processes(nts_arena *a) {
    for (uint32_t i = 1; i <= a->h->proc_hw; i++)
        if (a->p[i].in_use && i != a->proc && process_dead(&a->p[i]))
            release_process(a, i);
}

/* ---------------------------------------------------------------- allocation */

/* Pop a free index, or extend the used part of a table (its pages are touched
 * only then: the file is sparse). */
static uint32_t take(uint32_t *free_head, uint32_t *hw, uint32_t max, uint32_t *next_free_of_head) {
    if (*free_head) {
        uint32_t i = *free_head;
        *free_head = *next_free_of_head;
        return i;
    }
    return *hw < max ? ++*hw : 0;
}

#define TAKE(a, table, field, max)                                                                                    \
    take(&(a)->h->field##_free, &(a)->h->field##_hw, (max),                                                          \
         (a)->h->field##_free ? &(a)->table[(a)->h->field##_free].next_free : NULL)

static uint32_t alloc_proc(nts_arena *a) {
    for (int attempt = 0; attempt < 2; attempt++) {
        for (uint32_t i = 1; i <= a->h->proc_hw; i++)
            if (!a->p[i].in_use)
                return i;
        if (a->h->proc_hw < NPROC)
            return ++a->h->proc_hw;
        gc_dead_processes(a);
    }
    return 0;
}

static uint32_t alloc_ref(nts_arena *a) {
    uint32_t i = TAKE(a, r, ref, NREF);
    if (!i) {
        gc_dead_processes(a);
        i = TAKE(a, r, ref, NREF);
    }
    return i;
}

/* This process's registration, made on first use and again in a forked child
 * (which then adopts the references its parent prepared for it).  Lock held. */
static int register_process(nts_arena *a) {
    pid_t pid = g_pid;
    if (a->proc && a->pid == pid)
        return 0;
    uint32_t pi = alloc_proc(a);
    if (!pi)
        return EAGAIN;
    a->p[pi].pid = (uint32_t)pid;
    a->p[pi].start = process_start(pid);
    a->p[pi].in_use = 1;
    int child = a->proc != 0;
    a->proc = pi;
    a->pid = pid;
    if (child) {
        memset(a->my_rec, 0, sizeof a->my_rec);
        for (size_t k = 0; k < a->ninflight; k++) {
            struct ref *r = &a->r[a->inflight[k]];
            r->proc = pi;
            a->my_rec[r->obj] = a->inflight[k];
        }
        a->ninflight = 0;
        for (uint32_t oi = 1; oi <= a->h->obj_hw; oi++)
            if (!a->my_rec[oi])
                a->my_count[oi] = 0; /* not passed on (the arena was full): gone for us */
    }
    gc_dead_processes(a); /* a new process is a good moment to sweep */
    return 0;
}

/* One more reference of this process to object oi.  Lock held. */
static int ref_object(nts_arena *a, uint32_t oi) {
    if (!a->my_rec[oi]) {
        uint32_t ri = alloc_ref(a);
        if (!ri)
            return ENOSPC;
        a->r[ri].proc = a->proc;
        a->r[ri].obj = oi;
        a->r[ri].count = 0;
        a->my_rec[oi] = ri;
        a->o[oi].refs++;
    }
    a->r[a->my_rec[oi]].count++;
    a->my_count[oi]++;
    return 0;
}

/* ---------------------------------------------------------------- threads */

static void thread_exit(void *value) {
    nts_arena *a = g_arena;
    uint32_t ti = (uint32_t)(uintptr_t)value;
    if (!a || tls_pid != g_pid)
        return;
    struct thr *t = thr_at(a, ti);
    arena_lock(a);
    free_thread_block(a, ti);
    arena_unlock(a);
    pthread_mutex_unlock(&t->token);
}

/* The calling thread's block, taken (and its token locked) on first use. */
static int self_thread(nts_arena *a, uint32_t *out) {
    pid_t pid = g_pid;
    if (tls_thr && tls_pid == pid) {
        *out = tls_thr;
        return 0;
    }
    arena_lock(a);
    int err = register_process(a);
    uint32_t ti = 0;
    if (!err) {
        ti = TAKE(a, t, thr, NTHR);
        if (!ti) {
            gc_dead_processes(a);
            ti = TAKE(a, t, thr, NTHR);
        }
        if (!ti)
            err = EAGAIN;
        else if (ti > 0 && a->t[ti].gen == 0 && !a->t[ti].in_use && (err = init_robust_shared(&a->t[ti].token)) == 0)
            a->t[ti].gen = 1; /* first use of this block */
    }
    if (!err) {
        struct thr *t = thr_at(a, ti);
        t->in_use = 1;
        t->proc = a->proc;
        t->tid = (uint32_t)syscall(SYS_gettid);
        t->held = 0;
        t->queued = 0;
        store(&t->signaled, 0);
    }
    arena_unlock(a);
    if (err)
        return err;
    struct thr *t = thr_at(a, ti);
    int lock = pthread_mutex_lock(&t->token);
    if (lock == EOWNERDEAD) /* the block's previous thread died holding it */
        pthread_mutex_consistent(&t->token);
    tls_thr = ti;
    tls_pid = pid;
    pthread_setspecific(g_thread_key, (void *)(uintptr_t)ti);
    *out = ti;
    return 0;
}

/* ---------------------------------------------------------------- fork */

/* Before fork: give the child its own references, so that nothing the child
 * inherits can disappear before it runs (the parent may close right away). */
static void fork_prepare(void) {
    nts_arena *a = g_arena;
    if (!a || !a->proc || a->pid != g_pid)
        return;
    arena_lock(a);
    size_t n = 0;
    for (uint32_t oi = 1; oi <= a->h->obj_hw; oi++) {
        if (!a->my_count[oi])
            continue;
        uint32_t ri = alloc_ref(a);
        if (!ri)
            break; /* the child reopens nothing beyond this: its ops on those report ENOENT */
        a->r[ri].proc = a->proc; /* ours until the child adopts it; reclaimed with us otherwise */
        a->r[ri].obj = oi;
        a->r[ri].count = a->my_count[oi];
        a->o[oi].refs++;
        a->inflight[n++] = ri;
    }
    a->ninflight = n;
    arena_unlock(a);
}

static void fork_parent(void) {
    if (g_arena)
        g_arena->ninflight = 0;
}

static void fork_child(void) {
    nts_arena *a = g_arena;
    g_pid = getpid();
    tls_thr = 0; /* the parent thread's block is not ours */
    pthread_setspecific(g_thread_key, NULL);
    if (!a || !a->ninflight)
        return;
    arena_lock(a);
    register_process(a);
    arena_unlock(a);
}

/* ---------------------------------------------------------------- entry points */

int nts_sync_format(int fd) {
    if (ftruncate(fd, (off_t)ARENA_SIZE) < 0)
        return errno;
    void *m = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return errno;
    struct header *h = m;
    int err = init_robust_shared(&h->lock);
    h->size = ARENA_SIZE;
    h->version = VERSION;
    __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
    munmap(m, ARENA_SIZE);
    return err;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void init_once(void) {
    g_pid = getpid();
    g_spin = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? NTS_SYNC_SPIN : 0;
    pthread_key_create(&g_thread_key, thread_exit);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int nts_sync_attach(int fd, nts_arena **out) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return errno;
    if ((uint64_t)st.st_size != ARENA_SIZE)
        return EPROTO;
    char *m = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return errno;
    struct header *h = (struct header *)m;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC || h->version != VERSION || h->size != ARENA_SIZE) {
        munmap(m, ARENA_SIZE);
        return EPROTO;
    }
    nts_arena *a = calloc(1, sizeof *a);
    if (a)
        a->inflight = calloc(NOBJ, sizeof *a->inflight);
    if (!a || !a->inflight) {
        free(a);
        munmap(m, ARENA_SIZE);
        return ENOMEM;
    }
    a->base = m;
    a->h = h;
    a->o = (struct obj *)(m + OFF_OBJ);
    a->t = (struct thr *)(m + OFF_THR);
    a->r = (struct ref *)(m + OFF_REF);
    a->p = (struct proc *)(m + OFF_PROC);
    a->n = (struct name *)(m + OFF_NAME);
    pthread_once(&g_once, init_once);
    g_arena = a;
    *out = a;
    return 0;
}

/* Drop every reference of this process (at interpreter exit). */
void nts_sync_detach(nts_arena *a) {
    arena_lock(a);
    if (a->proc && a->pid == g_pid)
        for (uint32_t oi = 1; oi <= a->h->obj_hw; oi++)
            if (a->my_rec[oi]) {
                free_ref(a, a->my_rec[oi]);
                a->my_rec[oi] = 0;
                a->my_count[oi] = 0;
            }
    arena_unlock(a);
}

static int valid(nts_arena *a, uint32_t oi, int kind) {
    return oi >= 1 && oi <= NOBJ && a->my_count[oi] && (!kind || a->o[oi].kind == (uint32_t)kind);
}

int nts_sync_create(nts_arena *a, int kind, uint32_t x, uint32_t y, const char *name, size_t len, uint32_t *slot,
                    uint32_t *gen, int *created) {
    if (kind < NTS_SYNC_SEMAPHORE || kind > NTS_SYNC_EVENT || len > NTS_SYNC_MAX_NAME)
        return EINVAL;
    uint32_t holder = 0;
    if (kind == NTS_SYNC_MUTEX && y) {
        int err = self_thread(a, &holder);
        if (err)
            return err;
    }
    arena_lock(a);
    int err = register_process(a);
    uint32_t hash = name ? name_hash(name, len) : 0, oi = 0;
    if (!err && name && (oi = name_find(a, name, len, hash)) != 0) {
        oi = a->n[oi - 1].obj;
        if (a->o[oi].kind != (uint32_t)kind)
            err = EEXIST;
        else if (!(err = ref_object(a, oi)))
            *created = 0;
    } else if (!err) {
        oi = TAKE(a, o, obj, NOBJ);
        if (!oi) {
            gc_dead_processes(a);
            oi = TAKE(a, o, obj, NOBJ);
        }
        if (!oi) {
            err = ENOSPC;
        } else {
            struct obj *o = &a->o[oi];
            uint32_t g = o->gen;
            memset(o, 0, sizeof *o);
            o->gen = g;
            o->kind = (uint32_t)kind;
            o->x = x;
            o->y = y;
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
    }
    if (!err) {
        *slot = oi;
        *gen = a->o[oi].gen;
    }
    arena_unlock(a);
    return err;
}

int nts_sync_open(nts_arena *a, int kind, const char *name, size_t len, uint32_t *slot, uint32_t *gen) {
    arena_lock(a);
    int err = register_process(a);
    uint32_t ni = err ? 0 : name_find(a, name, len, name_hash(name, len));
    if (!err && !ni)
        err = ENOENT;
    if (!err) {
        uint32_t oi = a->n[ni - 1].obj;
        if (a->o[oi].kind != (uint32_t)kind)
            err = EEXIST;
        else if (!(err = ref_object(a, oi))) {
            *slot = oi;
            *gen = a->o[oi].gen;
        }
    }
    arena_unlock(a);
    return err;
}

int nts_sync_ref(nts_arena *a, int kind, uint32_t slot, uint32_t gen) {
    if (slot < 1 || slot > NOBJ)
        return ENOENT;
    arena_lock(a);
    int err = register_process(a);
    if (!err && (a->o[slot].kind != (uint32_t)kind || a->o[slot].gen != gen || !a->o[slot].refs))
        err = ENOENT;
    if (!err)
        err = ref_object(a, slot);
    arena_unlock(a);
    return err;
}

int nts_sync_unref(nts_arena *a, uint32_t slot) {
    arena_lock(a);
    int err = register_process(a);
    if (!err && !valid(a, slot, 0))
        err = EBADF;
    if (!err) {
        a->my_count[slot]--;
        uint32_t ri = a->my_rec[slot];
        if (--a->r[ri].count == 0) {
            a->my_rec[slot] = 0;
            free_ref(a, ri);
        }
    }
    arena_unlock(a);
    return err;
}

/* Run one operation on an object of this process under the lock. */
#define OBJECT_OP(a, slot, kind, body)                                                                                \
    do {                                                                                                              \
        arena_lock(a);                                                                                                \
        int err_ = register_process(a);                                                                               \
        if (!err_ && !valid(a, slot, kind))                                                                           \
            err_ = EBADF;                                                                                             \
        if (!err_) {                                                                                                  \
            struct obj *o = &(a)->o[slot];                                                                            \
            body                                                                                                      \
        }                                                                                                             \
        arena_unlock(a);                                                                                              \
        return err_;                                                                                                  \
    } while (0)

int nts_sync_sem_release(nts_arena *a, uint32_t slot, uint32_t n, uint32_t *prev) {
    OBJECT_OP(a, slot, NTS_SYNC_SEMAPHORE, {
        if ((uint64_t)o->x + n > o->y) {
            err_ = EOVERFLOW;
        } else {
            *prev = o->x;
            o->x += n;
            try_wake(a, slot);
        }
    });
}

int nts_sync_sem_read(nts_arena *a, uint32_t slot, uint32_t *count, uint32_t *max) {
    OBJECT_OP(a, slot, NTS_SYNC_SEMAPHORE, {
        *count = o->x;
        *max = o->y;
    });
}

int nts_sync_mutex_unlock(nts_arena *a, uint32_t slot, uint32_t owner, uint32_t *prev) {
    OBJECT_OP(a, slot, NTS_SYNC_MUTEX, {
        check_holder(a, slot);
        if (!o->y || o->x != owner) {
            err_ = EPERM;
        } else {
            *prev = o->y;
            if (--o->y == 0) {
                o->x = 0;
                drop_holder(a, o);
                try_wake(a, slot);
            }
        }
    });
}

int nts_sync_mutex_kill(nts_arena *a, uint32_t slot, uint32_t owner) {
    OBJECT_OP(a, slot, NTS_SYNC_MUTEX, {
        check_holder(a, slot);
        if (!o->y || o->x != owner)
            err_ = EPERM;
        else
            abandon(a, slot);
    });
}

int nts_sync_mutex_read(nts_arena *a, uint32_t slot, uint32_t *owner, uint32_t *count, int *abandoned) {
    OBJECT_OP(a, slot, NTS_SYNC_MUTEX, {
        check_holder(a, slot);
        *owner = o->x;
        *count = o->y;
        *abandoned = (int)o->abandoned;
    });
}

int nts_sync_event_op(nts_arena *a, uint32_t slot, int op, int *prev) {
    OBJECT_OP(a, slot, NTS_SYNC_EVENT, {
        *prev = o->y != 0;
        o->y = op != NTS_SYNC_EVENT_RESET;
        if (op != NTS_SYNC_EVENT_RESET)
            try_wake(a, slot);
        if (op == NTS_SYNC_EVENT_PULSE)
            o->y = 0;
    });
}

int nts_sync_event_read(nts_arena *a, uint32_t slot, int *manual, int *signaled) {
    OBJECT_OP(a, slot, NTS_SYNC_EVENT, {
        *manual = o->x != 0;
        *signaled = o->y != 0;
    });
}

/* Acquire now if possible: the lowest signaled index (wait-any), everything
 * (wait-all), else the alert.  Lock held.  1 when acquired, *index set. */
static int try_now(nts_arena *a, uint32_t ti, const uint32_t *slots, uint32_t count, int all, uint32_t alert,
                   uint32_t *index) {
    struct thr *t = thr_at(a, ti);
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

/* The futex words to sleep on: our own, our poke word, and the tokens of the
 * holders (in other processes) of the mutexes we wait for.  Lock held. */
static size_t watch_set(nts_arena *a, uint32_t ti, struct nts_futex_waitv *w) {
    struct thr *t = thr_at(a, ti);
    size_t n = 0;
    w[n++] = (struct nts_futex_waitv){WAITING, (uintptr_t)&t->signaled, NTS_FUTEX2_SIZE_U32, 0};
    w[n++] = (struct nts_futex_waitv){load(&t->poke), (uintptr_t)&t->poke, NTS_FUTEX2_SIZE_U32, 0};
    for (uint32_t i = 0; i < t->count && n < NTS_FUTEX_WAITV_MAX; i++) {
        struct obj *o = &a->o[t->e[i].obj];
        if (o->kind != NTS_SYNC_MUTEX || !o->y || !o->holder || thr_at(a, o->holder)->proc == t->proc)
            continue;
        uint32_t *word = token_word(thr_at(a, o->holder));
        /* The kernel wakes a token's waiters at its owner's death only if
         * FUTEX_WAITERS is set; setting it is harmless to glibc. */
        uint32_t v = __atomic_fetch_or(word, FUTEX_WAITERS, __ATOMIC_ACQ_REL) | FUTEX_WAITERS;
        if (v & FUTEX_OWNER_DIED)
            return 0; /* died since we looked: the kernel's wake-up is already spent */
        w[n++] = (struct nts_futex_waitv){v, (uintptr_t)word, NTS_FUTEX2_SIZE_U32, 0};
    }
    return n;
}

int nts_sync_wait(nts_arena *a, const uint32_t *slots, uint32_t count, int all, const struct timespec *deadline,
                  uint32_t owner, uint32_t alert, uint32_t *index, int *abandoned) {
    if (count > NTS_SYNC_MAX_WAIT || !owner)
        return EINVAL;
    uint32_t ti;
    int err = self_thread(a, &ti);
    if (err)
        return err;
    struct thr *t = thr_at(a, ti);
    arena_lock(a);
    for (uint32_t i = 0; i < count && !err; i++)
        if (!valid(a, slots[i], 0))
            err = EBADF;
    if (!err && alert && !valid(a, alert, NTS_SYNC_EVENT))
        err = EBADF;
    if (err) {
        arena_unlock(a);
        return err;
    }
    for (uint32_t i = 0; i < count; i++)
        check_holder(a, slots[i]);
    t->owner = owner;
    t->all = all;
    t->count = count;
    t->alert = alert;
    t->abandoned = 0;
    if (try_now(a, ti, slots, count, all, alert, index)) {
        *abandoned = (int)t->abandoned;
        arena_unlock(a);
        return 0;
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (deadline && (now.tv_sec > deadline->tv_sec || (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec))) {
        arena_unlock(a);
        return ETIMEDOUT;
    }
    /* Queue: one entry per object (and the alert), each holding a reference so
     * that closing the last handle during the wait frees nothing under us. */
    store(&t->signaled, WAITING);
    for (uint32_t i = 0; i < count + (alert != 0); i++) {
        uint32_t oi = i < count ? slots[i] : alert;
        struct obj *o = &a->o[oi];
        t->e[i].obj = oi;
        int in_all = all && i < count;
        link_entry(a, in_all ? &o->all_head : &o->any_head, in_all ? &o->all_tail : &o->any_tail, entry_id(ti, i));
        o->refs++;
    }
    t->queued = 1;
    for (unsigned spin = g_spin;; spin = 0) {
        struct nts_futex_waitv w[NTS_FUTEX_WAITV_MAX];
        size_t n = watch_set(a, ti, w);
        arena_unlock(a);
        for (unsigned i = 0; i < spin && load(&t->signaled) == WAITING; i++)
            nts_cpu_relax();
        if (load(&t->signaled) != WAITING)
            break;
        __atomic_store_n(&t->sleeping, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        long r = n ? syscall(SYS_futex_waitv, w, n, 0, deadline, CLOCK_MONOTONIC) : -1;
        __atomic_store_n(&t->sleeping, 0, __ATOMIC_RELAXED);
        int why = n == 0 ? EAGAIN : r < 0 ? errno : 0;
        if (load(&t->signaled) != WAITING)
            break; /* handed over: the signaller did everything */
        arena_lock(a);
        if (load(&t->signaled) != WAITING) {
            arena_unlock(a);
            break;
        }
        if (why == ETIMEDOUT || why == EINTR) {
            dequeue(a, ti);
            arena_unlock(a);
            return why;
        }
        if (why && why != EAGAIN) {
            dequeue(a, ti);
            arena_unlock(a);
            return why;
        }
        for (uint32_t i = 0; i < count; i++)
            check_holder(a, slots[i]);
        if (load(&t->signaled) != WAITING) {
            arena_unlock(a);
            break;
        }
    }
    *index = load(&t->signaled);
    *abandoned = (int)t->abandoned;
    return 0;
}

size_t nts_sync_arena_size(void) { return ARENA_SIZE; }

void nts_sync_usage(nts_arena *a, uint32_t used[4], uint32_t capacity[4], uint32_t *tids, size_t *ntids) {
    size_t max_tids = *ntids;
    *ntids = 0;
    memset(used, 0, 4 * sizeof *used);
    arena_lock(a);
    for (uint32_t i = 1; i <= a->h->obj_hw; i++)
        used[0] += a->o[i].kind != 0;
    for (uint32_t i = 1; i <= a->h->thr_hw; i++) {
        used[1] += a->t[i].in_use;
        if (a->t[i].in_use && a->proc && a->t[i].proc == a->proc && a->pid == g_pid && *ntids < max_tids)
            tids[(*ntids)++] = a->t[i].tid;
    }
    for (uint32_t i = 1; i <= a->h->ref_hw; i++)
        used[2] += a->r[i].proc != 0;
    for (uint32_t i = 1; i <= a->h->proc_hw; i++)
        used[3] += a->p[i].in_use;
    arena_unlock(a);
    capacity[0] = NOBJ;
    capacity[1] = NTHR;
    capacity[2] = NREF;
    capacity[3] = NPROC;
}
