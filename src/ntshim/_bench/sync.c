/* Native loops for `ntshim bench sync`: the two micro-benchmarks of the msync
 * README, run by two threads (or two forked processes) in C, over
 *
 *   floor-futex    a futex counter with a waiter count (what sem_t does): the raw
 *                  mechanism, shared futexes as cross-process objects need
 *   floor-futex-fifo  the same futex mechanism with the hand-off NT objects
 *                  require (a release with a waiter queued grants it to that waiter,
 *                  FIFO, instead of letting the releaser take it back) and the same
 *                  waiting policy as ntshim's futex backend: a lock-free word while
 *                  nobody is queued, a look at it before queueing, a spin before
 *                  sleeping (with a place among at most CPUs - 1 spinners), wake only a
 *                  sleeper, a spin for its lock before sleeping on it, each spin as long
 *                  as ntshim's (nts_sync_spin_counts).  The like-for-like floor.
 *   floor-eventfd  eventfd: EFD_SEMAPHORE for the semaphore, a plain one per event
 *   futex          ntshim's futex backend through its C entry points (_core/sync/arena.c):
 *                  what a native caller of ntshim gets
 *
 *   contended  one semaphore (count 1, max 1); each side loops wait -> release
 *              until `amount` acquisitions in total are done; result: elapsed ns
 *   zigzag     auto events A and B; side 1 sets A and waits B, side 2 waits A
 *              and sets B, for `amount` ns; result: round trips
 *   uncontended  one side alone acquires and releases the semaphore `amount` times
 *              (what a program does most: it never waits); result: elapsed ns
 *   oversubscribed  `sides` sides (more than the CPUs) loop wait -> release on the
 *              semaphore until `amount` acquisitions in total; each wait's duration is
 *              recorded; results: elapsed ns, and the median and 99th percentile wait
 *
 * Elapsed time runs from the moment every side is running (see start_line).
 */
#include "bench.h"

#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { MECH_FLOOR_FUTEX, MECH_FLOOR_EVENTFD, MECH_FUTEX, MECH_FLOOR_FUTEX_FIFO };
enum { TEST_CONTENDED, TEST_ZIGZAG, TEST_UNCONTENDED, TEST_OVERSUBSCRIBED };
#define MAX_SIDES 16

struct fsem {
    uint32_t value, waiters;
};

/* floor-futex-fifo's spins, in pauses: ntshim's (all 0 on one CPU) */
static nts_sync_spins g_spins;
/* floor-futex-fifo's waiters spinning now (in the shared block, so in every side) and how
 * many may: CPUs - 1, as ntshim's arena allows */
static uint32_t *g_spinners, g_max_spinners;

