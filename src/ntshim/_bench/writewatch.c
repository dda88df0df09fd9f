/* Kernel floors for `ntshim bench writewatch`: each write-watch mechanism
 * driven by the least C that uses it correctly, with no ntshim tracking code
 * in the path, so that every backend reads as a ratio to the mechanism it is
 * built on.  The writers are the same native threads the backends are
 * measured with (writers.c).
 *
 *   none        plain writes to untracked memory
 *   uffd-async  userfaultfd WP_ASYNC registration; a get is one PAGEMAP_SCAN
 *   mprotect    read-only pages, a SIGSEGV handler that marks a byte map and
 *               restores write access; a get scans the map and re-protects
 *
 * The native reader queries an ntshim tracker from C on the same schedule:
 * what a native caller of ntshim's core gets, without Python in the path.
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

enum { FLOOR_NONE, FLOOR_UFFD_ASYNC, FLOOR_MPROTECT };

typedef struct {
    int kind;
    char *base;
    size_t npages;
    /* uffd-async */
    int uffd, pagemap;
    struct nts_page_region *vec;
    size_t vec_len;
    /* mprotect */
    uint8_t *written;
    int lock;
} floor_state;

/* ---- mprotect floor: the fault handler ---- */

static floor_state *g_floor; /* the one mprotect floor running, for its handler */
static struct sigaction g_saved_segv;

static void floor_on_sigsegv(int sig, siginfo_t *si, void *ctx)
{
    floor_state *f = g_floor;
    uintptr_t addr = (uintptr_t)si->si_addr, base = (uintptr_t)f->base;
    if (addr < base || addr >= base + f->npages * nts_page_size) {
        sigaction(SIGSEGV, &g_saved_segv, NULL); /* not ours: let it fault again */
        return;
    }
    size_t i = (addr - base) / nts_page_size;
    nts_lock(&f->lock);
    f->written[i] = 1;
    mprotect(f->base + i * nts_page_size, nts_page_size, PROT_READ | PROT_WRITE);
    nts_unlock(&f->lock);
}

/* ---- setup, one get, one reset, teardown ---- */

static int floor_setup(floor_state *f)
{
    const size_t size = f->npages * nts_page_size;
    if (f->kind == FLOOR_UFFD_ASYNC) {
        f->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
        if (f->uffd < 0)
            return errno;
        struct uffdio_api api = {UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0};
        struct uffdio_register reg = {{(uintptr_t)f->base, size}, UFFDIO_REGISTER_MODE_WP, 0};
        struct uffdio_writeprotect wp = {{(uintptr_t)f->base, size}, UFFDIO_WRITEPROTECT_MODE_WP};
        if (ioctl(f->uffd, UFFDIO_API, &api) || ioctl(f->uffd, UFFDIO_REGISTER, &reg) ||
            ioctl(f->uffd, UFFDIO_WRITEPROTECT, &wp))
            return errno;
        f->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        if (f->pagemap < 0)
            return errno;
        f->vec_len = f->npages / 2 + 1; /* the most runs npages can form: one call, walk_end unused */
        f->vec = malloc(f->vec_len * sizeof *f->vec);
        return f->vec ? 0 : ENOMEM;
    }
    if (f->kind == FLOOR_MPROTECT) {
        f->written = calloc(f->npages, 1);
        if (!f->written)
            return ENOMEM;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = floor_on_sigsegv;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        g_floor = f;
        if (sigaction(SIGSEGV, &sa, &g_saved_segv))
            return errno;
        return mprotect(f->base, size, PROT_READ) ? errno : 0;
    }
    return 0;
}

