"""The search engine's request and answer types: no model, index or array library behind them.

A :class:`Query` says everything about one search: the question, the instruction, the exact
source filter, how many hits, the score floor, and the mode (dense, BM25 or their fusion).
:class:`~retriever.searcher.Searcher` turns it into a :class:`PlannedQuery` (the instruction to
encode with and the filter to apply, resolved once) and answers a :class:`SearchResult` of
:class:`Hit` s. The gRPC client imports this module without loading torch, FAISS or NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from retriever.errors import InvalidInputError
from retriever.records import Source


class SourceResolution(StrEnum):
    """What to do when a query names no sources but its instruction does ("from tables").

    FILTER: resolve the named source types and filter on them exactly, read by the model's
        source router when it has one (MODEL), else by the keyword rules (RULES).
    MODEL: the model's source router (see :mod:`retriever.router`); it filters only when confident.
    RULES: the keyword regexes of :func:`retriever.instructions.resolve_sources`.
    ENCODER_ONLY: leave it to the encoder, which reads the instruction; no filter.
    """

    FILTER = "filter"
    MODEL = "model"
    RULES = "rules"
    ENCODER_ONLY = "encoder-only"


class Mode(StrEnum):
    """How units are ranked.

    DENSE: cosine similarity of the query and unit embeddings (the instruction conditions the query).
    BM25: lexical BM25 over the unit texts (the instruction is not part of a lexical query).
    HYBRID: reciprocal-rank fusion of the dense and BM25 rankings.
    """

    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"

    @property
    def uses_vectors(self) -> bool:
        """Whether the query must be encoded."""
        return self is not Mode.BM25

    @property
    def uses_lexical(self) -> bool:
        """Whether the index needs its lexical (BM25) part."""
        return self is not Mode.DENSE


@dataclass(frozen=True)
class FusionConfig:
    """Reciprocal-rank fusion settings (Cormack et al., 2009) for ``Mode.HYBRID``.

    A unit scores ``dense_weight / (rrf_k + dense rank) + bm25_weight / (rrf_k + BM25 rank)``
    over the rankings it appears in (ranks from 1); each ranking is cut at ``max(k, depth)``.
    Fused ties are broken by unit id, ascending.

    Attributes:
        rrf_k: the RRF constant (60 in the original paper; larger flattens rank differences).
        depth: how many hits of each ranking are fused (at least the k asked for).
        dense_weight, bm25_weight: each ranking's weight; 0 leaves that ranking out.

    Raises:
        InvalidInputError: a negative or non-finite ``rrf_k`` or weight, both weights 0, or ``depth < 1``.
    """

    rrf_k: float = 60.0
    depth: int = 100
    dense_weight: float = 1.0
    bm25_weight: float = 1.0

    def __post_init__(self) -> None:
        numbers = {"rrf_k": self.rrf_k, "dense_weight": self.dense_weight, "bm25_weight": self.bm25_weight}
        for name, value in numbers.items():
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"fusion.{name}: must be a finite number >= 0, got {value}")
        if self.dense_weight == 0 and self.bm25_weight == 0:
            raise InvalidInputError("fusion.dense_weight, fusion.bm25_weight: must not both be 0")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise InvalidInputError(f"fusion.depth: must be an integer >= 1, got {self.depth!r}")


@dataclass(frozen=True)
class Turn:
    """One earlier turn of a conversation: what was asked and, optionally, what was answered."""

    question: str
    answer: str = ""


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
        k: how many hits at most.
        score_threshold: drop hits scoring below this (the score of the mode: cosine
            similarity, BM25 score or fused RRF score); None keeps all.
        mode: dense, BM25 or hybrid ranking.
        fusion: reciprocal-rank fusion settings (``Mode.HYBRID`` only).
        group_by_record: rank records instead of units: at most ``k`` distinct records (a table's
            rows and a long passage's windows are units of one record), each record's units
            together and best first, records ordered by their best unit.
        max_per_record: units kept per record when grouping (at least 1).
        history: earlier turns of the conversation, oldest first; a follow-up question is
            resolved against them before it is encoded (``retriever.conversation.resolve``).
    """

    text: str
    instruction: str | None = None
    sources: tuple[Source, ...] = ()
    k: int = 10
    score_threshold: float | None = None
    mode: Mode = Mode.DENSE
    fusion: FusionConfig = field(default_factory=FusionConfig)
    group_by_record: bool = False
    max_per_record: int = 1
    history: tuple[Turn, ...] = ()

    def check(self) -> None:
        """The checks that need neither a model nor an index (the engine's plan runs them first).

        Raises:
            InvalidInputError: empty text, ``k < 1``, a NaN threshold, ``max_per_record < 1``, or
                ``max_per_record`` without ``group_by_record``.
        """
        if not self.text or not self.text.strip():
            raise InvalidInputError("query text must not be empty")
        if self.k < 1:
            raise InvalidInputError(f"k must be >= 1, got {self.k}")
        if self.score_threshold is not None and math.isnan(self.score_threshold):
            raise InvalidInputError("score_threshold must be a number, got NaN")
        if self.max_per_record < 1:
            raise InvalidInputError(f"max_per_record must be >= 1, got {self.max_per_record}")
        if self.max_per_record != 1 and not self.group_by_record:
            raise InvalidInputError("max_per_record: only with group_by_record")


