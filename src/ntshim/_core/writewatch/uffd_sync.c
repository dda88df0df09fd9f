/* The uffd-sync backend's mechanism: classic userfaultfd write-protection
 * (Linux 5.7+).  A write to a protected page stops the writing thread and
 * queues a message; a thread of ours marks the page dirty and releases it,
 * which wakes the writer.  Writes the kernel makes (read(2) into the page) are
 * resolved the same way unless the fd is limited to user-mode faults. */
#include "tracker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

/* Write-protection is independent of the page's protection: clean pages have it. */
static int uffd_sync_want(int prot, int clean) { return clean; }

/* Write-protect the pages (wp=1) or release them (wp=0). */
static int uffd_sync_apply(nts_tracker *t, size_t first, size_t n, int wp)
{
    return nts_uffd_writeprotect(t->uffd, t->base + first * nts_page_size, n * nts_page_size, wp);
}

/* Without UFFD_FEATURE_WP_UNPOPULATED: map pages that are gaining access so that
 * the kernel can write-protect them. */
static int uffd_sync_populate(nts_tracker *t, size_t first, size_t n)
{
    const size_t ps = nts_page_size;
    /* Readable but not yet writable, so no write can slip in before the
     * protection; a read maps the page (the shared zero page if anonymous). */
    if (mprotect((void *)(t->base + first * ps), n * ps, PROT_READ))
        return errno;
    for (size_t i = first; i < first + n; i++)
        (void)*(volatile const char *)(t->base + i * ps);
    return nts_tracker_sync_kernel(t, first, n);
}

/* Read each page of [first, first+n) that its owner lets be read (or written),
 * which maps it: without WP_UNPOPULATED only a mapped page can be write-protected. */
static void map_accessible(nts_tracker *t, size_t first, size_t n)
{
    for (size_t i = first; i < first + n; i++)
        if (t->prots[i] & (PROT_READ | PROT_WRITE))
            (void)*(volatile const char *)(t->base + i * nts_page_size);
}

static void *fault_thread(void *arg)
{
    nts_tracker *t = arg;
    const size_t ps = nts_page_size;
    struct pollfd fds[2] = {{t->uffd, POLLIN, 0}, {t->stop_fd, POLLIN, 0}};
    struct uffd_msg msgs[32];
    for (;;) {
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;
        ssize_t got = read(t->uffd, msgs, sizeof msgs);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            break;
        }
        for (size_t k = 0; k < (size_t)got / sizeof *msgs; k++) {
            if (msgs[k].event != UFFD_EVENT_PAGEFAULT)
                continue;
            uintptr_t page = (uintptr_t)msgs[k].arg.pagefault.address & ~(uintptr_t)(ps - 1);
            nts_lock(t->lock);
            /* state lives until dealloc, which comes after this thread is joined */
            if (page >= t->base && page < t->base + t->npages * ps)
                t->state[(page - t->base) / ps] |= NTS_DIRTY;
            if (nts_uffd_writeprotect(t->uffd, page, ps, 0)) { /* range gone: still never leave the writer asleep */
                struct uffdio_range r = {page, ps};
                ioctl(t->uffd, UFFDIO_WAKE, &r);
            }
            nts_unlock(t->lock);
        }
    }
    return NULL;
}

static int uffd_sync_protect(nts_tracker *t, size_t first, size_t n, int prot)
{
    int err = 0;
    if (t->populate && (prot & (PROT_READ | PROT_WRITE))) /* pages gaining access from none must be mapped */
        for (size_t i = first; !err && i < first + n; i++) {
            size_t end = i; /* a run of pages that had no access */
            while (end < first + n && !(NTS_OLD_PROT(t->state[end]) & (PROT_READ | PROT_WRITE)))
                end++;
            if (end > i) {
                err = uffd_sync_populate(t, i, end - i);
                i = end;
            }
        }
    return err ? err : nts_tracker_mprotect(t, first, n, prot);
}

static int uffd_sync_discarded(nts_tracker *t, size_t first, size_t n)
{
    if (t->populate) /* an unmapped page cannot be write-protected without WP_UNPOPULATED */
        map_accessible(t, first, n);
    return nts_tracker_sync_kernel(t, first, n);
}

