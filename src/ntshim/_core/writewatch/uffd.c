/* userfaultfd and PAGEMAP_SCAN: thin calls for probing, and the uffd-async
 * backend's mechanism.  The kernel resolves write faults itself
 * (UFFD_FEATURE_WP_ASYNC) and PAGEMAP_SCAN reads and re-protects the written
 * pages in one atomic walk, so nothing of ours runs on the write path. */
#include "tracker.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static PyObject *uffd_open(PyObject *mod, PyObject *arg)
{
    int user_mode_only = PyObject_IsTrue(arg);
    if (user_mode_only < 0)
        return NULL;
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0));
    if (fd < 0)
        return nts_raise_errno(errno, "userfaultfd(%s)", user_mode_only ? "UFFD_USER_MODE_ONLY" : "0");
    return PyLong_FromLong(fd);
}

static PyObject *uffd_api(PyObject *mod, PyObject *args)
{
    int fd;
    unsigned long long features;
    if (!PyArg_ParseTuple(args, "iK", &fd, &features))
        return NULL;
    struct uffdio_api api = {UFFD_API, features, 0};
    if (ioctl(fd, UFFDIO_API, &api))
        return nts_raise_errno(errno, "UFFDIO_API(features=0x%llx)", features);
    return Py_BuildValue("(KK)", (unsigned long long)api.features, (unsigned long long)api.ioctls);
}

int nts_uffd_writeprotect(int uffd, uintptr_t addr, size_t len, int wp)
{
    struct uffdio_writeprotect w = {{addr, len}, wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
    return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) ? errno : 0;
}

int nts_pagemap_scan(int fd, uint64_t base, uint64_t start, uint64_t end, int reset, uint64_t max_pages, size_t vec_len,
                     nts_runs *out)
{
    const uint64_t ps = nts_page_size;
    /* No more than the kernel's own buffer of 512 regions: with a longer vector,
     * Linux 6.18 reports regions past the walk_end it returns (walk_end stays
     * where its internal buffer first filled), and resuming from there would
     * report those pages twice, or reset them unseen.  (Found here; see
     * tests/writewatch/test_semantics.py::test_many_runs_are_all_reported.) */
    if (!vec_len) /* room for every run the range can hold: the kernel's cost grows with the vector */
        vec_len = (size_t)((end - start) / ps / 2 + 1);
    if (vec_len > 512)
        vec_len = 512;
    /* On the stack, not the heap: the kernel fails to write into a page another
     * watch protects (EFAULT), and a heap block can share a page with a watched
     * buffer. */
    struct nts_page_region vec[512];
    int err = 0;
    uint64_t pos = start, left = max_pages;
    while (pos < end) {
        struct nts_pm_scan_arg a = {
            .size = sizeof a,
            .flags = NTS_PM_SCAN_CHECK_WPASYNC | (reset ? NTS_PM_SCAN_WP_MATCHING : 0),
            .start = pos,
            .end = end,
            .vec = (uint64_t)(uintptr_t)vec,
            .vec_len = (uint64_t)vec_len,
            .max_pages = left,
            .category_mask = NTS_PAGE_IS_WRITTEN,
            .return_mask = NTS_PAGE_IS_WRITTEN,
        };
        long n = ioctl(fd, NTS_PAGEMAP_SCAN, &a);
        if (n < 0) {
            err = errno;
            break;
        }
        for (long i = 0; i < n && !err; i++) {
            if (nts_runs_add(out, vec[i].start - base, vec[i].end - base))
                err = ENOMEM;
            if (max_pages)
                left -= (vec[i].end - vec[i].start) / ps;
        }
        if (err || (max_pages && left == 0) || a.walk_end <= pos)
            break;
        pos = a.walk_end;
    }
    return err;
}

static PyObject *pagemap_scan(PyObject *mod, PyObject *args, PyObject *kw)
{
    int fd, reset;
    unsigned long long base, start, end, max_pages = 0;
    Py_ssize_t vec_len = 0;
    static char *kwlist[] = {"fd", "base", "start", "end", "reset", "max_pages", "vec_len", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iKKKp|Kn", kwlist, &fd, &base, &start, &end, &reset, &max_pages,
                                     &vec_len))
        return NULL;
    const uint64_t ps = nts_page_size;
    if (start % ps || end % ps || start > end || base > start || vec_len < 0 || vec_len > 512) {
        PyErr_SetString(PyExc_ValueError, "pagemap_scan: need base <= start <= end, page aligned, 0 <= vec_len <= 512");
        return NULL;
    }
    nts_runs out = {0};
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = nts_pagemap_scan(fd, base, start, end, reset, max_pages, (size_t)vec_len, &out);
    Py_END_ALLOW_THREADS
    if (err) {
        free(out.v);
        if (err == ENOMEM)
            return PyErr_NoMemory();
        return nts_raise_errno(err, "PAGEMAP_SCAN(0x%llx..0x%llx)", start, end);
    }
    return nts_runs_finish(&out);
}

int nts_uffd_setup(nts_tracker *t, int user_mode_only, uint64_t features, uint64_t required, const char **step)
{
    *step = "userfaultfd";
    t->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0));
    if (t->uffd < 0)
        return errno;
    struct uffdio_api api = {UFFD_API, features, 0};
    *step = "UFFDIO_API";
    if (ioctl(t->uffd, UFFDIO_API, &api))
        return errno;
    if ((api.features & required) != required) /* some kernels accept a bit and drop it */
        return EOPNOTSUPP;
    struct uffdio_register r = {{t->base, t->npages * nts_page_size}, UFFDIO_REGISTER_MODE_WP, 0};
    *step = "UFFDIO_REGISTER";
    return ioctl(t->uffd, UFFDIO_REGISTER, &r) ? errno : 0;
}

