/* The benchmark and test-only natives: writer threads, kernel floors, native readers
 * and the native sync loops. */
#ifndef NTSHIM_BENCH_H
#define NTSHIM_BENCH_H

#include "common/common.h"
#include "sync/sync.h"
#include "writewatch/writewatch.h"

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

/* ---- kernel floors and native readers for the benchmarks (bench.c) ---- */
PyObject *nts_floor_writewatch(PyObject *mod, PyObject *args, PyObject *kw);
PyObject *nts_native_reader(PyObject *mod, PyObject *args);
PyObject *nts_bench_sync(PyObject *mod, PyObject *args);

#endif
