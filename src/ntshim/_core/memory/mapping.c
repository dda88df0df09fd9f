/* Memory objects Python code holds: Mapping (memory we map and own, with the
 * protection and commit state of each page and its buffer exports, page range
 * by page range),
 * View (a buffer over part of a Mapping) and Pin (a held export of someone
 * else's buffer). */
#include "memory.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

/* ---- Mapping: anonymous memory owned by Python ---- */

/* A live buffer export and the bytes it covers. */
typedef struct {
    size_t start, end;
    int writable;
    unsigned id;
} export_range;

/* What a Mapping is doing besides being there. */
enum { IDLE, CHANGING, FREEING };

/* A Mapping keeps the protection of every page and makes both decisions here,
 * each in one step under the GIL: "may a buffer be exported over these pages"
 * (getbuffer, _view) and "may these pages lose access" (_change_protection).
 * A protection change is refused while a live export would lose access; while
 * the kernel changes the pages (maybe without the GIL), buffers over them get
 * only the access both the old and the new protection grant; then the new
 * protection is recorded, or the old one stays if the change failed.  So no
 * buffer ever covers pages without the access it grants.  Python serializes
 * changes (a lock per region); `busy` makes an overlapping one fail, not corrupt.
 * A write watch of the mapping shares the protections (nts_mapping_prot_table):
 * while watched, the watch changes them (under its lock, perhaps before the kernel
 * has changed the pages), so a change remembers what the old protections allowed. */
typedef struct {
    PyObject_HEAD
    char *addr;
    Py_ssize_t size;
    size_t npages;
    uint8_t *prots;                /* PROT_* of each page: on the heap, or table->prot once watched */
    nts_prot_table *table;         /* NULL until a write watch first shares the protections */
    uint8_t *committed;            /* 1 for each page committed, 0 for one only reserved (kept for Python) */
    size_t unreadable, unwritable; /* pages whose prots lack PROT_READ, PROT_WRITE */
    int max_prot;                  /* what the pages' source allows (an alias of a read-only file: no PROT_WRITE) */
    int busy;                      /* IDLE, CHANGING [change_first, +change_count) to change_prot, or FREEING */
    size_t change_first, change_count;
    int change_prot;
    int change_old_mode; /* the least export mode of the changing pages' old protections */
    Py_ssize_t exports;  /* == number of ranges */
    export_range *ranges;
    size_t cap;
    unsigned next_id;
} Mapping;

#define PROT_BITS (PROT_READ | PROT_WRITE | PROT_EXEC)

static int add_range(Mapping *m, size_t start, size_t end, int writable, unsigned *id)
{
    if ((size_t)m->exports == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 4;
        export_range *r = PyMem_Realloc(m->ranges, cap * sizeof *r);
        if (!r) {
            PyErr_NoMemory();
            return -1;
        }
        m->ranges = r;
        m->cap = cap;
    }
    *id = ++m->next_id;
    m->ranges[m->exports++] = (export_range){start, end, writable, *id};
    return 0;
}

static void remove_range(Mapping *m, unsigned id)
{
    for (Py_ssize_t i = 0; i < m->exports; i++)
        if (m->ranges[i].id == id) {
            m->ranges[i] = m->ranges[--m->exports];
            return;
        }
}

/* Buffers a protection allows: 0 none, 1 read-only, 2 read-write. */
static int export_mode_of(int prot) { return !(prot & PROT_READ) ? 0 : (prot & PROT_WRITE) ? 2 : 1; }

/* The buffers pages [first, first+n) may be exported as now. */
static int export_mode(Mapping *m, size_t first, size_t n)
{
    int mode = 2;
    if (first == 0 && n == m->npages) /* the whole mapping (memoryview(region)): no walk */
        mode = m->unreadable ? 0 : m->unwritable ? 1 : 2;
    else
        for (size_t i = first; i < first + n && mode; i++)
            if (export_mode_of(m->prots[i]) < mode)
                mode = export_mode_of(m->prots[i]);
    if (m->busy == CHANGING && m->change_first < first + n && first < m->change_first + m->change_count) {
        if (export_mode_of(m->change_prot) < mode)
            mode = export_mode_of(m->change_prot);
        if (m->change_old_mode < mode)
            mode = m->change_old_mode;
    }
    return mode;
}