/* Drop the registration and stop the fault thread, if started (tracker closed,
 * or not open yet). */
static void uffd_sync_stop(nts_tracker *t)
{
    if (!nts_tracker_in_forked_child(t)) { /* in a forked child the registration and thread belong to the parent */
        struct uffdio_range r = {t->base, t->npages * nts_page_size};
        if (t->uffd >= 0)
            ioctl(t->uffd, UFFDIO_UNREGISTER, &r); /* clears the protection, wakes blocked writers */
        if (t->thread_started) {
            uint64_t one = 1;
            if (write(t->stop_fd, &one, sizeof one) == sizeof one)
                pthread_join(t->thread, NULL);
        }
    }
    t->thread_started = 0;
    if (t->uffd >= 0)
        close(t->uffd);
    if (t->stop_fd >= 0)
        close(t->stop_fd);
    t->uffd = t->stop_fd = -1;
}

const nts_ww_ops nts_uffd_sync_ops = {
    .protects = 1,
    .fork_bound = 1,
    .query_step = "UFFDIO_WRITEPROTECT",
    .want = uffd_sync_want,
    .apply = uffd_sync_apply,
    .rearm = nts_tracker_sync_kernel,
    .discarded = uffd_sync_discarded,
    .protect = uffd_sync_protect,
    .restore = nts_tracker_restore_owner,
    .close = uffd_sync_stop,
};

static int start_fault_thread(nts_tracker *t)
{
    t->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (t->stop_fd < 0)
        return errno;
    /* The thread takes no asynchronous signals (they belong to the application's
     * threads); it inherits the mask.  Faults stay deliverable, here too: creating
     * it may write heap memory an mprotect watch protects. */
    sigset_t saved;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 16);
    nts_block_async_signals(&saved);
    int err = pthread_create(&t->thread, &attr, fault_thread, t);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    pthread_attr_destroy(&attr);
    t->thread_started = !err;
    return err;
}

static PyObject *uffd_sync_tracker_new(PyObject *mod, PyObject *args, PyObject *kw)
{
    unsigned long long base, size, features;
    PyObject *prots;
    int user_mode_only, populate;
    static char *kwlist[] = {"address", "size", "prots", "user_mode_only", "features", "populate", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKO$pKp", kwlist, &base, &size, &prots, &user_mode_only, &features,
                                     &populate))
        return NULL;
    nts_tracker *t = nts_tracker_alloc(&nts_uffd_sync_ops, (uintptr_t)base, (size_t)size, prots);
    if (!t)
        return NULL;
    const char *step;
    t->handles_kernel_faults = !user_mode_only;
    t->populate = populate;
    int err = nts_uffd_setup(t, user_mode_only, features, UFFD_FEATURE_PAGEFAULT_FLAG_WP, &step);
    if (!err) {
        /* Before anything is protected: pthread_create allocates, and a protected
         * page (the rest of a watched heap buffer's first or last page) written
         * with no thread to resolve the fault would block for ever. */
        step = "starting the fault thread";
        err = start_fault_thread(t);
    }
    if (!err) {
        step = "write-protecting the range";
        nts_lock(t->lock);
        if (populate)
            map_accessible(t, 0, t->npages);
        err = nts_tracker_sync_kernel(t, 0, t->npages);
        nts_unlock(t->lock);
    }
    if (err) { /* the tracker is still marked closed: undo by hand */
        uffd_sync_stop(t);
        Py_DECREF(t);
        return nts_raise_errno_step(err, step, "uffd-sync");
    }
    nts_tracker_opened(t);
    return (PyObject *)t;
}

PyMethodDef nts_uffd_sync_methods[] = {
    {"uffd_sync_tracker", (PyCFunction)(void (*)(void))uffd_sync_tracker_new, METH_VARARGS | METH_KEYWORDS,
     "uffd_sync_tracker(address, size, prots, *, user_mode_only, features, populate) -> Tracker"},
    {NULL},
};
