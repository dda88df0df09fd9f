"""Checks of user-supplied numbers, shared by every public entry point so that the same
mistake gets the same message everywhere."""

from __future__ import annotations

import operator


def as_int(value: object, name: str) -> int:
    """``value`` as an int; TypeError naming the argument otherwise (bool is refused too)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


def page_range(offset: object, size: object, total: int, page: int) -> tuple[int, int]:
    """Validate a byte range inside ``total`` bytes of memory and return it as
    ``(first_page, page_count)``.

    ``offset`` must be page aligned; ``size`` (``None``: up to the end) must be positive and
    is rounded up to whole pages; the range must lie inside the memory.
    """
    offset = as_int(offset, "offset")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if offset % page:
        raise ValueError(f"offset must be a multiple of the page size ({page}), got {offset:#x}")
    if offset >= total:
        raise ValueError(f"offset {offset:#x} is beyond the end of the {total:#x}-byte memory")
    if size is None:
        size = total - offset
    size = as_int(size, "size")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if size > total - offset:
        raise ValueError(f"range {offset:#x}+{size:#x} runs past the end of the {total:#x}-byte memory")
    return offset // page, -(-size // page)
