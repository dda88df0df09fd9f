"""Facts about this process's mappings, read from ``/proc/self/maps``."""

from __future__ import annotations

from .protection import EXEC, READ, WRITE


def protections(start: int, end: int, page: int) -> bytes:
    """The protection of every page of ``[start, end)``, one PROT_* byte per page.

    Raises ValueError when part of the range is not mapped.
    """
    out = bytearray()
    cursor = start
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split(None, 2)[:2]
            lo_text, hi_text = span.split("-")
            lo, hi = int(lo_text, 16), int(hi_text, 16)
            if hi <= cursor:
                continue
            if lo > cursor or lo >= end:
                break
            prot = sum(bit for bit, letter, flag in zip((READ, WRITE, EXEC), "rwx", perms) if flag == letter)
            stop = min(hi, end)
            out += bytes([prot]) * ((stop - cursor) // page)
            cursor = stop
            if cursor >= end:
                break
    if cursor < end:
        raise ValueError(f"memory at {cursor:#x} (inside {start:#x}-{end:#x}) is not mapped")
    return bytes(out)


def mapping_at(address: int) -> tuple[int, int, int, str] | int:
    """The mapping containing ``address`` as ``(start, end, prot, path)`` (``path`` empty for
    anonymous memory), or, when nothing is mapped there, the start of the next mapping
    above it (0 if there is none)."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            lo_text, hi_text = fields[0].split("-")
            lo, hi = int(lo_text, 16), int(hi_text, 16)
            if address < lo:
                return lo
            if address < hi:
                perms = fields[1]
                prot = sum(bit for bit, letter, flag in zip((READ, WRITE, EXEC), "rwx", perms) if flag == letter)
                path = fields[5].strip() if len(fields) > 5 else ""
                return lo, hi, prot, path
    return 0
