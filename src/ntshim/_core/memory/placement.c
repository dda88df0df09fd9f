/* Address-space placement: reserving ranges that must not replace anything, and
 * second views of shared pages (the Python policy is ntshim/memory/placement.py,
 * limit.py, alias.py). */
#include "memory.h"

#include <errno.h>
#include <sys/mman.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* reserve_range(address, size): inaccessible, uncommitted address space exactly
 * there; FileExistsError when anything is in the way (nothing is replaced). */
static PyObject *py_reserve_range(PyObject *mod, PyObject *args)
{
    unsigned long long address, size;
    if (!PyArg_ParseTuple(args, "KK", &address, &size))
        return NULL;
    void *p = mmap((void *)(uintptr_t)address, (size_t)size, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != MAP_FAILED && (uintptr_t)p != address) { /* a kernel before 4.17 took the flag as a hint */
        munmap(p, (size_t)size);
        errno = EEXIST;
        p = MAP_FAILED;
    }
    if (p == MAP_FAILED) {
        if (errno == EEXIST)
            return PyErr_Format(PyExc_FileExistsError, "memory at 0x%llx+0x%llx is already in use", address, size);
        return nts_raise_errno(errno, "reserving 0x%llx+0x%llx", address, size);
    }
    Py_RETURN_NONE;
}

/* unmap(address, size) */
static PyObject *py_unmap(PyObject *mod, PyObject *args)
{
    unsigned long long address, size;
    if (!PyArg_ParseTuple(args, "KK", &address, &size))
        return NULL;
    if (munmap((void *)(uintptr_t)address, (size_t)size) < 0)
        return nts_raise_errno(errno, "munmap 0x%llx+0x%llx", address, size);
    Py_RETURN_NONE;
}

/* alias_onto(source, size, target): a second mapping of the pages of the shared
 * mapping at `source`, moved onto `target` — a range the caller owns (a
 * placeholder it reserved), which it replaces.  mremap(old_size=0) refuses
 * private mappings with EINVAL. */
static PyObject *py_alias_onto(PyObject *mod, PyObject *args)
{
    unsigned long long source, size, target;
    if (!PyArg_ParseTuple(args, "KKK", &source, &size, &target))
        return NULL;
    void *p =
        mremap((void *)(uintptr_t)source, 0, (size_t)size, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(uintptr_t)target);
    if (p == MAP_FAILED)
        return nts_raise_errno(errno, "mremap(0x%llx, old_size=0) onto 0x%llx", source, target);
    Py_RETURN_NONE;
}

/* map_fd_onto(fd, offset, size, prot, target): the file's pages, shared, onto a
 * range the caller owns (MAP_FIXED replaces only that placeholder). */
static PyObject *py_map_fd_onto(PyObject *mod, PyObject *args)
{
    int fd, prot;
    unsigned long long offset, size, target;
    if (!PyArg_ParseTuple(args, "iKKiK", &fd, &offset, &size, &prot, &target))
        return NULL;
    void *p = mmap((void *)(uintptr_t)target, (size_t)size, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)offset);
    if (p == MAP_FAILED)
        return nts_raise_errno(errno, "mmap(fd %d) onto 0x%llx", fd, target);
    Py_RETURN_NONE;
}

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

/* placement_probe() -> dict: what this kernel offers for placement, each tried
 * for real on a scratch page. */
static PyObject *py_placement_probe(PyObject *mod, PyObject *unused)
{
    size_t ps = nts_page_size;
    int noreplace = 0, alias = 0, dontunmap = 0;
    unsigned long long low32 = 0;
    char *a = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (a != MAP_FAILED) {
        /* MAP_FIXED_NOREPLACE: refused over our own page (EEXIST), not taken as a hint. */
        void *p = mmap(a, ps, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        noreplace = p == MAP_FAILED && errno == EEXIST;
        if (p != MAP_FAILED)
            munmap(p, ps);
        /* mremap(old_size=0): a second view of a shared page. */
        char *second = mremap(a, 0, ps, MREMAP_MAYMOVE);
        if (second != MAP_FAILED) {
            a[0] = 42;
            alias = second[0] == 42;
            munmap(second, ps);
        }
        /* MREMAP_DONTUNMAP on a shared mapping (Linux 5.13). */
        char *moved = mremap(a + ps, ps, ps, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
        if (moved != MAP_FAILED) {
            dontunmap = 1;
            munmap(moved, ps);
        }
        munmap(a, 2 * ps);
    }
#ifdef MAP_32BIT
    void *low = mmap(NULL, ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low != MAP_FAILED) {
        low32 = (unsigned long long)(uintptr_t)low;
        munmap(low, ps);
    }
#endif
    return Py_BuildValue("{sOsOsOsK}", "map_fixed_noreplace", noreplace ? Py_True : Py_False, "mremap_alias",
                         alias ? Py_True : Py_False, "mremap_dontunmap_shared", dontunmap ? Py_True : Py_False,
                         "map_32bit_address", low32);
}

PyMethodDef nts_placement_methods[] = {
    {"placement_probe", py_placement_probe, METH_NOARGS,
     "placement_probe() -> {map_fixed_noreplace, mremap_alias, mremap_dontunmap_shared, map_32bit_address}"},
    {"alias_onto", py_alias_onto, METH_VARARGS,
     "alias_onto(source, size, target): a second view of a shared mapping's pages, onto a placeholder the caller owns"},
    {"map_fd_onto", py_map_fd_onto, METH_VARARGS,
     "map_fd_onto(fd, offset, size, prot, target): a file's pages, shared, onto a placeholder the caller owns"},
    {"reserve_range", py_reserve_range, METH_VARARGS,
     "reserve_range(address, size): PROT_NONE, MAP_NORESERVE address space exactly there (FileExistsError if taken)"},
    {"unmap", py_unmap, METH_VARARGS, "unmap(address, size)"},
    {NULL},
};
