"""``build-index``, ``search``, ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from retriever.backends import Backend, Optimization, Precision, export_model
from retriever.bundled import DEFAULT_MODEL
from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import InvalidInputError
from retriever.index import BuildConfig, Index, Manifest, build_index
from retriever.index.build import DEFAULT_PART_SIZE, Engine
from retriever.linearize import DEFAULT_LINK_ROWS
from retriever.model_dir import check_model_dir, resolve_model_dir
from retriever.query import FusionConfig, Mode, Query, SearchResult, SourceResolution, Turn
from retriever.records import Source
from retriever.searcher import Searcher, build_lexical, load_lexical

logger = logging.getLogger(__name__)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (a usage error at parse time, before anything loads)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {number}")
        return number
    return parse


def source_name(value: str) -> Source:
    """An argparse type: a source name, case-insensitive; the error lists the valid ones."""
    try:
        return Source.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fraction(value: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


#: What the bundled names are, for every --model help.
BUNDLED_HELP = ("bundled:heteromix-minilm-l6 (the default: all-MiniLM-L6-v2 trained by the CPU recipe; follows "
                "source instructions) and bundled:all-MiniLM-L6-v2 (zero-shot; ignores them)")


def add_encoder_args(parser: argparse.ArgumentParser, model_help: str) -> None:
    group = parser.add_argument_group("encoder")
    group.add_argument("--model", default=None, help=model_help + ". Bundled: " + BUNDLED_HELP)
    group.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    group.add_argument("--batch-size", type=at_least(1), default=64,
                       help="texts per forward pass (default 64; larger helps on GPU, costs memory)")
    group.add_argument("--backend", choices=[*(b.value for b in Backend), AUTO], default=Backend.TORCH.value,
                       help="what runs the transformer (default torch). onnx (ONNX Runtime) and openvino run an export "
                       "made with `retriever export-model` (CPU only); docs/BACKENDS.md has the measured speed and "
                       "agreement of each on this project's machines. auto: the fastest option measured on this "
                       "machine that passes the agreement check against the index's documents (torch float32 for a "
                       "build), int8 exports only with --precision int8; fastest at the job: a build ranks by "
                       "documents encoded per second, queries for an index by queries per second (one at a time "
                       "and batched), and a build logs the option that would encode the index's queries faster; a "
                       "short calibration at first use (about a minute per option), cached and logged "
                       "(`retriever calibrate` shows it). An index records what encoded it, and its queries are "
                       "encoded the same way unless another option passes the whole check")
    group.add_argument("--precision", type=Precision, choices=list(Precision), default=Precision.AUTO,
                       help="weights' dtype (default auto: float16 on CUDA, float32 on CPU). torch runs float32, "
                       "float16, bfloat16 (slow on CPUs without native bf16); onnx runs float32, int8 (a quantized "
                       "export) and float16 (an --optimize O4 export); openvino runs float32 and bfloat16 "
                       "(the float32 export run at bf16: for CPUs with AVX512_BF16 or AMX)")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


#: ``--backend auto``: see :mod:`retriever.calibration`.
AUTO = "auto"


def encoder_config(args: argparse.Namespace, model: str | None = None,
                   documents: dict[str, str] | None = None) -> EncoderConfig:
    """The encoder the flags ask for; ``--backend auto`` calibrates (``documents``: the index's encoding)."""
    auto = args.backend == AUTO
    try:
        config = EncoderConfig(model=model if model is not None else args.model, device=args.device,
                               batch_size=args.batch_size, precision=Precision.AUTO if auto else args.precision,
                               backend=Backend.TORCH if auto else Backend(args.backend),
                               show_progress=not args.no_progress)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    if not auto:
        return config
    from retriever.calibration import auto_config

    return auto_config(config, documents, precision=args.precision)


def register(subparsers: argparse._SubParsersAction) -> None:
    build = subparsers.add_parser(
        "build-index", help="build an index directory from a corpus of records",
        description="Read a JSONL(.gz) corpus of text/table/kb/infobox records, linearize them into units "
        "(a table row, a triple, an infobox or passage window), embed them and write a self-describing "
        "index directory. Bad input fails before anything is written; the directory appears only when "
        "the build succeeds.")
    build.add_argument("corpus", type=Path, help="JSONL or JSONL.gz file of records (README: corpus format)")
    build.add_argument("--out", type=Path, required=True, help="index directory to create, e.g. index_builds/mini")
    build.add_argument("--ids", type=Path, default=None, help="file of record ids (one per line) to index a subset")
    build.add_argument("--factory", default="auto",
                       help="FAISS index per source shard. auto (default): chosen by shard size and --memory-budget "
                       "(exact Flat for small shards, IVF-SQ8 for medium, IVF-PQ with SQ8 re-ranking for large; "
                       "the manifest records the choice, why, and its measured recall). Or a factory string for "
                       "every shard: Flat (exact, 4*d bytes/unit), HNSW32 (fast, 4*d+256 bytes/unit, slow build), "
                       "IVF4096,SQ8 (d+8 bytes/unit), IVF4096,PQ48x4fs,Refine(SQ8) (compact)")
    build.add_argument("--memory-budget", type=parse_bytes, default=None, metavar="SIZE",
                       help="what the FAISS shards may take in memory when served, e.g. 8GiB (auto only; default: "
                       "no limit). A tighter budget picks more compact, less exact indexes")
    build.add_argument("--min-recall", type=fraction, default=0.95,
                       help="lowest recall@10 against exact search an approximate shard may have, measured on "
                       "held-aside queries; a build below it fails before publishing (default 0.95)")
    build.add_argument("--max-tokens", type=at_least(16), default=None,
                       help="window size for long passages and infoboxes (default: model max length - 2)")
    build.add_argument("--link-rows", type=at_least(0), default=DEFAULT_LINK_ROWS,
                       help="start each passage with up to N of the table rows that link to it (row_links), so "
                            "multi-hop questions that describe the row find the passage (HybridQA, OTT-QA: "
                            "benchmarks/RESULTS.md); the rows become part of the passage's text in hits. "
                            f"0 keeps passages as written (default {DEFAULT_LINK_ROWS})")
    build.add_argument("--overwrite", action="store_true", help="replace an existing directory at --out")
    build.add_argument("--resume", action="store_true",
                       help="continue an interrupted build of --out (same corpus, ids and model): only the parts its "
                       "journal does not vouch for are encoded again")
    build.add_argument("--keep-parts", action="store_true",
                       help="keep the encoded vectors (.OUT.build/parts, 4*d bytes/unit) after publishing: to measure "
                       "approximate shards against exact search, or to index again with another --factory "
                       "(--overwrite --resume) without encoding again")
    build.add_argument("--engine", type=Engine, choices=list(Engine), default=Engine.LOCAL,
                       help="local (default): plan and encode in this process. ray: validate in parallel and encode "
                       "on a pool of encoder actors on Ray Data (a local instance, or a cluster with --ray-address)")
    build.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (auto, ray://HOST:PORT; default: $RAY_ADDRESS, else a local instance)")
    build.add_argument("--workers", type=at_least(1), default=None,
                       help="encoder actors for --engine ray (default: one per GPU, else one per 2 CPUs)")
    build.add_argument("--lenient", action="store_true",
                       help="skip record fields the corpus format does not know (e.g. a misspelt 'titel') with a "
                       "warning naming file, line and field, instead of failing the build")
    build.add_argument("--part-size", type=at_least(1), default=DEFAULT_PART_SIZE,
                       help=f"units per encoded part, the unit of work and of --resume (default {DEFAULT_PART_SIZE})")
    add_encoder_args(build, "sentence-transformers directory or bundled name (default: the bundled default model)")
    build.set_defaults(func=run_build)

    search = subparsers.add_parser(
        "search", help="search an index from the command line",
        description="Encode the query (instruction + question) and print the best units.")
    search.add_argument("index", type=Path, help="index directory")
    search.add_argument("query", help="the question")
    search.add_argument("--instruction", default=None,
                        help="free-text instruction for the query encoder, e.g. 'retrieve evidence from table "
                        "sources' (default: a model trained with instructions gets its saved prompt, others the "
                        "bare question; '' for none)")
    search.add_argument("--source", action="append", type=source_name, default=[], metavar="SOURCE",
                        help="filter exactly to this source type (text, table, kb, infobox); repeatable")
    search.add_argument("--resolve", type=SourceResolution, choices=list(SourceResolution),
                        default=SourceResolution.FILTER, help=RESOLVE_HELP + " (default filter)")
    search.add_argument("--router-threshold", type=fraction, default=None, metavar="P", help=ROUTER_THRESHOLD_HELP)
    search.add_argument("--router-prior", type=fraction, default=None, metavar="W", help=ROUTER_PRIOR_HELP)
    search.add_argument("-k", "--top-k", type=at_least(1), default=10, help="number of hits (default 10)")
    search.add_argument("--score-threshold", type=float, default=None, help="drop hits scoring below this")
    search.add_argument("--nprobe", type=int, default=None,
                        help="IVF lists to visit (approximate indexes; default: the value the build tuned to reach "
                        "its recall gate, in the manifest)")
    search.add_argument("--ef-search", type=int, default=None,
                        help="HNSW search breadth (approximate indexes; default: the build's tuned value)")
    search.add_argument("--k-factor", type=int, default=None,
                        help="re-ranked candidates per hit for refined indexes (default: the build's tuned value)")
    search.add_argument("--json", action="store_true", help="print one JSON object per hit")
    search.add_argument("--mode", type=Mode, choices=list(Mode), default=Mode.DENSE,
                        help="dense (default), bm25 (lexical, ignores the instruction; no model is loaded) or hybrid "
                        "(reciprocal-rank fusion of both); bm25 and hybrid need a lexical index (retriever "
                        "build-lexical). --score-threshold applies to the mode's score: cosine, BM25 or fused RRF")
    search.add_argument("--lexical", type=Path, default=None,
                        help="lexical index directory (default INDEX/lexical)")
    search.add_argument("--rrf-k", type=float, default=60.0, help="hybrid: reciprocal-rank-fusion constant")
    search.add_argument("--fusion-depth", type=at_least(1), default=100, help="hybrid: hits of each mode fused")
    add_grouping_args(search)
    add_history_args(search)
    add_encoder_args(search, "model directory (default: the model named in the index manifest)")
    search.set_defaults(func=run_search)

    lexical = subparsers.add_parser(
        "build-lexical", help="build the BM25 index of an index directory (for --mode bm25|hybrid)",
        description="Tokenize the units of an index directory (bm25s, English stop words, PyStemmer English "
        "stemmer) and save a BM25 index, by default to INDEX/lexical; no model is loaded.")
    lexical.add_argument("index", type=Path, help="index directory")
    lexical.add_argument("--out", type=Path, default=None, help="where to write it (default INDEX/lexical)")
    lexical.add_argument("--overwrite", action="store_true", help="replace an existing lexical index")
    lexical.set_defaults(func=run_build_lexical)

    info = subparsers.add_parser("info", help="show an index's manifest",
                                 description="Print what an index contains and how it was built.")
    info.add_argument("index", type=Path, help="index directory")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=run_info)

    demo = subparsers.add_parser(
        "demo", help="build (first run) and search the bundled sample index",
        description="Build the sample corpus shipped with the package into a cached index (about a minute on "
        "2 cores, first run only) and search it with three real questions of the sample (one with a source "
        "filter, one with an instruction, one plain), printing the rank each one's gold evidence reached.")
    demo.add_argument("-k", "--top-k", type=at_least(1), default=3)
    add_encoder_args(demo, "model directory or bundled name (default: the bundled default model)")

    export = subparsers.add_parser(
        "export-model", help="export a model's transformer for ONNX Runtime or OpenVINO",
        description="Write an exported copy of the model's weights inside its directory (onnx/model*.onnx, "
        "openvino/openvino_model.xml, as sentence-transformers lays them out) and record it with its SHA-256 in "
        "the directory's exports.json. The model's checksum (and so every index built with it) is unchanged; "
        "load the export with --backend onnx|openvino [--precision int8]. Everything runs offline.")
    export.add_argument("model", type=Path, help="a writable sentence-transformers model directory (copy the bundled "
                        "one first: it lives in a read-only installed package)")
    export.add_argument("--backend", type=Backend, choices=[Backend.ONNX, Backend.OPENVINO], required=True)
    export.add_argument("--quantize", choices=["int8"], default=None,
                        help="int8: onnx quantizes the weights dynamically; openvino quantizes weights and "
                        "activations statically with NNCF, calibrated on the bundled sample corpus (a minute; "
                        "needs the [openvino] extra). Faster, less exact: check docs/BACKENDS.md before serving it")
    export.add_argument("--optimize", type=Optimization, choices=list(Optimization), default=None,
                        help="ONNX Runtime graph optimisation (onnx only): O1 basic, O2 + transformer fusions, "
                        "O3 + GELU approximation, O4 + float16 weights (GPUs)")
    export.set_defaults(func=run_export)

    agree = subparsers.add_parser(
        "check-agreement", help="check whether an encoder may search an index encoded another way",
        description="Encode the canary set (sample corpus units and questions shipped in the package) with the "
        "index's backend/precision and with --backend/--precision; record in the model directory whether every "
        "document's cosine is >= 0.99 and every question's top-10 is the same. search and serve refuse an index "
        "encoded another way than their queries unless this check passed.")
    agree.add_argument("index", type=Path, help="index directory (its manifest names the documents' encoding)")
    add_encoder_args(agree, "model directory (default: the model named in the index manifest)")
    agree.set_defaults(func=run_check_agreement)

    calibrate = subparsers.add_parser(
        "calibrate", help="measure which backend/precision --backend auto chooses on this machine",
        description="Time every backend/precision that can run the model here (torch, and each ONNX/OpenVINO "
        "export whose runtime is installed), gate each by the agreement check against the documents' encoding "
        "(the index's, else torch float32), time each at encoding documents (units/s) and queries (queries/s), "
        "and print what --backend auto chooses: by units/s for a build, by queries/s with --index. Timings are "
        "cached per "
        "processor, device, threads, batch size and runtime versions; --remeasure drops them first.")
    calibrate.add_argument("--index", type=Path, default=None,
                           help="index whose documents the queries would search (default: a build, torch float32)")
    calibrate.add_argument("--remeasure", action="store_true", help="forget cached timings of this model first")
    calibrate.add_argument("--json", action="store_true", help="print JSON")
    add_encoder_args(calibrate, "model directory (default: the index's model, else the bundled default)")
    calibrate.set_defaults(func=run_calibrate)
    demo.set_defaults(func=run_demo)


def parse_bytes(value: str) -> int:
    """``8GiB``, ``512MiB``, ``2G``, ``1000000``: a size in bytes (binary units either way)."""
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 8GiB, 512MiB)") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {value!r}")
    return size


