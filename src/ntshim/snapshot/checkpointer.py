"""Checkpointer: saves named buffers as generations, each holding what was written since the
previous one, driven by write watches."""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _core, _kernel
from .._arguments import as_int
from ..errors import BackendUnavailable
from ..memory import maps
from ..memory import watch as start_watch
from ..writewatch import WriteWatch
from .buffers import Buffer, describe
from .format import COMPRESSIONS, BufferSpec, DataWriter, Extent, Manifest, zstandard_module
from .reading import apply_chain, check_same
from .sharing import backend_for
from .store import Directory, Store, open_store

# One consistent save at a time in a process (the fault handler serves one freeze).
_freezing = threading.Lock()
# The backends a consistent save refuses, and why (docs/snapshot.md).
_CONSISTENT_REFUSED = {
    "shadow": "it watches memory that other processes may write, which this process cannot stop",
    "uffd-sync": "a freeze over synchronous userfaultfd write-protection is not implemented",
}


@dataclass(frozen=True)
class SaveInfo:
    """What a :meth:`Checkpointer.save` wrote: ``generation`` (its number), ``pages`` (system
    pages stored, partial first and last pages of a buffer included), ``bytes`` (written to
    the store: data as stored, so after compression, checksums and manifest), ``seconds``
    (the save's duration) and
    ``full`` (a base holding every byte, not a delta).  For a consistent save
    (``save(consistent=True)``), ``staged`` is the number of pages copied into the staging
    area (the pages of the generation: every page for a base) and ``faulted`` how many of
    them a writer copied itself, in its fault handler, before its write; both are 0 for other
    saves."""

    generation: int
    pages: int
    bytes: int
    seconds: float
    full: bool
    staged: int = 0
    faulted: int = 0


@dataclass
class _Watched:
    buffer: Buffer
    watch: WriteWatch
    offset: int  # where the buffer's byte 0 lies from watch.address (the watch covers whole pages)


