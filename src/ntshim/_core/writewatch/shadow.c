/* The shadow backend's mechanism: a private copy of the memory, compared page
 * by page.  Nothing is protected, so it works on memory that cannot be
 * write-protected and costs nothing on the write path; it reports a page whose
 * bytes differ from the copy, so a write of the value already there is missed. */
#include "tracker.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

static uint8_t *page_at(uintptr_t base, size_t i) { return (uint8_t *)(base + i * nts_page_size); }

static int shadow_page_differs(nts_tracker *t, size_t i)
{
    return memcmp(page_at(t->base, i), t->shadow + i * nts_page_size, nts_page_size) != 0;
}

static int shadow_capture(nts_tracker *t, size_t first, size_t n)
{
    for (size_t i = first; i < first + n; i++)
        if (t->prots[i] & PROT_READ) /* unreadable pages cannot change under the owner's hand */
            memcpy(t->shadow + i * nts_page_size, page_at(t->base, i), nts_page_size);
    return 0;
}

/* Dropped pages read as zero: so does their copy. */
static int shadow_discarded(nts_tracker *t, size_t first, size_t n)
{
    memset(t->shadow + first * nts_page_size, 0, n * nts_page_size);
    return 0;
}

/* Pages about to lose read access cannot be compared later: settle them now,
 * keeping a difference as pending dirty state. */
static void shadow_before_protect(nts_tracker *t, size_t first, size_t n, int prot)
{
    for (size_t i = first; i < first + n; i++)
        if ((t->prots[i] & PROT_READ) && !(prot & PROT_READ) && shadow_page_differs(t, i)) {
            t->state[i] |= NTS_DIRTY;
            shadow_capture(t, i, 1);
        }
}

static void shadow_close(nts_tracker *t)
{
    if (t->shadow)
        munmap(t->shadow, t->npages * nts_page_size);
    t->shadow = NULL;
}

const nts_ww_ops nts_shadow_ops = {
    .rearm = shadow_capture,
    .discarded = shadow_discarded,
    .differs = shadow_page_differs,
    .before_protect = shadow_before_protect,
    .protect = nts_tracker_mprotect,
    .restore = nts_tracker_restore_owner,
    .close = shadow_close,
};

static PyObject *shadow_tracker_new(PyObject *mod, PyObject *args)
{
    unsigned long long base, size;
    PyObject *prots;
    if (!PyArg_ParseTuple(args, "KKO", &base, &size, &prots))
        return NULL;
    nts_tracker *t = nts_tracker_alloc(&nts_shadow_ops, (uintptr_t)base, (size_t)size, prots);
    if (!t)
        return NULL;
    void *copy = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) {
        int err = errno;
        Py_DECREF(t);
        if (err == ENOMEM)
            return PyErr_Format(PyExc_MemoryError, "shadow backend: no memory for a %llu-byte copy", size);
        return nts_raise_errno(err, "shadow backend: mmap(%llu)", size);
    }
    t->shadow = copy;
    t->handles_kernel_faults = 1; /* nothing is protected: the kernel's writes land and are compared */
    Py_BEGIN_ALLOW_THREADS
    shadow_capture(t, 0, t->npages);
    Py_END_ALLOW_THREADS
    nts_tracker_opened(t);
    return (PyObject *)t;
}

PyMethodDef nts_shadow_methods[] = {
    {"shadow_tracker", shadow_tracker_new, METH_VARARGS,
     "shadow_tracker(address, size, prots) -> Tracker (content comparison against a copy)"},
    {NULL},
};
