"""``serve``, ``query`` and ``publish``: the gRPC server and its command-line client."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retriever.cli.index_commands import (
    RESOLVE_HELP,
    ROUTER_PRIOR_HELP,
    ROUTER_THRESHOLD_HELP,
    add_encoder_args,
    add_grouping_args,
    add_history_args,
    at_least,
    encoder_config,
    fraction,
    model_for_index,
    print_result,
    source_name,
)
from retriever.errors import InvalidInputError, RetrieverError
from retriever.index import Manifest
from retriever.model_dir import check_model_dir
from retriever.query import FusionConfig, Mode, SourceResolution

logger = logging.getLogger(__name__)

DEFAULT_SERVER = "127.0.0.1:50051"

#: Limit flags: (flag, Limits field, help).
LIMIT_FLAGS = [
    ("--max-message-bytes", "max_message_bytes", "largest request/response message (default 16 MiB)"),
    ("--max-top-k", "max_top_k", "largest top_k a request may ask for (default 100)"),
    ("--max-query-bytes", "max_query_bytes", "longest query in UTF-8 bytes (default 4096)"),
    ("--max-instruction-bytes", "max_instruction_bytes", "longest instruction in UTF-8 bytes (default 2048)"),
    ("--max-batch-queries", "max_batch_queries",
     "most requests in one RetrieveBatch call, and the largest RetrieveStream window (default 256)"),
    ("--max-stream-queries", "max_stream_queries", "most requests in one RetrieveStream call (default 4096)"),
    ("--max-concurrent-calls", "max_concurrent_calls",
     "calls handled at once; more get RESOURCE_EXHAUSTED at once (default 64)"),
    ("--max-queued-queries", "max_queued_queries",
     "queries waiting for the encoder; more get RESOURCE_EXHAUSTED (default 2048)"),
    ("--max-fusion-depth", "max_fusion_depth", "largest hybrid fusion depth a request may ask for (default 1000)"),
    ("--max-history-turns", "max_history_turns", "most conversation turns in a request's history (default 16)"),
    ("--max-turn-chars", "max_turn_chars", "longest question or answer of one history turn, in characters "
     "(default 2048)"),
    ("--refusal-hold-ms", "refusal_hold_ms", "how long a refused query call is held before RESOURCE_EXHAUSTED "
     "goes out, pacing clients that re-send at once (default 25, at most 1000): longer keeps a re-send storm "
     "from taking processor time from the accepted calls, shorter answers refusals sooner"),
]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_budget(raw: str) -> Any:
    from retriever.service.config import parse_budget as parse

    try:
        return parse(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the gRPC retrieval server (default: bundled model + sample index on 127.0.0.1:50051)",
        description="Serve indexes over gRPC (retriever.v1.Retriever, grpc.health.v1, reflection). With no --index "
        "it serves the bundled sample index (built on first start, cached in $RETRIEVER_CACHE_DIR). Every flag "
        "also reads a RETRIEVER_* environment variable (docs/SERVICE.md); a flag wins over the variable.")
    serve.add_argument("--index", action="append", default=[], metavar="[NAME=]DIR",
                       help="index directory to serve, optionally named (default name: the directory's name); "
                       "repeatable, the first is the default index")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; RETRIEVER_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default 50051, 0 picks one; RETRIEVER_PORT)")
    serve.add_argument("--max-batch", type=int, default=None,
                       help="most queries encoded together by dynamic batching; 1 disables it (default 32)")
    serve.add_argument("--max-batch-tokens", type=int, default=None, metavar="N",
                       help="token budget of one encoder batch (TEI's max_batch_tokens; RETRIEVER_MAX_BATCH_TOKENS): "
                            "the batcher cuts a batch before a query that would take it over N tokens, counted as the "
                            "encoder runs them, padded: queries x the longest one (instruction + question, capped at "
                            "the model's max length). A query over N still goes, alone. Default 2048 = 32 queries of "
                            "up to 64 tokens (typical ones with an instruction are 23-33), so ordinary full batches "
                            "are not cut, while a 256-token query is batched with at most 7 others instead of 31 "
                            "padded to its length. Lower keeps short queries fast when long ones arrive; higher "
                            "(TEI's default is 16384, for unpadded GPU kernels) favours throughput. 0 turns it off")
    serve.add_argument("--batch-wait-ms", type=float, default=None,
                       help="how long the batcher waits for more queries once it has one (default 2)")
    serve.add_argument("--latency-budget-ms", type=parse_budget, default=None, metavar="auto|off|MS",
                       help="a latency SLO: admit a query call only when the batcher expects to answer it within "
                            "this time; the rest get RESOURCE_EXHAUSTED at once, so accepted calls keep their latency "
                            "under overload and clients can back off or go to another replica. 'auto' is 1.5x one "
                            "query's measured time (batches of a few queries on a small CPU, whole batches on a GPU). "
                            "'off' (default) admits whatever --max-concurrent-calls and --max-queued-queries allow: "
                            "the most throughput, with latency that grows with load (RETRIEVER_LATENCY_BUDGET_MS)")
    serve.add_argument("--canary-units", type=int, default=None, metavar="N",
                       help="units the data canary re-encodes and looks up when an index loads or is published "
                            "(default 64, each shard's first and last always; more catches smaller corruptions, "
                            "each unit costing one document encoding and one search). 0 skips the re-encoding "
                            "(exact shards' norms are still checked): only for indexes whose vectors are not the "
                            "model's by construction, e.g. synthetic benchmarks (RETRIEVER_CANARY_UNITS)")
    serve.add_argument("--resolve", type=SourceResolution, choices=list(SourceResolution), default=None,
                       help=RESOLVE_HELP + " (default filter; RETRIEVER_RESOLUTION)")
    serve.add_argument("--router-threshold", type=fraction, default=None, metavar="P",
                       help=ROUTER_THRESHOLD_HELP + " (RETRIEVER_ROUTER_THRESHOLD)")
    serve.add_argument("--router-prior", type=fraction, default=None, metavar="W",
                       help=ROUTER_PRIOR_HELP + " (RETRIEVER_ROUTER_PRIOR)")
    serve.add_argument("--token-file", type=Path, default=None,
                       help="file holding the bearer token every call but health must carry (or "
                       "RETRIEVER_AUTH_TOKEN)")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow a non-loopback --host without a token (only behind an authenticating proxy)")
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain (with --tls-key)")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM private key (with --tls-cert)")
    serve.add_argument("--tls-client-ca", type=Path, default=None,
                       help="PEM roots: require clients to present a certificate they signed (mTLS)")
    serve.add_argument("--admin-token-file", type=Path, default=None,
                       help="file holding the admin token that the PublishIndex RPC (hot swap) must carry (or "
                       "RETRIEVER_ADMIN_TOKEN); without one, publishing is off. It must differ from the query token")
    serve.add_argument("--publish-root", action="append", type=Path, default=None, metavar="DIR",
                       help="directory PublishIndex may load indexes from (anything below it); repeatable "
                       "(RETRIEVER_PUBLISH_ROOTS, ':'-separated); default: the directories holding the served indexes")
    serve.add_argument("--grace", type=float, default=None,
                       help="seconds SIGTERM waits for calls in flight (default 10)")
    serve.add_argument("--cpu-index", action="store_true", help="keep index shards on the CPU even with a GPU")
    serve.add_argument("--metrics-port", type=int, default=None,
                       help="serve Prometheus metrics at http://HOST:PORT/metrics on the --host address, plain HTTP "
                       "and no auth (RETRIEVER_METRICS_PORT; default: off)")
    serve.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,
                       help="server log level (RETRIEVER_LOG_LEVEL; default INFO); request lines are INFO on "
                       "logger retriever.requests")
    serve.add_argument("--log-queries", action="store_true", default=None,
                       help="put query and instruction texts in the request log (RETRIEVER_LOG_QUERIES; default "
                       "off: they may hold personal data)")
    limits = serve.add_argument_group("limits")
    for flag, _, text in LIMIT_FLAGS:
        limits.add_argument(flag, type=int, default=None, help=text)
    add_encoder_args(serve, "model directory or bundled name (default: the model named in the first index's "
                     "manifest, or the bundled default model)")
    serve.set_defaults(func=run_serve)

    query = subparsers.add_parser("query", help="query a running server",
                                  description="Send one Retrieve call and print the hits like `retriever search`.")
    query.add_argument("query", help="the question")
    query.add_argument("--instruction", default=None,
                       help="free-text instruction for the query encoder (default: a model trained with instructions "
                       "gets its saved prompt, others the bare question; '' for none)")
    query.add_argument("--source", action="append", type=source_name, default=[], metavar="SOURCE",
                       help="filter exactly to this source type (text, table, kb, infobox); repeatable")
    query.add_argument("-k", "--top-k", type=at_least(1), default=10, help="number of hits (default 10)")
    query.add_argument("--score-threshold", type=float, default=None, help="drop hits scoring below this")
    query.add_argument("--index", default="", help="served index name (default: the server's default index)")
    query.add_argument("--mode", type=Mode, choices=list(Mode), default=Mode.DENSE,
                       help="dense (default), bm25 or hybrid; bm25 and hybrid need an index with a lexical part")
    query.add_argument("--rrf-k", type=float, default=60.0, help="hybrid: reciprocal-rank-fusion constant")
    query.add_argument("--fusion-depth", type=int, default=100, help="hybrid: hits of each mode fused")
    add_grouping_args(query)
    add_history_args(query)
    query.add_argument("--json", action="store_true", help="print one JSON object per hit")
    add_client_args(query)
    query.set_defaults(func=run_query)

    publish = subparsers.add_parser(
        "publish", help="hot-swap a served index to a new build",
        description="Ask a running server to load DIR, verify it, run a canary query and make it the new "
        "generation of NAME. Calls in flight finish on the old generation; a failed load keeps it serving.")
    publish.add_argument("name", help="served index name (a new name adds an index)")
    publish.add_argument("dir", help="index directory on the server's machine, under one of its publish roots "
                         "(made absolute when it exists here)")
    add_client_args(publish, admin=True)
    publish.set_defaults(func=run_publish)


def add_client_args(parser: argparse.ArgumentParser, admin: bool = False) -> None:
    parser.add_argument("--server", default=os.environ.get("RETRIEVER_SERVER", DEFAULT_SERVER),
                        help=f"server address (default {DEFAULT_SERVER}; RETRIEVER_SERVER)")
    if admin:
        parser.add_argument("--token-file", type=Path, default=None,
                            help="file holding the server's admin token (or RETRIEVER_ADMIN_TOKEN)")
    else:
        parser.add_argument("--token-file", type=Path, default=None,
                            help="file holding the bearer token (or RETRIEVER_AUTH_TOKEN)")
    parser.set_defaults(token_env="RETRIEVER_ADMIN_TOKEN" if admin else "RETRIEVER_AUTH_TOKEN")
    parser.add_argument("--tls-ca", type=Path, default=None, help="PEM root certificate to connect with TLS")
    parser.add_argument("--tls-cert", type=Path, default=None, help="client certificate for mTLS (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, default=None, help="client private key for mTLS")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (default 30)")


def read_token(path: Path | None, env: str = "RETRIEVER_AUTH_TOKEN") -> str | None:
    if path is None:
        return os.environ.get(env) or None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if not token:
        raise InvalidInputError(f"the token file {path} is empty")
    return token


def parse_index_arg(value: str) -> tuple[str, Path]:
    name, sep, directory = value.partition("=")
    if not sep:
        path = Path(value)
        return path.resolve().name, path
    if not name or not directory:
        raise InvalidInputError(f"--index {value!r}: expected NAME=DIR or DIR")
    return name, Path(directory)


def run_serve(args: argparse.Namespace) -> int:
    from retriever.sample import ensure_sample_index
    from retriever.service.config import build_config
    from retriever.service.server import IndexSource, RetrieverServer

    overrides: dict[str, Any] = {
        "host": args.host, "port": args.port, "max_batch": args.max_batch, "max_batch_tokens": args.max_batch_tokens,
        "batch_wait_ms": args.batch_wait_ms,
        "resolution": args.resolve, "router_threshold": args.router_threshold, "router_prior": args.router_prior,
        "insecure": args.insecure, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
        "grace_seconds": args.grace, "use_gpu": False if args.cpu_index else None,
        "token": read_token(args.token_file) if args.token_file else None,
        "admin_token": read_token(args.admin_token_file) if args.admin_token_file else None,
        "publish_roots": tuple(args.publish_root) if args.publish_root else None,
        "metrics_port": args.metrics_port, "log_queries": args.log_queries,
        "latency_budget_ms": args.latency_budget_ms, "canary_units": args.canary_units,
    }
    overrides.update({name: getattr(args, name) for _, name, _ in LIMIT_FLAGS})
    config = build_config(overrides)
    level = log_level(args.log_level)
    if level is not None:
        logging.getLogger().setLevel(level)
    indexes: list[tuple[str, IndexSource]] = [parse_index_arg(v) for v in args.index]
    # Model-free checks before the port opens and the model loads: every index's manifest, the model directory.
    manifests = [Manifest.read(path) for _, path in indexes if isinstance(path, Path)]
    model = model_for_index(manifests[0], args.model) if manifests else args.model
    if not indexes:
        indexes = [("sample", ensure_sample_index)]
    model_config = encoder_config(args, model, manifests[0].encoding if manifests else None)
    check_model_dir(model_config.model)
    server = RetrieverServer(config, indexes, encoder_config=model_config)
    return serve_until_signalled(server)


def log_level(flag: str | None, environ: Any = None) -> str | None:
    """The server's log level: the flag, else RETRIEVER_LOG_LEVEL; None leaves -v/-q (default INFO) to decide."""
    value = flag or (os.environ if environ is None else environ).get("RETRIEVER_LOG_LEVEL", "")
    if not value:
        return None
    if value.upper() not in LOG_LEVELS:
        raise InvalidInputError(f"environment variable RETRIEVER_LOG_LEVEL={value!r} is invalid: expected one of "
                                f"{', '.join(LOG_LEVELS)}")
    return value.upper()