static int mapping_check(Mapping *self)
{
    if (self->addr)
        return 0;
    PyErr_SetString(PyExc_ValueError, "region is freed");
    return -1;
}

/* The mode to export pages [first, first+n) with (1 read-only, 2 read-write),
 * or -1 with an exception set when no buffer, or no writable one if asked,
 * may cover them now. */
static int export_check(Mapping *m, size_t first, size_t n, int writable)
{
    if (mapping_check(m))
        return -1;
    if (m->busy == FREEING) {
        PyErr_SetString(PyExc_ValueError, "region is being freed");
        return -1;
    }
    int mode = export_mode(m, first, n);
    if (mode == 0) {
        PyErr_SetString(PyExc_BufferError,
                        "these pages include pages without read access; a buffer over them would crash on use");
        return -1;
    }
    if (writable && mode == 1) {
        PyErr_SetString(PyExc_BufferError, "these pages include read-only pages; a writable buffer was requested");
        return -1;
    }
    return mode;
}

static int busy_check(Mapping *m)
{
    if (m->busy == IDLE)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, m->busy == CHANGING ? "another protection change of the region is under way"
                                                            : "the region is being freed");
    return -1;
}

/* ---- the protection table ---- */

/* A table for npages pages (their bytes zero); NULL with MemoryError set. */
static nts_prot_table *prot_table_new(size_t npages)
{
    size_t size = sizeof(nts_prot_table) + npages;
    nts_prot_table *table = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (table == MAP_FAILED) {
        PyErr_Format(PyExc_MemoryError, "no memory for the protections of %zu pages", npages);
        return NULL;
    }
    table->refs = 1;
    table->size = size;
    return table;
}

void nts_prot_table_release(nts_prot_table *table)
{
    if (table && --table->refs == 0)
        munmap(table, table->size);
}

nts_prot_table *nts_mapping_prot_table(PyObject *mapping, uintptr_t base, size_t npages)
{
    Mapping *m = (Mapping *)mapping;
    if (!m->addr || (uintptr_t)m->addr != base || m->npages != npages) {
        PyErr_SetString(PyExc_ValueError, "a watch of a mapping spans the whole live mapping");
        return NULL;
    }
    if (!m->table) { /* moved off the heap on the first watch; mappings never watched pay nothing */
        if (!(m->table = prot_table_new(npages)))
            return NULL;
        memcpy(m->table->prot, m->prots, npages);
        PyMem_Free(m->prots);
        m->prots = m->table->prot;
    }
    m->table->refs++;
    return m->table;
}

/* The unreadable and unwritable pages of [first, first+n), and the least export
 * mode their protections allow. */
typedef struct {
    size_t unreadable, unwritable;
    int mode;
} protection_census;

static protection_census count_protections(Mapping *m, size_t first, size_t n)
{
    protection_census c = {0, 0, 2};
    for (size_t i = first; i < first + n; i++) {
        c.unreadable += !(m->prots[i] & PROT_READ);
        c.unwritable += !(m->prots[i] & PROT_WRITE);
        if (export_mode_of(m->prots[i]) < c.mode)
            c.mode = export_mode_of(m->prots[i]);
    }
    return c;
}

/* Map `size` bytes at `addr` (0: anywhere) aligned to `align` (0: a page):
 * over-map, then give back the head and tail.  A fixed address never replaces
 * an existing mapping (MAP_FIXED_NOREPLACE); it fails with EEXIST instead. */