/* The written pages, reset in the same step when `reset`; how many. */
static size_t floor_get(floor_state *f, int reset)
{
    const size_t ps = nts_page_size;
    size_t pages = 0;
    if (f->kind == FLOOR_UFFD_ASYNC) {
        struct nts_pm_scan_arg a = {
            .size = sizeof a,
            .flags = NTS_PM_SCAN_CHECK_WPASYNC | (reset ? NTS_PM_SCAN_WP_MATCHING : 0),
            .start = (uintptr_t)f->base,
            .end = (uintptr_t)f->base + f->npages * ps,
            .vec = (uintptr_t)f->vec,
            .vec_len = f->vec_len,
            .category_mask = NTS_PAGE_IS_WRITTEN,
            .return_mask = NTS_PAGE_IS_WRITTEN,
        };
        long n = ioctl(f->pagemap, NTS_PAGEMAP_SCAN, &a);
        for (long i = 0; i < n; i++)
            pages += (f->vec[i].end - f->vec[i].start) / ps;
    } else if (f->kind == FLOOR_MPROTECT) {
        /* Pages only ever turn written behind our back, so the map can be read
         * unlocked; each run is re-protected and cleared under the lock the
         * fault handler takes, one run at a time so that writers are not held
         * up for the whole scan. */
        sigset_t all, saved;
        sigfillset(&all);
        for (size_t i = 0; i < f->npages; i++) {
            if (!__atomic_load_n(&f->written[i], __ATOMIC_RELAXED))
                continue;
            size_t j = i;
            while (j < f->npages && __atomic_load_n(&f->written[j], __ATOMIC_RELAXED))
                j++;
            pages += j - i;
            if (reset) {
                pthread_sigmask(SIG_BLOCK, &all, &saved);
                nts_lock(&f->lock);
                mprotect(f->base + i * ps, (j - i) * ps, PROT_READ);
                memset(f->written + i, 0, j - i);
                nts_unlock(&f->lock);
                pthread_sigmask(SIG_SETMASK, &saved, NULL);
            }
            i = j;
        }
    }
    return pages;
}

static void floor_teardown(floor_state *f)
{
    if (f->kind == FLOOR_MPROTECT && g_floor == f) {
        sigaction(SIGSEGV, &g_saved_segv, NULL);
        g_floor = NULL;
    }
    if (f->uffd >= 0)
        close(f->uffd);
    if (f->pagemap >= 0)
        close(f->pagemap);
    free(f->vec);
    free(f->written);
    munmap(f->base, f->npages * nts_page_size);
}

static void sleep_until(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* The readers' schedule: a get every delay, on fixed ticks, so that every
 * subject resets as often whatever its get costs (unless it costs more). */
static uint64_t next_tick(uint64_t tick, uint64_t delay)
{
    uint64_t now = nts_now_ns();
    return tick + delay > now ? tick + delay : now + delay;
}

PyObject *nts_floor_writewatch(PyObject *mod, PyObject *args, PyObject *kw)
{
    const char *kind_name;
    Py_ssize_t npages;
    unsigned threads;
    int random, reset;
    unsigned long long delay_ns, duration_ns;
    static char *kwlist[] = {"kind", "pages", "threads", "random", "delay_ns", "duration_ns", "reset", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "snIpKKp", kwlist, &kind_name, &npages, &threads, &random, &delay_ns,
                                     &duration_ns, &reset))
        return NULL;
    floor_state f = {.uffd = -1, .pagemap = -1};
    if (!strcmp(kind_name, "none"))
        f.kind = FLOOR_NONE;
    else if (!strcmp(kind_name, "uffd-async"))
        f.kind = FLOOR_UFFD_ASYNC;
    else if (!strcmp(kind_name, "mprotect"))
        f.kind = FLOOR_MPROTECT;
    else
        return PyErr_Format(PyExc_ValueError, "unknown floor %s (none, uffd-async, mprotect)", kind_name);
    if (npages < 1 || threads < 1 || threads > 512 || (f.kind == FLOOR_MPROTECT && g_floor))
        return PyErr_Format(PyExc_ValueError, "need pages >= 1, 1..512 threads and no other mprotect floor running");
    f.npages = (size_t)npages;
    f.base = mmap(NULL, f.npages * nts_page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f.base == MAP_FAILED)
        return nts_raise_errno(errno, "mmap");

    size_t cap = (size_t)(duration_ns / (delay_ns ? delay_ns : 1)) + 16, ngets = 0;
    uint64_t *get_ns = calloc(cap, sizeof *get_ns), *reset_ns = calloc(cap, sizeof *reset_ns);
    uint64_t writes = 0, write_ns = 0, reported = 0;
    int err = (get_ns && reset_ns) ? 0 : ENOMEM;
    Py_BEGIN_ALLOW_THREADS
    nts_writer_pool pool;
    if (!err)
        err = floor_setup(&f);
    if (!err)
        err = nts_writers_start(&pool, f.base, f.npages, threads, random);
    if (!err) {
        uint64_t end = nts_now_ns() + duration_ns, tick = nts_now_ns();
        if (f.kind == FLOOR_NONE)
            sleep_until(end);
        while (f.kind != FLOOR_NONE && nts_now_ns() < end && ngets < cap) {
            sleep_until(tick = next_tick(tick, delay_ns));
            uint64_t t0 = nts_now_ns();
            reported += floor_get(&f, reset);
            uint64_t t1 = nts_now_ns();
            if (!reset) /* the reset: re-protect what was written (the cheapest way, for both) */
                floor_get(&f, 1);
            get_ns[ngets] = t1 - t0;
            reset_ns[ngets++] = reset ? 0 : nts_now_ns() - t1;
        }
        nts_writers_stop(&pool, &writes, &write_ns);
    }
    floor_teardown(&f);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (err)
        nts_raise_errno(err, "floor %s", kind_name);
    else
        out = Py_BuildValue("(KKy#y#K)", (unsigned long long)writes, (unsigned long long)write_ns, (char *)get_ns,
                            (Py_ssize_t)(ngets * sizeof *get_ns), (char *)reset_ns,
                            (Py_ssize_t)(ngets * sizeof *reset_ns), (unsigned long long)reported);
    free(get_ns);
    free(reset_ns);
    return out;
}

