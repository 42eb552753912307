"""Batch index builds: corpus → validated records → units → encoded parts → FAISS shards → index directory.

A build runs in three phases, each resumable from the work directory (:mod:`retriever.index.work`):

1. **plan**: read and validate every record, linearize it and write the unit store, ordered by
   source; cut each source's unit range into parts. Needs the model's tokenizer, not its weights,
   so bad input fails before the model loads.
2. **encode**: embed the parts the journal does not vouch for: in this process
   (``Engine.LOCAL``) or on a pool of encoder actors on Ray Data (``Engine.RAY``,
   :mod:`retriever.index.ray_engine`). Each finished part is written and journalled at once.
3. **index**: per source, pick the FAISS index (``--factory auto``: by size and memory budget,
   :mod:`retriever.index.factory`), train it once on a sample, add the parts, measure recall@10
   against exact search on held-aside queries and refuse to publish below ``min_recall``; then
   write the directory and publish it in one rename.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from retriever.encoder import Encoder, EncoderConfig, ModelInfo, encoding_of, pick_device
from retriever.errors import CorpusError, InvalidInputError, RetrieverError
from retriever.index.files import fsync_file, publish_dir, sha256_file, staging_dir, write_json_atomic
from retriever.index.manifest import FORMAT_VERSION, MANIFEST_NAME, FileEntry, Manifest, ShardInfo
from retriever.index.recall import PSEUDO_QUERY_WORDS, pseudo_query_texts
from retriever.index.shard_builder import RECALL_QUERIES, SEED, build_shard
from retriever.index.shards import write_shard
from retriever.index.store import SOURCE_CODE, SOURCE_ORDER, UNITS_NAME, UnitStore, UnitStoreWriter
from retriever.index.work import BuildPlan, BuildWork, PartSpec, split_parts, work_dir_for
from retriever.linearize import (
    DEFAULT_LINK_ROWS,
    LINEARIZER_VERSION,
    Unit,
    WindowBudget,
    collect_links,
    linearize_all,
    linearize_records,
)
from retriever.model_dir import check_model_dir, model_prompts
from retriever.records import Record, UnknownFields, file_fingerprint, read_id_list, read_records

logger = logging.getLogger(__name__)

#: Units per encoded part: the unit of work of the encoder actors and of ``--resume``.
DEFAULT_PART_SIZE = 4096
#: Units per record batch written to the unit store while planning.
_SPILL_BATCH = 4096
#: The local engine's planning seals its spill and records its progress every this many records.
_PLAN_CHECKPOINT_RECORDS = 250_000
_PLAN_PROGRESS_NAME = "plan-progress.json"


class Engine(StrEnum):
    LOCAL = "local"  # plan and encode in this process
    RAY = "ray"  # plan and encode on Ray Data (a local instance, or a cluster by address)


@dataclass(frozen=True)
class BuildConfig:
    """What to build and how.

    Attributes:
        corpus: a JSONL(.gz) file of records (see the README's corpus format).
        out: the index directory to create.
        ids_file: optional record-id list selecting a subset of the corpus.
        factory: ``auto`` (choose per source shard by size and ``memory_budget``) or a FAISS
            factory string used for every shard (``Flat`` is exact).
        max_tokens: window size for long passages and infoboxes; None uses the model's
            max sequence length minus 2 special tokens.
        link_rows: how many of the table rows that link to a passage (``row_links``) start its text
            (:mod:`retriever.linearize.links`); 0: passages as written.
        overwrite: replace an existing directory at ``out``.
        resume: continue an interrupted build of ``out`` (same corpus, ids, model and window
            size), re-encoding only the parts its journal does not vouch for.
        engine: where planning and encoding run.
        ray_address: an existing Ray cluster (``auto``, ``ray://...``); None starts a local
            instance (or uses ``RAY_ADDRESS`` when set).
        workers: encoder actors (Ray engine); None: one per GPU, else one per 2 CPUs.
        part_size: units per encoded part.
        memory_budget: bytes the FAISS shards may take in memory when served (``auto`` only).
        min_recall: the lowest recall@10 against exact search a shard may have.
        keep_parts: keep the work directory with the encoded parts after publishing, to evaluate
            approximate shards against exact search or to index again with another ``factory``
            (``--overwrite --resume``) without encoding again.
        lenient: record fields the corpus format does not know are skipped with a warning
            instead of failing the build.
    """

    corpus: Path
    out: Path
    ids_file: Path | None = None
    factory: str = "auto"
    max_tokens: int | None = None
    link_rows: int = DEFAULT_LINK_ROWS
    overwrite: bool = False
    resume: bool = False
    engine: Engine = Engine.LOCAL
    ray_address: str | None = None
    workers: int | None = None
    part_size: int = DEFAULT_PART_SIZE
    memory_budget: int | None = None
    min_recall: float = 0.95
    keep_parts: bool = False
    lenient: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 16:
            raise ValueError(f"max_tokens must be >= 16, got {self.max_tokens}")
        if self.part_size < 1:
            raise ValueError(f"part_size must be >= 1, got {self.part_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ValueError(f"min_recall must be in [0, 1], got {self.min_recall}")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ValueError(f"memory_budget must be positive, got {self.memory_budget}")
        if self.engine is not Engine.RAY and (self.workers is not None or self.ray_address is not None):
            raise InvalidInputError("--workers and --ray-address apply to --engine ray only")
        if self.memory_budget is not None and self.factory != "auto":
            raise InvalidInputError(f"--memory-budget applies to --factory auto only (the factory {self.factory!r} "
                                    "takes what it takes)")


@dataclass(frozen=True)
class BuildReport:
    out: Path
    records: int
    units: int
    seconds: float
    encode_seconds: float
    index_bytes: int
    parts_encoded: int = 0
    parts_reused: int = 0


def load_units(corpus: Path, ids_file: Path | None, budget: WindowBudget,
               link_rows: int = DEFAULT_LINK_ROWS) -> tuple[list[Record], list[Unit]]:
    """Read and validate the (selected) records and linearize them in memory, ordered by source,
    passages with the link context of the selected tables (as ``build-index`` makes them).

    For evaluation over small collections; index builds stream units to disk instead.
    """
    records = list(read_records(corpus, read_id_list(ids_file) if ids_file else None))
    units = list(linearize_all(records, replace(budget, links=collect_links(records, link_rows))))
    units.sort(key=lambda u: SOURCE_CODE[u.source])  # stable: corpus order within a source
    return records, units


def build_index(config: BuildConfig, encoder: Encoder | EncoderConfig) -> BuildReport:
    """Build an index directory; nothing is published at ``config.out`` unless the build succeeds.

    Args:
        config: what to build.
        encoder: a loaded encoder, or the configuration to load one with (the local engine then
            loads it only when there are parts to encode; Ray actors load their own copies).

    Checks that need no model run first, in this order, so a mistake fails in seconds: the id
    list, the corpus path, ``out``, the model directory (its safetensors weights, not read), then
    every corpus line is validated in a pass that needs neither the tokenizer nor Ray.

    Raises:
        CorpusError: bad corpus input (before the model or its tokenizer is loaded).
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ModelError: the model directory is missing or holds no safetensors weights.
        InvalidInputError: an interrupted build exists and ``resume`` was not asked for, or a
            shard's measured recall is below ``min_recall``.
    """
    ids = read_id_list(config.ids_file) if config.ids_file else None
    _preflight(config, encoder)
    # the validation pass, which also gathers the link context (the rows that link to each passage)
    unknown = UnknownFields.WARN if config.lenient else UnknownFields.ERROR
    links = collect_links(read_records(config.corpus, ids, unknown=unknown), config.link_rows)
    return _run(config, encoder,
                lambda budget, spill, info: _plan_records(config, ids, replace(budget, links=links), spill, info),
                lambda: file_fingerprint(config.corpus, ids), resumable_plan=config.engine is Engine.LOCAL)


def build_index_from_units(units: Sequence[Unit], config: BuildConfig, encoder: Encoder | EncoderConfig,
                           fingerprint: str, record_counts: dict[str, int], max_tokens: int) -> BuildReport:
    """Build from already-linearized units (CompMix-IR evidence), through the same phases."""
    config = replace(config, max_tokens=max_tokens, link_rows=0)

    def plan(budget: WindowBudget, spill: _SourceSpill, info: ModelInfo) -> dict[str, int]:
        spill.add(units)
        return dict(record_counts)

    return _run(config, encoder, plan, lambda: fingerprint)


def _preflight(config: BuildConfig, encoder: Encoder | EncoderConfig) -> None:
    """The checks of a build that read no corpus line and load nothing."""
    if not config.corpus.is_file():
        raise CorpusError(str(config.corpus), None, "file not found")
    if config.out.exists() and not config.overwrite and not config.resume:
        raise FileExistsError(f"{config.out} already exists (use --overwrite to replace it, or --resume to "
                              "continue an interrupted build of it)")
    if isinstance(encoder, EncoderConfig):
        check_model_dir(encoder.model)


def _run(config: BuildConfig, encoder: Encoder | EncoderConfig, plan_units: Any, fingerprint: Any,
         resumable_plan: bool = False) -> BuildReport:
    """The build's phases. ``resumable_plan``: ``plan_units`` checkpoints its spill (the local engine)."""
    started = time.perf_counter()
    _preflight(config, encoder)
    info = encoder.info if isinstance(encoder, Encoder) else ModelInfo.describe(encoder)
    encoder_config = encoder.config if isinstance(encoder, Encoder) else encoder
    max_tokens = config.max_tokens or max(16, info.max_seq_length - 2)
    encoding = (encoder.encoding if isinstance(encoder, Encoder)
                else encoding_of(encoder_config, info.model_dir, pick_device(encoder_config.device)))
    key = {"corpus_fingerprint": fingerprint(), "model_checksum": info.checksum,
           "linearizer_version": LINEARIZER_VERSION, "max_tokens": max_tokens, "link_rows": config.link_rows,
           "part_size": config.part_size,
           "encoding": encoding}
    if config.out.exists() and not config.overwrite:
        built = _already_built(config, key)
        if built is None:
            raise FileExistsError(f"{config.out} already exists (use --overwrite to replace it)")
        return built
    work = BuildWork.open(config.out)
    try:
        plan = _resumed_plan(work, key, config)
        with _engine_session(config):
            if plan is None:
                plan = _make_plan(work, key, config, info, max_tokens, plan_units, resumable_plan)
            done = work.finished_parts(plan)
            pending = [p for p in plan.parts if p.part not in done]
            if done:
                logger.info("resuming: %d of %d parts already encoded", len(done), len(plan.parts))
            encode_started = time.perf_counter()
            if pending:
                encoder = _encode(config, work, plan, pending, encoder, encoder_config, done)
            encode_seconds = time.perf_counter() - encode_started
        dimension = int(work.vectors(plan.parts[0]).shape[1])
        index_bytes = _publish(config, work, plan, info, model_prompts(info.model_dir), dimension, max_tokens,
                               started, encode_seconds, len(pending), _gate_queries(work, plan, encoder))
    except BaseException:
        kept = len(work.journal())
        if kept:
            logger.warning("the build of %s stopped; its %d encoded part(s) are kept in %s: run the same command "
                           "with --resume to continue", config.out, kept, work.path)
            work.close()
        elif (work.path / _PLAN_PROGRESS_NAME).is_file():
            logger.warning("the build of %s stopped while planning; the records planned up to its last checkpoint "
                           "are kept in %s: run the same command with --resume to continue", config.out, work.path)
            work.close()
        else:
            work.remove()
        raise
    if config.keep_parts:
        logger.info("encoded parts kept in %s (--keep-parts)", work.path)
        work.close()
    else:
        work.remove()
    seconds = time.perf_counter() - started
    logger.info("index written to %s (%d units, %.1f MB) in %.1fs", config.out, plan.total_units,
                index_bytes / 1e6, seconds)
    return BuildReport(config.out, sum(plan.records.values()), plan.total_units, seconds, encode_seconds,
                       index_bytes, len(pending), len(plan.parts) - len(pending))


def _already_built(config: BuildConfig, key: dict[str, Any]) -> BuildReport | None:
    """With ``--resume``: ``out`` was published from these inputs (the build may have died before
    removing its work directory, which is removed now); None when ``out`` is something else."""
    try:
        manifest = Manifest.read(config.out)
    except RetrieverError:
        return None
    made = {"corpus_fingerprint": manifest.corpus_fingerprint, "model_checksum": manifest.model_checksum,
            "linearizer_version": manifest.linearizer_version, "max_tokens": manifest.max_tokens,
            "link_rows": manifest.link_rows, "encoding": manifest.encoding}
    if any(key[k] != v for k, v in made.items()):
        return None
    logger.info("%s is already built from these inputs; nothing to resume", config.out)
    if work_dir_for(config.out).exists() and not config.keep_parts:
        BuildWork.open(config.out).remove()
    return BuildReport(config.out, sum(manifest.records.values()), manifest.total_units, 0.0, 0.0,
                       sum(f.bytes for f in manifest.files), 0, int(manifest.build.get("parts", 0)))


def _resumed_plan(work: BuildWork, key: dict[str, Any], config: BuildConfig) -> BuildPlan | None:
    """The plan of an interrupted build of the same inputs, to continue; None to plan afresh.

    Encoded parts of the same inputs are never thrown away silently: without ``resume`` they are
    an error that says how to continue. State of other inputs cannot serve this build: with
    ``resume`` that is an error too, without it the state is discarded.
    """
    plan = work.read_plan()
    done = len(work.finished_parts(plan)) if plan is not None else 0
    if plan is not None and plan.key == key:
        if config.resume or not done:
            return plan
        raise InvalidInputError(
            f"{work.path} holds an interrupted build of {config.out} from the same inputs with {done} of "
            f"{len(plan.parts)} parts encoded: continue it with --resume, or delete {work.path} to start over")
    if plan is not None and config.resume:
        changed = sorted(k for k in set(key) | set(plan.key) if key.get(k) != plan.key.get(k))
        raise InvalidInputError(
            f"{work.path} holds an interrupted build of {config.out} with other inputs (differing: "
            f"{', '.join(changed)}); run without --resume to discard it, or delete {work.path}")
    if plan is not None:
        logger.warning("discarding %s: an interrupted build of %s from other inputs (%d parts encoded)",
                       work.path, config.out, done)
    # an interrupted planning (its spill and progress) is judged by _make_plan: kept only with --resume
    if not config.resume and (work.path / _PLAN_PROGRESS_NAME).is_file():
        logger.warning("discarding an interrupted planning of %s (run with --resume to continue it)", config.out)
    work.clear(keep=(lambda name: name.startswith("spill-") or name == _PLAN_PROGRESS_NAME) if config.resume
               else (lambda name: False))
    return None


@contextmanager
def _engine_session(config: BuildConfig) -> Iterator[None]:
    """Starts (or joins) Ray for the Ray engine; nothing for the local engine."""
    if config.engine is not Engine.RAY:
        yield
        return
    from retriever.index.ray_engine import RaySession

    with RaySession(config.ray_address):
        yield


class _SourceSpill:
    """Units arrive in corpus order and are written per source, then joined in source order.

    A resumable spill (the local engine's corpus planning) seals its files every
    :data:`_PLAN_CHECKPOINT_RECORDS` records: each source's file so far becomes a finished segment
    (``spill-<source>.<n>.arrow``, fsynced), and ``plan-progress.json`` records how many records
    were planned and which segments hold their units. A build stopped while planning continues
    with ``--resume`` after the last checkpoint (:meth:`resume`) instead of planning from the
    first record again.
    """

    def __init__(self, directory: Path, key: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.key = key  # the build's inputs; None: not resumable (no checkpoints)
        self.pending: dict[str, list[Unit]] = {s.value: [] for s in SOURCE_ORDER}
        self.writers: dict[str, UnitStoreWriter] = {}
        #: Finished segments per source, in order: ``(file name, units)``.
        self.segments: dict[str, list[tuple[str, int]]] = {s.value: [] for s in SOURCE_ORDER}
        #: Records planned (all sources; a resumed planning skips this many) and per source.
        self.planned = 0
        self.records: Counter[str] = Counter()

    @classmethod
    def resume(cls, directory: Path, key: dict[str, Any]) -> _SourceSpill:
        """The spill of an interrupted planning of the same inputs, or a fresh one (stale files removed)."""
        spill = cls(directory, key)
        progress = directory / _PLAN_PROGRESS_NAME
        try:
            saved = orjson.loads(progress.read_bytes()) if progress.is_file() else None
        except orjson.JSONDecodeError:
            saved = None
        if saved is not None and saved.get("key") == key and all(
                (directory / name).is_file() for names in saved["segments"].values() for name, _ in names):
            spill.planned = int(saved["planned"])
            spill.records.update(saved["records"])
            spill.segments.update({s: [(n, int(c)) for n, c in names] for s, names in saved["segments"].items()})
            logger.info("resuming planning after %d records (%d units already planned)", spill.planned,
                        sum(c for names in spill.segments.values() for _, c in names))
            return spill
        if saved is not None:
            logger.info("discarding an interrupted planning of other inputs in %s", directory)
        spill.discard()
        return spill

    def discard(self) -> None:
        """Remove every spill file and the planning progress (nothing of an earlier planning is kept)."""
        for path in self.directory.glob("spill-*.arrow"):
            path.unlink()
        (self.directory / _PLAN_PROGRESS_NAME).unlink(missing_ok=True)
        self.segments = {s.value: [] for s in SOURCE_ORDER}
        self.planned, self.records = 0, Counter()

    def add(self, units: Iterable[Unit]) -> None:
        for unit in units:
            batch = self.pending[unit.source.value]
            batch.append(unit)
            if len(batch) >= _SPILL_BATCH:
                self._flush(unit.source.value)

    def planned_record(self, source: str) -> None:
        """Count one record whose units were added; checkpoints every :data:`_PLAN_CHECKPOINT_RECORDS`."""
        self.planned += 1
        self.records[source] += 1
        if self.key is not None and self.planned % _PLAN_CHECKPOINT_RECORDS == 0:
            self._seal()
            write_json_atomic(self.directory / _PLAN_PROGRESS_NAME, {
                "key": self.key, "planned": self.planned, "records": dict(self.records),
                "segments": {s: [list(x) for x in names] for s, names in self.segments.items()}})
            logger.info("planning: %d records planned (checkpoint)", self.planned)

    def _flush(self, source: str) -> None:
        batch = self.pending[source]
        if not batch:
            return
        if source not in self.writers:
            name = f"spill-{source}.{len(self.segments[source])}.arrow"
            self.writers[source] = UnitStoreWriter(self.directory / name)
        self.writers[source].write(batch)
        self.pending[source] = []

    def _seal(self) -> None:
        """Finish every open file as a segment (durable before the progress file names it)."""
        for source in self.pending:
            self._flush(source)
        for source, writer in list(self.writers.items()):
            writer.close()
            fsync_file(writer.path)
            self.segments[source].append((writer.path.name, writer.count))
            del self.writers[source]

    def join(self, out: Path) -> dict[str, int]:
        """Write every unit to ``out`` in source order; returns the units per source."""
        self._seal()
        counts: dict[str, int] = {}
        with UnitStoreWriter(out) as writer:
            for source in (s.value for s in SOURCE_ORDER):
                counts[source] = 0
                for name, count in self.segments[source]:
                    store = UnitStore.open(self.directory / name, count)
                    for batch in store.batches(_SPILL_BATCH):
                        writer.write_batch(batch)
                    del store
                    counts[source] += count
        self.discard()
        return counts


def _plan_records(config: BuildConfig, ids: list[str] | None, budget: WindowBudget, spill: _SourceSpill,
                  info: ModelInfo) -> dict[str, int]:
    if config.engine is Engine.RAY:
        from retriever.index.ray_engine import plan_records

        return plan_records(config.corpus, ids, budget.max_tokens, info, spill.add, config.workers, config.lenient,
                            budget.links)
    # The corpus passed validation before planning (build_index); its warnings were given then.
    unknown = UnknownFields.IGNORE if config.lenient else UnknownFields.ERROR
    records = itertools.islice(read_records(config.corpus, ids, unknown=unknown), spill.planned, None)
    # (records planned before an interruption are read and skipped: cheap beside linearizing them)
    for record, units in linearize_records(records, budget):
        spill.add(units)
        spill.planned_record(record.source.value)
    return dict(spill.records)


def _make_plan(work: BuildWork, key: dict[str, Any], config: BuildConfig, info: ModelInfo, max_tokens: int,
               plan_units: Any, resumable: bool) -> BuildPlan:
    started = time.perf_counter()
    budget = WindowBudget(max_tokens=max_tokens, count=info.token_counter())
    if resumable and config.resume:
        spill = _SourceSpill.resume(work.path, key)
    else:
        spill = _SourceSpill(work.path, key if resumable else None)
        spill.discard()
    records = plan_units(budget, spill, info)
    counts = spill.join(work.units_path)
    total = sum(counts.values())
    if not total:
        raise CorpusError(str(config.corpus), None, "nothing to index: every selected record has no text "
                          "(e.g. tables whose rows are all empty)")
    order = [s.value for s in SOURCE_ORDER]
    plan = BuildPlan(key=key, counts=counts, records={s: records.get(s, 0) for s in order},
                     parts=split_parts(counts, order, config.part_size), units_sha256=sha256_file(work.units_path))
    work.write_plan(plan)
    logger.info("planned %d records → %d units in %d parts in %.1fs", sum(records.values()), total,
                len(plan.parts), time.perf_counter() - started)
    return plan


def _progress(total: int, done: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="unit", desc="encoding", disable=not enabled, smoothing=0.1,
                dynamic_ncols=True)


def _encode(config: BuildConfig, work: BuildWork, plan: BuildPlan, pending: list[PartSpec],
            encoder: Encoder | EncoderConfig, encoder_config: EncoderConfig,
            done: dict[int, Any]) -> Encoder | EncoderConfig:
    """Encode the pending parts; returns the encoder loaded here (the local engine), else ``encoder``."""
    already = sum(p.count for p in plan.parts if p.part in done)
    with _progress(plan.total_units, already, encoder_config.show_progress) as bar:
        if config.engine is Engine.RAY:
            from retriever.index.ray_engine import encode_parts

            encode_parts(work, plan, pending, replace(encoder_config, show_progress=False), config.workers,
                         bar.update)
            return encoder
        local = encoder if isinstance(encoder, Encoder) else Encoder(encoder_config)
        store = UnitStore.open(work.units_path, plan.total_units)
        for spec in pending:
            texts = store.texts[spec.start:spec.start + spec.count]
            began = time.perf_counter()
            vectors = local.encode_documents(texts, show_progress=False)
            work.record_part(spec, vectors, time.perf_counter() - began)
            bar.update(spec.count)
    return local


def _gate_queries(work: BuildWork, plan: BuildPlan, encoder: Encoder | EncoderConfig) -> Callable[[], np.ndarray]:
    """The recall gate's queries, made at the first approximate shard and reused by the others:
    :data:`RECALL_QUERIES` pseudo-queries (:func:`pseudo_query_texts`) of a seeded sample of all
    units, encoded as the server encodes a question without an instruction."""
    made: list[np.ndarray] = []

    def make() -> np.ndarray:
        if not made:
            local = encoder if isinstance(encoder, Encoder) else Encoder(replace(encoder, show_progress=False))
            store = UnitStore.open(work.units_path, plan.total_units)
            rows = np.sort(np.random.default_rng(SEED).choice(
                plan.total_units, min(RECALL_QUERIES, plan.total_units), replace=False))
            texts = pseudo_query_texts([store.text(int(i)) for i in rows], SEED)
            began = time.perf_counter()
            made.append(local.encode_queries(texts, local.default_instruction()))
            logger.info("recall gate: %d pseudo-queries (%d-word spans of sampled units) encoded in %.1fs",
                        len(texts), PSEUDO_QUERY_WORDS, time.perf_counter() - began)
        return made[0]

    return make


def _publish(config: BuildConfig, work: BuildWork, plan: BuildPlan, info: ModelInfo, prompts: dict[str, str],
             dimension: int, max_tokens: int, started: float, encode_seconds: float, encoded: int,
             gate_queries: Callable[[], np.ndarray]) -> int:
    journal = work.journal()
    with staging_dir(config.out) as staged:
        shards = _write_shards(staged, work, plan, dimension, config, gate_queries)
        _link(work.units_path, staged / UNITS_NAME)
        files = [FileEntry(p.name, p.stat().st_size, sha256_file(p)) for p in sorted(staged.iterdir())]
        encode_total = sum(journal[p.part].seconds for p in plan.parts)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_name=info.name,
            model_checksum=info.checksum,
            prompts=prompts,
            linearizer_version=LINEARIZER_VERSION,
            max_tokens=max_tokens,
            dimension=dimension,
            metric="inner_product",
            factory=config.factory,
            corpus_path=str(config.corpus),
            corpus_fingerprint=plan.key["corpus_fingerprint"],
            counts=plan.counts,
            records=plan.records,
            shards=shards,
            files=files,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.perf_counter() - started, 3),
            build={"engine": config.engine.value, "parts": len(plan.parts), "part_size": config.part_size,
                   "link_rows": plan.key["link_rows"],
                   "parts_encoded_last_run": encoded, "encode_seconds_all_parts": round(encode_total, 3),
                   "encode_seconds_last_run": round(encode_seconds, 3),
                   "units_per_second": round(plan.total_units / max(encode_total, 1e-9), 2),
                   "min_recall": config.min_recall, "memory_budget": config.memory_budget,
                   "recall_queries": f"{min(RECALL_QUERIES, plan.total_units)} pseudo-queries "
                                     f"({PSEUDO_QUERY_WORDS}-word spans of sampled units, encoded as queries)"},
            encoding=plan.key["encoding"],
        )
        write_json_atomic(staged / MANIFEST_NAME, manifest.to_json())
        index_bytes = sum(f.bytes for f in files)
        publish_dir(staged, config.out, config.overwrite)
    return index_bytes


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_shards(staged: Path, work: BuildWork, plan: BuildPlan, dimension: int,
                  config: BuildConfig, gate_queries: Callable[[], np.ndarray]) -> list[ShardInfo]:
    shards = []
    total = plan.total_units
    start = 0
    for source in (s.value for s in SOURCE_ORDER):
        count = plan.counts.get(source, 0)
        if count == 0:
            continue
        budget = None if config.memory_budget is None else int(config.memory_budget * count / total)
        built = build_shard(config.factory, count, dimension, budget, config.min_recall,
                             partial(work.iter_vectors, plan, source), source, gate_queries)
        name = f"{source}.faiss"
        write_shard(built.index, staged / name)
        shards.append(ShardInfo(source=source, start=start, count=count, factory=built.factory, file=name,
                                reason=built.reason, recall_at_10=built.recall, search=built.search))
        del built  # one shard's FAISS index in memory at a time
        start += count
    return shards
