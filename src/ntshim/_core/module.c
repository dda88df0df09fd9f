/* Module setup, the Mapping type (page-aligned memory with the buffer protocol)
 * and the small helpers every other file uses. */
#include "core.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>

size_t nts_page_size;

PyObject *nts_raise_errno(int err, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    PyObject *msg = PyUnicode_FromFormat("%s: %s", what, strerror(err));
    PyObject *args = msg ? Py_BuildValue("(iN)", err, msg) : NULL;
    if (args) {
        /* OSError.__new__ turns (errno, text) into the errno's own subclass. */
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}

int nts_runs_add(nts_runs *r, uint64_t start, uint64_t end)
{
    if (r->n && r->v[r->n - 1] == start) { /* touches the previous range: extend it */
        r->v[r->n - 1] = end;
        return 0;
    }
    if (r->n + 2 > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        uint64_t *v = realloc(r->v, cap * sizeof *v);
        if (!v)
            return -1;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = start;
    r->v[r->n++] = end;
    return 0;
}

PyObject *nts_runs_finish(nts_runs *r)
{
    PyObject *out = PyBytes_FromStringAndSize((const char *)r->v, (Py_ssize_t)(r->n * sizeof(uint64_t)));
    free(r->v);
    r->v = NULL;
    r->n = r->cap = 0;
    return out;
}

static long futex(int *word, int op, int val)
{
    return syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

void nts_lock(int *word)
{
    int c = 0;
    if (__atomic_compare_exchange_n(word, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    if (c != 2)
        c = __atomic_exchange_n(word, 2, __ATOMIC_ACQUIRE);
    while (c != 0) {
        futex(word, FUTEX_WAIT_PRIVATE, 2);
        c = __atomic_exchange_n(word, 2, __ATOMIC_ACQUIRE);
    }
}

void nts_unlock(int *word)
{
    if (__atomic_exchange_n(word, 0, __ATOMIC_RELEASE) == 2)
        futex(word, FUTEX_WAKE_PRIVATE, 1);
}

/* ---- Mapping: anonymous private memory owned by Python ---- */

typedef struct {
    PyObject_HEAD
    char *addr;
    Py_ssize_t size;
    Py_ssize_t exports;
    int export_mode; /* 0: no buffer exports, 1: read-only, 2: read-write */
} Mapping;

static PyObject *mapping_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Py_ssize_t size;
    int prot;
    static char *kwlist[] = {"size", "prot", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ni", kwlist, &size, &prot))
        return NULL;
    if (size <= 0 || (size_t)size % nts_page_size) {
        PyErr_Format(PyExc_ValueError, "size must be a positive multiple of %zu, got %zd", nts_page_size, size);
        return NULL;
    }
    Mapping *self = (Mapping *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    void *p = mmap(NULL, (size_t)size, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        Py_DECREF(self);
        if (err == ENOMEM)
            return PyErr_Format(PyExc_MemoryError, "mmap of %zd bytes failed: %s", size, strerror(err));
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
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->size, self->export_mode == 1, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void mapping_releasebuffer(Mapping *self, Py_buffer *view) { self->exports--; }

static PyBufferProcs mapping_as_buffer = {
    (getbufferproc)mapping_getbuffer,
    (releasebufferproc)mapping_releasebuffer,
};

static PyMethodDef mapping_methods[] = {
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

static PyTypeObject mapping_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ntshim._core.Mapping",
    .tp_basicsize = sizeof(Mapping),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_as_buffer = &mapping_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Mapping(size, prot): anonymous private memory, unmapped when freed or collected.",
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

static PyTypeObject pin_type = {
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

/* ---- Plain system calls ---- */

static PyObject *core_mprotect(PyObject *mod, PyObject *args)
{
    unsigned long long addr, size;
    int prot;
    if (!PyArg_ParseTuple(args, "KKi", &addr, &size, &prot))
        return NULL;
    if (mprotect((void *)(uintptr_t)addr, (size_t)size, prot))
        return nts_raise_errno(errno, "mprotect(0x%llx, %llu, %d)", addr, size, prot);
    Py_RETURN_NONE;
}

static PyObject *core_madvise(PyObject *mod, PyObject *args)
{
    unsigned long long addr, size;
    int advice;
    if (!PyArg_ParseTuple(args, "KKi", &addr, &size, &advice))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = madvise((void *)(uintptr_t)addr, (size_t)size, advice);
    Py_END_ALLOW_THREADS
    if (rc)
        return nts_raise_errno(errno, "madvise(0x%llx, %llu, %d)", addr, size, advice);
    Py_RETURN_NONE;
}

static PyObject *core_expand_runs(PyObject *mod, PyObject *args)
{
    Py_buffer runs;
    unsigned long long add, step;
    if (!PyArg_ParseTuple(args, "y*KK", &runs, &add, &step))
        return NULL;
    const uint64_t *r = runs.buf;
    size_t nr = (size_t)runs.len / (2 * sizeof(uint64_t)), total = 0;
    if (step == 0 || runs.len % (2 * sizeof(uint64_t))) {
        PyBuffer_Release(&runs);
        PyErr_SetString(PyExc_ValueError, "runs must be uint64 pairs and step positive");
        return NULL;
    }
    for (size_t i = 0; i < nr; i++)
        total += (r[2 * i + 1] - r[2 * i] + step - 1) / step;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(total * sizeof(uint64_t)));
    if (out) {
        uint64_t *o = (uint64_t *)PyBytes_AS_STRING(out);
        for (size_t i = 0; i < nr; i++)
            for (uint64_t x = r[2 * i]; x < r[2 * i + 1]; x += step)
                *o++ = x + add;
    }
    PyBuffer_Release(&runs);
    return out;
}

static PyMethodDef core_methods[] = {
    {"mprotect", core_mprotect, METH_VARARGS, "mprotect(address, size, prot)"},
    {"madvise", core_madvise, METH_VARARGS, "madvise(address, size, advice)"},
    {"expand_runs", core_expand_runs, METH_VARARGS,
     "expand_runs(runs, add, step) -> bytes of uint64: every step-th value of each [start, end) run, plus add"},
    {"mprotect_tracker", nts_mprotect_tracker_new, METH_VARARGS,
     "mprotect_tracker(address, size, prots) -> Tracker (write-protect + SIGSEGV)"},
    {"uffd_sync_tracker", (PyCFunction)(void (*)(void))nts_uffd_sync_tracker_new, METH_VARARGS | METH_KEYWORDS,
     "uffd_sync_tracker(address, size, prots, *, user_mode_only, features, populate) -> Tracker"},
    {"shadow_tracker", nts_shadow_tracker_new, METH_VARARGS,
     "shadow_tracker(address, size, prots) -> Tracker (content comparison against a copy)"},
    {NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "ntshim._core", "ntshim's kernel mechanisms; see ntshim/_core/core.h.", -1, core_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    nts_page_size = (size_t)sysconf(_SC_PAGESIZE);
    if (PyType_Ready(&mapping_type) < 0 || PyType_Ready(&pin_type) < 0 || PyType_Ready(&nts_tracker_type) < 0 || PyType_Ready(&nts_writers_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Mapping", (PyObject *)&mapping_type) < 0 ||
        PyModule_AddObjectRef(m, "Pin", (PyObject *)&pin_type) < 0 ||
        PyModule_AddObjectRef(m, "Tracker", (PyObject *)&nts_tracker_type) < 0 ||
        PyModule_AddObjectRef(m, "Writers", (PyObject *)&nts_writers_type) < 0 ||
        PyModule_AddIntConstant(m, "PAGE_SIZE", (long)nts_page_size) < 0 ||
        PyModule_AddIntConstant(m, "PROT_NONE", PROT_NONE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_READ", PROT_READ) < 0 ||
        PyModule_AddIntConstant(m, "PROT_WRITE", PROT_WRITE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_EXEC", PROT_EXEC) < 0 ||
        PyModule_AddFunctions(m, nts_uffd_methods) < 0 || nts_uffd_module_init(m) < 0 || nts_mprotect_module_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
