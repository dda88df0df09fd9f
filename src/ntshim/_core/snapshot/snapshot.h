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

/* ---- Consistent saves (freeze.c) ---- */
typedef struct nts_tracker nts_tracker;
/* +1 each time a freeze begins (before it protects anything). */
extern unsigned nts_freeze_epoch;
/* From the SIGSEGV handler (mprotect.c), for a write fault at addr before the
 * mprotect backend resolves it: 1 when the write may simply run again, 0 to go
 * on (the mprotect backend's resolution, then the chain).  Waits while a freeze
 * is being set up; copies the page first if the freeze needs it.  Async-signal-safe. */
int nts_freeze_fault(uintptr_t addr);
/* Before an operation changes the protection or contents of [start, start+len)
 * (a kernel-write window, a protection change, a discard, a close): copy the
 * pages an active freeze still needs and give uffd-async pages their owner's
 * protection back.  Returns the freeze epoch it saw: the caller re-checks it
 * under its tracker lock, and settles again if a freeze began meanwhile.  Call
 * without any tracker lock held (a freeze being set up takes them). */
unsigned nts_freeze_settle(uintptr_t start, size_t len);
/* The mprotect backend gives a whole range back (a mapping could not be split):
 * first copy every page an active freeze still needs there.  Async-signal-safe. */
void nts_freeze_settle_tracker(nts_tracker *t);
/* Add the Freeze type; install the fork() handler. */
int nts_freeze_module_init(PyObject *module);

#endif
