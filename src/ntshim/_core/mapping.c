/* Memory objects Python code holds: Mapping (memory we map and own, with buffer
 * exports tracked page range by page range), View (a buffer over part of a
 * Mapping) and Pin (a held export of someone else's buffer). */
#include "core.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

/* ---- Mapping: anonymous private memory owned by Python ---- */

/* A live buffer export and the bytes it covers: protection changes that would
 * take access away from it are refused (Region.protect asks _exports_over). */
typedef struct {
    size_t start, end;
    int writable;
    unsigned id;
} export_range;

typedef struct {
    PyObject_HEAD
    char *addr;
    Py_ssize_t size;
    Py_ssize_t exports; /* == number of ranges */
    int export_mode;    /* whole-region buffers: 0 none, 1 read-only, 2 read-write */
    export_range *ranges;
    size_t cap;
    unsigned next_id;
} Mapping;

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

static PyObject *mapping_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Py_ssize_t size;
    int prot;
    unsigned long long address = 0, align = 0;
    int shared = 0;
    static char *kwlist[] = {"size", "prot", "address", "align", "shared", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ni|$KKp", kwlist, &size, &prot, &address, &align, &shared))
        return NULL;
    if (size <= 0 || (size_t)size % nts_page_size) {
        PyErr_Format(PyExc_ValueError, "size must be a positive multiple of %zu, got %zd", nts_page_size, size);
        return NULL;
    }
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
    self->export_mode = (prot & PROT_WRITE) ? 2 : (prot & PROT_READ) ? 1 : 0;
    return (PyObject *)self;
}

