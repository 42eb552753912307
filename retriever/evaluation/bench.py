"""One-call benchmark drivers: load data and indexes, run the protocol, write every output.

The CLI (``retriever bench ...``) builds a config and calls one function here.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import CorpusError, InvalidInputError
from retriever.evaluation.collection import (
    CorpusSpec,
    UnitScheme,
    cache_root,
    check_index_matches,
    dense_index,
    lexical_index,
    read_collection,
)
from retriever.evaluation.heteromix import (
    DEFAULT_SCENARIOS,
    HeteroConfig,
    RunResult,
    Scenario,
    make_query,
    run_heteromix,
)
from retriever.evaluation.remote import ServedIndex
from retriever.evaluation.report import (
    Column,
    per_dataset_table,
    per_question_name,
    plot_hit_curves,
    pooled_table,
    replace_section,
    write_json,
    write_per_question,
    write_trec,
)
from retriever.evaluation.retrievers import UnitRetriever, engine_retrievers
from retriever.index import Index, Manifest
from retriever.index.lexical import Bm25Config
from retriever.index.store import UnitStore
from retriever.instructions import default_prompts
from retriever.query import FusionConfig, Mode
from retriever.questions import Question, read_questions
from retriever.records import read_id_list

if TYPE_CHECKING:
    from retriever.client import RetrieverClient

logger = logging.getLogger(__name__)

#: The methods a benchmark compares are the engine's search modes.
Method = Mode


@dataclass(frozen=True)
class HeteroBenchConfig:
    """A HeteroMix benchmark run.

    Attributes:
        corpus: the corpus file; ``ids_file`` selects a tier (mini, lite), None for all of it.
        questions: a question file in the ``queries.*.jsonl`` format (dev, or a held-out set).
        out: directory for run files, metrics JSON, tables and plot.
        methods: retrievers to compare.
        scenarios: see :class:`~retriever.evaluation.heteromix.Scenario`.
        index: an existing dense index directory for this corpus (checked); None uses the cache.
        units: unit scheme (``whole-record`` is BM25 only).
        cache_dir: cache root for embeddings and BM25 indexes (None: ``$RETRIEVER_CACHE_DIR`` or
            ``index_builds/cache``).
        encoder: how to load the model when a dense method runs (its model defaults to the one
            named in the index manifest).
        results_md: a Markdown file whose marked section is regenerated; None to skip.
        limit: score only the first N questions (smoke runs).
        server: rank with a running server instead of in process (``--server``): the same queries,
            judgments and scoring, each query sent as one RetrieveRequest (see
            :mod:`retriever.evaluation.remote`). Needs ``index``: the build the server serves.
    """

    corpus: Path
    questions: Path
    out: Path
    ids_file: Path | None = None
    methods: tuple[Method, ...] = (Method.BM25, Method.DENSE, Method.HYBRID)
    scenarios: tuple[Scenario, ...] = DEFAULT_SCENARIOS
    index: Path | None = None
    units: UnitScheme = UnitScheme.INDEX
    cache_dir: Path | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    hetero: HeteroConfig = field(default_factory=HeteroConfig)
    results_md: Path | None = None
    limit: int | None = None
    command: str = ""
    server: ServedIndex | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise InvalidInputError("choose at least one method (bm25, dense, hybrid)")
        if self.server is not None:
            self._check_served()
        dense = {Method.DENSE, Method.HYBRID} & set(self.methods)
        if dense and self.units is UnitScheme.WHOLE_RECORD:
            raise InvalidInputError("whole-record units are for BM25 only: dense and hybrid search the index's "
                                    "units (use --units index, or --methods bm25)")
        if self.index is not None and self.units is UnitScheme.WHOLE_RECORD:
            raise InvalidInputError("--index gives the index's units; it cannot be combined with --units whole-record")

    def _check_served(self) -> None:
        """Refuse what cannot apply when the server ranks (before any work)."""
        if self.units is UnitScheme.WHOLE_RECORD:
            raise InvalidInputError("--units whole-record cannot be ranked by a server: it searches its index's "
                                    "units (drop --units, or drop --server)")
        if self.index is None:
            raise InvalidInputError("--server needs --index: the directory of the build the server serves (its "
                                    "unit store maps the served unit ids to records, its manifest is compared with "
                                    "the served one)")
        if self.cache_dir is not None:
            raise InvalidInputError("--cache-dir does nothing with --server: the server ranks, nothing is encoded "
                                    "or cached here (drop --cache-dir)")
        if replace(self.encoder, show_progress=True) != EncoderConfig():
            raise InvalidInputError("the encoder options (--model, --device, --batch-size, --backend, --precision) "
                                    "do nothing with --server: the server encodes the queries with its own model, "
                                    "checked against the index manifest (drop them)")


@dataclass
class BenchReport:
    runs: list[RunResult]
    store: UnitStore
    outputs: dict[str, Path]
    markdown: str


def _encoder_for(config: HeteroBenchConfig, manifest: Manifest | None) -> Encoder:
    from retriever.bundled import DEFAULT_MODEL

    model = config.encoder.model
    if model is None and manifest is not None and manifest.model_name != DEFAULT_MODEL:
        model = manifest.model_name
    return Encoder(EncoderConfig(model=model, device=config.encoder.device, batch_size=config.encoder.batch_size,
                                 precision=config.encoder.precision, backend=config.encoder.backend,
                                 show_progress=config.encoder.show_progress))


def run_heteromix_bench(config: HeteroBenchConfig, encoder: Encoder | None = None,
                        client: RetrieverClient | None = None) -> BenchReport:
    """Run the HeteroMix benchmark end to end and write its outputs under ``config.out``.

    Args:
        config: what to run.
        encoder: an already loaded encoder to use instead of loading ``config.encoder``.
        client: with ``config.server``, a connected client to use (token, TLS) instead of a plain
            channel to ``config.server.address``.
    """
    started = time.perf_counter()
    spec = CorpusSpec(config.corpus, config.ids_file)
    root = cache_root(config.cache_dir)
    # Inputs and outputs are checked before the model loads (minutes of encoding may follow).
    prepare_out_dir(config.out)
    questions = read_questions(config.questions, config.limit)
    if not config.corpus.is_file():
        raise CorpusError(str(config.corpus), None, "file not found")
    if config.ids_file is not None:
        read_id_list(config.ids_file)
    needs_dense = bool({Method.DENSE, Method.HYBRID} & set(config.methods))
    manifest = check_index_matches(config.index, spec) if config.index is not None else None
    if config.server is not None and manifest is not None:
        with ExitStack() as stack:
            if client is None:
                from retriever.client import RetrieverClient
                from retriever.evaluation.remote import CALL_TIMEOUT

                client = stack.enter_context(RetrieverClient(config.server.address, timeout=CALL_TIMEOUT))
            return _run_served(config, questions, manifest, client, started)
    if encoder is None and (needs_dense or (config.index is None and config.units is UnitScheme.INDEX)):
        encoder = _encoder_for(config, manifest)

    index: Index | None = None
    if needs_dense and encoder is not None:
        index = dense_index(spec, encoder, root, config.index)
        store = index.store
    elif config.index is not None:
        check_index_matches(config.index, spec)
        index = Index.load(config.index)
        store = index.store
    else:
        store = read_collection(spec, config.units, encoder)

    retrievers = _retrievers(config, store, index, encoder, root)
    prompts = encoder.prompts if encoder is not None else default_prompts()
    runs = run_heteromix(questions, store, retrievers, prompts, config.hetero)
    model = encoder.name if encoder is not None and needs_dense else None
    outputs, markdown = write_outputs(config, runs, store, time.perf_counter() - started, model)
    return BenchReport(runs, store, outputs, markdown)


def _run_served(config: HeteroBenchConfig, questions: Sequence[Question], manifest: Manifest,
                client: RetrieverClient, started: float) -> BenchReport:
    """The same run with the ranking done by the server (``config.server``); see :mod:`retriever.evaluation.remote`."""
    from retriever.evaluation.remote import describe, open_served, probe_queries, remote_retrievers

    assert config.server is not None and config.index is not None
    served = open_served(client, config.server, config.index, manifest, config.methods, config.bm25)
    needs_dense = bool({Method.DENSE, Method.HYBRID} & set(config.methods))
    # the prompts an in-process run encodes with: the model's (the manifest's, checked) when a dense method runs
    prompts = served.prompts if needs_dense else default_prompts()
    probes = probe_queries(make_query(q, s, prompts) for s in config.scenarios for q in questions)
    retrievers = remote_retrievers(client, config.server, config.methods, served.store, config.fusion, probes,
                                   config.hetero.depth)
    runs = run_heteromix(questions, served.store, retrievers, prompts, config.hetero)
    model = served.model if needs_dense else None
    outputs, markdown = write_outputs(config, runs, served.store, time.perf_counter() - started, model,
                                      describe(config.server, served))
    return BenchReport(runs, served.store, outputs, markdown)


def _retrievers(config: HeteroBenchConfig, store: UnitStore, index: Index | None, encoder: Encoder | None,
                root: Path) -> list[UnitRetriever]:
    lexical = None
    if Method.BM25 in config.methods or Method.HYBRID in config.methods:
        lexical = lexical_index(store, root, config.bm25, show_progress=config.hetero.show_progress)
    return engine_retrievers(config.methods, store, index, encoder if index is not None else None, lexical,
                             config.fusion, config.hetero.show_progress)


HETERO_COLUMNS = (
    Column("hit@1", "Hit@1"), Column("hit@5", "Hit@5"), Column("hit@10", "Hit@10"), Column("hit@100", "Hit@100"),
    Column("mrr@100", "MRR@100"), Column("row_hit@10", "row Hit@10"), Column("row_hit@100", "row Hit@100"),
    Column("source@10", "top-10 from requested source"),
)


def write_outputs(config: HeteroBenchConfig, runs: Sequence[RunResult], store: UnitStore,
                  seconds: float, model: str | None = None,
                  served: Mapping[str, object] | None = None) -> tuple[dict[str, Path], str]:
    """Write run files, metrics JSON, Markdown, plot (and the RESULTS.md section); returns paths and Markdown.

    ``model`` is the dense model's name; a model other than the zero-shot bundled one (the default
    model included) gets its own RESULTS.md section, so the zero-shot sections stay the reference.
    ``served`` says which server ranked (recorded in metrics.json); such a run gets its own
    section too (it does not overwrite the in-process figures it is checked against).
    """
    from retriever.bundled import ZERO_SHOT_MODEL

    tier = config.ids_file.name.split(".")[0] if config.ids_file else "full"
    description = {
        "protocol": "heteromix", "corpus": str(config.corpus), "ids_file": str(config.ids_file or ""),
        "tier": tier, "questions": str(config.questions), "units": len(store), "unit_scheme": config.units.value,
        "index": str(config.index or ""), "methods": [m.value for m in config.methods],
        "scenarios": [s.value for s in config.scenarios], "depth": config.hetero.depth,
        "collapse": config.hetero.collapse, "bm25": vars(config.bm25), "fusion": vars(config.fusion),
        "limit": config.limit, "command": config.command, "seconds": round(seconds, 1), "model": model,
        **(served or {}),
    }
    ranks = "" if config.hetero.collapse else ", unit ranks"
    other_model = f", model {model}" if model and model != ZERO_SHOT_MODEL else ""
    over = ", ranked over gRPC" if served else ""
    title = f"HeteroMix {tier} / {config.questions.name} ({config.units.value} units{ranks}{other_model}{over})"
    methods = "+".join(m.value for m in config.methods)
    section = f"heteromix {tier} {config.questions.name} {config.units.value} {methods}"
    section += " unit-ranks" if ranks else ""
    section += f" model {model}" if other_model else ""
    section += " grpc" if served else ""
    return write_run_outputs(config.out, runs, store, description, title, config.results_md, section,
                             config.hetero.depth)


def prepare_out_dir(out: Path) -> Path:
    """Create a benchmark's output directory up front, so a bad ``--out`` fails before any work.

    Raises:
        InvalidInputError: it cannot be created or written to.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"--out {out}: cannot create the output directory: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidInputError(f"--out {out}: the output directory is not writable")
    return out


