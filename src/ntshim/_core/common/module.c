/* PyInit__core: the module, each subsystem's part of it, and the plain system
 * calls and run helpers that belong to no subsystem. */
#include "common.h"
#include "memory/memory.h"
#include "snapshot/snapshot.h"
#include "sync/sync.h"
#include "writewatch/writewatch.h"
#include "capi.h"

#include <errno.h>
#include <unistd.h>
#include <sys/mman.h>

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

/* "O&" converter: a Python int in [0, 2**64), as a uint64_t. */
static int u64_arg(PyObject *obj, void *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "expected an int, not %.100s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%R is outside [0, 2**64)", obj);
        return 0;
    }
    *(uint64_t *)out = (uint64_t)v;
    return 1;
}

/* Check runs (native uint64 [start, end) pairs) for expanding every step-th
 * value plus `add`: whole multiples of step, ascending, not overlapping, with
 * start + add and end + add within uint64.  Sets *values (how many there are)
 * and returns 0, or returns -1 with ValueError set. */
static int check_runs(const Py_buffer *runs, uint64_t add, uint64_t step, size_t *values)
{
    const uint64_t *r = runs->buf;
    size_t n = (size_t)runs->len / sizeof *r, total = 0;
    if (step == 0) {
        PyErr_SetString(PyExc_ValueError, "granularity must be positive");
        return -1;
    }
    if (runs->len % (2 * sizeof *r)) {
        PyErr_Format(PyExc_ValueError,
                     "runs must be native uint64 (start, end) pairs: %zd bytes is not a multiple "
                     "of 16",
                     runs->len);
        return -1;
    }
    for (size_t i = 0; i < n; i += 2) {
        uint64_t start = r[i], end = r[i + 1];
        const char *why = start % step || end % step ? "is not whole pages of the granularity"
                          : start > end              ? "ends before it starts"
                          : i && start < r[i - 1]    ? "starts before the previous run ends (runs ascend, apart)"
                          : end > UINT64_MAX - add   ? "passes 2**64 once the address is added"
                                                     : NULL;
        if (why) {
            PyErr_Format(PyExc_ValueError, "run %zu [0x%llx, 0x%llx) %s", i / 2, (unsigned long long)start,
                         (unsigned long long)end, why);
            return -1;
        }
        /* Cannot wrap: the runs are disjoint ranges of uint64, so at most 2**64 / step values in all. */
        total += (size_t)((end - start) / step);
    }
    *values = total;
    return 0;
}

/* The arguments (runs, add, step) of count_runs and expand_runs, checked; on
 * success the caller owns *runs and releases it. */
static int parse_runs(PyObject *args, Py_buffer *runs, uint64_t *add, uint64_t *step, size_t *values)
{
    if (!PyArg_ParseTuple(args, "y*O&O&", runs, u64_arg, add, u64_arg, step))
        return -1;
    if (check_runs(runs, *add, *step, values)) {
        PyBuffer_Release(runs);
        return -1;
    }
    return 0;
}

static PyObject *core_count_runs(PyObject *mod, PyObject *args)
{
    Py_buffer runs;
    uint64_t add, step;
    size_t values;
    if (parse_runs(args, &runs, &add, &step, &values))
        return NULL;
    PyBuffer_Release(&runs);
    return PyLong_FromSize_t(values);
}

static PyObject *core_expand_runs(PyObject *mod, PyObject *args)
{
    Py_buffer runs;
    uint64_t add, step;
    size_t values;
    if (parse_runs(args, &runs, &add, &step, &values))
        return NULL;
    PyObject *out = NULL;
    if (values > (size_t)PY_SSIZE_T_MAX / sizeof(uint64_t))
        PyErr_Format(PyExc_MemoryError, "%zu values do not fit in memory", values);
    else
        out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(values * sizeof(uint64_t)));
    if (out) {
        const uint64_t *r = runs.buf;
        uint64_t *o = (uint64_t *)PyBytes_AS_STRING(out);
        for (size_t i = 0; i < (size_t)runs.len / sizeof *r; i += 2)
            for (uint64_t k = 0, n = (r[i + 1] - r[i]) / step; k < n; k++) /* counted: x += step could wrap */
                *o++ = r[i] + k * step + add;
    }
    PyBuffer_Release(&runs);
    return out;
}

static PyMethodDef core_methods[] = {
    {"mprotect", core_mprotect, METH_VARARGS, "mprotect(address, size, prot)"},
    {"madvise", core_madvise, METH_VARARGS, "madvise(address, size, advice)"},
    {"expand_runs", core_expand_runs, METH_VARARGS,
     "expand_runs(runs, add, step) -> bytes of uint64: every step-th value of each [start, end) run, plus add"},
    {"count_runs", core_count_runs, METH_VARARGS,
     "count_runs(runs, add, step) -> int: how many values expand_runs would return; ValueError for runs it refuses"},
    {"crc32c", (PyCFunction)(void (*)(void))nts_py_crc32c, METH_VARARGS | METH_KEYWORDS,
     "crc32c(buffer, value=0, *, portable=False) -> int: CRC32C (Castagnoli) of the bytes, continuing from value; "
     "portable=True forces the table implementation (for tests)"},
    {"crc32c_pages", (PyCFunction)(void (*)(void))nts_py_crc32c_pages, METH_VARARGS | METH_KEYWORDS,
     "crc32c_pages(buffer, page_size, *, portable=False) -> bytes: the CRC32C of every page_size bytes (the last "
     "page may be partial), one little-endian uint32 each; without the GIL for large buffers"},
    {NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "ntshim._core", "ntshim's kernel mechanisms; see ntshim/_core/*/*.h.", -1, core_methods,
};

/* For ntshim._bench (capi.h). */
static const nts_capi core_capi = {
    &nts_tracker_type,    nts_tracker_query, nts_sync_py_arena,    nts_sync_wait_one,
    nts_sync_sem_release, nts_sync_event_op, nts_sync_spin_counts,
};

PyMODINIT_FUNC PyInit__core(void)
{
    nts_page_size = (size_t)sysconf(_SC_PAGESIZE);
    if (PyType_Ready(&nts_mapping_type) < 0 || PyType_Ready(&nts_pin_type) < 0 || PyType_Ready(&nts_view_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Mapping", (PyObject *)&nts_mapping_type) < 0 ||
        PyModule_AddObjectRef(m, "Pin", (PyObject *)&nts_pin_type) < 0 ||
        PyModule_AddIntConstant(m, "PAGE_SIZE", (long)nts_page_size) < 0 ||
        PyModule_AddIntConstant(m, "PROT_NONE", PROT_NONE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_READ", PROT_READ) < 0 ||
        PyModule_AddIntConstant(m, "PROT_WRITE", PROT_WRITE) < 0 ||
        PyModule_AddIntConstant(m, "PROT_EXEC", PROT_EXEC) < 0 ||
        PyModule_AddIntConstant(m, "MADV_DONTNEED", MADV_DONTNEED) < 0 ||
        PyModule_AddIntConstant(m, "MADV_FREE", MADV_FREE) < 0 ||
        PyModule_AddIntConstant(m, "MADV_REMOVE", MADV_REMOVE) < 0 || nts_writewatch_module_init(m) < 0 ||
        nts_sync_module_init(m) < 0 || nts_snapshot_module_init(m) < 0 ||
        PyModule_AddFunctions(m, nts_placement_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *capi = PyCapsule_New((void *)&core_capi, NTS_CAPI_NAME, NULL);
    if (!capi || PyModule_AddObject(m, "_C_API", capi) < 0) { /* steals capi only on success */
        Py_XDECREF(capi);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