def run_build(args: argparse.Namespace) -> int:
    config = BuildConfig(corpus=args.corpus, out=args.out, ids_file=args.ids, factory=args.factory,
                         max_tokens=args.max_tokens, link_rows=args.link_rows, overwrite=args.overwrite,
                         resume=args.resume, engine=args.engine,
                         ray_address=args.ray_address, workers=args.workers, part_size=args.part_size,
                         memory_budget=args.memory_budget, min_recall=args.min_recall, keep_parts=args.keep_parts,
                         lenient=args.lenient)
    report = build_index(config, encoder_config(args))
    reused = f", {report.parts_reused} parts reused" if report.parts_reused else ""
    print(f"built {report.out}: {report.records} records, {report.units} units, "
          f"{report.index_bytes / 1e6:.1f} MB in {report.seconds:.1f}s "
          f"({report.units / max(report.encode_seconds, 1e-9):.1f} units/s encoding{reused})")
    return 0


def model_for_index(manifest: Manifest, requested: str | None) -> str | None:
    if requested is not None:
        return requested
    return None if manifest.model_name == DEFAULT_MODEL else manifest.model_name


#: The --resolve help of `search` and `serve`.
RESOLVE_HELP = ("when the query gives no --source but has an instruction: 'filter' on the source types it asks "
                "for, read by the model's source router when it has one, else by the keyword rules; 'model' or "
                "'rules' to choose; 'encoder-only' never filters")

