"""CompMix-IR: answer presence by hand, and the protocol end to end on the real 100-evidence sample."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from retriever.errors import InvalidInputError
from retriever.evaluation.bench import Method
from retriever.evaluation.compmix import (
    Answer,
    AnswerIndex,
    CompMixBenchConfig,
    Evidence,
    evidence_has_answer,
    normalize_label,
    read_compmix_corpus,
    read_compmix_questions,
    run_compmix_bench,
    to_hetero_questions,
)
from retriever.evaluation.heteromix import Scenario
from retriever.records import Source
from tests.conftest import DATA_DIR

COMPMIX = DATA_DIR / "compmix"

needs_data = pytest.mark.skipif(not COMPMIX.exists(), reason=f"{COMPMIX} not present (the shared data lives at ../shared/data)")

SAMPLE = COMPMIX / "subset_kb_wikipedia_mixed_rd.json"
DEV = COMPMIX / "dev_set.json"

EVIDENCE = Evidence(
    "0", "Paul Cézanne, movement, Post-Impressionism", Source.KB,
    entities=(("Q35548", "Paul C\\u00E9zanne"), ('"+5"', '"+5"'), ("1929-01-01T00:00:00Z", "1929")),
    mentions=(("Cezanne the painter", "Q35548"), ("Post-Impressionism", ""), ("Paris", "Q90")),
)


@pytest.mark.parametrize(("answer", "expected"), [
    (Answer("Q35548", "whatever"), True),  # entity id
    (Answer("q35548 ", ""), True),  # ids compare normalised
    (Answer("", "paul cézanne"), True),  # label with a literal \\u escape, case-folded
    (Answer("Q90", ""), True),  # disambiguated mention's id
    (Answer("", "Post-Impressionism"), True),  # disambiguated mention's surface form
    (Answer("5", "5"), True),  # quantities: '"+5"' normalises to '5' (CONVINSE's rule)
    (Answer("1929-01-01T00:00:00Z", "1929"), True),  # dates by id
    (Answer("Q1", "universe"), False),
    (Answer("", ""), False),  # an empty answer matches nothing
])
def test_answer_presence_by_hand(answer: Answer, expected: bool) -> None:
    assert evidence_has_answer(EVIDENCE, [answer]) is expected
    assert (AnswerIndex([EVIDENCE]).relevant([answer]) == ["0"]) is expected


def test_normalize_label() -> None:
    assert normalize_label("  1962\\u201363  United States ") == "1962–63 united states"


@needs_data
def test_readers_on_the_real_sample() -> None:
    evidences = read_compmix_corpus(SAMPLE)
    assert len(evidences) == 100 and evidences[57].id == "57"
    assert {e.source for e in evidences} == set(Source)  # "info" maps to infobox
    questions = read_compmix_questions(DEV)
    assert len(questions) == 1680
    by_id = {q.id: q for q in questions}
    assert by_id["6470"].answers == (Answer("Q40634", "philology"),) and by_id["6470"].answer_src == (Source.TEXT,)
    # A real dev question whose answer (United Kingdom, Q145) the sample holds in evidence 57 (an infobox).
    assert "57" in AnswerIndex(evidences).relevant(by_id["5226"].answers)


@needs_data
def test_index_agrees_with_the_definition_on_real_data() -> None:
    evidences = read_compmix_corpus(SAMPLE)
    index = AnswerIndex(evidences)
    for q in read_compmix_questions(DEV)[:400]:
        expected = [e.id for e in evidences if evidence_has_answer(e, q.answers)]
        assert index.relevant(q.answers) == expected, q.id


def test_reader_errors_name_the_evidence(tmp_path: Path) -> None:
    bad = tmp_path / "corpus.json"
    bad.write_text(json.dumps([{"evidence_text": "x", "source": "kb"}, {"evidence_text": "y", "source": "web"}]))
    with pytest.raises(InvalidInputError, match="evidence 1: field 'source'"):
        read_compmix_corpus(bad)
    lines = tmp_path / "corpus.jsonl"  # JSON Lines is accepted too
    lines.write_text(json.dumps({"evidence_text": "x", "source": "info"}) + "\n")
    assert read_compmix_corpus(lines)[0].source is Source.INFOBOX


@needs_data
def test_fixed_source_and_gold_mapping() -> None:
    evidences = read_compmix_corpus(SAMPLE)
    questions = [q for q in read_compmix_questions(DEV) if q.id == "5226"]
    hetero = to_hetero_questions(questions, AnswerIndex(evidences))
    assert hetero[0].gold_sources == (Source.KB,) and "57" in hetero[0].gold
    fixed = to_hetero_questions(questions, AnswerIndex(evidences), fixed_source=Source.TABLE)
    assert fixed[0].gold_sources == (Source.TABLE,)


@needs_data
def test_compmix_end_to_end_on_the_sample(tmp_path: Path, encoder) -> None:
    config = CompMixBenchConfig(corpus=SAMPLE, questions=DEV, out=tmp_path / "out", methods=(Method.BM25, Method.DENSE),
                                only_answerable=True, cache_dir=tmp_path / "cache", show_progress=False)
    report = run_compmix_bench(config, encoder)
    assert report.questions == 84  # dev questions whose answer some sample evidence holds
    assert len(report.store) == 100
    by_label = {r.label: r for r in report.runs}
    assert set(by_label) == {f"{m} / {s.value}" for m in ("bm25", "dense")
                             for s in (Scenario.ALL, Scenario.SOURCE_SOFT, Scenario.SOURCE_HARD)}
    # Scenario 1 scores every answerable question; scenario 2 only those with an answering evidence
    # of their answer_src, and its hard run returns only evidences of that source.
    assert by_label["dense / all"].metrics["pooled"]["n"] == 84
    hard = by_label["dense / source-hard"]
    assert 0 < hard.metrics["pooled"]["n"] < 84 and hard.metrics["pooled"]["source@10"] == 1.0
    # Dense ranks all 100 evidences, so every answerable question is a hit within 100.
    assert by_label["dense / all"].metrics["pooled"]["hit@100"] == 1.0
    assert 0 < by_label["dense / all"].metrics["pooled"]["hit@1"] < 1
    payload = orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())
    assert payload["protocol"] == "compmix-ir" and payload["answerable"] == 84
    first = (tmp_path / "out" / "run.dense.all.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "dense-all"
