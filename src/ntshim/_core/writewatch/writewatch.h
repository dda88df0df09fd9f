/* ntshim._core writewatch/: what the rest of the extension (and native callers) use of
 * the write-watch trackers.  tracker.h holds what only writewatch/ itself shares. */
#ifndef NTSHIM_WRITEWATCH_H
#define NTSHIM_WRITEWATCH_H

#include "common/common.h"

typedef struct nts_tracker nts_tracker;
extern PyTypeObject nts_tracker_type;
/* What Tracker.dirty does, for native callers (no GIL needed): the written
 * pages of [first, first+count) into `out`, reset when `reset`; 0 or an errno
 * (EBADF once closed; ECHILD for a userfaultfd tracker in a forked child, where
 * the registration belongs to the parent). */
int nts_tracker_query(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out);
/* Add the Tracker type, the tracker constructors, the userfaultfd probes and their
 * constants to the module, and install the fork() handlers (once per process). */
int nts_writewatch_module_init(PyObject *mod);

#endif
