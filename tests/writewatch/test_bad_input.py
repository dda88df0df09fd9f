"""Every bad input gets a clear exception naming the problem, never a crash, and leaves the
tracking state as it was: each check writes a known set of pages first and verifies that
``dirty()`` reports exactly those afterwards.  Every check runs for every backend."""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ntshim
from ntshim.memory import PAGE_SIZE, Region, alloc
from ntshim.writewatch import ENV_VAR

P = PAGE_SIZE
NPAGES = 16
SIZE = NPAGES * P
WRITTEN = [1, 3, 4, 9, NPAGES - 1]


# ---- helpers -------------------------------------------------------------------------


def bump(region: Region, page: int) -> None:
    """Write a value different from the one there, so every backend (shadow too) sees it."""
    with memoryview(region) as mv:
        mv[page * P] = (mv[page * P] + 1) % 256


def dirty_pages(region: Region) -> list[int]:
    return [offset // P for offset in region.write_watch.dirty().offsets]


def assert_unchanged(region: Region) -> None:
    """The tracking state is what the ``watched`` fixture set up: exactly WRITTEN."""
    assert dirty_pages(region) == WRITTEN
    assert [region.protection(i * P) for i in range(NPAGES)] == ["rw"] * NPAGES


@pytest.fixture
def watched(backend: str) -> Iterator[Region]:
    """A watched region of NPAGES pages with exactly the pages WRITTEN written."""
    region = alloc(SIZE, watch=True, backend=backend)
    assert region.write_watch.backend == backend
    for page in WRITTEN:
        bump(region, page)
    assert dirty_pages(region) == WRITTEN
    yield region
    # The state is still intact at the end, and resetting it works.
    assert dirty_pages(region) == WRITTEN
    assert [o // P for o in region.write_watch.dirty(reset=True).offsets] == WRITTEN
    assert dirty_pages(region) == []
    region.free()


@pytest.fixture
def anon_mmap() -> Iterator[mmap.mmap]:
    """Page-aligned anonymous memory owned by the test (8 pages)."""
    mm = mmap.mmap(-1, 8 * P)
    yield mm
    mm.close()


# ---- alloc ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"size": 0}, ValueError, "size must be positive"),
        ({"size": -1}, ValueError, "size must be positive"),
        ({"size": -P}, ValueError, "size must be positive"),
        ({"size": 4096.0}, TypeError, "size must be an int, not float"),
        ({"size": "4096"}, TypeError, "size must be an int, not str"),
        ({"size": None}, TypeError, "size must be an int, not NoneType"),
        ({"size": True}, TypeError, "size must be an int, not bool"),
        ({"size": P, "protect": "wr?"}, ValueError, "protect must be letters from 'rwx'"),
        ({"size": P, "protect": "w"}, ValueError, "write without read"),
        ({"size": P, "protect": "wx"}, ValueError, "write without read"),
        ({"size": P, "protect": "rr"}, ValueError, "protect must be letters"),
        ({"size": P, "protect": 5.0}, TypeError, "protect must be a str"),
        ({"size": P, "protect": 8}, ValueError, "mmap.PROT_READ, PROT_WRITE and PROT_EXEC bits"),
        ({"size": P, "protect": 2}, ValueError, "write without read"),
        ({"size": P, "protect": None}, TypeError, "protect must be a str"),
        ({"size": P, "watch": "yes"}, TypeError, "watch must be a bool, not str"),
        ({"size": P, "watch": 1}, TypeError, "watch must be a bool, not int"),
        ({"size": P, "watch": True, "backend": "nope"}, ValueError, "unknown write-watch backend 'nope'"),
        ({"size": P, "watch": True, "backend": 5}, TypeError, "backend must be a str"),
        ({"size": P, "backend": "mprotect"}, ValueError, "needs watch=True"),
        ({"size": P, "watch": False, "backend": "shadow"}, ValueError, "needs watch=True"),
    ],
)
def test_alloc_bad_arguments(watched: Region, kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        alloc(**kwargs)
    assert_unchanged(watched)


def test_alloc_bad_arguments_with_watch_and_backend(watched: Region, backend: str) -> None:
    for size, exc in [(0, ValueError), (-5, ValueError), (1.5, TypeError), ("1", TypeError), (False, TypeError)]:
        with pytest.raises(exc, match="size must be"):
            alloc(size, watch=True, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="write without read"):
        alloc(P, watch=True, backend=backend, protect="w")
    with pytest.raises(TypeError, match="watch must be a bool"):
        alloc(P, watch="yes", backend=backend)  # type: ignore[arg-type]
    assert_unchanged(watched)


def test_alloc_unknown_backend_lists_the_names(watched: Region) -> None:
    with pytest.raises(ValueError, match="nope") as info:
        alloc(P, watch=True, backend="nope")
    message = str(info.value)
    for name in ("uffd-async", "uffd-sync", "mprotect", "shadow"):
        assert name in message
    assert_unchanged(watched)


def test_alloc_bogus_backend_from_environment(watched: Region, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "bogus-backend")
    with pytest.raises(ValueError, match="NTSHIM_WRITEWATCH_BACKEND") as info:
        alloc(P, watch=True)
    assert "bogus-backend" in str(info.value)
    assert "mprotect" in str(info.value)  # lists the valid names
    with pytest.raises(ValueError, match="NTSHIM_WRITEWATCH_BACKEND"):
        ntshim.memory.watch(bytearray(P))
    # An explicit backend= wins over the environment.
    with alloc(P, watch=True, backend=backend) as region:
        assert region.write_watch.backend == backend
    assert_unchanged(watched)


def test_alloc_impossibly_large(watched: Region) -> None:
    with pytest.raises(MemoryError, match="mmap"):
        alloc(1 << 62)
    # Beyond what a size_t holds: Python's usual OverflowError (as bytearray(2**64) gives).
    with pytest.raises((MemoryError, OverflowError)):
        alloc(1 << 64)
    assert_unchanged(watched)


# ---- ranges: dirty / reset / writing / protect ---------------------------------------

BAD_RANGES = [
    # (offset, size, exception, message)
    (1, None, ValueError, r"offset must be a multiple of the page size"),
    (P - 1, None, ValueError, r"offset must be a multiple of the page size"),
    (P + 1, P, ValueError, r"offset must be a multiple of the page size"),
    (-1, None, ValueError, r"offset must be >= 0"),
    (-P, P, ValueError, r"offset must be >= 0"),
    (SIZE, None, ValueError, r"beyond the end"),
    (SIZE, P, ValueError, r"beyond the end"),
    (SIZE + P, None, ValueError, r"beyond the end"),
    (100 * SIZE, 1, ValueError, r"beyond the end"),
    (0, 0, ValueError, r"size must be positive"),
    (P, -1, ValueError, r"size must be positive"),
    (0, -SIZE, ValueError, r"size must be positive"),
    (0, SIZE + 1, ValueError, r"runs past the end"),
    (P, SIZE, ValueError, r"runs past the end"),
    (SIZE - P, 2 * P, ValueError, r"runs past the end"),
    (0, 1 << 70, ValueError, r"runs past the end"),
    (0.0, None, TypeError, r"offset must be an int, not float"),
    (4096.0, P, TypeError, r"offset must be an int, not float"),
    ("0", None, TypeError, r"offset must be an int, not str"),
    (None, None, TypeError, r"offset must be an int, not NoneType"),
    (False, None, TypeError, r"offset must be an int, not bool"),
    (0, 1.5, TypeError, r"size must be an int, not float"),
    (0, "4096", TypeError, r"size must be an int, not str"),
    (0, True, TypeError, r"size must be an int, not bool"),
]
RANGE_IDS = [f"{o!r}+{s!r}" for o, s, _, _ in BAD_RANGES]


def _call(region: Region, method: str, offset: Any, size: Any) -> None:
    if method == "dirty":
        region.write_watch.dirty(offset, size)
    elif method == "dirty-reset":
        region.write_watch.dirty(offset, size, reset=True)
    elif method == "dirty-limit":
        region.write_watch.dirty(offset, size, reset=True, limit=1)
    elif method == "reset":
        region.write_watch.reset(offset, size)
    elif method == "writing":
        with region.write_watch.writing(offset, size):
            pytest.fail("writing() entered its block with a bad range")
    elif method == "protect":
        region.protect(offset, size, "r")
    else:  # pragma: no cover
        raise AssertionError(method)


@pytest.mark.parametrize("method", ["dirty", "dirty-reset", "dirty-limit", "reset", "writing", "protect"])
@pytest.mark.parametrize(("offset", "size", "exc", "match"), BAD_RANGES, ids=RANGE_IDS)
def test_bad_range(watched: Region, method: str, offset: Any, size: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        _call(watched, method, offset, size)
    assert_unchanged(watched)


@pytest.mark.parametrize("method", ["dirty", "reset", "writing"])
@pytest.mark.parametrize(("offset", "size", "exc", "match"), BAD_RANGES[:10], ids=RANGE_IDS[:10])
def test_bad_range_on_the_write_watch_object(
    watched: Region, method: str, offset: Any, size: Any, exc: type[Exception], match: str
) -> None:
    ww = watched.write_watch
    assert ww is not None
    with pytest.raises(exc, match=match):
        if method == "dirty":
            ww.dirty(offset, size, reset=True)
        elif method == "reset":
            ww.reset(offset, size)
        else:
            with ww.writing(offset, size):
                pytest.fail("writing() entered its block with a bad range")
    assert_unchanged(watched)


@pytest.mark.parametrize(
    ("offset", "exc", "match"),
    [
        (1, ValueError, "multiple of the page size"),
        (-P, ValueError, ">= 0"),
        (SIZE, ValueError, "beyond the end"),
        (1.0, TypeError, "offset must be an int"),
        (None, TypeError, "offset must be an int"),
    ],
)
def test_bad_offset_for_protection(watched: Region, offset: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        watched.protection(offset)
    assert_unchanged(watched)


@pytest.mark.parametrize(
    ("limit", "exc", "match"),
    [
        (0, ValueError, r"limit must be >= 1"),
        (-1, ValueError, r"limit must be >= 1"),
        (-(1 << 70), ValueError, r"limit must be >= 1"),
        (1.5, TypeError, r"limit must be an int, not float"),
        ("1", TypeError, r"limit must be an int, not str"),
        (True, TypeError, r"limit must be an int, not bool"),
    ],
)
@pytest.mark.parametrize("reset", [False, True])
def test_bad_limit(watched: Region, limit: Any, exc: type[Exception], match: str, reset: bool) -> None:
    with pytest.raises(exc, match=match):
        watched.write_watch.dirty(reset=reset, limit=limit)
    assert_unchanged(watched)


@pytest.mark.parametrize("reset", ["yes", 1, 0, None, 1.0])
def test_bad_reset_flag(watched: Region, reset: Any) -> None:
    with pytest.raises(TypeError, match=f"reset must be a bool, not {type(reset).__name__}"):
        watched.write_watch.dirty(reset=reset)
    with pytest.raises(TypeError, match="reset must be a bool"):
        watched.write_watch.dirty(0, P, reset=reset, limit=1)
    assert_unchanged(watched)


@pytest.mark.parametrize(
    ("protect", "exc", "match"),
    [
        ("wr?", ValueError, "protect must be letters"),
        ("w", ValueError, "write without read"),
        ("wx", ValueError, "write without read"),
        ("rwrw", ValueError, "protect must be letters"),
        ("readonly", ValueError, "protect must be letters"),
        (5.0, TypeError, "protect must be a str"),
        (None, TypeError, "protect must be a str"),
        (b"rw", TypeError, "protect must be a str"),
        (True, TypeError, "protect must be a str"),
        (-1, ValueError, "PROT_READ, PROT_WRITE and PROT_EXEC bits"),
        (0x10, ValueError, "PROT_READ, PROT_WRITE and PROT_EXEC bits"),
        (mmap.PROT_WRITE, ValueError, "write without read"),
        (mmap.PROT_WRITE | mmap.PROT_EXEC, ValueError, "write without read"),
    ],
)
def test_bad_protection_string(watched: Region, protect: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        watched.protect(0, P, protect)
    with pytest.raises(exc, match=match):
        watched.protect(0, SIZE, protect)
    assert_unchanged(watched)


def test_large_limit_is_fine(watched: Region) -> None:
    assert [o // P for o in watched.write_watch.dirty(limit=1 << 40).offsets] == WRITTEN
    assert [o // P for o in watched.write_watch.dirty(limit=numpy.int64(2)).offsets] == WRITTEN[:2]
    assert [o // P for o in watched.write_watch.dirty(P, limit=len(WRITTEN)).offsets] == WRITTEN
    assert_unchanged(watched)


@pytest.mark.parametrize(
    "limit",
    [(1 << 63) - 1, 1 << 63, 1 << 64, (1 << 64) + 1, (1 << 64) + 3, 1 << 70],
    ids=["2**63-1", "2**63", "2**64", "2**64+1", "2**64+3", "2**70"],
)
def test_huge_limit_means_no_limit_or_is_refused_clearly(watched: Region, limit: int) -> None:
    """A limit larger than the number of pages asks for every written page.  Refusing an
    absurd one is acceptable too, but only with a ValueError naming ``limit``; a wrapped
    limit (2**64+1 read as 1) or a C-level OverflowError is not."""
    try:
        result = watched.write_watch.dirty(limit=limit)
    except ValueError as e:
        assert "limit" in str(e)
    else:
        assert [o // P for o in result.offsets] == WRITTEN
    assert_unchanged(watched)


# ---- freed regions and closed watches ------------------------------------------------


def test_freed_region(watched: Region, backend: str) -> None:
    region = alloc(4 * P, watch=True, backend=backend)
    ww = region.write_watch
    assert ww is not None
    bump(region, 2)
    region.free()
    for call in (
        lambda: region.protect(0, P, "r"),
        lambda: region.protection(0),
        lambda: region.address,
    ):
        with pytest.raises(ValueError, match="freed"):
            call()
    # The watch the region had is closed with it, and every watch call says so.
    assert ww.closed and region.write_watch is None
    for watch_call in (
        lambda: ww.dirty(),
        lambda: ww.dirty(0, P, reset=True, limit=1),
        lambda: ww.reset(),
        lambda: ww.writing().__enter__(),
    ):
        with pytest.raises(ValueError, match="closed"):
            watch_call()
    with pytest.raises(ValueError, match="freed"):
        ntshim.memory.watch(region, backend=backend)
    region.free()  # twice is fine
    assert_unchanged(watched)


def test_closed_write_watch(watched: Region, backend: str, anon_mmap: mmap.mmap) -> None:
    ww = ntshim.memory.watch(anon_mmap, backend=backend)
    assert ww.backend == backend
    anon_mmap[P] = 1
    assert ww.dirty().offsets.tolist() == [P]
    ww.close()
    assert ww.closed
    with pytest.raises(ValueError, match="closed"):
        ww.dirty()
    with pytest.raises(ValueError, match="closed"):
        ww.dirty(0, P, reset=True, limit=1)
    with pytest.raises(ValueError, match="closed"):
        ww.reset()
    with pytest.raises(ValueError, match="closed"), ww.writing():
        pytest.fail("writing() entered its block on a closed watch")
    with pytest.raises(ValueError, match="closed"):
        ww.kernel_writes_tracked
    ww.close()  # twice is fine
    assert "closed" in repr(ww)
    # The memory is plain writable memory again (the fixture then closes the mmap).
    anon_mmap[2 * P] = 7
    assert anon_mmap[2 * P] == 7
    assert_unchanged(watched)


def test_closed_write_watch_of_a_region(watched: Region, backend: str) -> None:
    region = alloc(4 * P, watch=True, backend=backend)
    ww = region.write_watch
    assert ww is not None
    ww.close()
    ww.close()
    with pytest.raises(ValueError, match="closed"):
        ww.dirty()
    with pytest.raises(ValueError, match="closed"):
        ww.reset()
    with pytest.raises(ValueError, match="closed"), ww.writing():
        pytest.fail("writing() entered its block on a closed watch")
    assert region.write_watch is None  # the region no longer reaches it
    bump(region, 1)  # the region is plain memory again
    region.free()
    assert_unchanged(watched)


def test_closed_watch_releases_the_mmap(backend: str, watched: Region) -> None:
    mm = mmap.mmap(-1, 2 * P)
    ww = ntshim.memory.watch(mm, backend=backend)
    with pytest.raises(BufferError):
        mm.close()  # the watch holds an export
    assert not mm.closed
    ww.close()
    mm.close()
    assert mm.closed
    assert_unchanged(watched)


# ---- watch(): what memory it accepts -------------------------------------------------


def _read_only_numpy() -> numpy.ndarray:
    a = numpy.zeros(P, dtype=numpy.uint8)
    a.flags.writeable = False
    return a


def _closed_mmap() -> mmap.mmap:
    mm = mmap.mmap(-1, P)
    mm.close()
    return mm


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: b"\0" * P, TypeError, "read-only"),
        (lambda: bytes(P), TypeError, "read-only"),
        (_read_only_numpy, TypeError, "read-only"),
        (lambda: memoryview(b"abc" * P), TypeError, "read-only"),
        (lambda: memoryview(bytearray(P)).toreadonly(), TypeError, "read-only"),
        (lambda: 12345, TypeError, "buffer protocol"),
        (lambda: "some text", TypeError, "buffer protocol"),
        (lambda: object(), TypeError, "buffer protocol"),
        (lambda: [0] * P, TypeError, "buffer protocol"),
        (lambda: None, TypeError, "buffer protocol"),
        (lambda: bytearray(), ValueError, "empty"),
        (lambda: numpy.zeros(0, dtype=numpy.uint8), ValueError, "empty"),
        (lambda: numpy.zeros(2 * P, dtype=numpy.uint8)[::2], ValueError, "contiguous"),
        (lambda: numpy.zeros((64, 128), dtype=numpy.uint8)[:, :64], ValueError, "contiguous"),
        (_closed_mmap, ValueError, "closed"),
    ],
    ids=[
        "bytes-literal",
        "bytes",
        "readonly-numpy",
        "memoryview-of-bytes",
        "toreadonly",
        "int",
        "str",
        "object",
        "list",
        "None",
        "empty-bytearray",
        "empty-numpy",
        "strided-numpy",
        "strided-2d-numpy",
        "closed-mmap",
    ],
)
def test_watch_refuses(watched: Region, backend: str, make: Any, exc: type[Exception], match: str) -> None:
    obj = make()
    with pytest.raises(exc, match=match):
        ntshim.memory.watch(obj, backend=backend)
    with pytest.raises(exc, match=match):
        ntshim.memory.watch(obj)
    assert_unchanged(watched)


def test_watch_bad_backend_argument(watched: Region, anon_mmap: mmap.mmap) -> None:
    with pytest.raises(ValueError, match="unknown write-watch backend 'nope'"):
        ntshim.memory.watch(anon_mmap, backend="nope")
    with pytest.raises(TypeError, match="backend must be a str"):
        ntshim.memory.watch(anon_mmap, backend=3)  # type: ignore[arg-type]
    # The refused calls did not claim the memory: it can be watched now.
    ww = ntshim.memory.watch(anon_mmap, backend=watched.write_watch.backend)
    anon_mmap[0] = 1
    assert ww.dirty().offsets.tolist() == [0]
    ww.close()
    assert_unchanged(watched)


def test_overlapping_watches_are_refused(watched: Region, backend: str, anon_mmap: mmap.mmap) -> None:
    a = numpy.frombuffer(anon_mmap, dtype=numpy.uint8)
    first = ntshim.memory.watch(a[: 4 * P], backend=backend)
    assert first.address == a.ctypes.data and first.size == 4 * P
    for other in (a[2 * P :], a, a[: 4 * P], a[3 * P : 5 * P], a[P : P + 1], a[4 * P - 1 :]):
        with pytest.raises(ValueError, match="already watched"):
            ntshim.memory.watch(other, backend=backend)
        with pytest.raises(ValueError, match="already watched"):
            ntshim.memory.watch(other)  # whichever backend: still refused
    # The first watch still works and saw nothing it should not have.
    assert first.dirty().offsets.tolist() == []
    a[P + 5] += 1
    a[3 * P] += 1
    assert first.dirty().offsets.tolist() == [P, 3 * P]
    # Memory right after it (no shared page) can be watched.
    second = ntshim.memory.watch(a[4 * P :], backend=backend)
    a[5 * P] += 1
    assert second.dirty().offsets.tolist() == [P]
    assert first.dirty(reset=True).offsets.tolist() == [P, 3 * P]
    assert first.dirty().offsets.tolist() == []
    second.close()
    first.close()
    del a
    assert_unchanged(watched)


def test_watch_of_memory_inside_a_watched_region_is_refused(watched: Region, backend: str) -> None:
    arr = numpy.frombuffer(watched, dtype=numpy.uint8)
    for view in (arr, arr[P : 2 * P], arr[SIZE - 1 :]):
        with pytest.raises(ValueError, match="already watched"):
            ntshim.memory.watch(view, backend=backend)
    with pytest.raises(ValueError, match="already watched"):
        ntshim.memory.watch(watched)
    del arr, view
    # The failed attempts did not leave buffer exports behind: the region can be freed.
    assert watched.exports == 0
    assert_unchanged(watched)


# ---- property: any (offset, size, limit, reset) -------------------------------------

HP_PAGES = 32
HP_SIZE = HP_PAGES * P

# Mostly valid values (so the answers get checked), mixed with every kind of bad one.
_valid_offsets = st.integers(0, HP_PAGES - 1).map(lambda k: k * P)
_offsets = st.one_of(
    _valid_offsets,
    _valid_offsets,
    st.integers(-2, 40).map(lambda k: k * P),
    st.integers(-2 * P, 40 * P),
    st.sampled_from([None, 1.5, "0", True]),
)
_sizes = st.one_of(
    st.none(),
    st.none(),
    st.integers(1, HP_SIZE),
    st.integers(1, HP_PAGES).map(lambda k: k * P),
    st.integers(-2 * P, 40 * P),
    st.sampled_from([1.5, "4096", False]),
)
_limits = st.one_of(st.none(), st.none(), st.integers(1, 8), st.integers(-2, 40), st.sampled_from([1.5, "1", True]))
_resets = st.sampled_from([False, True] * 4 + ["yes", 1, None])


def _valid_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expected(written: set[int], offset: object, size: object, limit: object, reset: object) -> list[int] | None:
    """The pages dirty() must return, or None when the arguments must be refused."""
    if not isinstance(reset, bool):
        return None
    if limit is not None and (not _valid_int(limit) or limit < 1):  # type: ignore[operator]
        return None
    if not _valid_int(offset) or offset < 0 or offset % P or offset >= HP_SIZE:  # type: ignore[operator]
        return None
    if size is None:
        size = HP_SIZE - offset  # type: ignore[operator]
    if not _valid_int(size) or size <= 0 or size > HP_SIZE - offset:  # type: ignore[operator]
        return None
    first = offset // P  # type: ignore[operator]
    end = first + -(-size // P)  # type: ignore[operator]
    pages = sorted(p for p in written if first <= p < end)
    return pages[:limit] if limit is not None else pages


_more_writes = st.sets(st.integers(0, HP_PAGES - 1), max_size=6)
# A call with arguments drawn independently (most of them bad) ...
_any_call = st.tuples(_more_writes, _offsets, _sizes, _limits, _resets)
# ... or one whose arguments are all valid, so that answers and resets get checked often.
_valid_call = st.tuples(
    _more_writes,
    _valid_offsets.flatmap(lambda o: st.tuples(st.just(o), st.one_of(st.none(), st.integers(1, HP_SIZE - o)))),
    st.one_of(st.none(), st.integers(1, 8)),
    st.booleans(),
).map(lambda t: (t[0], t[1][0], t[1][1], t[2], t[3]))
_calls = st.lists(st.one_of(_any_call, _valid_call), min_size=1, max_size=6)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(written=st.sets(st.integers(0, HP_PAGES - 1), max_size=16), calls=_calls)
def test_dirty_with_arbitrary_arguments(backend: str, written: set[int], calls: list[tuple[Any, ...]]) -> None:
    """A fresh 32-page region per example, ``written`` pages written, then a few
    ``dirty(offset, size, reset=, limit=)`` calls, each after writing a few more pages.
    Each call is either refused (ValueError/TypeError, state untouched) or answers exactly
    the written pages of its range, first ``limit``, resetting exactly those if asked."""
    with alloc(HP_SIZE, watch=True, backend=backend) as region:
        state = set()  # the model: pages written since their last reset
        for page in sorted(written):
            bump(region, page)
        state |= written
        assert dirty_pages(region) == sorted(state)
        for more, offset, size, limit, reset in calls:
            for page in sorted(more):
                bump(region, page)
            state |= more
            before = dirty_pages(region)
            assert before == sorted(state)
            expected = _expected(state, offset, size, limit, reset)
            try:
                result = region.write_watch.dirty(offset, size, reset=reset, limit=limit)
            except (ValueError, TypeError) as e:
                assert expected is None, f"valid arguments {offset!r}, {size!r}, {limit!r}, {reset!r} refused: {e!r}"
                assert dirty_pages(region) == before
                continue
            assert expected is not None, f"invalid arguments {offset!r}, {size!r}, {limit!r}, {reset!r} accepted"
            assert [o // P for o in result.offsets] == expected
            assert len(result) == len(expected)
            assert result.address == region.address
            if reset:
                state -= set(expected)
            assert dirty_pages(region) == sorted(state)
