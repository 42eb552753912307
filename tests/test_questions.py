"""The one question-file reader (``retriever.questions``) that training, the dev check and the benchmarks share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.errors import InvalidInputError
from retriever.questions import parse_gold_source, read_questions
from retriever.records import Source

T, TB, KB = Source.TEXT, Source.TABLE, Source.KB


def write_questions(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"id": "q1", "text": "who?", "dataset": "d", "gold_source": "kb", "gold": ["k1"], "answers": []}


def test_parse_gold_source() -> None:
    assert parse_gold_source("table") == (TB,)
    assert parse_gold_source("text+table") == (T, TB)
    with pytest.raises(ValueError):
        parse_gold_source("text+video")


@pytest.mark.parametrize(("change", "message"), [
    ({"gold": []}, r"q\.jsonl:2: field 'gold'"),
    ({"gold": "k1"}, r"q\.jsonl:2: field 'gold'"),
    ({"gold_rows": {"t": [-1]}}, r"q\.jsonl:2: field 'gold_rows.t'"),
    ({"gold_rows": [0]}, r"q\.jsonl:2: field 'gold_rows'"),
    ({"gold_source": "text+video"}, r"q\.jsonl:2: field 'gold_source'"),
    ({"gold_source": ""}, r"q\.jsonl:2: field 'gold_source'"),
    ({"text": None}, r"q\.jsonl:2: field 'text'"),
    ({"answers": "Paris"}, r"q\.jsonl:2: field 'answers'"),
    ({"id": "q1"}, r"q\.jsonl:2: field 'id': duplicate question id"),
])
def test_a_bad_question_is_named_by_file_line_and_field(tmp_path: Path, change: dict, message: str) -> None:
    path = write_questions(tmp_path / "q.jsonl", [GOOD, {**GOOD, "id": "q2", **change}])
    with pytest.raises(InvalidInputError, match=message):
        read_questions(path)


def test_questions_read_as_written(tmp_path: Path) -> None:
    rows = [{**GOOD, "gold_rows": {"t": [2, 0]}, "gold": ["k1", "t", "k1"], "answers": ["x", 3]},
            {**GOOD, "id": "q2", "gold_source": "text+table"}]
    one, two = read_questions(write_questions(tmp_path / "q.jsonl", rows))
    assert one.gold_sources == (KB,) and one.single_source is KB
    assert one.gold == ("k1", "t") and one.gold_rows == {"t": frozenset({0, 2})} and one.answers == ("x", "3")
    assert two.gold_sources == (T, TB) and two.single_source is None
    assert [q.id for q in read_questions(tmp_path / "q.jsonl", limit=1)] == ["q1"]
    with pytest.raises(InvalidInputError, match="no questions"):
        read_questions(write_questions(tmp_path / "empty.jsonl", []))
