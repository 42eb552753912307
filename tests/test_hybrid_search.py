"""Search modes of the engine: reciprocal-rank fusion by hand, and dense/bm25/hybrid on the tiny index."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retriever.cli.main import main
from retriever.errors import InvalidInputError
from retriever.index.lexical import LexicalIndex
from retriever.instructions import source_instruction
from retriever.query import FusionConfig, Mode, Query
from retriever.records import Source
from retriever.searcher import Searcher, build_lexical, load_lexical, rrf_fuse


def arr(*ids: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array(ids, dtype=np.int64), np.linspace(1, 0, len(ids)).astype(np.float32)


def test_rrf_by_hand() -> None:
    # A: 7, 3, 5   B: 3, 9
    # 3: 1/(10+2) + 1/(10+1) = 0.17424; 7: 1/11 = 0.09091; 9: 1/12 = 0.08333; 5: 1/13 = 0.07692
    ids, scores = rrf_fuse([arr(7, 3, 5), arr(3, 9)], k=10, rrf_k=10)
    assert ids.tolist() == [3, 7, 9, 5]
    assert scores.tolist() == pytest.approx([1 / 12 + 1 / 11, 1 / 11, 1 / 12, 1 / 13], rel=1e-6)


def test_weighted_rrf_by_hand() -> None:
    # A (weight 2): 7, 3   B (weight 0.5): 3, 9
    ids, scores = rrf_fuse([arr(7, 3), arr(3, 9)], k=10, rrf_k=10, weights=(2.0, 0.5))
    assert ids.tolist() == [3, 7, 9]  # 3: 2/12 + 0.5/11 = 0.2121; 7: 2/11 = 0.1818; 9: 0.5/12
    assert scores.tolist() == pytest.approx([2 / 12 + 0.5 / 11, 2 / 11, 0.5 / 12], rel=1e-6)
    only_a, _ = rrf_fuse([arr(7, 3), arr(3, 9)], k=10, rrf_k=10, weights=(1.0, 0.0))
    assert only_a.tolist() == [7, 3]  # a ranking of weight 0 is left out entirely


def test_fusion_settings_are_checked() -> None:
    for bad in ({"rrf_k": -1.0}, {"rrf_k": float("nan")}, {"depth": 0}, {"dense_weight": 0.0, "bm25_weight": 0.0},
                {"bm25_weight": float("inf")}):
        with pytest.raises(InvalidInputError, match="fusion"):
            FusionConfig(**bad)


def test_rrf_ties_by_unit_id_and_cut_at_k() -> None:
    ids, _ = rrf_fuse([arr(8, 2), arr(2, 8)], k=1, rrf_k=60)
    assert ids.tolist() == [2]  # 2 and 8 tie exactly; the smaller id wins
    empty_ids, empty_scores = rrf_fuse([arr(), arr()], k=5)
    assert len(empty_ids) == 0 and len(empty_scores) == 0


@pytest.fixture(scope="module")
def searcher(tiny_index, encoder, tmp_path_factory: pytest.TempPathFactory) -> Searcher:
    path = build_lexical(tiny_index, tmp_path_factory.mktemp("lex") / "lexical")
    return Searcher(tiny_index, encoder, lexical=load_lexical(tiny_index, path))


FUSION = FusionConfig(depth=50)


def test_modes_share_the_filter_and_hit_format(searcher: Searcher) -> None:
    store = searcher.store
    table_title = next(store.titles[i] for i in range(len(store)) if store.source_of(i) is Source.TABLE)
    for mode in Mode:
        result = searcher.search([Query(table_title, sources=(Source.TABLE,), k=5, mode=mode, fusion=FUSION)])[0]
        assert result.hits and all(h.source is Source.TABLE for h in result.hits), mode
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
        # BM25 encodes nothing; the dense modes use the default model's saved prompt for the source.
        assert result.instruction == ("" if mode is Mode.BM25 else source_instruction(Source.TABLE)), mode
        assert result.sources == (Source.TABLE,)


def test_one_batch_mixes_modes_and_equals_single_queries(searcher: Searcher) -> None:
    queries = [Query("what music does the band play", instruction="", k=k, mode=mode, fusion=FUSION)
               for mode in Mode for k in (3, 8)]
    queries.append(Query("born in", sources=(Source.KB,), k=4, mode=Mode.HYBRID, fusion=FUSION, score_threshold=0.02))
    batch = searcher.search(queries)
    for query, result in zip(queries, batch, strict=True):
        single = searcher.search([query])[0]
        assert [h.unit_id for h in result.hits] == [h.unit_id for h in single.hits], query
        assert len(result.hits) <= query.k


def test_hybrid_fuses_both_rankings(searcher: Searcher) -> None:
    k = 10
    query = Query("what music does the band play", instruction="", k=50)
    dense = [h.unit_id for h in searcher.search([query])[0].hits]
    lexical = [h.unit_id for h in searcher.search([replace(query, mode=Mode.BM25)])[0].hits]
    fused = searcher.search([replace(query, k=k, mode=Mode.HYBRID, fusion=FUSION)])[0].hits
    expected = rrf_fuse([arr(*dense), arr(*lexical)], k=k)[0].tolist()
    assert [h.unit_id for h in fused] == expected


def test_threshold_applies_to_the_mode_score(searcher: Searcher) -> None:
    for mode, floor in ((Mode.DENSE, 0.3), (Mode.BM25, 2.0), (Mode.HYBRID, 0.025)):
        query = Query("music band album", k=30, mode=mode, fusion=FUSION)
        every = searcher.search([query])[0].hits
        kept = searcher.search([replace(query, score_threshold=floor)])[0].hits
        assert kept == [h for h in every if h.score >= floor], mode
        assert 0 < len(kept) < len(every), mode  # the floor cuts inside the ranking


def test_modes_need_their_parts(tiny_index, encoder) -> None:
    dense_only = Searcher(tiny_index, encoder)
    assert dense_only.modes == (Mode.DENSE,)
    with pytest.raises(InvalidInputError, match="build-lexical"):
        dense_only.search([Query("x", mode=Mode.HYBRID)])
    lexical_only = Searcher(None, None, lexical=LexicalIndex.build(tiny_index.store.texts), store=tiny_index.store)
    assert lexical_only.modes == (Mode.BM25,)
    assert lexical_only.search([Query("music band", mode=Mode.BM25)])[0].hits
    with pytest.raises(InvalidInputError, match="dense index"):
        lexical_only.search([Query("x")])


def test_lexical_from_other_units_is_refused(tiny_index, encoder, tmp_path: Path) -> None:
    other = LexicalIndex.build(tiny_index.store.texts[:-1])
    with pytest.raises(InvalidInputError):
        Searcher(tiny_index, encoder, lexical=other)


def test_cli_build_lexical_and_search_modes(tiny_index_dir: Path, tmp_path: Path, capsys) -> None:
    lexical = tmp_path / "lexical"
    assert main(["-q", "build-lexical", str(tiny_index_dir), "--out", str(lexical)]) == 0
    capsys.readouterr()
    for mode in ("bm25", "hybrid"):
        code = main(["-q", "search", str(tiny_index_dir), "rock band music", "--mode", mode, "--lexical",
                     str(lexical), "--json", "-k", "3", "--no-progress"])
        assert code == 0
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert 1 <= len(hits) <= 3 and [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert main(["-q", "search", str(tiny_index_dir), "x", "--mode", "bm25", "--lexical",
                 str(tmp_path / "missing")]) == 1