/* Query `tracker` every delay_ns for duration_ns, timing each get (and each
 * separate reset when !reset): the Python benchmark loop without Python. */
PyObject *nts_native_reader(PyObject *mod, PyObject *args)
{
    PyObject *obj;
    unsigned long long delay_ns, duration_ns;
    int reset;
    if (!PyArg_ParseTuple(args, "O!KKp", nts_core->tracker_type, &obj, &delay_ns, &duration_ns, &reset))
        return NULL;
    nts_tracker *t = (nts_tracker *)obj;
    PyObject *pages = PyObject_GetAttrString(obj, "npages"); /* the tracker's layout is writewatch's own */
    size_t npages = pages ? PyLong_AsSize_t(pages) : (size_t)-1;
    Py_XDECREF(pages);
    if (npages == (size_t)-1)
        return NULL;
    size_t cap = (size_t)(duration_ns / (delay_ns ? delay_ns : 1)) + 16, ngets = 0;
    uint64_t *get_ns = calloc(cap, sizeof *get_ns), *reset_ns = calloc(cap, sizeof *reset_ns), reported = 0;
    int err = (get_ns && reset_ns) ? 0 : ENOMEM;
    Py_BEGIN_ALLOW_THREADS
    uint64_t end = nts_now_ns() + duration_ns, tick = nts_now_ns();
    while (!err && nts_now_ns() < end && ngets < cap) {
        sleep_until(tick = next_tick(tick, delay_ns));
        nts_runs runs;
        uint64_t t0 = nts_now_ns();
        err = nts_core->tracker_query(t, 0, npages, reset, 0, &runs);
        uint64_t t1 = nts_now_ns();
        for (size_t i = 0; i + 1 < runs.n; i += 2)
            reported += (runs.v[i + 1] - runs.v[i]) / nts_page_size;
        free(runs.v);
        if (!err && !reset) {
            err = nts_core->tracker_query(t, 0, npages, 1, 0, &runs);
            free(runs.v);
        }
        get_ns[ngets] = t1 - t0;
        reset_ns[ngets++] = reset ? 0 : nts_now_ns() - t1;
    }
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (err)
        nts_raise_errno(err, "native reader");
    else
        out = Py_BuildValue("(y#y#K)", (char *)get_ns, (Py_ssize_t)(ngets * sizeof *get_ns), (char *)reset_ns,
                            (Py_ssize_t)(ngets * sizeof *reset_ns), (unsigned long long)reported);
    free(get_ns);
    free(reset_ns);
    return out;
}
