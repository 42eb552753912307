"""The retrievers a benchmark compares: each is one mode of the search engine.

A retriever takes :class:`~retriever.query.Query` objects and returns rank-ordered
``(unit ids, scores)`` arrays over one unit collection, computed by
:meth:`retriever.searcher.Searcher.rank` (the same planning, filter, ranking and fusion as the
CLI and the server); nothing in between passes through a set. Benchmarks search with
``SourceResolution.ENCODER_ONLY`` (scenarios set their filters explicitly). ``Memo`` caches
rankings so scenarios that ask the same question twice (BM25 ignores instructions) are ranked
once, and :class:`QueryVectors` encodes each (instruction, question) once for every mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from retriever.encoder import Encoder
from retriever.index import Index
from retriever.index.lexical import LexicalIndex
from retriever.index.store import UnitStore
from retriever.query import FusionConfig, Mode, PlannedQuery, Query, SourceResolution
from retriever.searcher import Ranking, Searcher

logger = logging.getLogger(__name__)


class UnitRetriever(Protocol):
    name: str

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        """Top ``depth`` units per query, best first."""
        ...


class QueryVectors:
    """Query embeddings by (instruction, question), each encoded once per benchmark run."""

    def __init__(self, show_progress: bool = False) -> None:
        self.show_progress = show_progress
        self._vectors: dict[tuple[str, str], np.ndarray] = {}  # (instruction, text) → [dim]

    def __call__(self, searcher: Searcher, planned: Sequence[PlannedQuery]) -> np.ndarray:
        """``[len(planned), dim]`` embeddings; the ones not seen yet are encoded in one call, in order."""
        keys = [(p.instruction, p.text) for p in planned]
        first = {k: p for k, p in zip(keys, planned, strict=True)}
        todo = [k for k in dict.fromkeys(keys) if k not in self._vectors]
        if todo:
            started = time.perf_counter()
            vectors = searcher.encode([first[k] for k in todo], show_progress=self.show_progress)
            self._vectors.update(zip(todo, vectors, strict=True))
            logger.info("encoded %d queries in %.1fs", len(todo), time.perf_counter() - started)
        return np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 1), np.float32)


def engine_query(query: Query, mode: Mode, fusion: FusionConfig, depth: int) -> Query:
    """The query a benchmark asks in ``mode`` at ``depth``: in process (:class:`EngineRetriever`) and over
    gRPC (:class:`retriever.evaluation.remote.RemoteRetriever`) alike."""
    return replace(query, k=depth, mode=mode, fusion=fusion)


class EngineRetriever:
    """One search mode of a :class:`~retriever.searcher.Searcher` at the benchmark's depth."""

    def __init__(self, searcher: Searcher, mode: Mode, fusion: FusionConfig | None = None,
                 vectors: QueryVectors | None = None) -> None:
        self.searcher, self.mode, self.fusion = searcher, mode, fusion or FusionConfig()
        self.vectors = vectors or QueryVectors()
        self.name = mode.value

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        planned = [self.searcher.plan(engine_query(q, self.mode, self.fusion, depth)) for q in queries]
        if self.mode.uses_vectors:
            vectors = self.vectors(self.searcher, planned)
        else:
            vectors = np.zeros((len(planned), 0), np.float32)
        return self.searcher.rank(planned, vectors)


class Memo:
    """Caches another retriever's rankings by query (and depth); ``uses_instruction`` False drops it from the key."""

    def __init__(self, inner: UnitRetriever, uses_instruction: bool = True) -> None:
        self.inner, self.uses_instruction = inner, uses_instruction
        self.name = inner.name
        self._cache: dict[tuple[object, ...], Ranking] = {}

    def _key(self, query: Query, depth: int) -> tuple[object, ...]:
        sources = tuple(sorted(s.value for s in query.sources))
        return (query.text, query.history, query.instruction if self.uses_instruction else None, sources, depth)

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        keys = [self._key(q, depth) for q in queries]
        todo = list({k: q for k, q in zip(keys, queries, strict=True) if k not in self._cache}.items())
        if todo:
            for (key, _), ranking in zip(todo, self.inner.rank([q for _, q in todo], depth), strict=True):
                self._cache[key] = ranking
        return [self._cache[k] for k in keys]


def engine_retrievers(modes: Sequence[Mode], store: UnitStore, index: Index | None, encoder: Encoder | None,
                      lexical: LexicalIndex | None, fusion: FusionConfig | None = None,
                      show_progress: bool = False) -> list[UnitRetriever]:
    """One memoized retriever per mode, all over one searcher and sharing the query embeddings.

    Dense and hybrid need ``index`` and ``encoder``, BM25 and hybrid need ``lexical``; without an
    index, BM25 searches ``store``.
    """
    if index is not None:
        searcher = Searcher(index, encoder, SourceResolution.ENCODER_ONLY, lexical)
    else:
        searcher = Searcher(None, None, SourceResolution.ENCODER_ONLY, lexical, store=store)
    vectors = QueryVectors(show_progress)
    return [memoized(EngineRetriever(searcher, mode, fusion, vectors), mode) for mode in modes]


def memoized(retriever: UnitRetriever, mode: Mode) -> Memo:
    """``retriever`` (ranking in ``mode``) behind a :class:`Memo`; BM25 rankings are cached without the
    instruction, which a lexical query does not read."""
    return Memo(retriever, uses_instruction=mode.uses_vectors)
