"""The retrievers a benchmark compares, behind one small protocol.

Each takes :class:`~retriever.searcher.Query` objects and returns rank-ordered
``(unit ids, scores)`` arrays over one unit collection (a :class:`UnitStore`); nothing in
between passes through a set. ``Memo`` caches rankings so scenarios that ask the same
question twice (BM25 ignores instructions) are ranked once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from retriever.hybrid import FusionConfig, Ranking, dense_rankings, rrf_fuse
from retriever.index.lexical import LexicalIndex
from retriever.index.store import SOURCE_CODE, UnitStore
from retriever.records import Source
from retriever.searcher import Query, Searcher

logger = logging.getLogger(__name__)


class UnitRetriever(Protocol):
    name: str

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        """Top ``depth`` units per query, best first."""
        ...


def store_mask(store: UnitStore, sources: Sequence[Source]) -> np.ndarray | None:
    """Boolean ``[units]`` mask of the units of ``sources`` (None when no filter)."""
    if not sources:
        return None
    return np.isin(store.sources, [SOURCE_CODE[s] for s in sources])


class Bm25Retriever:
    """BM25 over the collection's unit texts; the instruction is ignored, the source filter applied exactly."""

    name = "bm25"

    def __init__(self, lexical: LexicalIndex, store: UnitStore) -> None:
        if lexical.units != len(store):
            raise ValueError(f"lexical index has {lexical.units} units, the collection {len(store)}")
        self.lexical, self.store = lexical, store

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        masks = [store_mask(self.store, q.sources) for q in queries]
        return self.lexical.search([q.text for q in queries], depth, masks)


class DenseRetriever:
    """Dense search through the engine's searcher (use ``SourceResolution.ENCODER_ONLY`` for soft runs)."""

    name = "dense"

    def __init__(self, searcher: Searcher, show_progress: bool = False) -> None:
        self.searcher, self.show_progress = searcher, show_progress
        self._vectors: dict[tuple[str, str], np.ndarray] = {}  # (instruction, text) → [dim]

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        plans = [self.searcher.plan(q) for q in queries]
        keys = [(p[0], q.text) for p, q in zip(plans, queries, strict=True)]
        todo = [k for k in dict.fromkeys(keys) if k not in self._vectors]
        if todo:
            started = time.perf_counter()
            vectors = self.searcher.encoder.encode_queries([t for _, t in todo], [i for i, _ in todo],
                                                           show_progress=self.show_progress)
            self._vectors.update(zip(todo, vectors, strict=True))
            logger.info("encoded %d queries in %.1fs", len(todo), time.perf_counter() - started)
        matrix = np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 1), np.float32)
        return dense_rankings(self.searcher.index, matrix, [p[1] for p in plans], depth)


class HybridRetriever:
    """Reciprocal-rank fusion of two retrievers, each cut at ``max(depth, fusion.depth)``."""

    name = "hybrid"

    def __init__(self, dense: UnitRetriever, lexical: UnitRetriever, fusion: FusionConfig | None = None) -> None:
        self.dense, self.lexical, self.fusion = dense, lexical, fusion or FusionConfig()

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        inner = max(depth, self.fusion.depth)
        dense = self.dense.rank(queries, inner)
        lexical = self.lexical.rank(queries, inner)
        return [rrf_fuse([d, b], depth, self.fusion.rrf_k) for d, b in zip(dense, lexical, strict=True)]


class Memo:
    """Caches another retriever's rankings by query (and depth); ``uses_instruction`` False drops it from the key."""

    def __init__(self, inner: UnitRetriever, uses_instruction: bool = True) -> None:
        self.inner, self.uses_instruction = inner, uses_instruction
        self.name = inner.name
        self._cache: dict[tuple[object, ...], Ranking] = {}

    def _key(self, query: Query, depth: int) -> tuple[object, ...]:
        sources = tuple(sorted(s.value for s in query.sources))
        return (query.text, query.instruction if self.uses_instruction else None, sources, depth)

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        keys = [self._key(q, depth) for q in queries]
        todo = list({k: q for k, q in zip(keys, queries, strict=True) if k not in self._cache}.items())
        if todo:
            for (key, _), ranking in zip(todo, self.inner.rank([q for _, q in todo], depth), strict=True):
                self._cache[key] = ranking
        return [self._cache[k] for k in keys]
