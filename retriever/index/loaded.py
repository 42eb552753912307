"""Loading an index directory: verify every file against the manifest, then open it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from retriever.errors import CorruptIndexError, NotFoundError
from retriever.index.files import sha256_file
from retriever.index.manifest import MANIFEST_NAME, Manifest
from retriever.index.shards import SearchParams, Shard, ShardedIndex, read_shard
from retriever.index.store import UNITS_NAME, UnitStore

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

        Raises:
            NotFoundError: the directory does not exist.
            CorruptIndexError: a file is missing, has the wrong size or hash, or is unreadable.
        """
        path = Path(path)
        if not path.is_dir():
            raise NotFoundError(f"index directory not found: {path}")
        started = time.perf_counter()
        manifest = Manifest.read(path)
        verify_files(path, manifest)
        store = UnitStore.open(path / UNITS_NAME, manifest.total_units)
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
