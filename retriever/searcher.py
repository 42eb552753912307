"""The search engine: query → plan → encode → rank by mode → threshold → hits.

One :class:`Searcher` answers every caller: the CLI, the gRPC service (its batcher decides only
*when* to call it) and the benchmarks (which call :meth:`Searcher.rank` for the rankings alone).
Three modes share the plan, the exact source filter and the threshold:

* dense: the query embedding against the FAISS shards of the requested sources;
* bm25: the lexical index (``retriever build-lexical``) masked to the requested sources; the
  instruction is not part of a lexical query;
* hybrid: reciprocal-rank fusion (Cormack et al., 2009) of the two, each cut at the fusion depth.

Rankings travel as ``(unit ids int64 [n], scores float32 [n])`` arrays, best first, until they
become :class:`~retriever.query.Hit` s at the very end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retriever.agreement import check_encoding
from retriever.conversation import rewrite
from retriever.encoder import Encoder
from retriever.errors import InvalidInputError
from retriever.index import Index
from retriever.index.lexical import LEXICAL_DIR, LEXICAL_MANIFEST, Bm25Config, LexicalIndex, texts_sha256
from retriever.index.store import SOURCE_CODE, UnitStore
from retriever.query import GROUP_DEEPEN, Hit, Mode, PlannedQuery, Query, SearchResult, SourceResolution
from retriever.records import Source
from retriever.router import Resolution, SourceResolver

logger = logging.getLogger(__name__)

#: (unit ids int64 [n], scores float32 [n]), best first.
Ranking = tuple[np.ndarray, np.ndarray]


class Searcher:
    """Dense, BM25 and hybrid search over one unit collection.

    Args:
        index: the loaded index (its FAISS shards and unit store); None for a BM25-only
            collection given as ``store``.
        encoder: the model the index was built with (checked against the manifest); None when
            only BM25 is wanted.
        resolution: what an instruction naming source types does when a query gives none (read by
            the model's source router or the keyword rules; see :mod:`retriever.router`).
        lexical: the BM25 index over the same units (``bm25`` and ``hybrid`` modes).
        store: the units, when there is no ``index``.

    Raises:
        IncompatibleIndexError: the index was built with another model or other prompts, or encoded
            with another backend/precision than ``encoder`` without a passed agreement check
            (:mod:`retriever.agreement`).
        InvalidInputError: the lexical index covers other units; ``model`` resolution without a router.
    """

    def __init__(self, index: Index | None, encoder: Encoder | None = None,
                 resolution: SourceResolution = SourceResolution.FILTER, lexical: LexicalIndex | None = None,
                 store: UnitStore | None = None, router_threshold: float | None = None,
                 router_prior: float | None = None) -> None:
        if index is not None:
            if store is not None:
                raise ValueError("give an index or a unit store, not both")
            if encoder is not None:
                index.manifest.check_compatible(encoder.checksum, encoder.prompts, str(index.path))
                check_encoding(index.manifest, encoder, str(index.path))
            store = index.store
        elif store is None:
            raise ValueError("give an index or a unit store")
        self.store = store
        where = str(index.path) if index is not None else "these units"
        if lexical is not None and (lexical.units != len(self.store)
                                    or lexical.units_sha256 != texts_sha256(self.store.texts)):
            raise InvalidInputError(f"the lexical index covers other units than {where}; "
                                    "rebuild it with `retriever build-lexical`")
        self._index, self.encoder, self.lexical, self.resolution = index, encoder, lexical, resolution
        self.resolver = SourceResolver.for_encoder(resolution, encoder, router_threshold, router_prior)

    @property
    def index(self) -> Index:
        if self._index is None:
            raise InvalidInputError("this searcher has no dense index (BM25 over a unit store only)")
        return self._index

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The modes this searcher can answer."""
        dense = self._index is not None and self.encoder is not None
        lexical = self.lexical is not None
        return tuple(m for m in Mode if (dense or not m.uses_vectors) and (lexical or not m.uses_lexical))

    # -- plan ------------------------------------------------------------------------------------
    def plan(self, query: Query) -> PlannedQuery:
        """Validate a query and resolve the instruction to encode with, the source filter to apply
        and, for a follow-up with a history, the text to search (``retriever.conversation``).

        Raises:
            InvalidInputError: empty text, ``k < 1``, a NaN threshold, a mode this searcher lacks, or
                a history with too many turns or an empty question.
        """
        query.check()
        if query.mode not in self.modes:
            missing = "a lexical index (build it with `retriever build-lexical`)" \
                if query.mode.uses_lexical and self.lexical is None else "a dense index and its model"
            have = ", ".join(m.value for m in self.modes) or "none"
            raise InvalidInputError(f"mode {query.mode.value} needs {missing}; this index answers: {have}")
        sources = tuple(dict.fromkeys(query.sources))
        # BM25 needs no model, so its queries are read by the rules at every door (CLI, server, harness)
        resolution = Resolution() if sources else self.resolver.resolve(
            query.instruction, rules=query.mode is Mode.BM25)
        sources = sources or resolution.sources
        instruction = query.instruction
        if instruction is None:
            instruction = self.encoder.default_instruction(sources) if self.encoder is not None else ""
        return PlannedQuery(query, instruction, sources, bool(resolution.sources), rewrite(query),
                            resolution.confidence, resolution.preferred, resolution.bonus)

    # -- the whole path --------------------------------------------------------------------------
    def search(self, queries: Sequence[Query]) -> list[SearchResult]:
        """Search a batch of queries (encoded together); results keep the input order.

        Raises:
            InvalidInputError: see :meth:`plan`.
        """
        return self.search_planned([self.plan(q) for q in queries])

    def search_planned(self, planned: Sequence[PlannedQuery], vectors: np.ndarray | None = None) -> list[SearchResult]:
        """Answer planned queries; ``vectors`` are their embeddings when already encoded (see :func:`encode`)."""
        if not planned:
            return []
        if vectors is None:
            vectors = self.encode(planned)
        return self.hits(planned, self.rank(planned, vectors))

    # -- the steps -------------------------------------------------------------------------------
    def encode(self, planned: Sequence[PlannedQuery], show_progress: bool = False) -> np.ndarray:
        """Embeddings of the planned queries (see :func:`encode`)."""
        return encode(self.encoder, planned, show_progress)

    def rank(self, planned: Sequence[PlannedQuery], vectors: np.ndarray) -> list[Ranking]:
        """Each query's ranking in its mode, cut at its ``k`` and its score threshold.

        A query grouped by record is searched :data:`~retriever.query.GROUP_OVERFETCH` units per
        record it may return deep, then :data:`~retriever.query.GROUP_DEEPEN` times deeper each
        time until it has ``k`` records, its ranking ends (the filter's units, the BM25 matches
        or the score threshold run out) or it covers every unit; then it returns the records found.

        Args:
            planned: planned queries (any mix of modes, filters and k).
            vectors: ``[len(planned), dim]`` embeddings; rows of BM25 queries are not read.
        """
        units = len(self.store)
        depths = {i: min(p.depth, units) if p.query.group_by_record else p.depth for i, p in enumerate(planned)}
        ranked = self._rank_rows(planned, vectors, list(range(len(planned))), depths)
        out = {i: ranking for i, (ranking, _) in ranked.items()}
        pending = [i for i, p in enumerate(planned) if p.query.group_by_record]
        while pending:
            deeper = []
            for i in pending:
                q = planned[i].query
                ranking, ended = ranked[i]
                grouped, records = group_by_record(ranking, self.store, q.k, q.max_per_record)
                if records < q.k and not ended and depths[i] < units:
                    depths[i] = min(depths[i] * GROUP_DEEPEN, units)
                    deeper.append(i)
                else:
                    out[i] = grouped
            if deeper:
                logger.debug("searching %d grouped queries deeper (%s units)", len(deeper),
                             sorted({depths[i] for i in deeper}))
                ranked.update(self._rank_rows(planned, vectors, deeper, depths))
            pending = deeper
        return [out[i] for i in range(len(planned))]

    def _rank_rows(self, planned: Sequence[PlannedQuery], vectors: np.ndarray, rows: list[int],
                   depths: dict[int, int]) -> dict[int, tuple[Ranking, bool]]:
        """Rankings of ``rows`` at ``depths``, thresholded, with whether each ranking ended before its depth."""
        dense = self._dense(planned, vectors, [i for i in rows if planned[i].query.mode.uses_vectors], depths)
        lexical = self._bm25(planned, [i for i in rows if planned[i].query.mode.uses_lexical], depths)
        out = {}
        for i in rows:
            p = planned[i]
            if p.query.mode is Mode.DENSE:
                ranking = dense[i]
            elif p.query.mode is Mode.BM25:
                ranking = lexical[i]
            else:
                fusion = p.query.fusion
                cut = depths[i] if p.query.group_by_record else p.query.k
                ranking = rrf_fuse([dense[i], lexical[i]], cut, fusion.rrf_k,
                                   (fusion.dense_weight, fusion.bm25_weight))
            kept = threshold(ranking, p.query.score_threshold)
            out[i] = (kept, len(ranking[0]) < depths[i] or len(kept[0]) < len(ranking[0]))
        return out

    def hits(self, planned: Sequence[PlannedQuery], rankings: Sequence[Ranking]) -> list[SearchResult]:
        """Rankings as results: each unit id becomes a :class:`Hit` with its record, part and text."""
        store = self.store
        results = []
        for p, (ids, scores) in zip(planned, rankings, strict=True):
            hits = [Hit(i, store.record_id(i), store.source_of(i), int(store.parts[i]), store.title(i),
                        store.text(i), s) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]
            instruction = p.instruction if p.query.mode.uses_vectors else ""
            results.append(SearchResult(hits, p.sources, p.resolved, instruction, p.query.mode, p.text,
                                        p.confidence, p.preferred, p.bonus))
        return results

    def _dense(self, planned: Sequence[PlannedQuery], vectors: np.ndarray, rows: list[int],
               depths: dict[int, int]) -> dict[int, Ranking]:
        """Exact-filtered top-depth per query: one FAISS search per (filter, depth) group.

        A query with preferred sources (the router's reading below its threshold) is searched in
        two parts, its preferred sources and the others, each to full depth, and merged with the
        bonus added to the preferred part's scores: the exact top-depth of the boosted scores.
        """
        groups: dict[tuple[tuple[str, ...], int], list[tuple[int, float]]] = {}  # -> (row, bonus)
        for i in rows:
            p = planned[i]
            if p.preferred:
                for part, bonus in ((p.preferred, p.bonus), (tuple(s for s in Source if s not in p.preferred), 0.0)):
                    groups.setdefault((tuple(sorted(s.value for s in part)), depths[i]), []).append((i, bonus))
            else:
                groups.setdefault((tuple(sorted(s.value for s in p.sources)), depths[i]), []).append((i, 0.0))
        parts: dict[int, list[Ranking]] = {}
        for (names, depth), group in groups.items():
            scores, ids = self.index.shards.search(vectors[[row for row, _ in group]], depth,
                                                   list(names) if names else None)
            for (row, bonus), score_row, id_row in zip(group, scores, ids, strict=True):
                keep = id_row >= 0  # shards with fewer than depth units pad with -1
                scores = score_row[keep].astype(np.float32)
                parts.setdefault(row, []).append((id_row[keep].astype(np.int64),
                                                  scores + np.float32(bonus) if bonus else scores))
        out: dict[int, Ranking] = {}
        for row, found in parts.items():
            if len(found) == 1:
                out[row] = found[0]
                continue
            ids = np.concatenate([f[0] for f in found])
            scores = np.concatenate([f[1] for f in found])
            order = np.lexsort((ids, -scores))[:depths[row]]
            out[row] = (ids[order], scores[order])
        return out

    def _bm25(self, planned: Sequence[PlannedQuery], rows: list[int], depths: dict[int, int]) -> dict[int, Ranking]:
        """BM25 top-depth per query, masked to its filter (only positive scores count)."""
        if not rows:
            return {}
        if self.lexical is None:
            raise InvalidInputError("no lexical index: build one with `retriever build-lexical`")
        masks: dict[tuple[Source, ...], np.ndarray | None] = {}
        groups: dict[int, list[int]] = {}
        for i in rows:
            groups.setdefault(depths[i], []).append(i)
            sources = planned[i].sources
            if sources not in masks:
                masks[sources] = source_mask(self.store, sources)
        out: dict[int, Ranking] = {}
        for depth, group in groups.items():
            found = self.lexical.search([planned[i].text for i in group], depth,
                                        [masks[planned[i].sources] for i in group])
            out.update(zip(group, found, strict=True))
        return out


def encode(encoder: Encoder | None, planned: Sequence[PlannedQuery], show_progress: bool = False) -> np.ndarray:
    """Embed ``instruction + text`` (the question, or its resolution against the history) of the
    planned queries that need a vector, in one encoder call.

    The batcher calls this once per batch across index generations (they share the encoder).

    Returns:
        float32 ``[len(planned), dim]``; rows of BM25 queries are zeros (``[n, 0]`` when no query
        needs a vector).

    Raises:
        InvalidInputError: a query needs a vector and there is no encoder.
    """
    rows = [i for i, p in enumerate(planned) if p.query.mode.uses_vectors]
    if not rows:
        return np.zeros((len(planned), 0), dtype=np.float32)
    if encoder is None:
        raise InvalidInputError("dense and hybrid search need the model; load an encoder")
    encoded = encoder.encode_queries([planned[i].text for i in rows], [planned[i].instruction for i in rows],
                                     show_progress=show_progress)
    if len(rows) == len(planned):
        return encoded
    vectors = np.zeros((len(planned), encoded.shape[1]), dtype=np.float32)
    vectors[rows] = encoded
    return vectors


def rrf_fuse(rankings: Sequence[Ranking], k: int, rrf_k: float = 60.0,
             weights: Sequence[float] | None = None) -> Ranking:
    """Fuse rank-ordered rankings of unit ids; returns the top ``k`` by fused score (ties: smaller id).

    A unit scores ``sum_i weights[i] / (rrf_k + rank_i)`` over the rankings it appears in (rank
    from 1); a ranking of weight 0 is left out. ``weights`` default to 1 each.
    """
    fused: dict[int, float] = {}
    for weight, (ids, _) in zip(weights or [1.0] * len(rankings), rankings, strict=True):
        if weight == 0:
            continue
        for rank, unit_id in enumerate(ids.tolist(), 1):
            if unit_id >= 0:
                fused[unit_id] = fused.get(unit_id, 0.0) + weight / (rrf_k + rank)
    if not fused:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order].astype(np.float32)


