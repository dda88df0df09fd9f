"""Reading a checkpoint: which generations it has, and a generation's contents, as new
objects (:func:`load`) or into existing buffers (:func:`restore`).

Readers take no lock and trust only published manifests; every byte is verified against its
checksum before it is used.  ``path`` is a local directory or an fsspec URL (store.py), with
``storage_options`` for the latter.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._arguments import as_int
from .buffers import describe, new_image
from .format import BufferSpec, Manifest, SnapshotError, manifest_name, read_data
from .store import Store, open_store


def generations(path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> list[int]:
    """The generations of the checkpoint at ``path`` that can be loaded, ascending (empty
    when it has none yet).  FileNotFoundError when ``path`` does not exist."""
    return open_store(path, storage_options).generations()


def load(
    path: str | os.PathLike[str], generation: int | None = None, *, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The buffers of ``generation`` (default: the latest) as new objects, by name: numpy
    arrays of the saved dtype and shape for numpy arrays, bytearrays for every other buffer.

    Everything is read into memory: a checkpoint of a many-GiB mmap needs that much free
    memory; use :func:`restore` to write straight into existing buffers instead.
    Raises :class:`SnapshotError` when a file is damaged or missing, FileNotFoundError when
    there is no checkpoint (or no generation yet) at ``path``, ValueError for a generation
    it does not have.  ``storage_options``: for an fsspec URL, its file system's options.
    """
    directory = open_store(path, storage_options)
    chain = directory.chain(_pick(directory, generation))
    images = [new_image(spec) for spec in chain[-1].buffers]
    apply_chain(directory, chain, [view for _, view in images])
    return {spec.name: image for spec, (image, _) in zip(chain[-1].buffers, images)}