def write_run_outputs(out: Path, runs: Sequence[RunResult], store: UnitStore, description: dict[str, Any],
                      title: str, results_md: Path | None, section: str, depth: int) -> tuple[dict[str, Path], str]:
    """TREC and per-question files per run, metrics.json, results.md, hit_at_k.png and the RESULTS.md section."""
    out.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}
    for run in runs:
        path = out / f"run.{run.method}.{run.scenario.value}.trec"
        write_trec(path, run, store, tag=f"{run.method}-{run.scenario.value}")
        outputs[f"trec:{run.label}"] = path
        path = out / per_question_name(run.method, run.scenario.value)
        write_per_question(path, run)
        outputs[f"questions:{run.label}"] = path
    description = {**description, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                   "python": platform.python_version()}
    payload = {**description, "runs": [{"method": r.method, "scenario": r.scenario.value, "metrics": r.metrics,
                                        "seconds": round(r.seconds, 2)} for r in runs]}
    outputs["json"] = out / "metrics.json"
    write_json(outputs["json"], payload)
    markdown = heteromix_markdown(title, description, runs)
    outputs["markdown"] = out / "results.md"
    outputs["markdown"].write_text(markdown + "\n", encoding="utf-8")
    try:
        plot_hit_curves(out / "hit_at_k.png", runs, depth, title)
        outputs["plot"] = out / "hit_at_k.png"
    except ImportError:
        logger.warning("matplotlib is not installed: no Hit@k plot (pip install 'retriever[bench]')")
    if results_md is not None:
        replace_section(results_md, section, markdown)
        outputs["results_md"] = results_md
    return outputs, markdown


