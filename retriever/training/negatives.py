"""Hard-negative mining for stage 3, per source type.

For every training question the pool is searched separately within each source type (BM25 with
the benchmark's settings, or the current model's embeddings), so that a source-specific
instruction can be given relevant-looking units of the *other* source types as negatives.
Units of gold records are removed here; records related to the gold (a kb fact's parent infobox)
are removed at batch time when the instruction is the general one.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from retriever.instructions import compose_query, general_instruction
from retriever.records import Source
from retriever.training.data import TrainingData
from retriever.training.model import EmbeddingModel

logger = logging.getLogger(__name__)

#: The benchmark's BM25 settings (data README): k1=0.9, b=0.4, English stop words and stemmer.
BM25_K1, BM25_B = 0.9, 0.4

Mined = list[dict[Source, np.ndarray]]  # per question: unit indexes per source, best first


def mine_bm25(data: TrainingData, depth: int, show_progress: bool = False) -> Mined:
    """Top-``depth`` BM25 units per source type for every training question (gold records excluded)."""
    import bm25s
    import Stemmer

    started = time.perf_counter()
    stemmer = Stemmer.Stemmer("english")
    queries = [t.question.text for t in data.questions]
    query_tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, return_ids=False,
                                  show_progress=show_progress)
    out: Mined = [{} for _ in data.questions]
    for source, members in data.pool_by_source().items():
        if not len(members):
            continue
        corpus_tokens = bm25s.tokenize([data.units[i].text for i in members], stopwords="en", stemmer=stemmer,
                                       show_progress=show_progress)
        index = bm25s.BM25(k1=BM25_K1, b=BM25_B)
        index.index(corpus_tokens, show_progress=show_progress)
        k = min(len(members), depth + 8)  # a few extra: gold units are dropped below
        hits, _ = index.retrieve(query_tokens, k=k, show_progress=show_progress, n_threads=1)
        for q, row in enumerate(hits):
            out[q][source] = _drop_gold(data, q, members[np.asarray(row, dtype=np.int64)], depth)
    logger.info("mined BM25 negatives for %d questions in %.1fs", len(queries), time.perf_counter() - started)
    return out


def mine_with_model(data: TrainingData, model: EmbeddingModel, depth: int, batch_size: int = 64) -> Mined:
    """Top-``depth`` units per source type by the current model (general instruction + question)."""
    started = time.perf_counter()
    queries = [compose_query(general_instruction(), t.question.text) for t in data.questions]
    q = model.encode(queries, batch_size).numpy()  # [Q, d]
    out: Mined = [{} for _ in data.questions]
    for source, members in data.pool_by_source().items():
        if not len(members):
            continue
        docs = model.encode([data.units[i].text for i in members], batch_size).numpy()  # [N, d]
        k = min(len(members), depth + 8)
        for start in range(0, len(queries), 1024):
            scores = q[start:start + 1024] @ docs.T  # [q, N]
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, cand in enumerate(top):
                order = cand[np.argsort(-scores[row, cand])]
                out[start + row][source] = _drop_gold(data, start + row, members[order], depth)
    logger.info("mined model negatives for %d questions in %.1fs", len(queries), time.perf_counter() - started)
    return out


def interleave(rankings: list[np.ndarray]) -> list[int]:
    """Merge rankings rank by rank (1st of each, then 2nd of each, ...)."""
    out: list[int] = []
    longest = max((len(r) for r in rankings), default=0)
    for rank in range(longest):
        out.extend(int(r[rank]) for r in rankings if rank < len(r))
    return out


def interleave_mined(first: Mined, second: Mined) -> Mined:
    """Two miners' rankings merged per question and source by :func:`interleave` (first's 1st,
    second's 1st, first's 2nd, ...), each unit once."""
    if len(first) != len(second):
        raise ValueError(f"mined rankings for {len(first)} and {len(second)} questions")
    out: Mined = []
    for a, b in zip(first, second, strict=True):
        merged: dict[Source, np.ndarray] = {}
        for source in (s for s in Source if s in a or s in b):  # a fixed order: seeded draws repeat
            ranked = interleave([r[source] for r in (a, b) if source in r])
            merged[source] = np.array(list(dict.fromkeys(ranked)), dtype=np.int64)
        out.append(merged)
    return out


def _drop_gold(data: TrainingData, question: int, ranked: np.ndarray, depth: int) -> np.ndarray:
    gold = data.questions[question].gold_records
    keep = [int(i) for i in ranked if data.units[int(i)].record_id not in gold]
    return np.array(keep[:depth], dtype=np.int64)
