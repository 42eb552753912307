"""``bench heteromix``, ``bench routing`` and ``bench compmix``: benchmarks as one command each."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from retriever.cli.index_commands import add_encoder_args, encoder_config, source_name
from retriever.errors import InvalidInputError
from retriever.service.config import check_name

if TYPE_CHECKING:
    from retriever.evaluation.remote import ServedIndex

E = TypeVar("E", bound=StrEnum)


def data_dir() -> Path:
    """``$RETRIEVER_DATA_DIR``, else ``../shared/data`` (the project's data folder beside the checkout)."""
    return Path(os.environ.get("RETRIEVER_DATA_DIR") or Path("..") / "shared" / "data")


def enum_list(kind: type[E]) -> Callable[[str], tuple[E, ...]]:
    def parse(value: str) -> tuple[E, ...]:
        try:
            return tuple(dict.fromkeys(kind(v.strip()) for v in value.split(",") if v.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{value!r}: choose from {', '.join(m.value for m in kind)} (comma-separated)") from None
    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    from retriever.evaluation.bench import Method
    from retriever.evaluation.collection import UnitScheme
    from retriever.evaluation.heteromix import DEFAULT_SCENARIOS, Scenario

    bench = subparsers.add_parser("bench",
                                  help="run a retrieval benchmark (heteromix, routing, compmix) or compare saved ones",
                                  description="Reproducible retrieval benchmarks; see docs/BENCHMARKS.md.")
    kinds = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    hetero_data = data_dir() / "heteromix"

    hm = kinds.add_parser(
        "heteromix", help="HeteroMix: scenario 1 (all sources) and 2 (source instructions, soft and hard)",
        description="Rank every question with each method under each scenario and write TREC run files, "
        "metrics.json, results.md and hit_at_k.png to --out. Any question file in the queries.*.jsonl format "
        "can be scored (held-out sets need no code change).")
    hm.add_argument("--corpus", type=Path, default=hetero_data / "corpus.jsonl.gz", help="corpus file")
    hm.add_argument("--ids", type=Path, default=hetero_data / "mini.ids.txt",
                    help="id list selecting the tier (default mini.ids.txt; 'none' for the full corpus)")
    hm.add_argument("--questions", type=Path, default=hetero_data / "queries.dev.mini.jsonl",
                    help="question file (default queries.dev.mini.jsonl)")
    hm.add_argument("--index", type=Path, default=None,
                    help="existing dense index built from this corpus/ids (checked against its manifest); "
                    "default: the embedding cache (encodes the corpus on a cache miss: slow on CPU)")
    hm.add_argument("--methods", type=enum_list(Method), default=(Method.BM25, Method.DENSE, Method.HYBRID),
                    help="comma-separated: bm25, dense, hybrid (default all three)")
    hm.add_argument("--scenarios", type=enum_list(Scenario), default=DEFAULT_SCENARIOS,
                    help="comma-separated: all-plain, all, source-soft, source-hard, source-hard-plain (default "
                    "all,source-soft,source-hard; the -plain ones encode the question without any instruction)")
    hm.add_argument("--units", type=UnitScheme, choices=list(UnitScheme), default=UnitScheme.INDEX,
                    help="index: the index's units (passages/infoboxes split in windows; default); whole-record: "
                    "one unit per passage and infobox, the README's BM25 reference units (bm25 only)")
    hm.add_argument("--depth", type=int, default=100, help="units retrieved per query (default 100)")
    hm.add_argument("--unit-ranks", action="store_true",
                    help="rank units instead of collapsing them to records (the README reference's convention)")
    hm.add_argument("--rrf-k", type=float, default=60.0, help="reciprocal-rank-fusion constant (default 60)")
    hm.add_argument("--fusion-depth", type=int, default=100, help="hits of each method fused (default 100)")
    hm.add_argument("--limit", type=int, default=None, help="only the first N questions (smoke runs)")
    add_output_args(hm, "heteromix")
    add_encoder_args(hm, "model directory (default: the model named in the index manifest, else the bundled one)")
    add_server_args(hm)
    hm.set_defaults(func=run_heteromix)

    rt = kinds.add_parser(
        "routing", help="TAT-QA routing: does top-1 over each question's own candidates have the right source?",
        description="For each question rank its own candidates (a table's rows and its paragraphs) and report "
        "the accuracy of the top-1 unit's source type against answer_from, with and without an instruction "
        "naming the source.")
    rt.add_argument("--questions", type=Path, default=hetero_data / "routing.dev.jsonl")
    rt.add_argument("--methods", type=enum_list(Method), default=(Method.BM25,),
                    help="comma-separated: bm25, dense (default bm25; dense encodes every candidate: ~17K units)")
    rt.add_argument("--limit", type=int, default=None, help="only the first N questions")
    add_output_args(rt, "routing")
    add_encoder_args(rt, "model directory or bundled name (default: the bundled default model)")
    rt.set_defaults(func=run_routing)

    compmix = data_dir() / "compmix"
    cm = kinds.add_parser(
        "compmix", help="CompMix-IR protocol: relevance by answer presence",
        description="Index a CompMix-IR corpus file (subset_kb_wikipedia_mixed_rd.json format), rank CompMix "
        "questions in scenario 1 and 2 and judge evidences by answer presence (wikidata entity ids and labels, "
        "disambiguated mentions).")
    cm.add_argument("--corpus", type=Path, default=compmix / "subset_kb_wikipedia_mixed_rd.json")
    cm.add_argument("--questions", type=Path, default=compmix / "dev_set.json", help="CompMix question set")
    cm.add_argument("--methods", type=enum_list(Method), default=(Method.BM25,),
                    help="comma-separated: bm25, dense, hybrid (default bm25)")
    cm.add_argument("--fixed-source", type=source_name, default=None, metavar="SOURCE",
                    help="scenario 2: ask every question for this source (kb, text, table, infobox) instead of its "
                    "answer_src (UniHGKR's single-source runs)")
    cm.add_argument("--only-answerable", action="store_true",
                    help="score only questions with an answer somewhere in the corpus (for corpus samples)")
    cm.add_argument("--limit", type=int, default=None, help="only the first N questions")
    add_output_args(cm, "compmix")
    add_encoder_args(cm, "model directory or bundled name (default: the bundled default model)")
    cm.set_defaults(func=run_compmix)


    cmp = kinds.add_parser(
        "compare", help="side-by-side tables of saved benchmark outputs (no recomputation)",
        description="Read the metrics.json of several `retriever bench heteromix` output directories (one per "
        "model: an ablation, merge weights, a checkpoint against the bundled model) and print one Markdown table "
        "per metric: rows are scenario, method and run; columns are datasets and pooled.")
    cmp.add_argument("runs", type=Path, nargs="+", metavar="DIR", help="--out directories of earlier bench runs")
    cmp.add_argument("--labels", type=comma_list, default=None,
                     help="comma-separated names for the runs, in order (default: the directory paths)")
    cmp.add_argument("--metrics", type=comma_list, default=["mrr@100", "source@10"],
                     help="comma-separated metric keys of metrics.json (default mrr@100,source@10; others: hit@1, "
                     "hit@5, hit@10, hit@100, row_hit@10, row_hit@100)")
    cmp.add_argument("--scenarios", type=comma_list, default=None, help="only these scenarios, in this order")
    cmp.add_argument("--methods", type=comma_list, default=None, help="only these methods (bm25, dense, hybrid)")
    cmp.add_argument("--paired", action="store_true",
                     help="instead of the tables: is each difference more than chance? Pairs the runs' per-question "
                     "metrics by question and prints per dataset the first run's mean (first of --methods, default "
                     "dense) minus each other run and method, with its paired standard error and a bootstrap 95%% "
                     "interval over the questions (scenarios: --scenarios, default those of the first run)")
    cmp.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws for --paired (default 2000)")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap seed for --paired (default 0)")
    cmp.set_defaults(func=run_compare)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """``--server`` and its connection flags: rank with a running server instead of in process."""
    from retriever.evaluation.remote import CALL_TIMEOUT

    group = parser.add_argument_group(
        "served ranking", "rank with a running server (`retriever serve --resolve encoder-only --index DIR`) "
        "instead of in process, to check the served figures against in-process ones: the same queries, judgments "
        "and scoring, one RetrieveRequest per question (RetrieveStream calls). Needs --index: the build the server "
        "serves (compared with GetIndexInfo; its unit store maps the served unit ids to records). The server "
        "encodes, so the encoder options, --cache-dir and --units whole-record are refused")
    group.add_argument("--server", default=None, metavar="HOST:PORT",
                       help="address of the server that ranks (default: rank in process)")
    group.add_argument("--server-index", default="", metavar="NAME",
                       help="served index name (default: the server's default index)")
    group.add_argument("--token-file", type=Path, default=None,
                       help="file holding the server's bearer token (or RETRIEVER_AUTH_TOKEN)")
    group.add_argument("--tls-ca", type=Path, default=None, help="PEM root certificate to connect with TLS")
    group.add_argument("--tls-cert", type=Path, default=None, help="client certificate for mTLS (with --tls-key)")
    group.add_argument("--tls-key", type=Path, default=None, help="client private key for mTLS")
    group.add_argument("--timeout", type=float, default=CALL_TIMEOUT,
                       help=f"deadline of each RetrieveStream call in seconds (default {CALL_TIMEOUT:g})")
    parser.set_defaults(token_env="RETRIEVER_AUTH_TOKEN")


def served_index(args: argparse.Namespace) -> ServedIndex | None:
    """``--server`` and ``--server-index`` as a target; the connection flags without ``--server`` are refused."""
    from retriever.evaluation.remote import ServedIndex

    if args.server is None:
        given = [flag for flag, value in (("--server-index", args.server_index), ("--token-file", args.token_file),
                                          ("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert),
                                          ("--tls-key", args.tls_key)) if value]
        if given:
            raise InvalidInputError(f"{', '.join(given)}: only with --server (the address of the server that ranks)")
        return None
    if args.server_index:
        check_name(args.server_index)
    return ServedIndex(args.server, args.server_index)


def comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_output_args(parser: argparse.ArgumentParser, name: str) -> None:
    group = parser.add_argument_group("outputs")
    group.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / name,
                       help=f"output directory (default benchmarks/results/{name})")
    group.add_argument("--results-md", type=Path, default=Path("benchmarks") / "RESULTS.md",
                       help="Markdown file whose marked section this run regenerates (default benchmarks/RESULTS.md)")
    group.add_argument("--no-results-md", action="store_true", help="do not touch the results Markdown file")
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="cache root for embeddings and BM25 indexes (default $RETRIEVER_CACHE_DIR or "
                       "index_builds/cache)")


def run_heteromix(args: argparse.Namespace) -> int:
    from retriever.evaluation.bench import HeteroBenchConfig, command_line, run_heteromix_bench
    from retriever.evaluation.heteromix import HeteroConfig
    from retriever.query import FusionConfig

    ids = None if args.ids is None or str(args.ids).lower() == "none" else args.ids
    server = served_index(args)
    config = HeteroBenchConfig(
        corpus=args.corpus, ids_file=ids, questions=args.questions, out=args.out, methods=args.methods,
        scenarios=args.scenarios, index=args.index, units=args.units, cache_dir=args.cache_dir,
        encoder=encoder_config(args), fusion=FusionConfig(rrf_k=args.rrf_k, depth=args.fusion_depth),
        hetero=HeteroConfig(scenarios=args.scenarios, depth=args.depth, collapse=not args.unit_ranks,
                            show_progress=not args.no_progress),
        results_md=None if args.no_results_md else args.results_md, limit=args.limit, command=command_line(),
        server=server)
    if server is None:
        report = run_heteromix_bench(config)
    else:
        from retriever.cli.serve_commands import connected

        with connected(args) as client:
            report = run_heteromix_bench(config, client=client)
    print(report.markdown)
    print()
    for name, path in report.outputs.items():
        print(f"wrote {name}: {path}")
    return 0


def run_routing(args: argparse.Namespace) -> int:
    from retriever.evaluation.bench import command_line
    from retriever.evaluation.routing import RoutingBenchConfig, run_routing_bench

    report = run_routing_bench(RoutingBenchConfig(command=command_line(),
        questions=args.questions, out=args.out, methods=args.methods, encoder=encoder_config(args),
        results_md=None if args.no_results_md else args.results_md, limit=args.limit,
        show_progress=not args.no_progress))
    print(report)
    return 0


def run_compmix(args: argparse.Namespace) -> int:
    from retriever.evaluation.bench import command_line
    from retriever.evaluation.compmix import CompMixBenchConfig, run_compmix_bench

    report = run_compmix_bench(CompMixBenchConfig(
        corpus=args.corpus, questions=args.questions, out=args.out, methods=args.methods,
        encoder=encoder_config(args), cache_dir=args.cache_dir, only_answerable=args.only_answerable,
        fixed_source=args.fixed_source, command=command_line(),
        results_md=None if args.no_results_md else args.results_md, limit=args.limit,
        show_progress=not args.no_progress))
    print(report)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from retriever.evaluation.compare import compare_markdown, paired_markdown

    if args.paired:
        print(paired_markdown(args.runs, args.labels, args.metrics, args.scenarios, args.methods or ["dense"],
                              args.bootstrap, args.seed))
        return 0
    print(compare_markdown(args.runs, args.labels, args.metrics, args.scenarios, args.methods))
    return 0
