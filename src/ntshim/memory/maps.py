"""Facts about this process's mappings, read from ``/proc/self/maps``."""

from __future__ import annotations

from collections.abc import Iterator

from .protection import EXEC, READ, WRITE


def _mappings() -> Iterator[tuple[int, int, int, str]]:
    """Every mapping, ascending, as ``(start, end, prot, path)`` (path empty if anonymous)."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            lo_text, hi_text = fields[0].split("-")
            prot = sum(bit for bit, letter, flag in zip((READ, WRITE, EXEC), "rwx", fields[1]) if flag == letter)
            yield int(lo_text, 16), int(hi_text, 16), prot, fields[5].strip() if len(fields) > 5 else ""


def protections(start: int, end: int, page: int) -> bytes:
    """The protection of every page of ``[start, end)``, one PROT_* byte per page.

    Raises ValueError when part of the range is not mapped.
    """
    out = bytearray()
    cursor = start
    for lo, hi, prot, _path in _mappings():
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


def mapping_at(address: int) -> tuple[int, int, int, str] | int:
    """The mapping containing ``address`` as ``(start, end, prot, path)`` (``path`` empty for
    anonymous memory), or, when nothing is mapped there, the start of the next mapping
    above it (0 if there is none)."""
    for mapping in _mappings():
        if address < mapping[0]:
            return mapping[0]
        if address < mapping[1]:
            return mapping
    return 0
