"""The ``retriever`` command. Each command module registers its subcommands here."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# numpy's OpenBLAS threads busy-wait 2**28 processor cycles (~0.1 s) after every call before they
# sleep. Between two encoder batches the server runs an exact search (a NumPy matrix product), and
# the spinning BLAS threads then take the cores from the encoder's own threads (torch's OpenMP,
# OpenVINO's): on 2 cores the server encoded a one-query torch batch in 46 ms instead of 12
# (docs/BACKENDS.md, "Where a served query's time goes"). 2**4 cycles (OpenBLAS's minimum): they sleep at once. It must
# be set before numpy loads OpenBLAS, so here, before any command module; a value already set wins.
# (Programs that use the engine as a library set it themselves; the gRPC client sets nothing.)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from retriever import __version__
from retriever.errors import RetrieverError

logger = logging.getLogger("retriever")

#: Modules with a ``register(subparsers)`` function; each parser sets ``func=run(args) -> int``.
COMMAND_MODULES = [
    "retriever.cli.index_commands",
    "retriever.cli.serve_commands",
    "retriever.cli.bench_commands",
    "retriever.cli.train_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retriever",
        description="Heterogeneous knowledge retrieval: text, tables, KB triples and infoboxes in one "
        "instruction-aware embedding space.",
    )
    parser.add_argument("--version", action="version", version=f"retriever {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        for noisy in ("faiss.loader", "sentence_transformers", "transformers", "httpx", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except RetrieverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
