"""Batch index builds: corpus file → validated records → units → embeddings → index directory."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from retriever.encoder import Encoder
from retriever.errors import CorpusError
from retriever.index.files import publish_dir, sha256_file, staging_dir, write_json_atomic
from retriever.index.manifest import FORMAT_VERSION, MANIFEST_NAME, FileEntry, Manifest, ShardInfo
from retriever.index.shards import create_index, write_shard
from retriever.index.store import SOURCE_CODE, SOURCE_ORDER, UNITS_NAME, UnitStore
from retriever.linearize import LINEARIZER_VERSION, Unit, WindowBudget, linearize_all
from retriever.records import Record, file_fingerprint, read_id_list, read_records

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """What to build.

    Attributes:
        corpus: a JSONL(.gz) file of records (see the README's corpus format).
        out: the index directory to create.
        ids_file: optional record-id list selecting a subset of the corpus.
        factory: FAISS factory string; ``Flat`` is exact, ``HNSW32`` fast and approximate,
            ``IVF4096,PQ64`` compact (needs enough vectors per shard to train).
        max_tokens: window size for long passages and infoboxes; None uses the model's
            max sequence length minus 2 special tokens.
        overwrite: replace an existing directory at ``out``.
    """

    corpus: Path
    out: Path
    ids_file: Path | None = None
    factory: str = "Flat"
    max_tokens: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 16:
            raise ValueError(f"max_tokens must be >= 16, got {self.max_tokens}")


@dataclass(frozen=True)
class BuildReport:
    out: Path
    records: int
    units: int
    seconds: float
    encode_seconds: float
    index_bytes: int


def load_units(corpus: Path, ids_file: Path | None, budget: WindowBudget) -> tuple[list[Record], list[Unit]]:
    """Read and validate the (selected) records and linearize them, ordered by source."""
    return _load_units(corpus, read_id_list(ids_file) if ids_file else None, budget)


def _load_units(corpus: Path, ids: list[str] | None, budget: WindowBudget) -> tuple[list[Record], list[Unit]]:
    records = list(read_records(corpus, ids))
    units = list(linearize_all(records, budget))
    units.sort(key=lambda u: SOURCE_CODE[u.source])  # stable: corpus order within a source
    return records, units


def build_index(config: BuildConfig, encoder: Encoder) -> BuildReport:
    """Build an index directory; nothing is left at ``config.out`` unless the build succeeds.

    Raises:
        CorpusError: bad corpus input (before anything is written).
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    started = time.perf_counter()
    if config.out.exists() and not config.overwrite:
        raise FileExistsError(f"{config.out} already exists (use --overwrite to replace it)")
    max_tokens = config.max_tokens or max(16, encoder.max_seq_length - 2)
    budget = WindowBudget(max_tokens=max_tokens, count=encoder.count_tokens)
    ids = read_id_list(config.ids_file) if config.ids_file else None
    records, units = _load_units(config.corpus, ids, budget)
    if not units:
        raise CorpusError(str(config.corpus), None, "nothing to index: every selected record has no text "
                          "(e.g. tables whose rows are all empty)")
    logger.info("read %d records → %d units from %s", len(records), len(units), config.corpus)
    fingerprint = file_fingerprint(config.corpus, ids)
    record_counts = dict(Counter(r.source.value for r in records))
    return build_index_from_units(units, config, encoder, fingerprint, record_counts, max_tokens, started)


def build_index_from_units(units: Sequence[Unit], config: BuildConfig, encoder: Encoder, fingerprint: str,
                           record_counts: dict[str, int], max_tokens: int,
                           started: float | None = None) -> BuildReport:
    """Embed already-linearized units (ordered by source) and write the index directory.

    For corpora whose evidence is linearized already (CompMix-IR); ``build_index`` reads and
    linearizes records, then calls this.
    """
    started = time.perf_counter() if started is None else started
    if config.out.exists() and not config.overwrite:
        raise FileExistsError(f"{config.out} already exists (use --overwrite to replace it)")
    encode_started = time.perf_counter()
    vectors = encoder.encode_documents([u.text for u in units])
    encode_seconds = time.perf_counter() - encode_started
    logger.info("encoded %d units in %.1fs (%.1f units/s)", len(units), encode_seconds,
                len(units) / max(encode_seconds, 1e-9))

    with staging_dir(config.out) as staged:
        shards = _write_shards(staged, units, vectors, config.factory)
        UnitStore.from_units(units).write(staged / UNITS_NAME)
        files = [FileEntry(p.name, p.stat().st_size, sha256_file(p)) for p in sorted(staged.iterdir())]
        counts = Counter(u.source.value for u in units)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_name=encoder.name,
            model_checksum=encoder.checksum,
            prompts=encoder.prompts,
            linearizer_version=LINEARIZER_VERSION,
            max_tokens=max_tokens,
            dimension=encoder.dimension,
            metric="inner_product",
            factory=config.factory,
            corpus_path=str(config.corpus),
            corpus_fingerprint=fingerprint,
            counts={s.value: counts.get(s.value, 0) for s in SOURCE_ORDER},
            records=record_counts,
            shards=shards,
            files=files,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        write_json_atomic(staged / MANIFEST_NAME, manifest.to_json())
        index_bytes = sum(f.bytes for f in files)
        publish_dir(staged, config.out, config.overwrite)
    seconds = time.perf_counter() - started
    logger.info("index written to %s (%d units, %.1f MB) in %.1fs", config.out, len(units), index_bytes / 1e6, seconds)
    return BuildReport(config.out, sum(record_counts.values()), len(units), seconds, encode_seconds, index_bytes)


def _write_shards(staged: Path, units: Sequence[Unit], vectors: np.ndarray, factory: str) -> list[ShardInfo]:
    shards = []
    start = 0
    for source in SOURCE_ORDER:
        count = sum(1 for u in units if u.source is source)
        if count == 0:
            continue
        index, used = create_index(vectors.shape[1], factory, vectors[start:start + count])
        name = f"{source.value}.faiss"
        write_shard(index, staged / name)
        shards.append(ShardInfo(source=source.value, start=start, count=count, factory=used, file=name))
        start += count
    return shards