static void *map_anonymous(size_t size, int prot, uintptr_t addr, size_t align, int shared)
{
    int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | (prot == PROT_NONE ? MAP_NORESERVE : 0);
    if (addr) {
        void *p = mmap((void *)addr, size, prot, flags | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != MAP_FAILED && (uintptr_t)p != addr) { /* kernels before 4.17 treat the flag as a hint */
            munmap(p, size);
            errno = EEXIST;
            return MAP_FAILED;
        }
        return p;
    }
    if (align <= nts_page_size)
        return mmap(NULL, size, prot, flags, -1, 0);
    char *raw = mmap(NULL, size + align, prot, flags, -1, 0);
    if (raw == MAP_FAILED)
        return raw;
    char *p = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    munmap(p + size, (size_t)(raw + size + align - (p + size)));
    return p;
}

static int check_prot(int prot)
{
    if (prot & ~PROT_BITS) {
        PyErr_Format(PyExc_ValueError, "prot must be PROT_READ, PROT_WRITE and PROT_EXEC bits, got %d", prot);
        return -1;
    }
    return 0;
}

static PyObject *mapping_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Py_ssize_t size;
    int prot;
    unsigned long long address = 0, align = 0;
    int shared = 0, committed = 1;
    static char *kwlist[] = {"size", "prot", "address", "align", "shared", "committed", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ni|$KKpp", kwlist, &size, &prot, &address, &align, &shared, &committed))
        return NULL;
    if (size <= 0 || (size_t)size % nts_page_size) {
        PyErr_Format(PyExc_ValueError, "size must be a positive multiple of %zu, got %zd", nts_page_size, size);
        return NULL;
    }
    if (check_prot(prot))
        return NULL;
    if (address % nts_page_size || (align & (align - 1)) || (address && align && address % align)) {
        PyErr_SetString(PyExc_ValueError, "address must be page aligned and align a power of two dividing it");
        return NULL;
    }
    Mapping *self = (Mapping *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    void *p = map_anonymous((size_t)size, prot, (uintptr_t)address, (size_t)align, shared);
    if (p == MAP_FAILED) {
        int err = errno;
        Py_DECREF(self);
        if (err == ENOMEM)
            return PyErr_Format(PyExc_MemoryError, "mmap of %zd bytes failed: %s", size, strerror(err));
        if (err == EEXIST)
            return PyErr_Format(PyExc_FileExistsError, "memory at 0x%llx+%zd is already in use", address, size);
        return nts_raise_errno(err, "mmap(%zd bytes)", size);
    }
    self->addr = p;
    self->size = size;
    self->npages = (size_t)size / nts_page_size;
    self->max_prot = PROT_BITS;
    self->prots = PyMem_Malloc(self->npages);
    self->committed = PyMem_Malloc(self->npages);
    if (!self->prots || !self->committed) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memset(self->prots, prot, self->npages);
    memset(self->committed, committed, self->npages);
    self->unreadable = (prot & PROT_READ) ? 0 : self->npages;
    self->unwritable = (prot & PROT_WRITE) ? 0 : self->npages;
    return (PyObject *)self;
}

static void mapping_dealloc(Mapping *self)
{
    if (self->addr)
        munmap(self->addr, (size_t)self->size);
    if (self->table)
        nts_prot_table_release(self->table);
    else
        PyMem_Free(self->prots);
    PyMem_Free(self->committed);
    PyMem_Free(self->ranges);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *mapping_unmap(Mapping *self, PyObject *args)
{
    PyObject *before = Py_None;
    if (!PyArg_ParseTuple(args, "|O:_unmap", &before))
        return NULL;
    if (!self->addr)
        Py_RETURN_NONE;
    if (self->exports) {
        PyErr_Format(PyExc_BufferError,
                     "cannot free the region: %zd buffer export(s) (memoryview, numpy array, "
                     "ctypes object, ...) still use its memory",
                     self->exports);
        return NULL;
    }
    if (busy_check(self))
        return NULL;
    if (before != Py_None) { /* it may give up the GIL: no export may appear meanwhile */
        self->busy = FREEING;
        PyObject *done = PyObject_CallNoArgs(before);
        self->busy = IDLE;
        if (!done)
            return NULL;
        Py_DECREF(done);
    }
    if (munmap(self->addr, (size_t)self->size))
        return nts_raise_errno(errno, "munmap");
    self->addr = NULL;
    Py_RETURN_NONE;
}

static PyObject *mapping_address(Mapping *self, void *c)
{
    if (mapping_check(self))
        return NULL;
    return PyLong_FromVoidPtr(self->addr);
}

static PyObject *mapping_size(Mapping *self, void *c) { return PyLong_FromSsize_t(self->size); }
static PyObject *mapping_closed(Mapping *self, void *c) { return PyBool_FromLong(self->addr == NULL); }
static PyObject *mapping_exports(Mapping *self, void *c) { return PyLong_FromSsize_t(self->exports); }

static int mapping_getbuffer(Mapping *self, Py_buffer *view, int flags)
{
    view->obj = NULL;
    int mode = export_check(self, 0, self->npages, flags & PyBUF_WRITABLE);
    if (mode < 0)
        return -1;
    unsigned id;
    if (add_range(self, 0, (size_t)self->size, mode == 2, &id) < 0)
        return -1;
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->size, mode == 1, flags) < 0) {
        remove_range(self, id);
        return -1;
    }
    view->internal = (void *)(uintptr_t)id;
    return 0;
}

