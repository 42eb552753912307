"""HeteroMix protocol: question loading, scenarios, judgments, and the bench end to end on the tiny index."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from retriever.errors import IncompatibleIndexError, InvalidInputError
from retriever.evaluation.bench import HeteroBenchConfig, Method, run_heteromix_bench, write_outputs
from retriever.evaluation.collection import CorpusSpec, UnitScheme, check_index_matches, dense_cache_key
from retriever.evaluation.heteromix import (
    HeteroConfig,
    Scenario,
    judge,
    make_query,
)
from retriever.evaluation.report import replace_section, trec_docid
from retriever.index.store import UnitStore
from retriever.instructions import default_prompts, general_instruction, source_instruction
from retriever.linearize import Unit
from retriever.questions import Question, read_questions
from retriever.records import Source

T, TB, KB, IB = Source.TEXT, Source.TABLE, Source.KB, Source.INFOBOX


def write_questions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


QUESTION = Question("q", "which?", "hybridqa", (T, TB), ("p", "t", "k", "lost"), {"t": frozenset({1})})
SOURCES = {"p": T, "t": TB, "k": KB}


def test_judgments_per_scenario() -> None:
    every = judge(QUESTION, Scenario.ALL, SOURCES)
    assert every is not None and every.gold == {"p", "t", "k", "lost"} and every.indexed == 3
    assert every.requested == {T, TB}
    only = judge(QUESTION, Scenario.SOURCE_HARD, SOURCES)
    # text+table requests both: the kb gold drops out, the missing gold stays (and is reported).
    assert only is not None and only.gold == {"p", "t", "lost"} and only.indexed == 2
    kb_only = Question("q", "which?", "d", (IB,), ("k",))
    assert judge(kb_only, Scenario.SOURCE_SOFT, SOURCES) is None


def test_queries_per_scenario() -> None:
    prompts = default_prompts()
    assert make_query(QUESTION, Scenario.ALL_PLAIN, prompts).instruction == ""
    assert make_query(QUESTION, Scenario.ALL, prompts).instruction == general_instruction()
    soft = make_query(QUESTION, Scenario.SOURCE_SOFT, prompts)
    hard = make_query(QUESTION, Scenario.SOURCE_HARD, prompts)
    assert soft.instruction == hard.instruction
    assert soft.instruction is not None and "text and table sources" in soft.instruction
    assert soft.sources == () and hard.sources == (T, TB)
    plain_hard = make_query(QUESTION, Scenario.SOURCE_HARD_PLAIN, prompts)
    assert plain_hard.instruction == "" and plain_hard.sources == (T, TB)
    single = Question("q", "which?", "d", (KB,), ("k",))
    assert make_query(single, Scenario.SOURCE_SOFT, prompts).instruction == source_instruction(KB)


def test_trec_docids() -> None:
    store = UnitStore.from_units([Unit("p", T, 0, "", "a"), Unit("p", T, 1, "", "b"), Unit("t", TB, 3, "", "c")])
    assert [trec_docid(store, i) for i in range(3)] == ["p", "p#w1", "t#3"]


def test_replace_section_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "R.md"
    path.write_text("# Results\n\nintro\n", encoding="utf-8")
    replace_section(path, "a", "one")
    replace_section(path, "b", "two")
    replace_section(path, "a", "three")
    text = path.read_text(encoding="utf-8")
    assert "one" not in text and text.count("three") == 1 and text.index("three") < text.index("two")
    assert text.startswith("# Results\n\nintro\n")


def test_new_section_goes_above_the_history_marker(tmp_path: Path) -> None:
    path = tmp_path / "R.md"
    history = "<!-- HISTORY -->\n## History (newest first)\n\n<!-- BEGIN old -->\nold run\n<!-- END old -->\n"
    path.write_text("# Results\n\nNew sections go above the `<!-- HISTORY -->` line.\n\n"
                    "<!-- BEGIN a -->\none\n<!-- END a -->\n\n" + history, encoding="utf-8")
    replace_section(path, "b", "two")
    replace_section(path, "a", "three")  # an existing section is replaced where it stands
    replace_section(path, "old", "older run")  # also inside the history
    replace_section(path, "c", "four")
    text = path.read_text(encoding="utf-8")
    # The inline mention in the intro is not the marker; the history stays last and whole.
    assert text.index("three") < text.index("two") < text.index("four") < text.index("\n<!-- HISTORY -->\n")
    assert "<!-- END c -->\n\n<!-- HISTORY -->\n## History (newest first)\n" in text
    assert text.endswith("## History (newest first)\n\n<!-- BEGIN old -->\nolder run\n<!-- END old -->\n")
    assert "one" not in text and text.count("<!-- BEGIN") == 4


def test_cache_key_changes_with_each_input() -> None:
    base = dense_cache_key("f", "m", 254)
    assert len({base, dense_cache_key("g", "m", 254), dense_cache_key("f", "n", 254),
                dense_cache_key("f", "m", 128)}) == 4


def tiny_questions(tiny_records: list[dict]) -> list[dict]:
    """Questions made from the tiny corpus: a title as the question, its record as gold."""
    by_source: dict[str, list[dict]] = {}
    for r in tiny_records:
        by_source.setdefault(r["source"], []).append(r)
    text, table, kb, box = by_source["text"][0], by_source["table"][0], by_source["kb"][0], by_source["infobox"][0]
    return [
        {"id": "q-text", "text": text["title"], "dataset": "ottqa", "gold_source": "text", "gold": [text["id"]]},
        {"id": "q-table", "text": f"{table['title']} {table['section']}", "dataset": "fetaqa", "gold_source": "table",
         "gold": [table["id"]], "gold_rows": {table["id"]: [1]}},
        {"id": "q-kb", "text": f"{kb['subject']} {kb['predicate']}", "dataset": "sq_wikidata", "gold_source": "kb",
         "gold": [kb["id"]]},
        {"id": "q-box", "text": box["title"], "dataset": "infotabs", "gold_source": "infobox", "gold": [box["id"]]},
        {"id": "q-both", "text": f"{table['title']} {text['title']}", "dataset": "hybridqa",
         "gold_source": "text+table", "gold": [text["id"], table["id"], "not-in-corpus"]},
    ]


def test_bench_end_to_end_on_the_tiny_index(tiny_index_dir: Path, tiny_corpus: Path, tiny_records: list[dict],
                                            tmp_path: Path, encoder) -> None:
    questions = write_questions(tmp_path / "questions.jsonl", tiny_questions(tiny_records))
    results_md = tmp_path / "RESULTS.md"
    config = HeteroBenchConfig(
        corpus=tiny_corpus, questions=questions, out=tmp_path / "out", index=tiny_index_dir,
        methods=(Method.BM25, Method.DENSE, Method.HYBRID), cache_dir=tmp_path / "cache",
        scenarios=(Scenario.ALL_PLAIN, Scenario.ALL, Scenario.SOURCE_SOFT, Scenario.SOURCE_HARD),
        hetero=HeteroConfig(scenarios=(Scenario.ALL_PLAIN, Scenario.ALL, Scenario.SOURCE_SOFT,
                                       Scenario.SOURCE_HARD), depth=100, show_progress=False),
        results_md=results_md)
    report = run_heteromix_bench(config, encoder)
    assert len(report.runs) == 12
    by_label = {r.label: r for r in report.runs}

    # Exact filter: every unit of a hard run is from the requested sources.
    hard = by_label["bm25 / source-hard"]
    for qid, (ids, _) in zip(hard.question_ids, hard.rankings, strict=True):
        allowed = {"q-text": {T}, "q-table": {TB}, "q-kb": {KB}, "q-box": {IB}, "q-both": {T, TB}}[qid]
        assert {report.store.source_of(i) for i in ids.tolist()} <= allowed
    assert hard.metrics["pooled"]["source@10"] == 1.0
    # The missing gold is reported, and the source-only scenarios keep it but drop nothing else.
    assert by_label["dense / all"].metrics["pooled"]["missing_gold"] == 1.0
    # BM25 ignores instructions: scenario all and all-plain rank identically.
    assert [r[0].tolist() for r in by_label["bm25 / all"].rankings] == \
        [r[0].tolist() for r in by_label["bm25 / all-plain"].rankings]
    # Per-dataset and pooled entries; row-level only for the table question.
    metrics = by_label["hybrid / all"].metrics
    assert set(metrics) == {"pooled", "ottqa", "fetaqa", "sq_wikidata", "infotabs", "hybridqa"}
    assert metrics["pooled"]["n"] == 5 and metrics["pooled"]["n_row_hit@1"] == 1
    # Titles as questions: BM25 finds the text, kb and infobox golds in its top 10.
    assert by_label["bm25 / all"].metrics["pooled"]["hit@10"] >= 0.8

    out = tmp_path / "out"
    payload = orjson.loads((out / "metrics.json").read_bytes())
    assert len(payload["runs"]) == 12 and payload["units"] == len(report.store)
    lines = (out / "run.hybrid.source-hard.trec").read_text().splitlines()
    first = lines[0].split()
    assert len(first) == 6 and first[1] == "Q0" and first[3] == "1" and first[5] == "hybrid-source-hard"
    ranks = [int(line.split()[3]) for line in lines if line.startswith("q-kb ")]
    assert ranks == list(range(1, len(ranks) + 1))
    assert (out / "hit_at_k.png").read_bytes()[:4] == b"\x89PNG"
    assert "| bm25 | source-hard |" in results_md.read_text()
    # The zero-shot model's run keeps the plain section name; any other model (the default one
    # included) gets its own section.
    assert payload["model"] == encoder.name == "bundled:heteromix-minilm-l6"
    section = "<!-- BEGIN heteromix full questions.jsonl index bm25+dense+hybrid"
    assert f"{section} model bundled:heteromix-minilm-l6 -->" in results_md.read_text()
    write_outputs(config, report.runs, report.store, 1.0, model="bundled:all-MiniLM-L6-v2")
    write_outputs(config, report.runs, report.store, 1.0, model="runs/x/model")
    text = results_md.read_text()
    assert f"{section} -->" in text and f"{section} model bundled:heteromix-minilm-l6 -->" in text
    assert f"{section} model runs/x/model -->" in text
    assert "model runs/x/model)" in text
    assert "Instruction following (top-10 units from the requested source" in text


def test_index_from_another_corpus_is_refused(tiny_index_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "x", "source": "text", "text": "hello"}) + "\n")
    with pytest.raises(IncompatibleIndexError, match="another corpus"):
        check_index_matches(tiny_index_dir, CorpusSpec(other))


def test_config_refuses_dense_on_whole_record_units(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="BM25 only"):
        HeteroBenchConfig(corpus=tmp_path / "c", questions=tmp_path / "q", out=tmp_path, units=UnitScheme.WHOLE_RECORD)


def test_cli_bench_heteromix_bm25(tiny_corpus: Path, tiny_records: list[dict], tmp_path: Path, capsys) -> None:
    from retriever.cli.main import main

    questions = write_questions(tmp_path / "held_out.jsonl", tiny_questions(tiny_records))
    out = tmp_path / "out"
    code = main(["-q", "bench", "heteromix", "--corpus", str(tiny_corpus), "--ids", "none", "--questions",
                 str(questions), "--methods", "bm25", "--units", "whole-record", "--out", str(out),
                 "--no-results-md", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    assert "| bm25 | source-hard |" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "hit_at_k.png", "metrics.json", "questions.bm25.all.jsonl", "questions.bm25.source-hard.jsonl",
        "questions.bm25.source-soft.jsonl", "results.md", "run.bm25.all.trec", "run.bm25.source-hard.trec",
        "run.bm25.source-soft.trec"]
    # One line a judged question, with its dataset and the metrics that went into the means.
    rows = [orjson.loads(line) for line in (out / "questions.bm25.source-hard.jsonl").read_bytes().splitlines()]
    payload = orjson.loads((out / "metrics.json").read_bytes())
    hard = next(r for r in payload["runs"] if r["scenario"] == "source-hard")
    assert len(rows) == hard["metrics"]["pooled"]["n"] and {r["id"] for r in rows} <= {q["id"] for q in
                                                                                     tiny_questions(tiny_records)}
    assert sum(r["mrr@100"] for r in rows) / len(rows) == pytest.approx(hard["metrics"]["pooled"]["mrr@100"])
    assert {r["dataset"] for r in rows} == set(hard["metrics"]) - {"pooled"}
    assert main(["-q", "bench", "compare", str(out), "--paired", "--methods", "bm25", "--metrics", "mrr@100"]) == 1
    with pytest.raises(SystemExit):
        main(["bench", "heteromix", "--methods", "bm25,colbert"])


def test_questions_may_carry_a_conversation_history(tmp_path: Path) -> None:
    from retriever.query import Turn

    row = {"id": "c1", "text": "what film did it produce?", "gold_source": "kb", "gold": ["r1"],
           "history": [{"question": "Tell me about Don Simpson."}, {"question": "Who?", "answer": "him"}]}
    question = read_questions(write_questions(tmp_path / "c.jsonl", [row]))[0]
    assert question.history == (Turn("Tell me about Don Simpson."), Turn("Who?", "him"))
    assert make_query(question, Scenario.ALL_PLAIN, {}).history == question.history
    assert make_query(replace(question, history=()), Scenario.ALL_PLAIN, {}).history == ()
    for bad in ({"answer": "x"}, "Tell me", {"question": "q", "answer": 3}):
        path = write_questions(tmp_path / "bad.jsonl", [{**row, "history": [bad]}])
        with pytest.raises(InvalidInputError, match="bad.jsonl:1: field 'history\\[0\\]'"):
            read_questions(path)
