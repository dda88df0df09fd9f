/* PyInit__bench: the benchmark and test-only natives (bench.h). */
#include "bench.h"

#include <unistd.h>

const nts_capi *nts_core;

static PyMethodDef bench_methods[] = {
    {"floor_writewatch", (PyCFunction)(void (*)(void))nts_floor_writewatch, METH_VARARGS | METH_KEYWORDS,
     "floor_writewatch(kind, pages, threads, random, delay_ns, duration_ns, reset) -> "
     "(writes, write_ns, get_ns, reset_ns, reported): a write-watch mechanism driven by minimal C"},
    {"native_reader", nts_native_reader, METH_VARARGS,
     "native_reader(tracker, delay_ns, duration_ns, reset) -> (get_ns, reset_ns, reported): "
     "the tracker queried from C every delay, as a native caller would"},
    {"bench_sync", nts_bench_sync, METH_VARARGS,
     "bench_sync(mechanism, test, processes, amount, (sem, a, b) slots) -> (elapsed_ns, round_trips): "
     "the contended-wait or zigzag loop in C (mechanism 0 floor-futex, 1 floor-eventfd, 2 ntshim futex, 3 "
     "floor-futex-fifo)"},
    {NULL},
};

static struct PyModuleDef bench_module = {
    PyModuleDef_HEAD_INIT,
    "ntshim._bench",
    "ntshim's benchmark and test-only natives (writer threads, kernel floors, native loops); see src/ntshim/_bench/.",
    -1,
    bench_methods,
};

PyMODINIT_FUNC PyInit__bench(void)
{
    nts_page_size = (size_t)sysconf(_SC_PAGESIZE);
    nts_core = PyCapsule_Import(NTS_CAPI_NAME, 0);
    if (!nts_core || PyType_Ready(&nts_writers_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&bench_module);
    if (m && PyModule_AddObjectRef(m, "Writers", (PyObject *)&nts_writers_type) < 0)
        Py_CLEAR(m);
    return m;
}
