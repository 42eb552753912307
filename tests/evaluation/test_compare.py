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