#: The --router-threshold help of `search` and `serve`.
ROUTER_THRESHOLD_HELP = ("filter on the source router's reading when its confidence is at least P (0 to 1) instead "
                         "of the threshold saved with the router (0.7 for the bundled models'). Lower filters more "
                         "instructions, right and wrong: the default model's router, on the held-apart dev "
                         "phrasings, filters 0.37 of them right and 0.002 wrong at 0.7, 0.45 / 0.003 at 0.6, "
                         "0.53 / 0.009 at 0.5 (benchmarks/RESULTS.md, 'Source router'); below the threshold the "
                         "encoder follows the instruction, with the sources read preferred (--router-prior)")

#: The --router-prior help of `search` and `serve`.
ROUTER_PRIOR_HELP = ("below the router's threshold, prefer the sources it read instead of filtering: their units' "
                     "dense scores gain W times its confidence (0 to 1; default 0.2, 0 turns the preference off). "
                     "Chosen on the held-apart dev phrasings over dev.mini: the share of the top 10 from the "
                     "requested sources 0.879 -> 0.911 and MRR@100 0.798 -> 0.805 against the filter alone; "
                     "larger weights act as a filter on readings the router is unsure of, right or wrong, and "
                     "rank worse (0.5: MRR@100 0.790; benchmarks/RESULTS.md)")


