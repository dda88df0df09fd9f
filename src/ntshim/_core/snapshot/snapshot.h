/* ntshim._core snapshot/: the mechanism under ntshim.snapshot, a CRC32C
 * (Castagnoli) checksum of each stored page.  Policy (what to save, when, where)
 * is Python's. */
#ifndef NTSHIM_SNAPSHOT_H
#define NTSHIM_SNAPSHOT_H

#include "common/common.h"

/* CRC32C of len bytes, continuing from `crc` (0 to start; the value a previous
 * call returned to go on), with the SSE4.2 instruction when the CPU has it and
 * `portable` is 0, else with tables.  Pre- and post-inverted, as zlib's crc32:
 * nts_crc32c(0, "123456789", 9, 0) == 0xE3069283. */
uint32_t nts_crc32c(uint32_t crc, const void *buf, size_t len, int portable);

/* Whether nts_crc32c uses the CPU's crc32 instruction (checked once, at init). */
extern int nts_crc32c_hardware;

/* crc32c(buffer, value=0, *, portable=False) and crc32c_pages(buffer, page_size,
 * *, portable=False), for core_methods (module.c); nts_snapshot_module_init fills
 * the tables and adds CRC32C_HARDWARE. */
PyObject *nts_py_crc32c(PyObject *mod, PyObject *args, PyObject *kwargs);
PyObject *nts_py_crc32c_pages(PyObject *mod, PyObject *args, PyObject *kwargs);
int nts_snapshot_module_init(PyObject *module);

#endif