/* A place among the spinners, as the arena's may_spin takes one. */
static int take_spin_place(void)
{
    uint32_t n = __atomic_load_n(g_spinners, __ATOMIC_RELAXED);
    while (n < g_max_spinners)
        if (__atomic_compare_exchange_n(g_spinners, &n, n + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return 1;
    return 0;
}

/* A lock on a shared futex (nts_lock's futexes are process-private). */
static void shared_lock(uint32_t *w)
{
    uint32_t c = 0;
    if (__atomic_compare_exchange_n(w, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    for (unsigned i = 0; i < g_spins.lock; i++) {
        nts_cpu_relax();
        c = 0;
        if (!__atomic_load_n(w, __ATOMIC_RELAXED) &&
            __atomic_compare_exchange_n(w, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
    }
    while (__atomic_exchange_n(w, 2, __ATOMIC_ACQUIRE) != 0)
        syscall(SYS_futex, w, FUTEX_WAIT, 2, NULL, NULL, 0);
}

static void shared_unlock(uint32_t *w)
{
    if (__atomic_exchange_n(w, 0, __ATOMIC_RELEASE) == 2)
        syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* A hand-off semaphore: a lock, the count, the queue of waiting sides (FIFO), and one
 * futex word per side that a release sets to grant the unit to that (queued) side.  With
 * nobody queued the count lives in a lock-free word, as an ntshim object's does: a wait
 * that finds a unit, or a release that finds nobody queued, is one swap; whoever takes the
 * lock first moves the count into `count` and marks the word HSEM_SLOW, and the unlock
 * moves it back once nobody is queued. */
#define HSEM_SLOW (1ull << 63)
struct hsem {
    uint32_t lock;
    uint64_t word;
    uint32_t count, queued[MAX_SIDES], nqueued, granted[MAX_SIDES], sleeping[MAX_SIDES];
};

static int hsem_take_word(struct hsem *s, uint64_t w)
{
    return !(w & HSEM_SLOW) && w &&
           __atomic_compare_exchange_n(&s->word, &w, w - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

static void hsem_lock(struct hsem *s)
{
    shared_lock(&s->lock);
    uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
    while (!(w & HSEM_SLOW)) {
        s->count = (uint32_t)w;
        if (__atomic_compare_exchange_n(&s->word, &w, HSEM_SLOW, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            break;
    }
}

static void hsem_unlock(struct hsem *s)
{
    if (!s->nqueued)
        __atomic_store_n(&s->word, s->count, __ATOMIC_RELEASE);
    shared_unlock(&s->lock);
}

static void hsem_wait(struct hsem *s, int me)
{
    if (hsem_take_word(s, __atomic_load_n(&s->word, __ATOMIC_ACQUIRE)))
        return;
    for (unsigned i = 0; i < g_spins.look; i++) { /* the look before queueing */
        nts_cpu_relax();
        uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE);
        if (w & HSEM_SLOW)
            break;
        if (hsem_take_word(s, w))
            return;
    }
    hsem_lock(s);
    if (s->count) {
        s->count--;
        hsem_unlock(s);
        return;
    }
    s->granted[me] = 0;
    s->queued[s->nqueued++] = (uint32_t)me;
    hsem_unlock(s);
    if (take_spin_place()) {
        for (unsigned i = 0; i < g_spins.queued && !__atomic_load_n(&s->granted[me], __ATOMIC_ACQUIRE); i++)
            nts_cpu_relax();
        __atomic_sub_fetch(g_spinners, 1, __ATOMIC_RELEASE);
    }
    while (!__atomic_load_n(&s->granted[me], __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&s->sleeping[me], 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        syscall(SYS_futex, &s->granted[me], FUTEX_WAIT, 0, NULL, NULL, 0);
        __atomic_store_n(&s->sleeping[me], 0, __ATOMIC_RELAXED);
    }
}

static void hsem_post(struct hsem *s)
{
    for (uint64_t w = __atomic_load_n(&s->word, __ATOMIC_ACQUIRE); !(w & HSEM_SLOW);)
        if (__atomic_compare_exchange_n(&s->word, &w, w + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return;
    hsem_lock(s);
    if (!s->nqueued) {
        s->count++;
        hsem_unlock(s);
        return;
    }
    uint32_t to = s->queued[0];
    memmove(s->queued, s->queued + 1, sizeof s->queued[0] * --s->nqueued);
    __atomic_store_n(&s->granted[to], 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int sleeps = __atomic_load_n(&s->sleeping[to], __ATOMIC_SEQ_CST);
    hsem_unlock(s);
    if (sleeps)
        syscall(SYS_futex, &s->granted[to], FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Everything both sides touch; MAP_SHARED so that forked sides share it too. */
typedef struct {
    int mech, test, sides;
    uint64_t amount;
    uint32_t *waits; /* oversubscribed: each acquisition's wait, ns (saturated), MAP_SHARED */
    int stop, quit;
    int ready, go;                        /* the start line (see start_line) */
    uint32_t spinners;                    /* floor-futex-fifo (see g_spinners) */
    uint64_t start_ns, end_ns[MAX_SIDES]; /* from the start line; each side's end */
    uint64_t round_trips;
    int failed;
    struct fsem sem, a, b;     /* floor-futex */
    struct hsem hsem, ha, hb;  /* floor-futex-fifo */
    int efd_sem, efd_a, efd_b; /* floor-eventfd */
    uint32_t slot_sem, slot_a, slot_b;
    nts_arena *arena; /* futex: same address after fork */
} shared;

static void fsem_wait(struct fsem *s)
{
    for (;;) {
        uint32_t v = __atomic_load_n(&s->value, __ATOMIC_ACQUIRE);
        if (v) {
            if (__atomic_compare_exchange_n(&s->value, &v, v - 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                return;
            continue;
        }
        __atomic_add_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &s->value, FUTEX_WAIT, 0, NULL, NULL, 0);
        __atomic_sub_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
    }
}

static void fsem_post(struct fsem *s)
{
    __atomic_add_fetch(&s->value, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &s->value, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int efd_wait(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) != sizeof v)
        if (errno != EINTR)
            return errno;
    return 0;
}

static int efd_post(int fd)
{
    uint64_t v = 1;
    return write(fd, &v, sizeof v) == sizeof v ? 0 : errno;
}

/* Wait on / signal one object of the mechanism; 0 or an errno. */
static __thread uint32_t tls_owner;

static int do_wait(shared *s, int which, int me)
{
    if (!tls_owner)
        tls_owner = (uint32_t)syscall(SYS_gettid);
    int abandoned;
    switch (s->mech) {
    case MECH_FLOOR_FUTEX:
        fsem_wait(which == 0 ? &s->sem : which == 1 ? &s->a : &s->b);
        return 0;
    case MECH_FLOOR_FUTEX_FIFO:
        hsem_wait(which == 0 ? &s->hsem : which == 1 ? &s->ha : &s->hb, me);
        return 0;
    case MECH_FLOOR_EVENTFD:
        return efd_wait(which == 0 ? s->efd_sem : which == 1 ? s->efd_a : s->efd_b);
    default: {
        uint32_t slot = which == 0 ? s->slot_sem : which == 1 ? s->slot_a : s->slot_b;
        int err;
        while ((err = nts_core->sync_wait_one(s->arena, slot, NULL, tls_owner, &abandoned)) == EINTR)
            ; /* a signal for this thread: nothing was acquired, wait again */
        return err;
    }
    }
}

static int do_signal(shared *s, int which)
{
    uint32_t prev;
    int was;
    switch (s->mech) {
    case MECH_FLOOR_FUTEX:
        fsem_post(which == 0 ? &s->sem : which == 1 ? &s->a : &s->b);
        return 0;
    case MECH_FLOOR_FUTEX_FIFO:
        hsem_post(which == 0 ? &s->hsem : which == 1 ? &s->ha : &s->hb);
        return 0;
    case MECH_FLOOR_EVENTFD:
        return efd_post(which == 0 ? s->efd_sem : which == 1 ? s->efd_a : s->efd_b);
    default:
        if (which == 0)
            return nts_core->sync_sem_release(s->arena, s->slot_sem, 1, &prev);
        return nts_core->sync_event_op(s->arena, which == 1 ? s->slot_a : s->slot_b, NTS_SYNC_EVENT_SET, &was);
    }
}

#define CHECK(expr)                                                                                                    \
    do {                                                                                                               \
        int e_ = (expr);                                                                                               \
        if (e_) {                                                                                                      \
            __atomic_store_n(&s->failed, e_, __ATOMIC_RELAXED);                                                        \
            return;                                                                                                    \
        }                                                                                                              \
    } while (0)

/* Every side starts from here once the last one is running, so that the figures leave out
 * fork() and pthread_create (forking a process that uses ntshim also runs its fork
 * handlers, which the floors do not have).  run() lets them go itself if a side could not
 * be started. */
static void start_line(shared *s)
{
    if (__atomic_add_fetch(&s->ready, 1, __ATOMIC_ACQ_REL) == s->sides) {
        s->start_ns = nts_now_ns();
        __atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
    }
    while (!__atomic_load_n(&s->go, __ATOMIC_ACQUIRE))
        sched_yield(); /* (the sides may outnumber the CPUs) */
}

static void run_side(shared *s, int number);

static void side(shared *s, int number)
{
    start_line(s);
    if (!__atomic_load_n(&s->failed, __ATOMIC_ACQUIRE)) /* (every side started) */
        run_side(s, number);
    s->end_ns[number] = nts_now_ns();
}

static void run_side(shared *s, int number)
{
    if (s->test == TEST_OVERSUBSCRIBED) {
        for (uint64_t i = (uint64_t)number; i < s->amount; i += (uint64_t)s->sides) {
            uint64_t t0 = nts_now_ns();
            CHECK(do_wait(s, 0, number));
            uint64_t waited = nts_now_ns() - t0;
            s->waits[i] = waited > UINT32_MAX ? UINT32_MAX : (uint32_t)waited;
            CHECK(do_signal(s, 0));
        }
    } else if (s->test != TEST_ZIGZAG) {
        uint64_t mine = s->test == TEST_UNCONTENDED ? s->amount : s->amount / 2 + (number == 0 ? s->amount % 2 : 0);
        for (uint64_t i = 0; i < mine; i++) {
            CHECK(do_wait(s, 0, number));
            CHECK(do_signal(s, 0));
        }
    } else if (number == 0) {
        /* Side 1 keeps time: only it looks at `stop`, and only between round trips,
         * so side 2 always gets the A it answers; then one last A carries `quit`. */
        uint64_t n = 0;
        while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
            CHECK(do_signal(s, 1));
            CHECK(do_wait(s, 2, number));
            n++;
        }
        s->round_trips = n;
        __atomic_store_n(&s->quit, 1, __ATOMIC_RELEASE);
        CHECK(do_signal(s, 1));
    } else {
        for (;;) {
            CHECK(do_wait(s, 1, number));
            if (__atomic_load_n(&s->quit, __ATOMIC_ACQUIRE))
                break;
            CHECK(do_signal(s, 2));
        }
    }
}

typedef struct {
    shared *s;
    int number;
} side_arg;

static void *side_thread(void *arg)
{
    side_arg *x = arg;
    side(x->s, x->number);
    return NULL;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec t = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
}

/* Run the sides on threads, or in forked processes, while this thread stops a zigzag.
 * 0 or an errno; *elapsed in ns, from the start line to the last side's end (a zigzag's
 * first side, which counts the round trips). */
static int run(shared *s, int processes, uint64_t *elapsed)
{
    pthread_t threads[MAX_SIDES];
    pid_t pids[MAX_SIDES];
    side_arg args[MAX_SIDES];
    int started = 0, err = 0, sides = s->sides;
    for (int i = 0; i < sides; i++)
        args[i] = (side_arg){s, i};
    for (; started < sides; started++) {
        if (processes) {
            pids[started] = fork();
            if (pids[started] == 0) {
                side(s, started); /* only C runs in the child */
                _exit(0);
            }
            if (pids[started] < 0) {
                err = errno;
                break;
            }
        } else if ((err = pthread_create(&threads[started], NULL, side_thread, &args[started])) != 0) {
            break;
        }
    }
    if (err) { /* the sides that started leave at the start line */
        __atomic_store_n(&s->failed, err, __ATOMIC_RELEASE);
        __atomic_store_n(&s->go, 1, __ATOMIC_RELEASE);
    } else if (s->test == TEST_ZIGZAG) {
        while (!__atomic_load_n(&s->go, __ATOMIC_ACQUIRE))
            sched_yield();
        sleep_ns(s->amount);
        __atomic_store_n(&s->stop, 1, __ATOMIC_RELEASE);
    }
    for (int i = 0; i < started; i++) {
        if (processes)
            waitpid(pids[i], NULL, 0);
        else
            pthread_join(threads[i], NULL);
    }
    uint64_t end = 0;
    for (int i = 0; i < (s->test == TEST_ZIGZAG ? 1 : sides); i++)
        end = s->end_ns[i] > end ? s->end_ns[i] : end;
    *elapsed = end - s->start_ns;
    return err ? err : s->failed;
}

static int by_value(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

/* bench_sync(mechanism, test, processes, amount, slots=(0, 0, 0), sides=4)
 *   -> (elapsed_ns, round_trips, median_wait_ns, p99_wait_ns)
 * slots: (semaphore, event A, event B) of the futex backend, referenced by this
 * process (ignored by the floors); sides: the oversubscribed test's (2..16).  The
 * waits' percentiles are the oversubscribed test's (0 for the others). */
PyObject *nts_bench_sync(PyObject *mod, PyObject *args)
{
    int mech, test, processes, sides = 4;
    unsigned long long amount;
    unsigned int slot_sem = 0, slot_a = 0, slot_b = 0;
    if (!PyArg_ParseTuple(args, "iipK|(III)i", &mech, &test, &processes, &amount, &slot_sem, &slot_a, &slot_b, &sides))
        return NULL;
    if (mech < MECH_FLOOR_FUTEX || mech > MECH_FLOOR_FUTEX_FIFO || test < TEST_CONTENDED ||
        test > TEST_OVERSUBSCRIBED || sides < 2 || sides > MAX_SIDES || !amount) {
        PyErr_SetString(PyExc_ValueError, "unknown mechanism or test, sides not in 2..16, or no amount");
        return NULL;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    nts_core->sync_spin_counts(&g_spins);
    g_max_spinners = cpus > 1 ? (uint32_t)(cpus - 1) : 0;
    nts_arena *arena = NULL;
    if (mech == MECH_FUTEX && !(arena = nts_core->sync_arena()))
        return NULL;
    shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED)
        return nts_raise_errno(errno, "mmap");
    memset(s, 0, sizeof *s);
    g_spinners = &s->spinners;
    s->mech = mech;
    s->test = test;
    s->sides = test == TEST_OVERSUBSCRIBED ? sides : test == TEST_UNCONTENDED ? 1 : 2;
    s->amount = amount;
    s->arena = arena;
    s->slot_sem = slot_sem;
    s->slot_a = slot_a;
    s->slot_b = slot_b;
    s->sem.value = 1;
    s->hsem.word = 1;
    s->efd_sem = s->efd_a = s->efd_b = -1;
    int err = 0;
    size_t waits_size = test == TEST_OVERSUBSCRIBED ? sizeof *s->waits * amount : 0;
    if (waits_size) {
        s->waits = mmap(NULL, waits_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (s->waits == MAP_FAILED) {
            s->waits = NULL;
            err = errno;
        }
    }
    if (!err && mech == MECH_FLOOR_EVENTFD) {
        s->efd_sem = eventfd(1, EFD_SEMAPHORE | EFD_CLOEXEC);
        s->efd_a = eventfd(0, EFD_CLOEXEC);
        s->efd_b = eventfd(0, EFD_CLOEXEC);
        if (s->efd_sem < 0 || s->efd_a < 0 || s->efd_b < 0)
            err = errno;
    }
    uint64_t elapsed = 0;
    if (!err) {
        Py_BEGIN_ALLOW_THREADS
        err = run(s, processes, &elapsed);
        Py_END_ALLOW_THREADS
    }
    uint64_t round_trips = s->round_trips;
    uint32_t median = 0, p99 = 0;
    if (s->waits) {
        if (!err) {
            qsort(s->waits, amount, sizeof *s->waits, by_value);
            median = s->waits[amount / 2];
            p99 = s->waits[amount - 1 - amount / 100];
        }
        munmap(s->waits, waits_size);
    }
    for (int fd_i = 0; fd_i < 3; fd_i++) {
        int fd = fd_i == 0 ? s->efd_sem : fd_i == 1 ? s->efd_a : s->efd_b;
        if (fd >= 0)
            close(fd);
    }
    munmap(s, sizeof *s);
    if (err)
        return nts_raise_errno(err, "bench_sync");
    return Py_BuildValue("KKII", (unsigned long long)elapsed, (unsigned long long)round_trips, median, p99);
}
