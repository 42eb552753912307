"""The sample corpus shipped in the package, and its cached demo index."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import resources
from pathlib import Path

from retriever.encoder import Encoder
from retriever.errors import RetrieverError
from retriever.index import BuildConfig, Index, build_index
from retriever.index.manifest import DEFAULT_ENCODING
from retriever.linearize import DEFAULT_LINK_ROWS, LINEARIZER_VERSION
from retriever.questions import Question, read_questions

logger = logging.getLogger(__name__)

SAMPLE_CORPUS = "sample_corpus.jsonl.gz"
SAMPLE_QUERIES = "sample_queries.jsonl"


def data_file(name: str) -> Path:
    """Path of a file in ``retriever/data`` (the package is installed unzipped)."""
    return Path(str(resources.files("retriever") / "data" / name))


def sample_questions() -> list[Question]:
    """The real questions of ``retriever/data/sample_queries.jsonl``; their gold is in the sample corpus."""
    return read_questions(data_file(SAMPLE_QUERIES))


def cache_dir() -> Path:
    """Where derived artifacts are cached: ``$RETRIEVER_CACHE_DIR``, else ``~/.cache/retriever``."""
    return Path(os.environ.get("RETRIEVER_CACHE_DIR") or Path.home() / ".cache" / "retriever")


def sample_index_dir(encoder: Encoder) -> Path:
    corpus = data_file(SAMPLE_CORPUS).read_bytes()
    # Another encoding than torch/float32 gets its own cache (the key of torch/float32 is as before it was recorded).
    encoding = b"" if encoder.encoding == DEFAULT_ENCODING else json.dumps(encoder.encoding, sort_keys=True).encode()
    links = f"links {DEFAULT_LINK_ROWS}".encode()  # passages with their link context (retriever.linearize.links)
    key = hashlib.sha256(corpus + encoder.checksum.encode() + LINEARIZER_VERSION.encode() + encoding
                         + links).hexdigest()[:16]
    return cache_dir() / "indexes" / f"sample-{key}"


def ensure_sample_index(encoder: Encoder) -> Path:
    """The sample index for this model, built on first use (about a minute on 2 cores) and cached.

    A cached copy that fails its checks is rebuilt.
    """
    path = sample_index_dir(encoder)
    if path.exists():
        try:
            Index.load(path, use_gpu=False)
            return path
        except RetrieverError as exc:
            logger.warning("cached sample index %s is unusable (%s); rebuilding", path, exc)
    logger.info("building the sample index at %s (first run only)", path)
    build_index(BuildConfig(corpus=data_file(SAMPLE_CORPUS), out=path, overwrite=True), encoder)
    return path