static void mapping_releasebuffer(Mapping *self, Py_buffer *view)
{
    remove_range(self, (unsigned)(uintptr_t)view->internal);
}

static PyBufferProcs mapping_as_buffer = {
    (getbufferproc)mapping_getbuffer,
    (releasebufferproc)mapping_releasebuffer,
};

/* ---- View: a buffer over part of a Mapping ---- */

typedef struct {
    PyObject_HEAD
    Mapping *owner;
    unsigned id; /* the owner's export range held for the view's whole life */
    Py_ssize_t offset, len;
    int writable;
} View;

static void view_dealloc(View *self)
{
    if (self->owner) {
        remove_range(self->owner, self->id);
        Py_DECREF(self->owner);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int view_getbuffer(View *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->owner->addr + self->offset, self->len, !self->writable,
                             flags);
}

static PyBufferProcs view_as_buffer = {(getbufferproc)view_getbuffer, NULL};

PyTypeObject nts_view_type = {
    PyVarObject_HEAD_INIT(NULL, 0) // the macro ends with its own comma
        .tp_name = "ntshim._core.View",
    .tp_basicsize = sizeof(View),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_as_buffer = &view_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Part of a Mapping, as a buffer; made by Mapping._view().",
};

/* 0 when pages [first, first+count) lie in the live mapping, else -1 with an exception set. */
static int check_pages(Mapping *self, Py_ssize_t first, Py_ssize_t count)
{
    if (mapping_check(self))
        return -1;
    if (first < 0 || count < 0 || (size_t)first > self->npages || (size_t)count > self->npages - (size_t)first) {
        PyErr_Format(PyExc_ValueError, "pages %zd+%zd are outside the %zu-page mapping", first, count, self->npages);
        return -1;
    }
    return 0;
}

static PyObject *mapping_view(Mapping *self, PyObject *args)
{
    Py_ssize_t first, count;
    if (!PyArg_ParseTuple(args, "nn:_view", &first, &count) || check_pages(self, first, count))
        return NULL;
    int mode = export_check(self, (size_t)first, (size_t)count, 0);
    if (mode < 0)
        return NULL;
    View *v = PyObject_New(View, &nts_view_type);
    if (!v)
        return NULL;
    v->owner = NULL;
    v->offset = first * (Py_ssize_t)nts_page_size;
    v->len = count * (Py_ssize_t)nts_page_size;
    v->writable = mode == 2;
    if (add_range(self, (size_t)v->offset, (size_t)(v->offset + v->len), v->writable, &v->id) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    Py_INCREF(self);
    v->owner = self;
    return (PyObject *)v;
}

static PyObject *mapping_protections(Mapping *self, PyObject *args)
{
    Py_ssize_t first, count;
    if (!PyArg_ParseTuple(args, "nn:_protections", &first, &count) || check_pages(self, first, count))
        return NULL;
    return PyBytes_FromStringAndSize((const char *)self->prots + first, count);
}

static PyObject *mapping_commit_state(Mapping *self, PyObject *args)
{
    Py_ssize_t first, count;
    if (!PyArg_ParseTuple(args, "nn:_commit_state", &first, &count) || check_pages(self, first, count))
        return NULL;
    return PyBytes_FromStringAndSize((const char *)self->committed + first, count);
}

/* How many pages from `first` share its protection and commit state (VirtualQuery's
 * region): work in proportion to the answer, not to the rest of the mapping. */
static PyObject *mapping_run(Mapping *self, PyObject *args)
{
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "n:_run", &first) || check_pages(self, first, 1))
        return NULL;
    size_t end = (size_t)first + 1;
    while (end < self->npages && self->prots[end] == self->prots[first] &&
           self->committed[end] == self->committed[first])
        end++;
    return PyLong_FromSize_t(end - (size_t)first);
}

