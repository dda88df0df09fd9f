/* ntshim._bench: the benchmark and test-only natives, an extension of their own (as
 * CPython keeps _testcapi apart) that the library never imports.  Writer threads,
 * kernel floors and native readers (writewatch.c), the native sync loops (sync.c).
 * They use common/common.c, compiled in, and reach _core's trackers and sync arena
 * through its capsule (capi.h). */
#ifndef NTSHIM_BENCH_H
#define NTSHIM_BENCH_H

#include "common/common.h"
#include "capi.h"

/* _core's entry points, from its capsule (module.c). */
extern const nts_capi *nts_core;

/* ---- native writer threads (writers.c) ---- */
typedef struct nts_writer_pool nts_writer_pool;
typedef struct {
    nts_writer_pool *pool;
    pthread_t thread;
    unsigned index;
    uint64_t writes, ns;
} nts_writer;
struct nts_writer_pool {
    char *base;
    size_t npages;
    int random, stop;
    unsigned nthreads;
    nts_writer *w;
};
extern PyTypeObject nts_writers_type;
uint64_t nts_now_ns(void);
/* Start `nthreads` writers over `npages` pages at `base`; 0 or an errno. */
int nts_writers_start(nts_writer_pool *pool, char *base, size_t npages, unsigned nthreads, int random);
/* Stop and join them; total stores and summed per-thread running time. */
void nts_writers_stop(nts_writer_pool *pool, uint64_t *writes, uint64_t *ns);

/* ---- kernel floors and native readers for the benchmarks (writewatch.c) ---- */
PyObject *nts_floor_writewatch(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *nts_native_reader(PyObject *mod, PyObject *args);
/* ---- the native loops of `ntshim bench sync` (sync.c) ---- */
PyObject *nts_bench_sync(PyObject *mod, PyObject *args);

#endif
