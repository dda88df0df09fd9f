/* What ntshim._core lends ntshim._bench, as a capsule (ntshim._core._C_API): the
 * benchmark natives drive a tracker and the sync arena that _core owns.  Two
 * extensions share no symbols, and compiling the tracker or the arena into _bench
 * would give it a second Tracker type and a second arena, with their own locks and
 * fork() handlers; a capsule hands over _core's own.  Internal: no compatibility
 * promise beyond one build of ntshim. */
#ifndef NTSHIM_CAPI_H
#define NTSHIM_CAPI_H

#include "sync/sync.h"
#include "writewatch/writewatch.h"

#define NTS_CAPI_NAME "ntshim._core._C_API"

typedef struct {
    PyTypeObject *tracker_type;
    int (*tracker_query)(nts_tracker *t, size_t first, size_t count, int reset, size_t limit, nts_runs *out);
    nts_arena *(*sync_arena)(void);
    int (*sync_wait_one)(nts_arena *a, uint32_t slot, const struct timespec *deadline, uint32_t owner, int *abandoned);
    int (*sync_sem_release)(nts_arena *a, uint32_t slot, uint32_t n, uint32_t *prev);
    int (*sync_event_op)(nts_arena *a, uint32_t slot, int op, int *prev);
    void (*sync_spin_counts)(nts_sync_spins *out); /* (the floors spin as long) */
} nts_capi;

#endif
