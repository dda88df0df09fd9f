"""Reservations committed in parts: reserve / commit / decommit / view, with and without a watch."""

from __future__ import annotations

import pytest

import ntshim
from ntshim.memory import PAGE_SIZE as PS

GIB = 1 << 30
CHUNK = 16 * PS


def maps_perms(address: int) -> str:
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return perms
    return "unmapped"


def pages(dirty: ntshim.DirtyPages) -> list[int]:
    return [offset // PS for offset in dirty]


def test_a_reservation_is_inaccessible_and_costs_nothing_until_committed() -> None:
    with ntshim.reserve(GIB) as r:
        assert r.size == GIB
        assert not r.committed(0) and not r.committed(GIB - PS)
        assert r.protection(0) == "none"
        assert maps_perms(r.address) == "---p"
        with pytest.raises(BufferError):
            memoryview(r)
        with pytest.raises(ValueError, match="not committed"):
            r.protect(0, PS, "r")
        with open("/proc/self/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        assert rss_kib < GIB // 1024  # obviously not backed


def test_only_a_reservation_commits_decommits_and_discards() -> None:
    with ntshim.reserve(2 * PS) as r, ntshim.alloc(2 * PS) as plain:
        assert type(r) is ntshim.Reservation and isinstance(r, ntshim.Region)
        assert type(plain) is ntshim.Region and not isinstance(plain, ntshim.Reservation)
        for name in ("commit", "decommit", "discard"):
            assert callable(getattr(r, name)) and not hasattr(plain, name)
        assert plain.committed(0) and plain.committed(PS)  # every page of an alloc() is committed


def test_commit_state_is_the_mapping_s_own() -> None:
    with ntshim.reserve(4 * PS) as r:
        r.commit(PS, 2 * PS, "r")
        assert r._commit_state(0, 4) == b"\x00\x01\x01\x00"
        assert r._protections(0, 4) == bytes([0, 1, 1, 0])
        r.decommit(2 * PS, PS)
        assert r._commit_state(0, 4) == b"\x00\x01\x00\x00"
        assert [r.committed(i * PS) for i in range(4)] == [False, True, False, False]


def test_commit_in_parts_then_decommit_reads_zero_when_committed_again() -> None:
    with ntshim.reserve(GIB) as r:
        middle, end = GIB // 2, GIB - CHUNK
        for offset in (0, middle, end):
            r.commit(offset, CHUNK)
            assert r.committed(offset) and r.protection(offset) == "rw"
            with r.view(offset, CHUNK) as v:
                assert v[0] == 0 and not v.readonly
                v[-1] = 7
        assert not r.committed(CHUNK)
        r.commit(middle, CHUNK, "r")  # already committed: contents kept, protection changed
        with r.view(middle, CHUNK) as v:
            assert v.readonly and v[-1] == 7
        r.decommit(middle, CHUNK)
        assert not r.committed(middle) and maps_perms(r.address + middle) == "---p"
        r.commit(middle, CHUNK)
        with r.view(middle, CHUNK) as v:
            assert v[-1] == 0
        with r.view(end, CHUNK) as v:
            assert v[-1] == 7  # the last byte of the reservation


def test_views_guard_only_their_own_pages() -> None:
    with ntshim.reserve(8 * PS) as r:
        r.commit(0, 8 * PS)
        v = r.view(0, 2 * PS)
        with pytest.raises(BufferError):
            r.decommit(PS, PS)  # under the view
        with pytest.raises(BufferError):
            r.protect(0, PS, "r")  # the view is writable
        r.decommit(4 * PS, 4 * PS)  # elsewhere: fine
        with pytest.raises(BufferError):
            r.free()
        with pytest.raises(BufferError, match="without read access"):
            r.view(3 * PS, 2 * PS)  # page 4 is decommitted
        v.release()
        r.protect(0, PS, "r")
        with r.view(0, PS) as ro:
            assert ro.readonly


def test_align() -> None:
    with ntshim.reserve(PS, align=1 << 16) as r:
        assert r.address % (1 << 16) == 0
    for bad in (3, -4096, 1 << 16 | 1):
        with pytest.raises(ValueError, match="align"):
            ntshim.reserve(PS, align=bad)


def test_watched_reservation_tracks_committed_pages_and_decommit_forgets(backend: str) -> None:
    with ntshim.reserve(GIB, watch=True, backend=backend) as r:
        assert len(r.write_watch.dirty()) == 0
        middle, end = GIB // 2, GIB - CHUNK
        for offset in (0, middle, end):
            r.commit(offset, CHUNK)
        assert len(r.write_watch.dirty()) == 0  # committing is not writing
        for offset in (0, middle, end):
            with r.view(offset, CHUNK) as v:
                v[PS + 1] = 1
        v = r.view(end, CHUNK)
        v[-1] = 9  # the very last byte of the reservation
        v.release()
        expected = [1, middle // PS + 1, end // PS + 1, GIB // PS - 1]
        assert pages(r.write_watch.dirty()) == expected
        assert pages(r.write_watch.dirty(GIB - PS, PS)) == [GIB // PS - 1]
        # Decommit: the pages' write state goes with their contents (as on Windows) ...
        r.decommit(middle, CHUNK)
        assert pages(r.write_watch.dirty()) == [1, end // PS + 1, GIB // PS - 1]
        # ... and committed again they start clean and zero, and are tracked again.
        r.commit(middle, CHUNK)
        assert pages(r.write_watch.dirty(middle, CHUNK)) == []
        with r.view(middle, CHUNK) as v:
            assert v[PS + 1] == 0
            v[3 * PS] = 5
        assert pages(r.write_watch.dirty(middle, CHUNK)) == [middle // PS + 3]


def test_decommitting_pages_written_under_a_reset_cycle(backend: str) -> None:
    """Reset, write, decommit, recommit, write again: only the last write is reported."""
    with ntshim.reserve(64 * PS, watch=True, backend=backend) as r:
        r.commit(0, 64 * PS)
        with r.view() as v:
            v[10 * PS] = 1
        r.write_watch.reset()
        with r.view() as v:
            v[11 * PS] = 1
        r.decommit(8 * PS, 8 * PS)
        r.commit(8 * PS, 8 * PS)
        with r.view() as v:
            v[12 * PS] = 1
        assert pages(r.write_watch.dirty(reset=True)) == [12]
        assert pages(r.write_watch.dirty()) == []


def test_discard_keeps_committed_pages_usable_and_watched_state_intact(backend: str) -> None:
    with ntshim.reserve(8 * PS) as plain:
        plain.commit(0, 4 * PS)  # pages 4..7 stay reserved: discard leaves them alone
        with plain.view(0, 4 * PS) as v:
            v[:] = b"\x5a" * (4 * PS)
        plain.discard(0, 8 * PS)
        with plain.view(0, 4 * PS) as v:
            assert v[PS] in (0x5A, 0)  # kept until the kernel reclaims it
            v[PS] = 1  # and still usable
        assert not plain.committed(5 * PS)
    with ntshim.reserve(8 * PS, watch=True, backend=backend) as watched:
        watched.commit(0, 8 * PS)
        with memoryview(watched) as v:
            v[2 * PS] = 9
        watched.discard(0, 8 * PS)
        assert pages(watched.write_watch.dirty()) == [2]
        with memoryview(watched) as v:
            assert v[2 * PS] == 9  # nothing is freed under a watch


def test_bad_arguments_of_the_reservation_calls() -> None:
    with pytest.raises(ValueError, match="size must be positive"):
        ntshim.reserve(0)
    with pytest.raises(ValueError, match="address must be a positive multiple"):
        ntshim.reserve(PS, address=PS + 1)
    with ntshim.reserve(4 * PS) as r:
        with pytest.raises(FileExistsError, match="already in use"):
            ntshim.reserve(PS, address=r.address)  # never mapped over
        with pytest.raises(ValueError, match="multiple of the page size"):
            r.commit(1, PS)
        with pytest.raises(ValueError, match="runs past the end"):
            r.commit(2 * PS, 3 * PS)
        with pytest.raises(ValueError, match="protect must be letters"):
            r.commit(0, PS, "bogus")
        with pytest.raises(TypeError, match="size must be an int"):
            r.decommit(0, 1.5)  # type: ignore[arg-type]
        assert not r.committed(0)  # none of that changed anything
    for call in (lambda: r.commit(0, PS), lambda: r.decommit(0, PS), lambda: r.view(), lambda: r.discard(0, PS)):
        with pytest.raises(ValueError, match="freed"):
            call()
