"""Page protections as users write them ("rw", "r", "none", ..., or ``mmap.PROT_*`` bits) and as the kernel
takes them."""

from __future__ import annotations

from .. import _core

READ, WRITE, EXEC = _core.PROT_READ, _core.PROT_WRITE, _core.PROT_EXEC
_LETTERS = {"r": READ, "w": WRITE, "x": EXEC}


def parse(protect: object) -> int:
    """``"rw"`` → PROT_READ|PROT_WRITE.  Letters from ``rwx`` in any order, or ``"none"`` / ``""``;
    or an int of ``mmap.PROT_READ``, ``PROT_WRITE`` and ``PROT_EXEC`` bits (``0``: ``PROT_NONE``).

    Write access without read access does not exist on the hardware we run on, so ``"w"``
    and ``"wx"`` (and ``PROT_WRITE`` without ``PROT_READ``) are refused rather than silently widened.
    """
    if isinstance(protect, int) and not isinstance(protect, bool):
        if protect & ~(READ | WRITE | EXEC) or protect < 0:
            raise ValueError(
                f"protect must be mmap.PROT_READ, PROT_WRITE and PROT_EXEC bits (or 0 for none), got {protect:#x}"
            )
        bits = protect
    elif isinstance(protect, str):
        bits = _parse_letters(protect)
    else:
        raise TypeError(
            f"protect must be a str such as 'rw', 'r' or 'none', or mmap.PROT_* bits, not {type(protect).__name__}"
        )
    if bits & WRITE and not bits & READ:
        raise ValueError(f"protect {protect!r} asks for write without read access; use 'rw' (PROT_READ | PROT_WRITE)")
    return bits


def _parse_letters(protect: str) -> int:
    text = protect.lower()
    if text in ("", "none", "-", "---"):
        return 0
    text = text.replace("-", "")
    if not text or len(set(text)) != len(text) or any(c not in _LETTERS for c in text):
        raise ValueError(f"protect must be letters from 'rwx' (e.g. 'rw', 'r', 'rx') or 'none', got {protect!r}")
    bits = 0
    for c in text:
        bits |= _LETTERS[c]
    return bits


def format(bits: int) -> str:
    """PROT_READ|PROT_WRITE → ``"rw"``; 0 → ``"none"``."""
    text = "".join(c for c, bit in _LETTERS.items() if bits & bit)
    return text or "none"