def heteromix_markdown(title: str, description: dict[str, Any], runs: Sequence[RunResult]) -> str:
    lines = [f"### {title}", ""]
    if description.get("command"):
        lines += [f"Command: `{description['command']}`", ""]
    lines += [f"{description['units']} units, top-{description['depth']} units per query, "
              f"{'record' if description['collapse'] else 'unit'} ranks; generated {description['created']} "
              f"in {description['seconds']} s.", "", "Pooled over all questions:", "",
              pooled_table(runs, HETERO_COLUMNS), "", f"Hit@10 per {description.get('group', 'dataset')}:", "",
              per_dataset_table(runs, "hit@10"), "", f"MRR@100 per {description.get('group', 'dataset')}:", "",
              per_dataset_table(runs, "mrr@100")]
    following = [r for r in runs if r.scenario is Scenario.SOURCE_SOFT]
    if following:
        lines += ["", "Instruction following (top-10 units from the requested source, source instruction, no "
                  f"filter) per {description.get('group', 'dataset')}:", "", per_dataset_table(following, "source@10")]
    return "\n".join(lines)


def command_line() -> str:
    """The command as typed (for the record in outputs)."""
    program = Path(sys.argv[0]).name if sys.argv else "retriever"
    if program in ("__main__.py", "main.py"):
        program = "python -m retriever"
    return " ".join([program, shlex.join(sys.argv[1:])]).strip()
