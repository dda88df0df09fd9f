"""The shared-memory rule: which write-watch backend can see every write to a buffer.

Write protection (``uffd-async``, ``uffd-sync``, ``mprotect``) sees writes made through this
process's mappings only.  A shared mapping of a *file* — a regular file, a memfd,
``/dev/shm``, SysV shared memory — can be written at any moment by another process that
maps or ``write()``s the same file, invisibly, so a delta built from those backends could
silently miss data.  The ``shadow`` backend compares the memory with a copy and so sees
every change, whoever made it: such buffers are watched with it (or refused when the caller
forces another backend).

*Anonymous* shared memory (``mmap.mmap(-1, n)``, ``ntshim.alloc(shared=True)``) has no
name: only this process and the children it forks can reach it (and debuggers, which can
write private memory as well).  It is treated as this process's memory and watched with the
requested backend; if forked children write it, pass ``backend="shadow"``.  Whether another
process has it mapped cannot be known reliably (``/proc/<pid>/smaps`` counts only the pages a
child has touched so far), so this is the documented rule, not a detection.
"""

from __future__ import annotations

from ..memory import maps

SHADOW = "shadow"


def _anonymous(entry: maps.MapsEntry) -> bool:
    # MAP_SHARED | MAP_ANONYMOUS is backed by an unlinked shmem file the kernel names
    # "/dev/zero" (as a shared mapping of /dev/zero itself is); named with
    # PR_SET_VMA_ANON_NAME it shows as "[anon_shmem:<name>]".
    return entry.path in ("/dev/zero (deleted)", "/dev/zero") or entry.path.startswith("[anon_shmem:")


def shared_file(address: int, size: int, mappings: list[maps.MapsEntry]) -> str | None:
    """The path (as /proc/self/maps shows it) of a shared file mapping under any byte of
    ``[address, address + size)``, or None when all of it is private or anonymous memory."""
    for entry in mappings:
        if entry.end <= address:
            continue
        if entry.start >= address + size:
            break
        if entry.shared and not _anonymous(entry):
            return entry.path or "an unnamed shared mapping"
    return None


def backend_for(
    what: str, address: int, size: int, requested: str | None, mappings: list[maps.MapsEntry]
) -> str | None:
    """The backend to watch a buffer with: ``requested`` (None: ntshim's choice) for private
    and anonymous memory, ``shadow`` for a shared file mapping, where a ``requested`` backend
    other than ``shadow`` raises ValueError."""
    path = shared_file(address, size, mappings)
    if path is None:
        return requested
    if requested is None or requested == SHADOW:
        return SHADOW
    raise ValueError(
        f"{what} lies in a shared mapping of {path}, which other processes can write; the {requested} backend sees "
        "only this process's writes, so a delta could miss theirs.  Pass backend=None (shared file mappings are "
        "then watched by comparison, with 'shadow') or backend='shadow'"
    )
