"""One source shard of a build: choose its FAISS index, train it once, add the parts, gate its recall.

The vectors of a shard are read part by part (memory-mapped ``.npy`` files of the build's work
directory), so a shard never needs all its float32 vectors in memory unless its index stores
them (``Flat``). Approximate shards are tuned and checked against exact search on the build's
recall-gate queries (encoded pseudo-queries, see :mod:`retriever.index.recall`; perturbed copies
of sampled vectors when none are given); a shard below ``min_recall`` fails the build before
anything is published.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from retriever.errors import InvalidInputError
from retriever.index.factory import (
    DEFAULT_QUERY_NOISE,
    add_in_chunks,
    choose_factory,
    exact_ground_truth,
    held_aside_queries,
    train_index,
    tune_search,
)
from retriever.index.shards import faiss_module

logger = logging.getLogger(__name__)

#: Vectors sampled to train a shard's quantizers (IVF centroids, PQ/SQ codebooks): at least this many,
#: and TRAIN_PER_LIST per IVF list (FAISS warns below 39 per centroid), at most TRAIN_SAMPLE_MAX.
TRAIN_SAMPLE = 200_000
TRAIN_PER_LIST = 40
TRAIN_SAMPLE_MAX = 1_000_000  # 1.5 GB of 384-d float32
#: Held-aside queries for the recall gate, and the neighbours compared.
RECALL_QUERIES = 1000
RECALL_K = 10
SEED = 1234


class RecallTooLowError(InvalidInputError):
    """An approximate shard cannot reach the required recall; nothing was published."""


@dataclass
class BuiltShard:
    index: Any
    factory: str
    reason: str
    recall: float | None
    search: dict[str, int]


def build_shard(factory: str, count: int, dimension: int, memory_budget: int | None, min_recall: float,
                vectors: Callable[[], Iterator[np.ndarray]], source: str,
                queries: Callable[[], np.ndarray] | None = None) -> BuiltShard:
    """Build the FAISS index of one source shard.

    Args:
        factory: ``auto`` or a FAISS factory string.
        count: vectors in the shard.
        dimension: their dimension.
        memory_budget: bytes this shard may take when served (``auto`` only).
        min_recall: the lowest acceptable recall@10 against exact search.
        vectors: yields the shard's vectors chunk by chunk, in unit-id order (callable again).
        source: the shard's source type, for messages.
        queries: the recall gate's query vectors (called only for an approximate shard); None:
            perturbed copies of sampled vectors (:func:`held_aside_queries`).

    With ``auto``, a choice that misses the gate is followed by its more accurate fallbacks
    (:attr:`FactoryChoice.fallbacks`), built from the same parts and gated on the same queries;
    the manifest's reason says so.

    Raises:
        RecallTooLowError: the tuned index (of the last fallback, with ``auto``) stays below ``min_recall``.
    """
    started = time.perf_counter()
    fallbacks: tuple[str, ...] = ()
    if factory == "auto":
        choice = choose_factory(count, dimension, memory_budget)
        factory, reason, fallbacks = choice.factory, choice.reason, choice.fallbacks
    else:
        reason = "given (--factory)"
    faiss = faiss_module()
    gated: tuple[np.ndarray, np.ndarray] | None = None  # the gate's queries and exact top-k, for every try
    while True:
        if factory == "Flat":  # nothing to train or tune: the vectors are read once, to add them
            index, sample = faiss.IndexFlatIP(dimension), None
        else:
            sample = _sample(vectors, count, train_sample_size(factory), np.random.default_rng(SEED))
            index, factory = train_index(factory, dimension, sample, SEED)
        add_in_chunks(index, vectors())
        if sample is None or isinstance(index, faiss.IndexFlat):
            logger.info("shard %s: %s, %d vectors (exact) in %.1fs", source, factory, count,
                        time.perf_counter() - started)
            return BuiltShard(index, factory, reason, None, {})
        if gated is None:
            gate = (queries() if queries is not None
                    else held_aside_queries(sample, min(RECALL_QUERIES, count), SEED, DEFAULT_QUERY_NOISE))
            gated = gate, exact_ground_truth(gate, vectors(), RECALL_K)
        params, recall = tune_search(index, factory, *gated, min_recall, RECALL_K)
        search = {k: int(v) for k, v in asdict(params).items()}
        logger.info("shard %s: %s, %d vectors, recall@%d %.4f with %s in %.1fs", source, factory, count, RECALL_K,
                    recall, search, time.perf_counter() - started)
        if recall >= min_recall:
            return BuiltShard(index, factory, reason, round(float(recall), 4), search)
        if not fallbacks:
            raise RecallTooLowError(
                f"shard {source}: {factory} reaches recall@{RECALL_K} {recall:.4f} against exact search on "
                f"{len(gated[0])} held-aside queries, below --min-recall {min_recall}; choose a larger "
                "--memory-budget or another --factory (the encoded parts are kept: re-run with --resume)")
        logger.warning("shard %s: %s reaches recall@%d %.4f < %s at best; building the more accurate %s",
                       source, factory, RECALL_K, recall, min_recall, fallbacks[0])
        reason = (f"{reason}; it reached recall@{RECALL_K} {recall:.4f} < {min_recall} at best ({search}), "
                  f"so {fallbacks[0]} was built instead (more accurate, smaller, slower per probed list)")
        factory, fallbacks = fallbacks[0], fallbacks[1:]
        del index


def train_sample_size(factory: str) -> int:
    """How many vectors train ``factory``: TRAIN_SAMPLE, or TRAIN_PER_LIST per IVF list when more (capped)."""
    match = re.search(r"IVF(\d+)", factory)
    lists = int(match.group(1)) if match else 0
    return min(TRAIN_SAMPLE_MAX, max(TRAIN_SAMPLE, TRAIN_PER_LIST * lists))


def _sample(vectors: Callable[[], Iterator[np.ndarray]], count: int, size: int,
            rng: np.random.Generator) -> np.ndarray:
    """A uniform sample of ``min(size, count)`` rows, in row order, read chunk by chunk."""
    if count <= size:
        return np.concatenate([np.asarray(c, dtype=np.float32) for c in vectors()])
    wanted = np.sort(rng.choice(count, size=size, replace=False))
    out = []
    offset = 0
    for chunk in vectors():
        lo, hi = np.searchsorted(wanted, [offset, offset + len(chunk)])
        if hi > lo:
            out.append(np.asarray(chunk[wanted[lo:hi] - offset], dtype=np.float32))
        offset += len(chunk)
    return np.concatenate(out)