class Checkpointer:
    """Saves ``buffers`` (a mapping of names to writable, contiguous buffers: numpy arrays of
    any dtype but ``object``, ``mmap.mmap``, ntshim Regions, ctypes arrays, bytearrays) into
    the checkpoint at ``path`` (created if missing), one generation per :meth:`save`:
    a local directory (a plain path or ``os.PathLike``), or an fsspec URL (``memory://``,
    ``file://``, ``s3://``, ...; needs the ``[remote]`` extra) opened with
    ``storage_options`` (the file system's keyword arguments: credentials, endpoint, ...).

    The buffers are write-watched from construction on (``backend``: a write-watch backend
    by name, default ntshim's choice; shared file mappings are watched with ``shadow``, see
    docs/snapshot.md, "Shared memory").  The first save writes every byte (a base); each
    later one only the pages written since the previous save (a delta).  A checkpoint that
    already exists must have the same buffer names, sizes, and numpy dtypes and shapes
    (else ValueError, saying what differs): its history goes on, and since the new watches
    know nothing of earlier writes, the first save is a base again.

    ``compress``: None (default) stores pages as they are; ``"zstd"`` compresses them (one
    independent zstd frame per 4 MiB of data; needs the ``[snapshot]`` extra, zstandard).
    It applies to the generations this Checkpointer writes: a checkpoint may mix them, and
    readers need not be told.

    One writer per checkpoint: on a local directory a second Checkpointer, in this process
    or another, raises BlockingIOError until this one is closed (or its process ends).  An
    fsspec URL has no lock: two writers on one URL corrupt its history, and keeping to one
    is the caller's responsibility (docs/snapshot.md, "Stores").
    Bad arguments raise TypeError / ValueError naming the buffer and leave nothing behind.
    Methods may be called from several threads; saves run one at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        buffers: Any,
        *,
        backend: str | None = None,
        compress: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._closed = True  # until everything below succeeded: close() then does nothing
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a backend name (str) or None, not {type(backend).__name__}")
        if compress is not None:
            if not isinstance(compress, str):
                raise TypeError(f"compress must be None or 'zstd', not {type(compress).__name__}")
            if compress not in COMPRESSIONS:
                raise ValueError(f"compress must be None or one of {list(COMPRESSIONS)}, not {compress!r}")
            zstandard_module()  # ImportError naming the extra, before anything is created
        described = describe(buffers)
        watched: list[_Watched] = []
        store: Store | None = None
        try:
            store = open_store(path, storage_options, create=True)
            if isinstance(store, Directory):
                store.lock()
            history = store.generations()
            if history:
                check_same(store.manifest(history[-1]).buffers, [b.spec for b in described], "buffers")
            newest = store.newest()
            store.clean()  # what a writer killed before us left
            mappings = list(maps.mappings())  # (read once: which buffers lie in shared file mappings)
            for buffer in described:
                watched.append(self._watch(buffer, backend, mappings))
        except BaseException:
            for w in watched:
                w.watch.close()
            for buffer in described:
                buffer.view.release()
            if store is not None:
                store.release()
            raise
        self._store = store
        self._compress = compress
        self._watched = watched
        self._latest = newest
        self._next_is_full = True
        self._mutex = threading.Lock()
        self._closed = False

    @staticmethod
    def _watch(buffer: Buffer, backend: str | None, mappings: list[maps.MapsEntry]) -> _Watched:
        what = f"buffers[{buffer.spec.name!r}]"
        pin = _core.Pin(buffer.watchable)
        address = pin.address
        pin.release()
        chosen = backend_for(what, address, buffer.spec.size, backend, mappings)
        try:
            watch = start_watch(buffer.watchable, backend=chosen)
        except ValueError as error:  # overlapping another watch (the same memory twice), a freed Region, ...
            raise ValueError(f"{what}: {error}") from error
        except BackendUnavailable as error:  # a forced backend that cannot watch this memory
            raise BackendUnavailable(error.backend, f"{what}: {error.reason}") from error
        return _Watched(buffer, watch, address - watch.address)

    # ---- what it saves ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The checkpoint's directory or URL, as given (a path as a str)."""
        return self._store.path

    @property
    def backends(self) -> dict[str, str]:
        """The write-watch backend watching each buffer, by name."""
        return {w.buffer.spec.name: w.watch.backend for w in self._live()}

    @property
    def generation(self) -> int:
        """The latest generation published (0 before the first)."""
        return self._latest

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- saving ----------------------------------------------------------------------------

    def save(self, consistent: bool = False) -> SaveInfo:
        """Write a new generation: every byte on the first save after opening (and after a
        save that failed), else the pages written since the previous save.

        ``consistent=True``: a point-in-time generation, every page as it was at one instant,
        while other threads (native ones included) keep writing.  The buffers are
        write-protected for the copy; a thread's first write to a page the generation still
        needs copies that page first, in the fault handler, then goes on.  Kernel writes into
        the buffers meanwhile (``readinto``, ``recv_into``) fail with EFAULT unless made inside
        ``WriteWatch.writing()``; the copy needs a staging area as big as the pages saved
        (the whole state for a base).  Buffers watched by ``uffd-async`` or ``mprotect``
        only, of whole pages (docs/snapshot.md, "Consistent saves"); else ValueError, nothing
        changed.

        Each buffer's written pages are got and reset *before* they are copied, so a write
        that lands while the save runs is in this generation or in the next one, never
        lost.  The generation is published only once its data is durable (docs/snapshot.md,
        "Crash safety").  Other threads may keep writing meanwhile; without ``consistent``
        the saved state of a page is then its contents at the moment it was copied.
        """
        if consistent is not True and consistent is not False:
            raise TypeError(f"consistent must be a bool, not {type(consistent).__name__}")
        if consistent:
            with self._mutex:
                watched = self._live()
                self._check_consistent(watched)
            with _freezing, self._mutex:
                return self._save_consistent(self._live())
        with self._mutex:
            watched = self._live()
            start = time.perf_counter()
            generation, full = self._latest + 1, self._next_is_full
            # If anything below fails, the pages reset here are saved by no generation: the
            # next save must then be a base, never a delta that would silently miss them.
            self._next_is_full = True
            dirty = [w.watch.dirty(reset=True) for w in watched]  # get-and-reset, then copy
            pages = sum(w.watch.size // _kernel.PAGE_SIZE if full else len(d) for w, d in zip(watched, dirty))

            def fill(writer: DataWriter) -> list[Extent]:
                extents: list[Extent] = []
                for index, (w, written) in enumerate(zip(watched, dirty)):
                    size = w.buffer.spec.size
                    # watch offsets -> buffer offsets, clipped to the buffer's own bytes
                    runs = (
                        [(0, size)]
                        if full
                        else [(max(s - w.offset, 0), min(e - w.offset, size)) for s, e in written.ranges()]
                    )
                    for lo, hi in runs:
                        if hi > lo:
                            extents.append(Extent(index, lo, hi - lo, writer.bytes))
                            writer.add(w.buffer.view[lo:hi])
                return extents

            stored = self._write_generation(generation, full, fill)
            return SaveInfo(generation, pages, stored, time.perf_counter() - start, full)

    def _write_generation(self, generation: int, full: bool, fill: Callable[[DataWriter], list[Extent]]) -> int:
        """Write and publish ``generation`` (a base if ``full``, else a delta over the latest):
        ``fill`` adds its bytes to the data file and returns their extents.  On failure the
        data file is abandoned; on success the generation is the latest.  Bytes written to the
        store."""
        name, sink = self._store.create_data(generation, base=full)
        published = False
        try:
            writer = DataWriter(sink, _kernel.PAGE_SIZE, self._compress)
            extents = fill(writer)
            table_crc = writer.finish()
            manifest = self._manifest(generation, None if full else self._latest, name, writer, table_crc, extents)
            manifest_bytes = self._store.publish(manifest)
            published = True
        finally:
            if not published:
                sink.abort()
        self._latest = generation
        self._next_is_full = False
        return writer.written + manifest_bytes

    @staticmethod
    def _check_consistent(watched: list[_Watched]) -> None:
        """ValueError naming the buffer unless every buffer can be frozen for a consistent save."""
        for w in watched:
            what = f"buffers[{w.buffer.spec.name!r}]"
            reason = _CONSISTENT_REFUSED.get(w.watch.backend)
            if reason is not None:
                raise ValueError(
                    f"consistent=True: {what} is watched by the {w.watch.backend} backend, and {reason}; "
                    "use backend='uffd-async' or 'mprotect'"
                )
            if w.watch._shares_pages:
                raise ValueError(
                    f"consistent=True: {what} shares its first or last page with other memory (a heap object), "
                    "which a consistent save would write-protect too; use page-aligned memory (ntshim.alloc, mmap)"
                )

    def _save_consistent(self, watched: list[_Watched]) -> SaveInfo:
        """save(consistent=True), under both locks: freeze, copy, give back, then write."""
        start = time.perf_counter()
        generation, full = self._latest + 1, self._next_is_full
        self._next_is_full = True  # as in save(): a failure from here on makes the next save a base
        freeze: Any = None
        trackers: Any = [w.watch._live_tracker() for w in watched]  # the C Trackers behind the protocol
        try:
            freeze = _core.Freeze(trackers, full)
            freeze.copy()  # the saver's share; writers copied theirs before writing
        finally:
            if freeze is not None:
                freeze.end()  # protections back, on every path
        runs = [array("Q", r) for r in freeze.runs]

        def fill(writer: DataWriter) -> list[Extent]:
            extents: list[Extent] = []
            with memoryview(freeze) as staging:
                slot = 0  # the staging area holds D's pages in order, tracker by tracker
                for index, (w, written) in enumerate(zip(watched, runs)):
                    size = w.buffer.spec.size
                    for k in range(0, len(written), 2):
                        s, e = written[k], written[k + 1]
                        lo, hi = max(s - w.offset, 0), min(e - w.offset, size)  # the buffer's own bytes
                        if hi > lo:
                            at = slot + (lo + w.offset - s)
                            extents.append(Extent(index, lo, hi - lo, writer.bytes))
                            writer.add(staging[at : at + hi - lo])
                        slot += e - s
            return extents

        stored = self._write_generation(generation, full, fill)
        seconds = time.perf_counter() - start
        return SaveInfo(generation, freeze.pages, stored, seconds, full, freeze.pages, freeze.faulted)

    def compact(self, keep: int | None = None) -> None:
        """Fold deltas into a base so that loading stays fast and the directory small.

        ``keep``: how many of the newest generations stay loadable; older ones are forgotten
        and the oldest one kept is rewritten as a base (where it is a delta), so every kept
        generation loads from that base and at most ``keep - 1`` deltas, and the files no
        kept generation needs are deleted: the directory holds one base and the deltas after
        it.  ``keep=None`` (default) keeps every generation: the newest is then rewritten as a
        base (loading it reads one file, and later deltas build on it) and the older ones
        stay as they are, so the directory grows by one base.  A crash at any moment leaves
        every generation that :func:`generations` lists loadable.
        """
        if keep is not None:
            keep = as_int(keep, "keep")
            if keep < 1:
                raise ValueError(f"keep must be at least 1 (or None for all), got {keep}")
        with self._mutex:
            self._live()
            store = self._store
            history = store.generations()
            if not history:
                return
            kept = history if keep is None else history[-keep:]
            folded = kept[-1] if keep is None else kept[0]
            if store.manifest(folded).parent is not None:
                self._rebase(folded)
            # Newest first: every generation still listed keeps the older ones its chain needs.
            for generation in reversed(history[: len(history) - len(kept)]):
                store.forget(generation)
            store.sync()
            store.clean()

    def _rebase(self, generation: int) -> None:
        """Publish ``generation`` again as a base, with the same contents."""
        store = self._store
        chain = store.chain(generation)
        specs = chain[-1].buffers
        images = [bytearray(spec.size) for spec in specs]
        apply_chain(store, chain, [memoryview(image) for image in images])
        name, sink = store.create_data(generation, base=True)
        published = False
        try:
            writer = DataWriter(sink, _kernel.PAGE_SIZE, self._compress)
            extents = []
            for index, image in enumerate(images):
                extents.append(Extent(index, 0, len(image), writer.bytes))
                writer.add(memoryview(image))
            table_crc = writer.finish()
            store.publish(self._manifest(generation, None, name, writer, table_crc, extents, specs))
            published = True
        finally:
            if not published:
                sink.abort()

    def _manifest(
        self,
        generation: int,
        parent: int | None,
        name: str,
        writer: DataWriter,
        table_crc: int,
        extents: list[Extent],
        specs: tuple[BufferSpec, ...] | None = None,
    ) -> Manifest:
        """The manifest of the data file ``name`` that ``writer`` finished."""
        compressed = writer.compression is not None
        return Manifest(
            generation=generation,
            parent=parent,
            buffers=specs if specs is not None else tuple(w.buffer.spec for w in self._watched),
            data_file=name,
            data_bytes=writer.bytes,
            block_size=_kernel.PAGE_SIZE,
            table_crc32c=table_crc,
            extents=tuple(extents),
            created=time.time(),
            compression=writer.compression,
            stored_bytes=writer.stored if compressed else None,
            frame_bytes=writer.frame_bytes if compressed else None,
        )

    # ---- lifetime --------------------------------------------------------------------------

    def _live(self) -> list[_Watched]:
        if self._closed:
            raise ValueError("Checkpointer is closed")
        return self._watched

    def close(self) -> None:
        """Stop watching the buffers and release the checkpoint for another writer.
        Idempotent; the generations saved stay."""
        if self._closed:
            return
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            for w in self._watched:
                w.watch.close()
                w.buffer.view.release()
            self._watched = []  # the buffers are the user's again: a Region can be freed, an mmap closed
            self._store.release()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"generation {self._latest}"
        return f"<Checkpointer {getattr(self, '_store', None) and self._store.path!r} {state}>"
