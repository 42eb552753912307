"""Metric code against hand-computed cases: rank order, ties, missing golds, row-level hits."""

from __future__ import annotations

import pytest

from retriever.evaluation.metrics import (
    Judgment,
    RankedUnits,
    RankingEvaluator,
    collapse_records,
    mean_metrics,
    source_share,
)
from retriever.records import Source

T, TB, KB, IB = Source.TEXT, Source.TABLE, Source.KB, Source.INFOBOX


def ranked(*units: tuple[str, Source, int]) -> RankedUnits:
    return RankedUnits([u[0] for u in units], [u[1] for u in units], [u[2] for u in units])


def test_collapse_keeps_first_occurrence_order() -> None:
    assert collapse_records(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_record_level_rank_after_collapsing_table_rows() -> None:
    # Units: t1 row0, t1 row1, t1 row2, p1, g → records t1 (1), p1 (2), g (3).
    r = ranked(("t1", TB, 0), ("t1", TB, 1), ("t1", TB, 2), ("p1", T, 0), ("g", KB, 0))
    out = RankingEvaluator(ks=(1, 2, 3), mrr_k=10)(r, Judgment(gold=frozenset({"g"})))
    assert out == {"hit@1": 0.0, "hit@2": 0.0, "hit@3": 1.0, "mrr@10": pytest.approx(1 / 3)}


def test_rank_order_is_read_as_given_not_by_score() -> None:
    # The same units in two orders score differently: metrics never re-sort.
    a = ranked(("g", T, 0), ("x", T, 0))
    b = ranked(("x", T, 0), ("g", T, 0))
    ev = RankingEvaluator(ks=(1,), mrr_k=10)
    judgment = Judgment(gold=frozenset({"g"}))
    assert ev(a, judgment)["mrr@10"] == 1.0
    assert ev(b, judgment)["mrr@10"] == 0.5
    assert ev(b, judgment)["hit@1"] == 0.0


def test_ties_keep_returned_order() -> None:
    # Two units tied on score: whichever the retriever put first holds rank 1. Scores are not
    # an input to the metric at all, so a tie cannot reorder anything.
    tied_first = ranked(("x", T, 0), ("g", T, 0), ("y", T, 0))
    out = RankingEvaluator(ks=(1, 2), mrr_k=3)(tied_first, Judgment(gold=frozenset({"g"})))
    assert out["hit@1"] == 0.0 and out["hit@2"] == 1.0 and out["mrr@3"] == 0.5


def test_mrr_cutoff_and_no_hit() -> None:
    r = ranked(*[(f"x{i}", T, 0) for i in range(5)], ("g", T, 0))
    ev = RankingEvaluator(ks=(5, 6), mrr_k=5)
    out = ev(r, Judgment(gold=frozenset({"g"})))
    assert out["hit@5"] == 0.0 and out["hit@6"] == 1.0 and out["mrr@5"] == 0.0
    empty = ev(ranked(), Judgment(gold=frozenset({"g"})))
    assert empty["hit@6"] == 0.0 and empty["mrr@5"] == 0.0


def test_missing_golds_count_and_score_zero() -> None:
    # Gold "lost" is not in the collection: reported, and it can never be hit.
    r = ranked(("x", T, 0), ("y", T, 0))
    out = RankingEvaluator(ks=(1, 2), mrr_k=2)(r, Judgment(gold=frozenset({"lost"}), indexed=0))
    assert out["missing_gold"] == 1.0 and out["hit@2"] == 0.0
    out = RankingEvaluator(ks=(1, 2), mrr_k=2)(r, Judgment(gold=frozenset({"lost", "y"}), indexed=1))
    assert out["missing_gold"] == 1.0 and out["hit@2"] == 1.0 and out["mrr@2"] == 0.5


def test_row_level_needs_a_gold_row() -> None:
    # Table t is gold with gold row 2. Row 0 of t comes first: a record-level hit at 1,
    # but at row level row 0 is not relevant; row 2 sits at row-level rank 3 (t#0, p, t#2).
    r = ranked(("t", TB, 0), ("p", T, 0), ("t", TB, 2), ("t", TB, 1))
    judgment = Judgment(gold=frozenset({"t"}), gold_rows={"t": frozenset({2})})
    out = RankingEvaluator(ks=(1, 2, 3), mrr_k=10, gold_sources={"t": TB})(r, judgment)
    assert out["hit@1"] == 1.0
    assert (out["row_hit@1"], out["row_hit@2"], out["row_hit@3"]) == (0.0, 0.0, 1.0)


def test_row_level_counts_non_table_gold_at_record_level() -> None:
    # HybridQA style: gold table t (row 5) and gold passage p. The passage is relevant at row level.
    r = ranked(("t", TB, 0), ("p", T, 0))
    judgment = Judgment(gold=frozenset({"t", "p"}), gold_rows={"t": frozenset({5})})
    out = RankingEvaluator(ks=(1, 2), mrr_k=10, gold_sources={"t": TB, "p": T})(r, judgment)
    assert out["row_hit@1"] == 0.0 and out["row_hit@2"] == 1.0


def test_no_row_metrics_without_gold_rows() -> None:
    out = RankingEvaluator(ks=(1,), mrr_k=1)(ranked(("g", KB, 0)), Judgment(gold=frozenset({"g"})))
    assert not any(k.startswith("row_") for k in out)


def test_source_share_over_units_not_records() -> None:
    # 10 units: 4 rows of one table, 3 triples, 3 passages → table share 0.4 although it is one record.
    sources = [TB] * 4 + [KB] * 3 + [T] * 3 + [TB] * 5
    assert source_share(sources, {TB}) == pytest.approx(0.4)
    assert source_share(sources, {TB, T}) == pytest.approx(0.7)
    assert source_share([TB, KB], {TB}) == 0.5  # fewer than 10 returned: share of those
    assert source_share([], {TB}) is None  # nothing returned: no share, left out of the mean
    empty = RankingEvaluator(ks=(1,), mrr_k=1)(ranked(), Judgment(gold=frozenset({"t"}), requested=frozenset({TB})))
    assert "source@10" not in empty
    r = RankedUnits(["t"] * 4 + ["k"] * 6, sources[:10], list(range(10)))
    out = RankingEvaluator(ks=(1,), mrr_k=1)(r, Judgment(gold=frozenset({"t"}), requested=frozenset({TB})))
    assert out["source@10"] == pytest.approx(0.4)


def test_mean_metrics_averages_where_present_and_sums_missing() -> None:
    rows = [
        {"hit@1": 1.0, "row_hit@1": 0.0, "missing_gold": 1.0},
        {"hit@1": 0.0, "missing_gold": 0.0},
        {"hit@1": 1.0, "row_hit@1": 1.0, "missing_gold": 2.0},
    ]
    out = mean_metrics(rows)
    assert out["n"] == 3.0
    assert out["hit@1"] == pytest.approx(2 / 3)
    assert out["row_hit@1"] == 0.5 and out["n_row_hit@1"] == 2.0
    assert out["missing_gold"] == 3.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        RankedUnits(["a"], [T, T], [0])
    with pytest.raises(ValueError):
        RankingEvaluator(ks=(0,))


def test_unit_ranks_without_collapsing() -> None:
    # Records t (3 rows), then gold g: record rank 2, unit rank 4.
    r = ranked(("t", TB, 0), ("t", TB, 1), ("t", TB, 2), ("g", T, 0))
    judgment = Judgment(gold=frozenset({"g"}))
    assert RankingEvaluator(ks=(2,), mrr_k=10)(r, judgment) == {"hit@2": 1.0, "mrr@10": 0.5}
    assert RankingEvaluator(ks=(2,), mrr_k=10, collapse=False)(r, judgment) == {"hit@2": 0.0, "mrr@10": 0.25}