/* mprotect pages [first, first+n); when that fails the kernel may have changed
 * part of the range: put every page back as recorded.  0 or an errno.  Runs
 * without the GIL: `busy` keeps the recorded protections from changing. */
static int protect_pages(Mapping *m, size_t first, size_t n, int prot)
{
    const size_t ps = nts_page_size;
    if (!mprotect(m->addr + first * ps, n * ps, prot))
        return 0;
    int err = errno;
    for (size_t i = first, j; i < first + n; i = j) {
        for (j = i + 1; j < first + n && m->prots[j] == m->prots[i]; j++)
            ;
        mprotect(m->addr + i * ps, (j - i) * ps, m->prots[i]);
    }
    return err;
}

static PyObject *mapping_change_protection(Mapping *self, PyObject *args)
{
    Py_ssize_t first, count;
    int prot, committed = -1;
    PyObject *apply;
    if (!PyArg_ParseTuple(args, "nniO|i:_change_protection", &first, &count, &prot, &apply, &committed) ||
        check_pages(self, first, count))
        return NULL;
    if (check_prot(prot))
        return NULL;
    if (busy_check(self))
        return NULL;
    if (prot & ~self->max_prot) {
        /* The kernel would refuse it (EACCES), but a write watch may not ask the kernel
         * until a page is written (mprotect keeps clean pages read-only): refuse here. */
        int missing = prot & ~self->max_prot;
        PyErr_Format(PyExc_PermissionError, "the source of these pages does not allow %s%s%s",
                     missing & PROT_READ ? "reading " : "", missing & PROT_WRITE ? "writing " : "",
                     missing & PROT_EXEC ? "executing " : "");
        return NULL;
    }
    const size_t lo = (size_t)first * nts_page_size, hi = (size_t)(first + count) * nts_page_size;
    for (Py_ssize_t i = 0; i < self->exports; i++) {
        export_range *r = &self->ranges[i];
        if (r->start < hi && lo < r->end && (!(prot & PROT_READ) || (r->writable && !(prot & PROT_WRITE)))) {
            PyErr_Format(PyExc_BufferError,
                         "cannot make pages '%s%s%s%s': a live buffer export (memoryview, numpy array, ctypes "
                         "object) over them would lose access; release it first",
                         prot & PROT_READ ? "r" : "", prot & PROT_WRITE ? "w" : "", prot & PROT_EXEC ? "x" : "",
                         prot ? "" : "none");
            return NULL;
        }
    }
    const protection_census old = count_protections(self, (size_t)first, (size_t)count);
    self->busy = CHANGING;
    self->change_first = (size_t)first;
    self->change_count = (size_t)count;
    self->change_prot = prot;
    self->change_old_mode = old.mode;
    int failed;
    if (apply == Py_None) {
        int err;
        Py_BEGIN_ALLOW_THREADS
        err = protect_pages(self, (size_t)first, (size_t)count, prot);
        Py_END_ALLOW_THREADS
        if (err)
            nts_raise_errno(err, "mprotect(%zd pages, %d)", count, prot);
        failed = err != 0;
    } else {
        PyObject *done = PyObject_CallFunction(apply, "nni", first, count, prot);
        Py_XDECREF(done);
        failed = done == NULL;
    }
    if (!failed) {
        /* A watch sharing the table has recorded the change already, under its lock:
         * writing the bytes again would race with its fault resolvers' reads. */
        for (Py_ssize_t i = first; i < first + count; i++)
            if (self->prots[i] != prot)
                self->prots[i] = (uint8_t)prot;
        self->unreadable += ((prot & PROT_READ) ? 0 : (size_t)count) - old.unreadable;
        self->unwritable += ((prot & PROT_WRITE) ? 0 : (size_t)count) - old.unwritable;
    }
    if (!failed && committed >= 0) /* recorded with the protection: the two never disagree */
        memset(self->committed + first, committed != 0, (size_t)count);
    self->busy = IDLE;
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *mapping_limit_protection(Mapping *self, PyObject *arg)
{
    int prot = PyLong_AsLong(arg);
    if (prot == -1 && PyErr_Occurred())
        return NULL;
    if (check_prot(prot))
        return NULL;
    self->max_prot = prot;
    Py_RETURN_NONE;
}

static PyMethodDef mapping_methods[] = {
    {"_limit_protection", (PyCFunction)mapping_limit_protection, METH_O,
     "_limit_protection(prot): the most the pages may be given from now on (what their source allows); more is "
     "refused with PermissionError"},
    {"_view", (PyCFunction)mapping_view, METH_VARARGS,
     "_view(first, count) -> View: a buffer over whole pages, counted as an export; read-only unless every page "
     "is writable, BufferError unless every page is readable"},
    {"_protections", (PyCFunction)mapping_protections, METH_VARARGS,
     "_protections(first, count) -> bytes: the recorded PROT_* bits of each page"},
    {"_commit_state", (PyCFunction)mapping_commit_state, METH_VARARGS,
     "_commit_state(first, count) -> bytes: 1 for each page committed, 0 for each page only reserved"},
    {"_run", (PyCFunction)mapping_run, METH_VARARGS,
     "_run(first) -> int: how many pages from first share its protection and commit state"},
    {"_change_protection", (PyCFunction)mapping_change_protection, METH_VARARGS,
     "_change_protection(first, count, prot, apply, committed=-1): give pages a new protection, refused "
     "(BufferError) when a live export over them would lose access.  apply(first, count, prot) changes the "
     "kernel's protection (None: mprotect here; a write watch that shares the protection table records the new "
     "protection in it too) and must leave both as they were if it raises.  Buffers exported "
     "meanwhile get only the access both protections grant.  committed 0 or 1 records the pages' commit state "
     "with the protection (-1: unchanged)."},
    {"_unmap", (PyCFunction)mapping_unmap, METH_VARARGS,
     "_unmap(before=None): unmap the memory; BufferError while buffer exports are alive.  before() runs first, "
     "once the check passed, and no buffer can be exported while it runs.  Idempotent.  (Region.close is the "
     "public way.)"},
    {NULL},
};

static PyGetSetDef mapping_getset[] = {
    {"address", (getter)mapping_address, NULL, "Start address (int); ValueError once freed.", NULL},
    {"size", (getter)mapping_size, NULL, "Size in bytes.", NULL},
    {"closed", (getter)mapping_closed, NULL, "True once the memory is unmapped.", NULL},
    {"exports", (getter)mapping_exports, NULL, "Number of live buffer exports.", NULL},
    {NULL},
};

PyTypeObject nts_mapping_type = {
    PyVarObject_HEAD_INIT(NULL, 0) // the macro ends with its own comma
        .tp_name = "ntshim._core.Mapping",
    .tp_basicsize = sizeof(Mapping),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_as_buffer = &mapping_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Mapping(size, prot, *, address=0, align=0, shared=False, committed=True): anonymous memory (private, "
              "or shared with fork children and aliases), unmapped when freed or collected; committed=False records "
              "every page as only reserved.",
    .tp_methods = mapping_methods,
    .tp_getset = mapping_getset,
    .tp_new = mapping_new,
};

/* ---- Pin: a held export of someone else's writable buffer ---- */

/* Holding the export keeps the memory where it is (mmap.close() and
 * bytearray resizing raise BufferError while it lives); the Pin re-exports the
 * same bytes as one flat unsigned-byte buffer, whatever the owner's shape.
 * release() (or leaving a `with` block) gives the export back at once, so that
 * a Pin left in a traceback's frame does not keep the owner from closing. */
typedef struct {
    PyObject_HEAD
    Py_buffer view; /* view.obj is NULL once released */
    Py_ssize_t exports;
} Pin;

static PyObject *pin_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *obj;
    static char *kwlist[] = {"obj", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &obj))
        return NULL;
    Pin *self = (Pin *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS) < 0) {
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void pin_dealloc(Pin *self)
{
    if (self->view.obj)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int pin_check(Pin *self)
{
    if (self->view.obj)
        return 0;
    PyErr_SetString(PyExc_ValueError, "the Pin is released");
    return -1;
}

static PyObject *pin_release(Pin *self, PyObject *unused)
{
    if (!self->view.obj)
        Py_RETURN_NONE;
    if (self->exports) {
        PyErr_Format(PyExc_BufferError, "cannot release the Pin: %zd buffer export(s) of it are alive", self->exports);
        return NULL;
    }
    PyBuffer_Release(&self->view);
    Py_RETURN_NONE;
}

static PyObject *pin_enter(Pin *self, PyObject *unused)
{
    if (pin_check(self))
        return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *pin_exit(Pin *self, PyObject *args) { return pin_release(self, NULL); }

static int pin_getbuffer(Pin *self, Py_buffer *view, int flags)
{
    view->obj = NULL;
    if (pin_check(self) || PyBuffer_FillInfo(view, (PyObject *)self, self->view.buf, self->view.len, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void pin_releasebuffer(Pin *self, Py_buffer *view) { self->exports--; }

static PyBufferProcs pin_as_buffer = {(getbufferproc)pin_getbuffer, (releasebufferproc)pin_releasebuffer};

static PyObject *pin_address(Pin *self, void *c) { return pin_check(self) ? NULL : PyLong_FromVoidPtr(self->view.buf); }

static PyObject *pin_nbytes(Pin *self, void *c) { return pin_check(self) ? NULL : PyLong_FromSsize_t(self->view.len); }

static PyMethodDef pin_methods[] = {
    {"release", (PyCFunction)pin_release, METH_NOARGS,
     "Give the export back (BufferError while exports of the Pin live).  Idempotent."},
    {"__enter__", (PyCFunction)pin_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)pin_exit, METH_VARARGS, "Release the Pin."},
    {NULL},
};

static PyGetSetDef pin_getset[] = {
    {"address", (getter)pin_address, NULL, "Address of the first byte.", NULL},
    {"nbytes", (getter)pin_nbytes, NULL, "Length in bytes.", NULL},
    {NULL},
};

PyTypeObject nts_pin_type = {
    PyVarObject_HEAD_INIT(NULL, 0) // the macro ends with its own comma
        .tp_name = "ntshim._core.Pin",
    .tp_basicsize = sizeof(Pin),
    .tp_dealloc = (destructor)pin_dealloc,
    .tp_as_buffer = &pin_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pin(obj): hold a writable, contiguous buffer export of obj; re-export it as flat bytes.  "
              "release() or a with block gives it back.",
    .tp_methods = pin_methods,
    .tp_getset = pin_getset,
    .tp_new = pin_new,
};
