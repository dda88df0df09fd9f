"""Facts about this process's mappings, read from ``/proc/self/maps``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

from .protection import EXEC, READ, WRITE


class MapsEntry(NamedTuple):
    """One line of ``/proc/self/maps``: a mapping of this process, as the kernel lists it
    (not to be confused with ``_core.Mapping``, the memory a Region owns)."""

    start: int
    end: int
    prot: int
    shared: bool  # MAP_SHARED ('s' in the permissions), else private
    path: str  # empty for anonymous memory
    offset: int  # where the mapping starts in its file (0 for anonymous memory)
    file: tuple[int, int]  # (device, inode) of the file mapped; (0, 0) for anonymous memory


def mappings() -> Iterator[MapsEntry]:
    """Every mapping, ascending."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            lo_text, hi_text = fields[0].split("-")
            prot = sum(bit for bit, letter, flag in zip((READ, WRITE, EXEC), "rwx", fields[1]) if flag == letter)
            path = fields[5].strip() if len(fields) > 5 else ""
            major, minor = fields[3].split(":")
            yield MapsEntry(
                int(lo_text, 16),
                int(hi_text, 16),
                prot,
                fields[1][3] == "s",
                path,
                int(fields[2], 16),
                (os.makedev(int(major, 16), int(minor, 16)), int(fields[4])),
            )


def protections(start: int, end: int, page: int) -> bytes:
    """The protection of every page of ``[start, end)``, one PROT_* byte per page.

    Raises ValueError when part of the range is not mapped.
    """
    out = bytearray()
    cursor = start
    for lo, hi, prot, *_ in mappings():
        if hi <= cursor:
            continue
        if lo > cursor or cursor >= end:
            break
        stop = min(hi, end)
        out += bytes([prot]) * ((stop - cursor) // page)
        cursor = stop
    if cursor < end:
        raise ValueError(f"memory at {cursor:#x} (inside {start:#x}-{end:#x}) is not mapped")
    return bytes(out)


def mapping_at(address: int) -> MapsEntry | int:
    """The mapping containing ``address``, or, when nothing is mapped there, the start of
    the next mapping above it (0 if there is none)."""
    for mapping in mappings():
        if address < mapping[0]:
            return mapping[0]
        if address < mapping[1]:
            return mapping
    return 0
