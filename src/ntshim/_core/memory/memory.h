/* ntshim._core memory/: what the other subsystems use of the memory objects. */
#ifndef NTSHIM_MEMORY_H
#define NTSHIM_MEMORY_H

#include "common/common.h"

/* Mapping, View and Pin (mapping.c). */
extern PyTypeObject nts_mapping_type, nts_view_type, nts_pin_type;

/* Reserving ranges and second views of shared pages (placement.c). */
extern PyMethodDef nts_placement_methods[];

#endif
