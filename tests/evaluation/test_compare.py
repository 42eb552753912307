"""``retriever bench compare``: side-by-side tables read back from saved ``metrics.json`` files."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from retriever.cli.main import main
from retriever.errors import InvalidInputError
from retriever.evaluation.compare import compare_markdown, compare_table, load_saved_runs
from tests.evaluation.test_heteromix_protocol import tiny_questions, write_questions


def write_metrics(directory: Path, runs: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps({"tier": "mini", "runs": runs}), encoding="utf-8")
    return directory


def run(method: str, scenario: str, **groups: dict[str, float]) -> dict:
    return {"method": method, "scenario": scenario, "metrics": groups, "seconds": 1.0}


def test_table_lines_up_runs_per_dataset_in_the_requested_scenario_order(tmp_path: Path) -> None:
    a = write_metrics(tmp_path / "a", [
        run("dense", "all", fetaqa={"mrr@100": 0.5}, ottqa={"mrr@100": 0.25}, pooled={"mrr@100": 0.375}),
        run("dense", "source-soft", fetaqa={"mrr@100": 0.1}, pooled={"mrr@100": 0.1, "source@10": 0.9}),
    ])
    b = write_metrics(tmp_path / "b", [
        run("dense", "all", fetaqa={"mrr@100": 0.75}, pooled={"mrr@100": 0.75}),
        run("bm25", "all", fetaqa={"mrr@100": 0.2}, pooled={"mrr@100": 0.2}),
    ])
    text = compare_markdown([a, b], ["first", "second"], ["mrr@100"], scenarios=["source-soft", "all"],
                            methods=["dense"])
    assert text.splitlines() == [
        "mrr@100:",
        "",
        "| scenario | method | run | fetaqa | ottqa | pooled |",
        "|---|---|---|---|---|---|",
        "| source-soft | dense | first | 0.100 | – | 0.100 |",
        "| all | dense | first | 0.500 | 0.250 | 0.375 |",
        "| all | dense | second | 0.750 | – | 0.750 |",
    ]


def test_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"missing/metrics.json: not found"):
        load_saved_runs(tmp_path / "missing", "x")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"bad/metrics.json: not valid JSON"):
        load_saved_runs(bad, "x")
    no_runs = write_metrics(tmp_path / "no_runs", [])
    (no_runs / "metrics.json").write_text('{"tier": "mini"}', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="field 'runs'"):
        load_saved_runs(no_runs, "x")
    partial = write_metrics(tmp_path / "partial", [{"method": "dense", "metrics": {}}])
    with pytest.raises(InvalidInputError, match=r"runs\[0\] lacks field 'scenario'"):
        load_saved_runs(partial, "x")
    with pytest.raises(InvalidInputError, match="no saved run matches"):
        compare_table(load_saved_runs(write_metrics(tmp_path / "ok", [run("bm25", "all")]), "x"), "mrr@100",
                      methods=["dense"])
    with pytest.raises(InvalidInputError, match="2 names for 1 directories"):
        compare_markdown([tmp_path / "ok"], ["a", "b"], ["mrr@100"])


def test_cli_compares_real_bench_outputs(tiny_corpus: Path, tiny_records: list[dict], tmp_path: Path,
                                         capsys) -> None:
    """The saved format of `bench heteromix` is what `bench compare` reads: its cells equal metrics.json."""
    questions = write_questions(tmp_path / "q.jsonl", tiny_questions(tiny_records))
    out = tmp_path / "bm25"
    assert main(["-q", "bench", "heteromix", "--corpus", str(tiny_corpus), "--ids", "none", "--questions",
                 str(questions), "--methods", "bm25", "--units", "whole-record", "--scenarios", "all,source-soft",
                 "--out", str(out), "--no-results-md", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["-q", "bench", "compare", str(out), "--labels", "tiny", "--metrics", "hit@10,source@10"]) == 0
    printed = capsys.readouterr().out
    saved = {r["scenario"]: r["metrics"] for r in orjson.loads((out / "metrics.json").read_bytes())["runs"]}
    for metric in ("hit@10", "source@10"):
        block = printed.split(f"{metric}:")[1].split("\n\n")[1]
        rows = {line.split(" | ")[0].strip("| "): line for line in block.splitlines()[2:]}
        assert set(rows) == {"all", "source-soft"}
        for scenario, line in rows.items():
            assert line.endswith(f"| {saved[scenario]['pooled'][metric]:.3f} |")
            assert f"| {saved[scenario]['ottqa'][metric]:.3f} |" in line
    assert main(["-q", "bench", "compare", str(tmp_path / "nowhere")]) == 1
    assert "nowhere/metrics.json: not found" in capsys.readouterr().err


PAIRED_ROWS = [{"id": "q1", "text": "a?", "dataset": "d1", "gold_source": "table", "gold": ["t1"]},
               {"id": "q2", "text": "b?", "dataset": "d1", "gold_source": "text", "gold": ["p2"]},
               {"id": "q3", "text": "c?", "dataset": "d2", "gold_source": "kb", "gold": ["k3"]}]


def paired_dir(directory: Path, questions: Path, trec: dict[str, list[str]], **settings: object) -> Path:
    directory.mkdir(parents=True)
    payload = {"protocol": "heteromix", "collapse": True, "questions": str(questions), "depth": 100, "limit": None,
               "runs": [], **settings}
    (directory / "metrics.json").write_text(json.dumps(payload), encoding="utf-8")
    for name, lines in trec.items():
        (directory / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return directory


def test_paired_differences_per_dataset_with_record_ranks(tmp_path: Path) -> None:
    from retriever.evaluation.compare import paired_markdown, record_of

    assert (record_of("t1#3"), record_of("p2#w1"), record_of("fetaqa::7")) == ("t1", "p2", "fetaqa::7")
    questions = write_questions(tmp_path / "q.jsonl", PAIRED_ROWS)
    # a, dense: q1's rows collapse to one record at rank 1; q2's gold is record 2 (p9 and its window are one
    # record); q3 missed: 1, 0.5, 0. a, bm25: q1 at 2, q2 at 1, q3 absent (0): 0.5, 1, 0. b, dense: all at 1.
    a = paired_dir(tmp_path / "a", questions, {
        "run.dense.all.trec": ["q1 Q0 t1#0 1 .9 x", "q1 Q0 t1#4 2 .8 x", "q2 Q0 p9 1 .9 x", "q2 Q0 p9#w1 2 .8 x",
                               "q2 Q0 p2 3 .7 x", "q3 Q0 k9 1 .9 x"],
        "run.bm25.all.trec": ["q1 Q0 p9 1 .9 x", "q1 Q0 t1#2 2 .8 x", "q2 Q0 p2 1 .9 x"]})
    b = paired_dir(tmp_path / "b", questions, {
        "run.dense.all.trec": ["q1 Q0 t1#0 1 .9 x", "q2 Q0 p2 1 .9 x", "q3 Q0 k3 1 .9 x"]})
    lines = paired_markdown([a, b], ["A", "B"], None, ["dense", "bm25"]).splitlines()
    assert lines[2] == "| run | method | d1 | d2 | pooled |"
    assert lines[4].startswith("| A | bm25 | 0.750 − 0.750 = +0.000 ± 0.500 ")
    assert lines[5].startswith("| B | dense | 0.750 − 1.000 = -0.250 ± 0.250 ")
    assert "| 0.000 − 1.000 = -1.000 ± 0.000 [-1.000, -1.000] |" in lines[5]
    assert lines[6:] == ["", "No run file for B / bm25."]


def test_paired_refuses_what_it_cannot_judge(tmp_path: Path) -> None:
    from retriever.evaluation.compare import paired_markdown

    questions = write_questions(tmp_path / "q.jsonl", PAIRED_ROWS)
    other = write_questions(tmp_path / "other.jsonl", PAIRED_ROWS)
    a = paired_dir(tmp_path / "a", questions, {"run.dense.all.trec": []})
    with pytest.raises(InvalidInputError, match="not source-soft"):
        paired_markdown([a], None, ["source-soft"], ["dense"])
    with pytest.raises(InvalidInputError, match="different question files"):
        paired_markdown([a, paired_dir(tmp_path / "b", other, {})], None, None, ["dense"])
    with pytest.raises(InvalidInputError, match="ranked units"):
        paired_markdown([paired_dir(tmp_path / "c", questions, {}, collapse=False)], None, None, ["dense"])
    with pytest.raises(InvalidInputError, match=r"nothing to compare the first run with \(no run file for a / bm25"):
        paired_markdown([a], ["a"], None, ["dense", "bm25"])
    with pytest.raises(InvalidInputError, match=r"run\.bm25\.all\.trec: not found"):
        paired_markdown([a], None, None, ["bm25", "dense"])
    (a / "run.bm25.all.trec").write_text("zz Q0 r 1 .5 x\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="1 question ids are not in the question file"):
        paired_markdown([a], None, None, ["dense", "bm25"])
    (a / "run.bm25.all.trec").write_text("q1 r 1 .5\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"run\.bm25\.all\.trec:1: expected"):
        paired_markdown([a], None, None, ["dense", "bm25"])


def test_paired_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = write_questions(tmp_path / "q.jsonl", PAIRED_ROWS)
    a = paired_dir(tmp_path / "a", questions, {"run.dense.all.trec": ["q1 Q0 t1 1 .5 x"],
                                               "run.bm25.all.trec": ["q1 Q0 nothing 1 .5 x"]})
    assert main(["-q", "bench", "compare", str(a), "--methods", "dense,bm25", "--paired", "--bootstrap", "50"]) == 0
    assert "(50 draws, seed 0)" in capsys.readouterr().out
    assert main(["-q", "bench", "compare", str(a), "--paired", "--scenarios", "source-hard"]) == 1
