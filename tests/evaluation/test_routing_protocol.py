"""TAT-QA routing: scoring by hand, candidate loading, and BM25 end to end on real questions."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from retriever.errors import InvalidInputError
from retriever.evaluation.bench import Method
from retriever.evaluation.routing import (
    RoutingBenchConfig,
    RoutingQuestion,
    read_routing,
    routing_instruction,
    run_routing_bench,
    score,
)
from retriever.linearize import Unit
from retriever.records import Source
from tests.conftest import DATA_DIR

ROUTING = DATA_DIR / "heteromix" / "routing.dev.jsonl"

needs_data = pytest.mark.skipif(not ROUTING.exists(), reason=f"{ROUTING} not present (the shared data lives at ../shared/data)")



def question(answer_from: str, gold: str) -> RoutingQuestion:
    units = (Unit("tab", Source.TABLE, 0, "", "row 0"), Unit("tab", Source.TABLE, 1, "", "row 1"),
             Unit("p1", Source.TEXT, 0, "", "para 1"), Unit("p2", Source.TEXT, 0, "", "para 2"))
    return RoutingQuestion("q", "?", answer_from, frozenset({gold}), units)


def test_score_by_hand() -> None:
    questions = [question("table", "tab"), question("text", "p2"), question("text", "p1"),
                 question("table-text", "p1"), question("table", "tab")]
    top1 = [1, 3, 0, 2, None]  # right (table), right + gold, wrong source, table-text, nothing ranked
    out = score(questions, top1)
    assert out["routing_accuracy"] == pytest.approx(2 / 4)  # table-text is not routed
    assert out["n_routed"] == 4 and out["unranked"] == 1
    assert out["hit@1"] == pytest.approx(3 / 5)  # tab, p2, p1
    assert out["top1_table[table]"] == 0.5 and out["top1_table[text]"] == 0.5
    assert out["top1_table[table-text]"] == 0.0


def test_instruction_names_both_sources_for_table_text() -> None:
    assert "table sources" in routing_instruction("table")
    assert "table and text sources" in routing_instruction("table-text")


@needs_data
def test_read_routing_linearizes_candidates(tmp_path: Path) -> None:
    questions = read_routing(ROUTING, limit=3)
    assert len(questions) == 3
    first = questions[0]
    assert first.answer_from == "text" and first.gold
    tables = [u for u in first.units if u.source is Source.TABLE]
    texts = [u for u in first.units if u.source is Source.TEXT]
    assert [u.part for u in tables] == list(range(len(tables)))  # one unit per row
    assert texts and all(not u.text.startswith(": ") for u in texts)  # untitled paragraphs have no prefix
    bad = tmp_path / "r.jsonl"
    bad.write_text(json.dumps({"id": "x", "text": "?", "answer_from": "image", "gold": [], "candidates": []}) + "\n")
    with pytest.raises(InvalidInputError, match=r"r\.jsonl:1: field 'answer_from'"):
        read_routing(bad)


@needs_data
def test_routing_bench_end_to_end(tmp_path: Path, encoder) -> None:
    md = tmp_path / "RESULTS.md"
    text = run_routing_bench(RoutingBenchConfig(questions=ROUTING, out=tmp_path / "out",
                                                methods=(Method.BM25, Method.DENSE), limit=12, results_md=md,
                                                show_progress=False), encoder)
    payload = orjson.loads((tmp_path / "out" / "routing.json").read_bytes())
    assert set(payload["results"]) == {"bm25", "dense / plain", "dense / general", "dense / source"}
    for metrics in payload["results"].values():
        assert metrics["n"] == 12 and 0.0 <= metrics["routing_accuracy"] <= 1.0
    assert "| bm25 |" in text and "routing" in md.read_text()