def run_search(args: argparse.Namespace) -> int:
    # Everything that needs no model is checked first (the query, the index's files, its lexical
    # part), so a mistake fails in about a second; bm25 mode never loads the dense model.
    query = Query(args.query, args.instruction, tuple(args.source), args.top_k, args.score_threshold, args.mode,
                  FusionConfig(rrf_k=args.rrf_k, depth=args.fusion_depth), args.group_by_record, args.max_per_record,
                  tuple(args.history))
    query.check()
    manifest = Manifest.read(args.index)
    model_config = (encoder_config(args, model_for_index(manifest, args.model), manifest.encoding)
                    if args.mode.uses_vectors else None)
    if model_config is not None:
        check_model_dir(model_config.model)
    overrides = {k: v for k, v in (("nprobe", args.nprobe), ("ef_search", args.ef_search),
                                   ("k_factor", args.k_factor)) if v is not None}
    index = Index.load(args.index, params=overrides)
    lexical = load_lexical(index, args.lexical) if args.mode.uses_lexical else None
    encoder = Encoder(model_config) if model_config is not None else None
    searcher = Searcher(index, encoder, args.resolve, lexical, router_threshold=args.router_threshold,
                        router_prior=args.router_prior)
    logger.info("source resolution: %s", searcher.resolver.describe())
    print_result(searcher.search([query])[0], args.json, asked=args.query)
    return 0


