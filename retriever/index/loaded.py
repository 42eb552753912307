"""Loading an index directory: verify every file against the manifest, then open it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retriever.errors import CorruptIndexError, InsufficientMemoryError, NotFoundError
from retriever.index.files import sha256_file
from retriever.index.manifest import MANIFEST_NAME, Manifest
from retriever.index.shards import SearchParams, Shard, ShardedIndex, read_shard
from retriever.index.store import SOURCE_CODE, UNITS_NAME, UnitStore
from retriever.records import Source

logger = logging.getLogger(__name__)


@dataclass
class Index:
    """A loaded index directory: its manifest, unit store and FAISS shards."""

    path: Path
    manifest: Manifest
    store: UnitStore
    shards: ShardedIndex

    @classmethod
    def load(cls, path: str | Path, use_gpu: bool = True, params: Mapping[str, int] | None = None) -> Index:
        """Open an index directory after checking sizes and SHA-256 of every file.

        Approximate shards search with the parameters the build tuned to reach its recall gate
        (the manifest's ``search`` per shard); ``params`` overrides some or all of them
        (``nprobe``, ``ef_search``, ``k_factor``) for every shard.

        The manifest is validated in full first (:func:`retriever.index.manifest.validate`), then
        every file against it, then the unit store's source column against the shards' ranges;
        the FAISS files are read last, only when their total size fits in the memory available.

        Raises:
            NotFoundError: the directory does not exist.
            CorruptIndexError: the manifest breaks its schema, a file is missing, has the wrong size or
                hash, or is unreadable, or the unit store disagrees with the manifest.
            InsufficientMemoryError: the FAISS files are larger than the memory available.
        """
        path = Path(path)
        if not path.is_dir():
            raise NotFoundError(f"index directory not found: {path}")
        started = time.perf_counter()
        manifest = Manifest.read(path)
        verify_files(path, manifest)
        check_memory(path, manifest)
        store = UnitStore.open(path / UNITS_NAME, manifest.total_units)
        check_store_order(path, manifest, store)
        shards = []
        for info in manifest.shards:
            index = read_shard(path / info.file, manifest.dimension, info.count)
            shard = Shard(info.source, info.start, index, info.factory, use_gpu=use_gpu)
            shard.set_params(SearchParams(**{**info.search, **(params or {})}))
            shards.append(shard)
        sharded = ShardedIndex(shards)
        logger.info("loaded index %s (%d units) in %.1fs", path, len(store), time.perf_counter() - started)
        return cls(path, manifest, store, sharded)


def verify_files(path: Path, manifest: Manifest) -> None:
    """Check that the directory holds exactly the manifest's files, with their sizes and hashes."""
    listed = {f.name for f in manifest.files}
    needed = {UNITS_NAME} | {s.file for s in manifest.shards}
    if not needed <= listed:
        raise CorruptIndexError(f"{path}: manifest does not list {sorted(needed - listed)}")
    for entry in manifest.files:
        file = path / entry.name
        if entry.name == MANIFEST_NAME or "/" in entry.name or entry.name.startswith("."):
            raise CorruptIndexError(f"{path}: manifest lists an invalid file name {entry.name!r}")
        if not file.is_file():
            raise CorruptIndexError(f"{path}: missing file {entry.name}")
        size = file.stat().st_size
        if size != entry.bytes:
            raise CorruptIndexError(f"{path}: {entry.name} has {size} bytes, manifest says {entry.bytes}")
        if sha256_file(file) != entry.sha256:
            raise CorruptIndexError(f"{path}: {entry.name} does not match its SHA-256 in the manifest")


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(path: Path, manifest: Manifest) -> None:
    """Refuse to read FAISS files whose total size (held in memory once read) exceeds what is available."""
    sizes = {f.name: f.bytes for f in manifest.files}
    needed = sum(sizes[s.file] for s in manifest.shards)
    available = available_memory()
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"{path}: its FAISS shards need {needed / 2**30:.2f} GiB in memory, but only {available / 2**30:.2f} GiB "
            "is available; free memory, or rebuild with a smaller --factory / --memory-budget")


def check_store_order(path: Path, manifest: Manifest, store: UnitStore) -> None:
    """Every unit in a shard's id range must be of that shard's source (catches a reordered unit store)."""
    for info in manifest.shards:
        codes = store.sources[info.start:info.start + info.count]
        wrong = np.flatnonzero(codes != SOURCE_CODE[Source(info.source)])
        if wrong.size:
            unit = info.start + int(wrong[0])
            raise CorruptIndexError(f"{path}: unit {unit} in the unit store is a {store.source_of(unit).value} unit, "
                                    f"but the manifest's {info.source} shard covers ids {info.start}-"
                                    f"{info.start + info.count - 1} ({wrong.size} such units)")