#: A grouped query first fetches this many units per record it may return (see ``PlannedQuery.depth``).
GROUP_OVERFETCH = 4
#: When too few records came back, the grouped query is searched again this many times deeper.
GROUP_DEEPEN = 4


@dataclass(frozen=True)
class PlannedQuery:
    """A validated query with its instruction and filter resolved (see ``Searcher.plan``).

    Attributes:
        query: the request as given.
        instruction: the instruction the question is encoded with ("" for none).
        sources: the exact filter applied (empty: none), in request order, duplicates dropped.
        resolved: True when ``sources`` came from the instruction.
        searched: the text that is encoded and searched when it differs from ``query.text`` (a
            follow-up resolved against the history); None otherwise.
        confidence: the source router's confidence in its reading of the instruction (whether or
            not it filtered); None when no router read it.
        preferred: sources the router read below its threshold: dense scores of their units gain
            ``bonus`` instead of a filter (empty: none).
        bonus: what a preferred source's unit adds to its dense score.
    """

    query: Query
    instruction: str
    sources: tuple[Source, ...]
    resolved: bool
    searched: str | None = None
    confidence: float | None = None
    preferred: tuple[Source, ...] = ()
    bonus: float = 0.0

    @property
    def text(self) -> str:
        """The text to encode and search: the question, or its resolution against the history."""
        return self.query.text if self.searched is None else self.searched

    @property
    def depth(self) -> int:
        """Hits each ranking must produce first: ``k`` (grouped: ``k * max_per_record *
        GROUP_OVERFETCH`` units), or for hybrid the fusion depth when larger."""
        q = self.query
        want = q.k * q.max_per_record * GROUP_OVERFETCH if q.group_by_record else q.k
        if q.mode is Mode.HYBRID:
            return max(want, q.fusion.depth)
        return want


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
    """Ranked hits of one query, best first.

    Attributes:
        hits: at most ``k`` hits (grouped by record: at most ``k`` records, ``max_per_record``
            hits each, each record's hits together).
        sources: the filter applied; empty when none.
        resolved: True when ``sources`` came from the instruction.
        instruction: the instruction the query was encoded with ("" for none, and for BM25).
        mode: the mode that ranked the hits.
        text: the text that was searched (the question, or the follow-up resolved against the history).
        sources_confidence: the source router's confidence in its reading of the instruction
            (``resolved`` is True only at or above its threshold); None when no router read it.
        preferred_sources: below the threshold, the sources the router read, preferred instead of
            filtered (empty: none); their hits' scores include ``preferred_bonus``.
        preferred_bonus: what a preferred source's unit gained in its dense score.
    """

    hits: list[Hit]
    sources: tuple[Source, ...]
    resolved: bool
    instruction: str = ""
    mode: Mode = Mode.DENSE
    text: str = ""
    sources_confidence: float | None = None
    preferred_sources: tuple[Source, ...] = ()
    preferred_bonus: float = 0.0