class _TurnAction(argparse.Action):
    """``--turn Q`` appends a turn; ``--answer A`` sets the answer of the turn given just before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        history: list[Turn] = list(getattr(namespace, "history", None) or [])
        if self.dest == "turn":
            history.append(Turn(str(values)))
        elif not history or history[-1].answer:
            parser.error("--answer: give it right after the --turn it answers (one answer per turn)")
        else:
            history[-1] = Turn(history[-1].question, str(values))
        namespace.history = history


def add_history_args(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(history=[])
    parser.add_argument("--turn", action=_TurnAction, metavar="QUESTION",
                        help="an earlier question of the conversation (repeat, oldest first); a follow-up query "
                        "(\"what film did it produce?\") is resolved against them and the searched text is printed")
    parser.add_argument("--answer", action=_TurnAction, metavar="ANSWER",
                        help="the answer to the --turn given just before it (optional)")


def add_grouping_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-by-record", action="store_true",
                        help="-k counts distinct records: a table's rows and a long passage's windows collapse into "
                        "their record, best unit first")
    parser.add_argument("--max-per-record", type=at_least(1), default=1,
                        help="with --group-by-record: units kept per record (default 1)")


def print_result(result: SearchResult, as_json: bool, width: int = 160, asked: str | None = None) -> None:
    """Print the hits; when the searched text differs from the question ``asked`` (a follow-up
    resolved against the history), say what was searched (``searched`` in each JSON object)."""
    searched = result.text if asked is not None and result.text and result.text != asked else None
    if as_json:
        resolution = {"sources": [s.value for s in result.sources], "sources_resolved": result.resolved,
                      "sources_confidence": None if result.sources_confidence is None
                      else round(result.sources_confidence, 6),
                      "preferred_sources": [s.value for s in result.preferred_sources],
                      "preferred_bonus": round(result.preferred_bonus, 6)}
        for rank, hit in enumerate(result.hits, 1):
            extra = {"searched": searched} if searched is not None else {}
            print(json.dumps({"rank": rank, "record_id": hit.record_id, "source": hit.source.value,
                              "part": hit.part, "score": round(hit.score, 6), "title": hit.title,
                              "text": hit.text, **resolution, **extra}, ensure_ascii=False))
        return
    if searched is not None:
        print(f"searched: {searched}")
    sure = "" if result.sources_confidence is None else f", router confidence {result.sources_confidence:.2f}"
    if result.sources:
        how = "resolved from the instruction" if result.resolved else "requested"
        print(f"sources: {', '.join(s.value for s in result.sources)} ({how}{sure})")
    elif result.preferred_sources:
        print(f"sources: all, preferring {', '.join(s.value for s in result.preferred_sources)} "
              f"(+{result.preferred_bonus:.3f} to their scores{sure}; under the filter threshold)")
    elif sure:
        print(f"sources: all (no filter from the instruction{sure})")
    if not result.hits:
        print("no hits")
    for rank, hit in enumerate(result.hits, 1):
        where = f"row {hit.part}" if hit.source is Source.TABLE else f"window {hit.part}" if hit.part else ""
        text = hit.text if len(hit.text) <= width else hit.text[: width - 1] + "…"
        print(f"{rank:>3}  {hit.score:.4f}  {hit.source.value:<7}  {hit.record_id}  {where}".rstrip())
        print(f"     {text}")


def run_build_lexical(args: argparse.Namespace) -> int:
    path = build_lexical(Index.load(args.index), args.out, overwrite=args.overwrite, show_progress=True)
    print(f"lexical index written to {path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    entry = export_model(resolve_model_dir(str(args.model)), args.backend, quantize=args.quantize == "int8",
                         optimize=args.optimize)
    print(f"exported {args.model}/{entry.file} ({entry.backend}, {entry.precision}) in {entry.seconds:.1f}s; "
          f"load it with --model {args.model} --backend {entry.backend} --precision {entry.precision}")
    return 0


def run_check_agreement(args: argparse.Namespace) -> int:
    from retriever.agreement import MIN_COSINE, TOP_K, check_agreement, label

    manifest = Manifest.read(args.index)
    if args.backend == AUTO:
        raise InvalidInputError("check-agreement compares one named encoding with the index's: give --backend "
                                "torch|onnx|openvino and --precision")
    queries = encoder_config(args, model_for_index(manifest, args.model))
    documents = replace(queries, backend=Backend(manifest.encoding["backend"]),
                        precision=Precision(manifest.encoding["precision"]))
    documents_encoder = Encoder(documents)
    if documents_encoder.encoding != manifest.encoding:  # the export the index was encoded with is gone
        raise InvalidInputError(
            f"{args.index} was encoded with {label(manifest.encoding)} export "
            f"{str(manifest.encoding.get('export_sha256'))[:12]}, which the model directory no longer holds (its "
            f"{label(manifest.encoding)} export is now {str(documents_encoder.encoding.get('export_sha256'))[:12]}): "
            "nothing can encode the canary the way the index's documents were, so nothing can be checked; rebuild "
            "the index with the current export")
    record = check_agreement(documents_encoder, Encoder(queries))
    print(f"documents {label(record.documents)}, queries {label(record.queries)}: min cosine {record.min_cosine:.5f} "
          f"(needs >= {MIN_COSINE}), mean {record.mean_cosine:.5f}; same top-{TOP_K} for "
          f"{100 * record.same_top_k:.1f}% of {record.canary_queries} questions (needs 100%): "
          f"{'passed' if record.passed else 'FAILED'}")
    return 0 if record.passed else 1


def run_calibrate(args: argparse.Namespace) -> int:
    from retriever.calibration import calibrate, calibration_path, query_hint, to_json
    from retriever.model_dir import model_checksum

    manifest = Manifest.read(args.index) if args.index is not None else None
    model = model_for_index(manifest, args.model) if manifest is not None else args.model
    # the model, device and batch size of the flags; calibrate() ignores the backend and precision
    config = encoder_config(argparse.Namespace(**{**vars(args), "backend": Backend.TORCH.value,
                                                  "precision": Precision.AUTO}), model)
    if args.remeasure:
        calibration_path(model_checksum(check_model_dir(config.model))).unlink(missing_ok=True)
    result = calibrate(config, manifest.encoding if manifest is not None else None, args.precision)
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    else:
        print(result.table())
        print(f"--backend auto runs {result.chosen.label}"
              f" ({'cached timings' if result.cached else f'calibrated in {result.seconds:.0f}s'})")
        hint = query_hint(result)
        if hint:
            print(f"note: {hint}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    manifest = Manifest.read(args.index)
    if args.json:
        json.dump(manifest.to_json(), sys.stdout, indent=2)
        print()
        return 0
    print(f"index        {args.index}")
    print(f"units        {manifest.total_units} ({', '.join(f'{k} {v}' for k, v in manifest.counts.items())})")
    per_source = ", ".join(f"{k} {v}" for k, v in manifest.records.items())
    print(f"records      {sum(manifest.records.values())} ({per_source})")
    print(f"model        {manifest.model_name} (sha256 {manifest.model_checksum[:16]}…), {manifest.dimension}-d")
    print(f"encoded with {manifest.encoding['backend']} {manifest.encoding['precision']}")
    print(f"index type   {manifest.factory} (requested), {manifest.metric}")
    for shard in manifest.shards:
        recall = "exact" if shard.recall_at_10 is None else f"recall@10 {shard.recall_at_10:.4f}"
        search = " ".join(f"{k}={v}" for k, v in sorted(shard.search.items()))
        print(f"  {shard.source:<8} {shard.count:>10} units  {shard.factory}  {recall}  {search}".rstrip())
        if shard.reason:
            print(f"           {shard.reason}")
    print(f"linearizer   v{manifest.linearizer_version}, windows of {manifest.max_tokens} tokens")
    print(f"corpus       {manifest.corpus_path} (sha256 {manifest.corpus_fingerprint[:16]}…)")
    print(f"built        {manifest.created} in {manifest.build_seconds:.1f}s; "
          f"{sum(f.bytes for f in manifest.files) / 1e6:.1f} MB")
    if manifest.build:
        b = manifest.build
        print(f"build        engine {b.get('engine')}, {b.get('parts')} parts of {b.get('part_size')} units, "
              f"{b.get('units_per_second')} units/s encoding over all parts")
    prompts = "; ".join(f"{k}={v!r}" for k, v in sorted(manifest.prompts.items()))
    print(f"prompts      {len(manifest.prompts)}: {prompts}")
    return 0


#: Real questions of the sample (``retriever/data/sample_queries.jsonl``), asked the three ways a user
#: asks: with an exact source filter, with an instruction that names a source, and plainly. Their gold
#: evidence is in the sample corpus; ``demo`` prints the rank it reaches (a test asserts the top 3).
DEMO_QUESTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fetaqa::10727", {"sources": (Source.TABLE,)}),
    ("sqwd::valid::1076", {"instruction": "retrieve evidence from kb sources"}),
    ("hybridqa::75ff049093eb37d9", {}),
)


def demo_queries(k: int) -> list[tuple[Query, frozenset[str]]]:
    """The demo's queries, each with its gold record ids."""
    from retriever.sample import sample_questions

    questions = {q.id: q for q in sample_questions()}
    return [(Query(questions[qid].text, k=k, **how), frozenset(questions[qid].gold)) for qid, how in DEMO_QUESTIONS]