def restore(
    path: str | os.PathLike[str],
    buffers: Mapping[str, Any],
    generation: int | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write ``generation`` (default: the latest) into existing ``buffers`` (names to writable
    buffers, as for :class:`Checkpointer`), each of exactly the saved size in bytes.

    Changes nothing and raises ValueError when the names or sizes differ from the saved ones,
    and SnapshotError when a file is damaged: the generation is read and verified in full
    (in memory: as much again as the buffers) before the first byte of a buffer is written.
    ``storage_options``: for an fsspec URL, its file system's options.
    """
    targets = describe(buffers)
    try:
        directory = open_store(path, storage_options)
        chain = directory.chain(_pick(directory, generation))
        check_same(chain[-1].buffers, [t.spec for t in targets], "buffers", sizes_only=True)
        by_name = {t.spec.name: t for t in targets}
        staged = [bytearray(spec.size) for spec in chain[-1].buffers]
        apply_chain(directory, chain, [memoryview(image) for image in staged])
        for spec, image in zip(chain[-1].buffers, staged):
            by_name[spec.name].view[:] = image
    finally:
        for target in targets:
            target.view.release()


def apply_chain(directory: Store, chain: Sequence[Manifest], images: Sequence[memoryview]) -> None:
    """Copy a base and the deltas after it, in order, into ``images``."""
    for manifest in chain:
        path = directory.file(manifest.data_file)
        try:
            opened = directory.open(manifest.data_file)
        except FileNotFoundError:
            raise SnapshotError("data file is missing", manifest.generation, path) from None
        with opened as file:
            read_data(manifest, file, path, images)


def check_same(
    saved: Sequence[BufferSpec], given: Sequence[BufferSpec], argument: str, *, sizes_only: bool = False
) -> None:
    """ValueError, saying what differs, unless ``given`` has the names and sizes (and, unless
    ``sizes_only``, the numpy dtypes and shapes) of ``saved``."""
    theirs = {s.name: s for s in saved}
    ours = {s.name: s for s in given}
    problems = []
    if set(theirs) != set(ours):
        missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        problems.append(f"the checkpoint holds {sorted(theirs)}")
        if missing:
            problems.append(f"missing: {missing}")
        if extra:
            problems.append(f"not in the checkpoint: {extra}")
    for name in sorted(set(theirs) & set(ours)):
        a, b = theirs[name], ours[name]
        if a.size != b.size:
            problems.append(f"{name!r} is {b.size} bytes, saved {a.size}")
        elif not sizes_only and (a.dtype, a.shape) != (b.dtype, b.shape):
            problems.append(f"{name!r} is {_kind(b)}, saved {_kind(a)}")
    if problems:
        raise ValueError(f"{argument} do not match the checkpoint: " + "; ".join(problems))


def _kind(spec: BufferSpec) -> str:
    return "raw bytes" if spec.shape is None else f"a numpy array {spec.dtype} of shape {spec.shape}"


def _pick(directory: Store, generation: int | None) -> int:
    available = directory.generations()
    if not available:
        raise FileNotFoundError(f"the checkpoint at {directory.path} has no generation yet")
    if generation is None:
        return available[-1]
    generation = as_int(generation, "generation")
    if generation not in available:
        raise ValueError(f"generation {generation} is not in {directory.path}: it has {available}")
    return generation


@dataclass(frozen=True)
class GenerationInfo:
    """What a published generation holds, from its manifest: ``parent`` (None for a base),
    ``buffers`` (name and size in bytes, in order), ``state_bytes`` (their total: what a
    full copy of this generation takes), ``data_bytes`` (stored bytes in ``data_file``),
    ``pages`` (``block_size``-byte pages the stored extents touch, counted from each
    buffer's byte 0), ``disk_bytes`` (the data file and the manifest, as stored now)."""

    generation: int
    parent: int | None
    buffers: tuple[tuple[str, int], ...]
    state_bytes: int
    data_file: str
    data_bytes: int
    block_size: int
    pages: int
    disk_bytes: int


def describe_generations(
    path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> list[GenerationInfo]:
    """Every published generation of the checkpoint at ``path`` (a directory or an fsspec
    URL), ascending, as read from the manifests (data files are not read: see
    :func:`verify`).  Raises SnapshotError for a damaged manifest, FileNotFoundError when
    ``path`` does not exist."""
    directory = open_store(path, storage_options)
    out = []
    for g in directory.generations():
        m = directory.manifest(g)
        disk = directory.size(manifest_name(g))
        with contextlib.suppress(FileNotFoundError):
            disk += directory.size(m.data_file)
        pages = sum((e.offset + e.length - 1) // m.block_size - e.offset // m.block_size + 1 for e in m.extents)
        out.append(GenerationInfo(
            g, m.parent, tuple((b.name, b.size) for b in m.buffers), sum(b.size for b in m.buffers),
            m.data_file, m.data_bytes, m.block_size, pages, disk,
        ))  # fmt: skip
    return out


def verify(path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> list[SnapshotError]:
    """Check every published generation of the checkpoint at ``path``: its manifest, every
    byte of its data file against the checksums (read in 4 MiB chunks: no buffer is rebuilt
    in memory), and that its chain (base and deltas) is complete and consistent.  Returns
    the problems found, each a :class:`SnapshotError` naming the generation and the file;
    empty when every generation can be loaded.  FileNotFoundError when ``path`` does not
    exist or has no generation."""
    directory = open_store(path, storage_options)
    found = directory.generations()
    if not found:
        raise FileNotFoundError(f"the checkpoint at {directory.path} has no generation yet")
    problems: list[SnapshotError] = []
    broken: set[int] = set()
    for g in found:
        try:
            manifest = directory.manifest(g)
            file_path = directory.file(manifest.data_file)
            try:
                opened = directory.open(manifest.data_file)
            except FileNotFoundError:
                raise SnapshotError("data file is missing", g, file_path) from None
            with opened as file:
                read_data(replace(manifest, extents=()), file, file_path, [])  # checks only: nothing copied
        except SnapshotError as error:
            problems.append(error)
            broken.add(g)
    for g in found:
        if g in broken:
            continue
        here = directory.file(manifest_name(g))
        try:
            chain = directory.chain(g)
        except SnapshotError as error:  # a parent's manifest is missing, damaged or inconsistent
            problems.append(SnapshotError(f"cannot be loaded: {error}", g, here))
            continue
        bad = [m.generation for m in chain if m.generation in broken]
        if bad:
            problems.append(SnapshotError(
                f"cannot be loaded: it builds on damaged generation {bad[0]}", g, here
            ))  # fmt: skip
    return problems