def serve_until_signalled(server: Any) -> int:
    """Start, load in the background, and stop gracefully on SIGTERM/SIGINT (exit 0)."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def on_signal(signum: int, frame: object) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop.set()

    def load() -> None:
        try:
            server.load()
        except Exception as exc:  # reported by the main thread after shutdown
            failure.append(exc)
            stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    threading.Thread(target=load, name="retriever-load", daemon=True).start()
    while not stop.wait(0.5):
        pass
    # Whatever a handler thread is stuck in, the process ends within the grace plus EXIT_MARGIN seconds.
    watchdog = threading.Timer(server.config.grace_seconds + EXIT_MARGIN_SECONDS, _force_exit)
    watchdog.daemon = True
    watchdog.start()
    server.stop()
    if failure:
        if isinstance(failure[0], RetrieverError):
            raise failure[0]
        logger.error("loading failed", exc_info=failure[0])
        return 1
    return 0


#: Shutdown's hard limit beyond the grace period (the documented promise is grace + 5 s).
EXIT_MARGIN_SECONDS = 4.0


def _force_exit() -> None:
    alive = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    logger.warning("forcing exit: shutdown ran past its grace period (%d threads still running: %s)", len(alive),
                   ", ".join(alive[:5]))
    logging.shutdown()
    os._exit(0)


@contextlib.contextmanager
def connected(args: argparse.Namespace) -> Iterator[Any]:
    """A client of ``--server``; when nothing answers there, the error says so and what to do."""
    import grpc

    from retriever.client import RemoteError, RetrieverClient

    try:
        with RetrieverClient(args.server, token=read_token(args.token_file, args.token_env), timeout=args.timeout,
                             root_certificates=args.tls_ca, client_certificate=args.tls_cert,
                             client_key=args.tls_key) as client:
            yield client
    except RemoteError as exc:
        if exc.code is grpc.StatusCode.UNAVAILABLE and "failed to connect" in exc.details.lower():
            raise RemoteError(exc.code, f"no server answers at {args.server} (start one with `retriever serve`, "
                                        f"or pass --server HOST:PORT); {exc.details}") from None
        raise


def run_query(args: argparse.Namespace) -> int:
    with connected(args) as client:
        result = client.retrieve(args.query, instruction=args.instruction, sources=args.source, top_k=args.top_k,
                                 score_threshold=args.score_threshold, with_text=True, index=args.index,
                                 mode=args.mode, fusion=FusionConfig(rrf_k=args.rrf_k, depth=args.fusion_depth),
                                 group_by_record=args.group_by_record, max_per_record=args.max_per_record,
                                 history=args.history)
    if not args.json:
        print(f"index {result.index} generation {result.generation} ({result.server_seconds * 1000:.1f} ms in server)")
    print_result(result.as_search_result(), args.json, asked=args.query)
    return 0


def run_publish(args: argparse.Namespace) -> int:
    local = Path(args.dir)
    path = str(local.resolve()) if local.exists() else args.dir
    with connected(args) as client:
        published = client.publish(args.name, path)
    print(f"{published.name}: generation {published.generation} now serving ({published.total_units} units, "
          f"loaded in {published.load_seconds:.2f}s; previous generation {published.previous_generation or 'none'})")
    return 0