def group_by_record(ranking: Ranking, store: UnitStore, k: int, max_per_record: int) -> tuple[Ranking, int]:
    """The first ``k`` records of a ranking, at most ``max_per_record`` units each.

    Records are ordered by their best unit; each record's units follow it, best first. A record
    is its (source, record id): a table's rows and a passage's windows are one record.

    Returns:
        The grouped ranking and the number of records in it.
    """
    ids, _ = ranking
    kept: dict[tuple[int, str], list[int]] = {}  # record -> positions in the ranking, best first
    for position, unit in enumerate(ids.tolist()):
        record = (int(store.sources[unit]), store.record_id(unit))
        positions = kept.get(record)
        if positions is None:
            if len(kept) < k:
                kept[record] = [position]
        elif len(positions) < max_per_record:
            positions.append(position)
    order = np.fromiter((p for positions in kept.values() for p in positions), dtype=np.int64)
    return (ranking[0][order], ranking[1][order]), len(kept)


def threshold(ranking: Ranking, floor: float | None) -> Ranking:
    """Drop the entries scoring below ``floor`` (compared in float64, as a client compares them)."""
    if floor is None:
        return ranking
    ids, scores = ranking
    keep = scores.astype(np.float64) >= floor
    return ids[keep], scores[keep]


def source_mask(store: UnitStore, sources: Sequence[Source]) -> np.ndarray | None:
    """Boolean ``[units]`` mask of the units of ``sources`` (None for no filter)."""
    if not sources:
        return None
    return np.isin(store.sources, [SOURCE_CODE[s] for s in sources])


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


def find_lexical(index: Index) -> LexicalIndex | None:
    """The index's own lexical part (``<index dir>/lexical``), loaded and checked; None when it has none.

    Raises:
        CorruptIndexError, IncompatibleIndexError: it is there but altered or built from other units.
    """
    if not (lexical_path(index) / LEXICAL_MANIFEST).is_file():
        return None
    return load_lexical(index)
