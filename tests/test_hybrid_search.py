"""Search modes: reciprocal-rank fusion by hand, and dense/bm25/hybrid on the tiny index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever.cli.main import main
from retriever.hybrid import FusionConfig, HybridSearcher, SearchMode, build_lexical, load_lexical, rrf_fuse
from retriever.records import Source
from retriever.searcher import Query, Searcher


def arr(*ids: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array(ids, dtype=np.int64), np.linspace(1, 0, len(ids)).astype(np.float32)


def test_rrf_by_hand() -> None:
    # A: 7, 3, 5   B: 3, 9
    # 3: 1/(10+2) + 1/(10+1) = 0.17424; 7: 1/11 = 0.09091; 9: 1/12 = 0.08333; 5: 1/13 = 0.07692
    ids, scores = rrf_fuse([arr(7, 3, 5), arr(3, 9)], k=10, rrf_k=10)
    assert ids.tolist() == [3, 7, 9, 5]
    assert scores.tolist() == pytest.approx([1 / 12 + 1 / 11, 1 / 11, 1 / 12, 1 / 13], rel=1e-6)


def test_rrf_ties_by_unit_id_and_cut_at_k() -> None:
    ids, _ = rrf_fuse([arr(8, 2), arr(2, 8)], k=1, rrf_k=60)
    assert ids.tolist() == [2]  # 2 and 8 tie exactly; the smaller id wins
    empty_ids, empty_scores = rrf_fuse([arr(), arr()], k=5)
    assert len(empty_ids) == 0 and len(empty_scores) == 0


@pytest.fixture(scope="module")
def hybrid(tiny_index, encoder, tmp_path_factory: pytest.TempPathFactory) -> HybridSearcher:
    path = build_lexical(tiny_index, tmp_path_factory.mktemp("lex") / "lexical")
    return HybridSearcher(Searcher(tiny_index, encoder), load_lexical(tiny_index, path), FusionConfig(depth=50))


def test_modes_share_the_filter_and_hit_format(hybrid: HybridSearcher) -> None:
    store = hybrid.index.store
    table_title = next(store.titles[i] for i in range(len(store)) if store.source_of(i) is Source.TABLE)
    query = Query(table_title, sources=(Source.TABLE,))
    for mode in SearchMode:
        hits = hybrid.search([query], k=5, mode=mode)[0].hits
        assert hits and all(h.source is Source.TABLE for h in hits), mode
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_dense_mode_equals_the_dense_searcher(hybrid: HybridSearcher) -> None:
    query = Query("what music does the band play", instruction="")
    a = hybrid.search([query], k=8, mode=SearchMode.DENSE)[0].hits
    b = hybrid.searcher.search([query], k=8)[0].hits
    assert [h.unit_id for h in a] == [h.unit_id for h in b]


def test_hybrid_fuses_both_rankings(hybrid: HybridSearcher) -> None:
    query = Query("what music does the band play", instruction="")
    k = 10
    dense = [h.unit_id for h in hybrid.search([query], k=50, mode=SearchMode.DENSE)[0].hits]
    lexical = [h.unit_id for h in hybrid.search([query], k=50, mode=SearchMode.BM25)[0].hits]
    fused = hybrid.search([query], k=k, mode=SearchMode.HYBRID)[0].hits
    expected = rrf_fuse([arr(*dense), arr(*lexical)], k=k)[0].tolist()
    assert [h.unit_id for h in fused] == expected


def test_lexical_from_other_units_is_refused(tiny_index, encoder, tmp_path: Path) -> None:
    from retriever.errors import InvalidInputError
    from retriever.index.lexical import LexicalIndex

    other = LexicalIndex.build(tiny_index.store.texts[:-1])
    with pytest.raises(InvalidInputError):
        HybridSearcher(Searcher(tiny_index, encoder), other)


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