static void mapping_dealloc(Mapping *self)
{
    if (self->addr)
        munmap(self->addr, (size_t)self->size);
    PyMem_Free(self->ranges);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int mapping_check(Mapping *self)
{
    if (self->addr)
        return 0;
    PyErr_SetString(PyExc_ValueError, "region is freed");
    return -1;
}

static PyObject *mapping_unmap(Mapping *self, PyObject *unused)
{
    if (!self->addr)
        Py_RETURN_NONE;
    if (self->exports) {
        PyErr_Format(PyExc_BufferError,
                     "cannot free the region: %zd buffer export(s) (memoryview, numpy array, "
                     "ctypes object, ...) still use its memory",
                     self->exports);
        return NULL;
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
static PyObject *mapping_get_export_mode(Mapping *self, void *c) { return PyLong_FromLong(self->export_mode); }

static int mapping_set_export_mode(Mapping *self, PyObject *value, void *c)
{
    long mode = value ? PyLong_AsLong(value) : -1;
    if (mode == -1 && PyErr_Occurred())
        return -1;
    if (mode < 0 || mode > 2) {
        PyErr_SetString(PyExc_ValueError, "_export_mode must be 0, 1 or 2");
        return -1;
    }
    self->export_mode = (int)mode;
    return 0;
}

static int mapping_getbuffer(Mapping *self, Py_buffer *view, int flags)
{
    view->obj = NULL;
    if (mapping_check(self))
        return -1;
    if (self->export_mode == 0) {
        PyErr_SetString(PyExc_BufferError,
                        "region has pages without read access; a buffer over it would crash on use");
        return -1;
    }
    if ((flags & PyBUF_WRITABLE) && self->export_mode == 1) {
        PyErr_SetString(PyExc_BufferError, "region has read-only pages; a writable buffer was requested");
        return -1;
    }
    unsigned id;
    if (add_range(self, 0, (size_t)self->size, self->export_mode == 2, &id) < 0)
        return -1;
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->size, self->export_mode == 1, flags) < 0) {
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
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ntshim._core.View",
    .tp_basicsize = sizeof(View),
    .tp_dealloc = (destructor)view_dealloc,
    .tp_as_buffer = &view_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Part of a Mapping, as a buffer; made by Mapping._view().",
};

static int parse_span(Mapping *self, PyObject *args, const char *fmt, Py_ssize_t *offset, Py_ssize_t *len, int *flag)
{
    if (!PyArg_ParseTuple(args, fmt, offset, len, flag) || mapping_check(self))
        return -1;
    if (*offset < 0 || *len < 0 || *offset > self->size || *len > self->size - *offset) {
        PyErr_Format(PyExc_ValueError, "span %zd+%zd is outside the %zd-byte mapping", *offset, *len, self->size);
        return -1;
    }
    return 0;
}

static PyObject *mapping_view(Mapping *self, PyObject *args)
{
    Py_ssize_t offset, len;
    int writable;
    if (parse_span(self, args, "nnp", &offset, &len, &writable) < 0)
        return NULL;
    View *v = PyObject_New(View, &nts_view_type);
    if (!v)
        return NULL;
    v->owner = NULL;
    if (add_range(self, (size_t)offset, (size_t)(offset + len), writable, &v->id) < 0) {
        Py_DECREF(v);
        return NULL;
    }
    Py_INCREF(self);
    v->owner = self;
    v->offset = offset;
    v->len = len;
    v->writable = writable;
    return (PyObject *)v;
}

static PyObject *mapping_exports_over(Mapping *self, PyObject *args)
{
    Py_ssize_t offset, len;
    int unused = 0;
    if (parse_span(self, args, "nn|p", &offset, &len, &unused) < 0)
        return NULL;
    int any = 0, writable = 0;
    for (Py_ssize_t i = 0; i < self->exports; i++) {
        export_range *r = &self->ranges[i];
        if (r->start < (size_t)(offset + len) && (size_t)offset < r->end) {
            any = 1;
            writable |= r->writable;
        }
    }
    return Py_BuildValue("(OO)", any ? Py_True : Py_False, writable ? Py_True : Py_False);
}

static PyMethodDef mapping_methods[] = {
    {"_view", (PyCFunction)mapping_view, METH_VARARGS,
     "_view(offset, size, writable) -> View: a buffer over part of the memory, counted as an export"},
    {"_exports_over", (PyCFunction)mapping_exports_over, METH_VARARGS,
     "_exports_over(offset, size) -> (any, writable): whether live exports cover part of the span"},
    {"_unmap", (PyCFunction)mapping_unmap, METH_NOARGS,
     "Unmap the memory; BufferError while buffer exports are alive. Idempotent. (Region.free is the public way.)"},
    {NULL},
};

static PyGetSetDef mapping_getset[] = {
    {"address", (getter)mapping_address, NULL, "Start address (int); ValueError once freed.", NULL},
    {"size", (getter)mapping_size, NULL, "Size in bytes.", NULL},
    {"closed", (getter)mapping_closed, NULL, "True once the memory is unmapped.", NULL},
    {"exports", (getter)mapping_exports, NULL, "Number of live buffer exports.", NULL},
    {"_export_mode", (getter)mapping_get_export_mode, (setter)mapping_set_export_mode,
     "Buffers offered: 0 none, 1 read-only, 2 read-write.", NULL},
    {NULL},
};

PyTypeObject nts_mapping_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ntshim._core.Mapping",
    .tp_basicsize = sizeof(Mapping),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_as_buffer = &mapping_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Mapping(size, prot, *, address=0, align=0, shared=False): anonymous memory (private, or shared with "
               "fork children and aliases), unmapped when freed or collected.",
    .tp_methods = mapping_methods,
    .tp_getset = mapping_getset,
    .tp_new = mapping_new,
};

/* ---- Pin: a held export of someone else's writable buffer ---- */

/* Holding the export keeps the memory where it is (mmap.close() and
 * bytearray resizing raise BufferError while it lives); the Pin re-exports the
 * same bytes as one flat unsigned-byte buffer, whatever the owner's shape. */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
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

static int pin_getbuffer(Pin *self, Py_buffer *view, int flags)
{
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->view.buf, self->view.len, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void pin_releasebuffer(Pin *self, Py_buffer *view) { self->exports--; }

static PyBufferProcs pin_as_buffer = {(getbufferproc)pin_getbuffer, (releasebufferproc)pin_releasebuffer};

static PyObject *pin_address(Pin *self, void *c) { return PyLong_FromVoidPtr(self->view.buf); }
static PyObject *pin_nbytes(Pin *self, void *c) { return PyLong_FromSsize_t(self->view.len); }

static PyGetSetDef pin_getset[] = {
    {"address", (getter)pin_address, NULL, "Address of the first byte.", NULL},
    {"nbytes", (getter)pin_nbytes, NULL, "Length in bytes.", NULL},
    {NULL},
};

PyTypeObject nts_pin_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ntshim._core.Pin",
    .tp_basicsize = sizeof(Pin),
    .tp_dealloc = (destructor)pin_dealloc,
    .tp_as_buffer = &pin_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pin(obj): hold a writable, contiguous buffer export of obj; re-export it as flat bytes.",
    .tp_getset = pin_getset,
    .tp_new = pin_new,
};

