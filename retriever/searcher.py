"""Query → instruction → encoder → index → ranked units."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from retriever.encoder import Encoder
from retriever.errors import InvalidInputError
from retriever.index import Index
from retriever.instructions import instruction_for, resolve_sources
from retriever.records import Source

logger = logging.getLogger(__name__)


class SourceResolution(StrEnum):
    """What to do when a query names no sources but its instruction does ("from tables").

    FILTER: resolve the named source types and filter on them exactly.
    ENCODER_ONLY: leave it to the encoder, which reads the instruction; no filter.
    """

    FILTER = "filter"
    ENCODER_ONLY = "encoder-only"


@dataclass(frozen=True)
class Query:
    """One retrieval request.

    Attributes:
        text: the question.
        instruction: free text that conditions the query encoder. None uses the model's
            saved prompt (the source-specific one when exactly one source is asked for,
            else the general one) when the model was trained with instructions, and the bare
            question otherwise; "" always encodes the question alone.
        sources: source types to filter on exactly; empty means all (or, under
            ``SourceResolution.FILTER``, the ones the instruction names).
    """

    text: str
    instruction: str | None = None
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True)
class Hit:
    unit_id: int
    record_id: str
    source: Source
    part: int
    title: str
    text: str
    score: float


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    sources: tuple[Source, ...]  # the filter applied; empty when none
    resolved: bool  # True when ``sources`` came from the instruction


class Searcher:
    """Dense search over one loaded index with the encoder it was built with."""

    def __init__(self, index: Index, encoder: Encoder, resolution: SourceResolution = SourceResolution.FILTER) -> None:
        index.manifest.check_compatible(encoder.checksum, encoder.prompts, str(index.path))
        self.index, self.encoder, self.resolution = index, encoder, resolution

    def plan(self, query: Query) -> tuple[str, tuple[Source, ...], bool]:
        """The instruction to encode with and the source filter to apply."""
        if not query.text or not query.text.strip():
            raise InvalidInputError("query text must not be empty")
        sources = tuple(dict.fromkeys(query.sources))
        resolved = False
        if not sources and self.resolution is SourceResolution.FILTER and query.instruction:
            sources = tuple(resolve_sources(query.instruction))
            resolved = bool(sources)
        instruction = query.instruction
        if instruction is None:
            tuned = self.encoder.instruction_tuned
            instruction = instruction_for(self.encoder.prompts, sources) if tuned else ""
        return instruction, sources, resolved

    def embed(self, queries: Sequence[Query]) -> tuple[np.ndarray, list[tuple[Source, ...]], list[bool]]:
        plans = [self.plan(q) for q in queries]
        vectors = self.encoder.encode_queries([q.text for q in queries], [p[0] for p in plans])
        return vectors, [p[1] for p in plans], [p[2] for p in plans]

    def search(self, queries: Sequence[Query], k: int = 10, score_threshold: float | None = None) -> list[SearchResult]:
        """Search a batch of queries (encoded together); results keep the input order.

        Raises:
            InvalidInputError: an empty query or ``k < 1``.
        """
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        vectors, filters, resolved = self.embed(queries)
        return self.search_vectors(vectors, filters, resolved, k, score_threshold)

    def search_vectors(self, vectors: np.ndarray, filters: Sequence[tuple[Source, ...]], resolved: Sequence[bool],
                       k: int, score_threshold: float | None = None) -> list[SearchResult]:
        """Search already-encoded queries, grouping those with the same filter into one FAISS call."""
        results: list[SearchResult | None] = [None] * len(filters)
        groups: dict[tuple[Source, ...], list[int]] = {}
        for i, sources in enumerate(filters):
            groups.setdefault(tuple(sorted(sources, key=lambda s: s.value)), []).append(i)
        for sources, rows in groups.items():
            names = [s.value for s in sources] if sources else None
            scores, ids = self.index.shards.search(vectors[rows], k, names)
            for row, score_row, id_row in zip(rows, scores, ids):
                hits = self._hits(score_row, id_row, score_threshold)
                results[row] = SearchResult(hits, filters[row], resolved[row])
        return [r for r in results if r is not None]

    def _hits(self, scores: np.ndarray, ids: np.ndarray, threshold: float | None) -> list[Hit]:
        store = self.index.store
        hits = []
        for score, unit_id in zip(scores.tolist(), ids.tolist()):
            if unit_id < 0 or (threshold is not None and score < threshold):
                continue
            hits.append(Hit(unit_id, store.record_id(unit_id), store.source_of(unit_id), int(store.parts[unit_id]),
                            store.title(unit_id), store.text(unit_id), float(score)))
        return hits
