"""Search modes beyond dense: BM25 alone, and hybrid (reciprocal-rank fusion of BM25 and dense).

``HybridSearcher`` wraps a dense :class:`~retriever.searcher.Searcher` and a
:class:`~retriever.index.lexical.LexicalIndex` built over the same units. All three modes
take the same :class:`~retriever.searcher.Query` and apply the same source filter (the
query's ``sources``, or the ones its instruction names under ``SourceResolution.FILTER``),
and return :class:`~retriever.searcher.SearchResult` hits, so callers switch modes with
one argument. BM25 ignores the instruction text (it is not part of a lexical query).

Reciprocal-rank fusion (Cormack et al., 2009) scores a unit ``sum_i 1 / (rrf_k + rank_i)``
over the rankings it appears in (rank from 1); each ranking is cut at ``depth``. Fused ties
are broken by unit id, ascending.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from retriever.errors import InvalidInputError
from retriever.index import Index
from retriever.index.lexical import LEXICAL_DIR, Bm25Config, LexicalIndex, texts_sha256
from retriever.records import Source
from retriever.searcher import Hit, Query, Searcher, SearchResult

logger = logging.getLogger(__name__)

#: (unit ids int64 [n], scores float32 [n]), best first.
Ranking = tuple[np.ndarray, np.ndarray]


class SearchMode(StrEnum):
    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class FusionConfig:
    """Reciprocal-rank fusion settings.

    Attributes:
        rrf_k: the RRF constant (60 in the original paper; larger flattens rank differences).
        depth: how many hits of each ranking are fused (at least the k asked for).
    """

    rrf_k: float = 60.0
    depth: int = 100

    def __post_init__(self) -> None:
        if self.rrf_k < 0 or self.depth < 1:
            raise ValueError(f"need rrf_k >= 0 and depth >= 1, got rrf_k={self.rrf_k}, depth={self.depth}")


def rrf_fuse(rankings: Sequence[Ranking], k: int, rrf_k: float = 60.0) -> Ranking:
    """Fuse rank-ordered rankings of unit ids; returns the top ``k`` by fused score."""
    fused: dict[int, float] = {}
    for ids, _ in rankings:
        for rank, unit_id in enumerate(ids.tolist(), 1):
            if unit_id >= 0:
                fused[unit_id] = fused.get(unit_id, 0.0) + 1.0 / (rrf_k + rank)
    if not fused:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order].astype(np.float32)


def source_mask(index: Index, sources: Sequence[Source]) -> np.ndarray | None:
    """Boolean ``[units]`` mask of the units of ``sources`` (None for no filter)."""
    if not sources:
        return None
    mask = np.zeros(len(index.store), dtype=bool)
    wanted = {s.value for s in sources}
    for shard in index.manifest.shards:
        if shard.source in wanted:
            mask[shard.start:shard.start + shard.count] = True
    return mask


def dense_rankings(index: Index, vectors: np.ndarray, filters: Sequence[tuple[Source, ...]], k: int) -> list[Ranking]:
    """Exact-filtered dense top-k per query as ``(ids, scores)`` (padding ``-1`` ids dropped)."""
    out: list[Ranking | None] = [None] * len(filters)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, sources in enumerate(filters):
        groups.setdefault(tuple(sorted(s.value for s in sources)), []).append(i)
    for names, rows in groups.items():
        scores, ids = index.shards.search(vectors[rows], k, list(names) if names else None)
        for row, score_row, id_row in zip(rows, scores, ids, strict=True):
            keep = id_row >= 0
            out[row] = (id_row[keep].astype(np.int64), score_row[keep].astype(np.float32))
    return [r for r in out if r is not None]


class HybridSearcher:
    """Dense, BM25 or hybrid search over one index and its lexical index."""

    def __init__(self, searcher: Searcher, lexical: LexicalIndex, fusion: FusionConfig | None = None) -> None:
        store = searcher.index.store
        if lexical.units != len(store) or lexical.units_sha256 != texts_sha256(store.texts):
            raise InvalidInputError(f"the lexical index covers other units than {searcher.index.path}; "
                                    "rebuild it with `retriever build-lexical`")
        self.searcher, self.lexical, self.fusion = searcher, lexical, fusion or FusionConfig()

    @property
    def index(self) -> Index:
        return self.searcher.index

    def rank(self, queries: Sequence[Query], k: int, mode: SearchMode) -> tuple[list[Ranking], list[tuple[Source, ...]],
                                                                                list[bool]]:
        """Rank-ordered ``(ids, scores)`` per query, plus the filter applied and whether it was resolved."""
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        plans = [self.searcher.plan(q) for q in queries]
        filters = [p[1] for p in plans]
        resolved = [p[2] for p in plans]
        if mode is SearchMode.BM25:
            return self._bm25(queries, filters, k), filters, resolved
        vectors = self.searcher.encoder.encode_queries([q.text for q in queries], [p[0] for p in plans])
        if mode is SearchMode.DENSE:
            return dense_rankings(self.index, vectors, filters, k), filters, resolved
        depth = max(k, self.fusion.depth)
        dense = dense_rankings(self.index, vectors, filters, depth)
        lexical = self._bm25(queries, filters, depth)
        fused = [rrf_fuse([d, b], k, self.fusion.rrf_k) for d, b in zip(dense, lexical, strict=True)]
        return fused, filters, resolved

    def search(self, queries: Sequence[Query], k: int = 10, mode: SearchMode = SearchMode.HYBRID) -> list[SearchResult]:
        """Search a batch of queries in one mode; results keep the input order.

        Hit scores are cosine similarity (dense), BM25 score (bm25) or fused RRF score (hybrid).

        Raises:
            InvalidInputError: an empty query or ``k < 1``.
        """
        if not queries:
            return []
        rankings, filters, resolved = self.rank(queries, k, mode)
        store = self.index.store
        results = []
        for (ids, scores), sources, was_resolved in zip(rankings, filters, resolved, strict=True):
            hits = [Hit(i, store.record_id(i), store.source_of(i), int(store.parts[i]), store.title(i),
                        store.text(i), s) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]
            results.append(SearchResult(hits, sources, was_resolved))
        return results

    def _bm25(self, queries: Sequence[Query], filters: Sequence[tuple[Source, ...]], k: int) -> list[Ranking]:
        masks = [source_mask(self.index, sources) for sources in filters]
        return self.lexical.search([q.text for q in queries], k, masks)



def lexical_path(index: Index, path: Path | None = None) -> Path:
    """Where an index's lexical index lives: ``path`` if given, else ``<index dir>/lexical``."""
    return path if path is not None else index.path / LEXICAL_DIR


def build_lexical(index: Index, out: Path | None = None, config: Bm25Config | None = None,
                  overwrite: bool = False, show_progress: bool = False) -> Path:
    """Build the BM25 index over an index's units and save it (default ``<index dir>/lexical``)."""
    path = lexical_path(index, out)
    LexicalIndex.build(index.store.texts, config, show_progress=show_progress).save(path, overwrite=overwrite)
    return path


def load_lexical(index: Index, path: Path | None = None) -> LexicalIndex:
    """Load the lexical index of ``index``, refusing one built from other units."""
    return LexicalIndex.load(lexical_path(index, path), units_sha256=texts_sha256(index.store.texts))
