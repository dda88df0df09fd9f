"""Page protections as users write them ("rw", "r", "none", ...) and as the kernel takes them."""

from __future__ import annotations

from .. import _core

READ, WRITE, EXEC = _core.PROT_READ, _core.PROT_WRITE, _core.PROT_EXEC
_LETTERS = {"r": READ, "w": WRITE, "x": EXEC}


def parse(protect: object) -> int:
    """``"rw"`` → PROT_READ|PROT_WRITE.  Letters from ``rwx`` in any order, or ``"none"`` / ``""``.

    Write access without read access does not exist on the hardware we run on, so ``"w"``
    and ``"wx"`` are refused rather than silently widened.
    """
    if not isinstance(protect, str):
        raise TypeError(f"protect must be a str such as 'rw', 'r' or 'none', not {type(protect).__name__}")
    text = protect.lower()
    if text in ("", "none", "-", "---"):
        return 0
    text = text.replace("-", "")
    if not text or len(set(text)) != len(text) or any(c not in _LETTERS for c in text):
        raise ValueError(f"protect must be letters from 'rwx' (e.g. 'rw', 'r', 'rx') or 'none', got {protect!r}")
    bits = 0
    for c in text:
        bits |= _LETTERS[c]
    if bits & WRITE and not bits & READ:
        raise ValueError(f"protect {protect!r} asks for write without read access; use 'rw'")
    return bits


def format(bits: int) -> str:
    """PROT_READ|PROT_WRITE → ``"rw"``; 0 → ``"none"``."""
    text = "".join(c for c, bit in _LETTERS.items() if bits & bit)
    return text or "none"