static int uffd_async_query(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out)
{
    return nts_pagemap_scan(t->pagemap, t->base, t->base + first * nts_page_size,
                            t->base + (first + count) * nts_page_size, reset, limit, 0, out);
}

/* A page without its uffd-wp bit reads as written. */
static int uffd_async_mark(nts_tracker *t, size_t first, size_t n)
{
    return nts_uffd_writeprotect(t->uffd, t->base + first * nts_page_size, n * nts_page_size, 0);
}

/* Dropped pages lose their uffd-wp bits and would read as written. */
static int uffd_async_discarded(nts_tracker *t, size_t first, size_t n)
{
    return nts_uffd_writeprotect(t->uffd, t->base + first * nts_page_size, n * nts_page_size, 1);
}

static void uffd_async_close(nts_tracker *t)
{
    if (!nts_tracker_in_forked_child(t)) { /* in a forked child the registration is the parent's */
        struct uffdio_range r = {t->base, t->npages * nts_page_size};
        ioctl(t->uffd, UFFDIO_UNREGISTER, &r);
    }
    close(t->uffd);
    t->uffd = -1;
}

const nts_ww_ops nts_uffd_async_ops = {
    .fork_bound = 1,
    .query_step = "PAGEMAP_SCAN",
    .query = uffd_async_query,
    .mark = uffd_async_mark,
    .discarded = uffd_async_discarded,
    .protect = nts_tracker_mprotect,
    .restore = nts_tracker_restore_owner,
    .close = uffd_async_close,
};

/* The uffd-async backend's tracker: registration and protection only; the
 * kernel keeps the dirty state (tracker.c reads it with nts_pagemap_scan).
 * User-mode-only is enough, and needs no privilege: in asynchronous mode the
 * kernel resolves every fault itself, kernel-mode ones included. */
static PyObject *uffd_async_tracker_new(PyObject *mod, PyObject *args, PyObject *kw)
{
    unsigned long long base, size, features;
    PyObject *prots;
    int pagemap;
    static char *kwlist[] = {"address", "size", "prots", "features", "pagemap_fd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKO$Ki", kwlist, &base, &size, &prots, &features, &pagemap))
        return NULL;
    nts_tracker *t = nts_tracker_alloc(&nts_uffd_async_ops, (uintptr_t)base, (size_t)size, prots);
    if (!t)
        return NULL;
    const char *step;
    t->pagemap = pagemap;
    t->handles_kernel_faults = 1;
    int err = nts_uffd_setup(t, 1, features, UFFD_FEATURE_WP_ASYNC, &step);
    if (!err) {
        step = "UFFDIO_WRITEPROTECT";
        err = nts_uffd_writeprotect(t->uffd, t->base, (size_t)size, 1);
    }
    if (err) {
        if (t->uffd >= 0)
            close(t->uffd); /* closing drops any registration */
        t->uffd = -1;
        Py_DECREF(t);
        return nts_raise_errno_step(err, step, "uffd-async");
    }
    nts_tracker_opened(t);
    return (PyObject *)t;
}

PyMethodDef nts_uffd_methods[] = {
    {"uffd_open", uffd_open, METH_O, "uffd_open(user_mode_only) -> fd (O_CLOEXEC|O_NONBLOCK)"},
    {"uffd_api", uffd_api, METH_VARARGS, "uffd_api(fd, features) -> (features, ioctls) granted by the kernel"},
    {"pagemap_scan", (PyCFunction)(void (*)(void))pagemap_scan, METH_VARARGS | METH_KEYWORDS,
     "pagemap_scan(fd, base, start, end, reset, max_pages=0, vec_len=0) -> bytes of uint64 [start, end) runs"},
    {"uffd_async_tracker", (PyCFunction)(void (*)(void))uffd_async_tracker_new, METH_VARARGS | METH_KEYWORDS,
     "uffd_async_tracker(address, size, prots, *, features, pagemap_fd) -> Tracker"},
    {NULL},
};

int nts_uffd_module_init(PyObject *mod)
{
    static const struct {
        const char *name;
        unsigned long long value;
    } constants[] = {
        {"UFFD_USER_MODE_ONLY", UFFD_USER_MODE_ONLY},
        {"UFFD_FEATURE_PAGEFAULT_FLAG_WP", UFFD_FEATURE_PAGEFAULT_FLAG_WP},
        {"UFFD_FEATURE_WP_HUGETLBFS_SHMEM", UFFD_FEATURE_WP_HUGETLBFS_SHMEM},
        {"UFFD_FEATURE_WP_UNPOPULATED", UFFD_FEATURE_WP_UNPOPULATED},
        {"UFFD_FEATURE_WP_ASYNC", UFFD_FEATURE_WP_ASYNC},
    };
    for (size_t i = 0; i < sizeof constants / sizeof *constants; i++)
        if (PyModule_AddObject(mod, constants[i].name, PyLong_FromUnsignedLongLong(constants[i].value)) < 0)
            return -1;
    return 0;
}
