/* ntshim._core memory/: what the other subsystems use of the memory objects. */
#ifndef NTSHIM_MEMORY_H
#define NTSHIM_MEMORY_H

#include "common/common.h"

/* Mapping, View and Pin (mapping.c). */
extern PyTypeObject nts_mapping_type, nts_view_type, nts_pin_type;

/* The owner's protection (PROT_* bits) of each page of a piece of memory, kept
 * once: a Mapping has one, and a write watch over a Mapping shares it (reading
 * it, and changing it under its lock for Mapping._change_protection) instead of
 * keeping a copy (a watch of memory ntshim does not own keeps them in its book).
 * Mapped apart from the heap, as a tracker's book is (tracker.h): the fault
 * resolvers read it, and a watch of a heap buffer covers heap pages.  The last of
 * its holders to let go (under the GIL) unmaps it. */
typedef struct nts_prot_table {
    Py_ssize_t refs;
    size_t size; /* bytes mapped */
    uint8_t prot[];
} nts_prot_table;

void nts_prot_table_release(nts_prot_table *table);
/* A new reference to the table of Mapping `mapping` (made on its first watch),
 * which must span exactly npages pages from `base`; NULL with an exception set
 * otherwise. */
nts_prot_table *nts_mapping_prot_table(PyObject *mapping, uintptr_t base, size_t npages);

/* Reserving ranges and second views of shared pages (placement.c). */
extern PyMethodDef nts_placement_methods[];

#endif
