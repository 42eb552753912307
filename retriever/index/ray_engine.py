"""The Ray Data engine of index builds: parallel validation and linearization, a pool of encoder actors.

The driver (the ``retriever build-index`` process) keeps what must be global and ordered: it
streams the corpus lines in blocks, runs the id ledger (duplicates, ``--ids``), writes the unit
store and the build journal. Ray Data runs the rest:

- **plan**: blocks of raw lines → actors that parse, validate and linearize them with the model's
  tokenizer (no weights). Results come back in block order, so the first bad line is reported
  exactly as the local engine reports it.
- **encode**: pending parts → a pool of encoder actors (one model copy each; one GPU each when the
  cluster has GPUs). Each finished part's vectors travel back through the object store and are
  journalled by the driver at once, so no shared filesystem is needed for the build's state.

On a laptop it starts a local Ray instance; ``ray_address`` (or ``RAY_ADDRESS``) joins a cluster,
whose nodes must be able to read the model directory at the same path (the bundled model comes
with the package).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from retriever.encoder import Encoder, EncoderConfig, ModelInfo
from retriever.errors import CorpusError
from retriever.index.work import BuildPlan, BuildWork, PartSpec
from retriever.linearize import LinkContext, Unit, WindowBudget, linearize_batch
from retriever.records import IdLedger, Record, Source, iter_lines, parse_line

logger = logging.getLogger(__name__)

#: Corpus lines per validation task.
LINES_PER_BLOCK = 2048


class RaySession:
    """Joins ``address`` (or ``RAY_ADDRESS``), or starts a local instance for the build's length."""

    def __init__(self, address: str | None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.started = False

    def __enter__(self) -> RaySession:
        import ray

        if not ray.is_initialized():
            if self.address is None:
                # Ray runs its workers at nice 15 by default; on a local instance the actors are the
                # build's main work, so they compete with other processes like the driver does.
                os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
            self.started = True
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        resources = ray.cluster_resources()
        logger.info("ray: %s, %d CPUs, %d GPUs", self.address or "local instance", int(resources.get("CPU", 0)),
                    int(resources.get("GPU", 0)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()


def _resources(workers: int | None) -> tuple[int, dict[str, Any]]:
    """How many actors, and what each one asks of the cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    count = workers or max(1, cpus // 2)
    return count, {"num_cpus": max(1, cpus // count)}


# ---------------------------------------------------------------- plan


class _Linearize:
    """Ray actor: parse, validate and linearize blocks of corpus lines."""

    def __init__(self, path: str, model: ModelInfo, max_tokens: int, wanted: frozenset[str] | None,
                 lenient: bool = False, links: list[Any] | None = None) -> None:
        import ray

        self.path = path
        # links: [object ref] of the driver's LinkContext (wrapped in a list so that Ray hands over the ref)
        context = ray.get(links[0]) if links else None
        self.budget = WindowBudget(max_tokens=max_tokens, count=model.token_counter(), links=context)
        self.wanted = wanted
        self.lenient = lenient

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [self._block(list(numbers), list(lines)) for numbers, lines in zip(batch["numbers"], batch["lines"])]
        return {"block": batch["block"], "payload": np.array(out, dtype=object)}

    def _block(self, numbers: list[int], lines: list[bytes]) -> bytes:
        ids: list[str] = []
        sources: list[str] = []
        wanted: list[tuple[int, Record]] = []
        error = None
        for number, raw in zip(numbers, lines):
            try:
                # --lenient: the driver's validation pass warned about unknown fields already
                record = parse_line(bytes(raw), self.path, int(number), [] if self.lenient else None)
            except CorpusError as exc:
                error = [exc.line, exc.detail, exc.field]
                break
            ids.append(record.id)
            sources.append(record.source.value)
            if self.wanted is None or record.id in self.wanted:
                wanted.append((len(ids) - 1, record))
        units = [[position, u.source.value, u.part, u.title, u.text]
                 for (position, _), record_units in zip(wanted, linearize_batch([r for _, r in wanted], self.budget))
                 for u in record_units]
        return orjson.dumps({"lines": [int(n) for n in numbers[:len(ids)]], "ids": ids, "sources": sources,
                             "units": units, "error": error})


def _blocks(path: Path) -> Iterator[dict[str, Any]]:
    numbers: list[int] = []
    lines: list[bytes] = []
    block = 0
    for number, raw in iter_lines(path):
        numbers.append(number)
        lines.append(raw)
        if len(lines) >= LINES_PER_BLOCK:
            yield {"block": block, "numbers": numbers, "lines": lines}
            numbers, lines, block = [], [], block + 1
    if lines:
        yield {"block": block, "numbers": numbers, "lines": lines}


def plan_records(corpus: Path, ids: list[str] | None, max_tokens: int, model: ModelInfo,
                 emit: Callable[[Iterable[Unit]], None], workers: int | None, lenient: bool = False,
                 links: LinkContext | None = None) -> dict[str, int]:
    """Validate and linearize ``corpus`` on Ray; units go to ``emit`` in corpus order. ``links``: the
    link context passages carry (gathered by the driver's validation pass), shared through the object store.

    Returns the selected records per source. Raises CorpusError for the first bad line.
    """
    import ray

    name = str(corpus)
    ledger = IdLedger(name, ids)
    items = list(_blocks(corpus))  # the driver reads the file once; workers never touch it
    count, _ = _resources(workers)
    records: Counter[str] = Counter()
    if items:
        wanted = frozenset(ids) if ids is not None else None
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * count)).map_batches(
            _Linearize, batch_size=1, concurrency=min(count, len(items)), num_cpus=1,
            fn_constructor_args=(name, model, max_tokens, wanted, lenient,
                                 [ray.put(links)] if links is not None else None))
        for row in dataset.iter_rows():
            block = orjson.loads(row["payload"])
            for line, record_id, source in zip(block["lines"], block["ids"], block["sources"]):
                if ledger.admit(record_id, line):
                    records[source] += 1
            if block["error"] is not None:
                line, detail, field = block["error"]
                raise CorpusError(name, line, detail, field=field)
            emit(Unit(block["ids"][i], Source(src), part, title, text) for i, src, part, title, text in block["units"])
    ledger.finish()
    return dict(records)


# ---------------------------------------------------------------- encode


class _EncodeParts:
    """Ray actor: one copy of the model, encoding whole parts."""

    def __init__(self, config: EncoderConfig) -> None:
        self.encoder = Encoder(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors, seconds = [], []
        for texts in batch["texts"]:
            began = time.perf_counter()
            encoded = self.encoder.encode_documents([str(t) for t in texts], show_progress=False)
            seconds.append(time.perf_counter() - began)
            vectors.append(encoded.tobytes())
        return {"part": batch["part"], "vectors": np.array(vectors, dtype=object),
                "dimension": np.full(len(vectors), self.encoder.dimension), "seconds": np.array(seconds)}


def encode_parts(work: BuildWork, plan: BuildPlan, pending: list[PartSpec], config: EncoderConfig,
                 workers: int | None, progress: Callable[[int], object]) -> None:
    """Encode ``pending`` parts on a pool of encoder actors; each result is journalled as it arrives."""
    import ray

    from retriever.index.store import UnitStore

    count, resources = _resources(workers)
    threads = resources.get("num_cpus", 1) if "num_gpus" not in resources else None
    store = UnitStore.open(work.units_path, plan.total_units)
    items = [{"part": spec.part, "texts": store.texts[spec.start:spec.start + spec.count]}
             for spec in pending]
    specs = {spec.part: spec for spec in pending}
    actor_config = EncoderConfig(model=config.model, device=None if "num_gpus" in resources else "cpu",
                                 batch_size=config.batch_size, max_seq_length=config.max_seq_length,
                                 precision=config.precision, backend=config.backend, show_progress=False,
                                 threads=threads)
    logger.info("encoding %d parts on %d encoder actor(s) (%s each)", len(pending), count, resources)
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _EncodeParts, batch_size=1, concurrency=min(count, len(items)), fn_constructor_args=(actor_config,),
        **resources)  # Ray Data restarts a lost actor and retries its part (max_restarts=-1 by default)
    for row in dataset.iter_rows():
        spec = specs[int(row["part"])]
        vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(spec.count, int(row["dimension"]))
        work.record_part(spec, vectors, float(row["seconds"]))
        progress(spec.count)