def gold_rank(result: SearchResult, gold: frozenset[str]) -> int | None:
    """The 1-based rank of the first hit from a gold record, or None when none is in the hits."""
    return next((rank for rank, hit in enumerate(result.hits, 1) if hit.record_id in gold), None)


def run_demo(args: argparse.Namespace) -> int:
    from retriever.sample import ensure_sample_index

    asked = demo_queries(args.top_k)
    for query, _ in asked:
        query.check()
    encoder = Encoder(encoder_config(args))
    path = ensure_sample_index(encoder)
    searcher = Searcher(Index.load(path), encoder)
    print(f"sample index: {path} (model {encoder.name})")
    for (query, gold), result in zip(asked, searcher.search([q for q, _ in asked])):
        extra = f"  [instruction: {query.instruction}]" if query.instruction else ""
        extra += f"  [sources: {', '.join(s.value for s in query.sources)}]" if query.sources else ""
        print(f"\n? {query.text}{extra}")
        print_result(result, as_json=False)
        rank = gold_rank(result, gold)
        where = f"rank {rank}" if rank is not None else f"not in the top {query.k}"
        print(f"gold evidence ({', '.join(sorted(gold))}): {where}")
    print(f"\nsearch it yourself: retriever search {path} \"your question\" --source table")
    return 0
