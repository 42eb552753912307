"""``bench heteromix --server``: the harness ranked by a running server gives the in-process figures.

Over a copy of the tiny index with its lexical part, served with ``--resolve encoder-only``, the
same questions are run in process and over gRPC in every mode and scenario: every question's
ranked unit ids, its scores and every metric must be the same. The refusals (flags that cannot
apply, another build, a missing lexical part, a server that resolves instructions into filters)
come before any ranking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from retriever.cli.main import main
from retriever.encoder import EncoderConfig
from retriever.errors import IncompatibleIndexError, InvalidInputError
from retriever.evaluation.bench import BenchReport, HeteroBenchConfig, Method, run_heteromix_bench
from retriever.evaluation.collection import UnitScheme
from retriever.evaluation.heteromix import HeteroConfig, Scenario
from retriever.evaluation.remote import ServedIndex
from retriever.query import FusionConfig, SourceResolution
from retriever.searcher import build_lexical
from retriever.service.server import RetrieverServer
from tests.conftest import edit_manifest
from tests.evaluation.test_heteromix_protocol import tiny_questions, write_questions
from tests.service.helpers import copy_index, running_server

SCENARIOS = tuple(Scenario)
METHODS = (Method.BM25, Method.DENSE, Method.HYBRID)
#: A fusion depth below the ranking depth, so the fusion settings visibly travel with the query.
FUSION = FusionConfig(rrf_k=30.0, depth=60)


@pytest.fixture(scope="module")
def lexical_index_dir(tiny_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny index (the same build) with its lexical part, as `retriever build-lexical` leaves it."""
    from retriever.index import Index

    copy = copy_index(tiny_index_dir, tmp_path_factory.mktemp("grpc-bench") / "tiny")
    build_lexical(Index.load(copy, use_gpu=False))
    return copy


@pytest.fixture(scope="module")
def bench_server(encoder, lexical_index_dir: Path, tiny_index_dir: Path) -> Iterator[RetrieverServer]:
    """``tiny`` answers every mode; ``plain`` (the same build, no lexical part) answers dense only."""
    with running_server(encoder, [("tiny", lexical_index_dir), ("plain", tiny_index_dir)],
                        resolution=SourceResolution.ENCODER_ONLY) as srv:
        yield srv


@pytest.fixture(scope="module")
def questions(tiny_records: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_questions(tmp_path_factory.mktemp("questions") / "questions.jsonl", tiny_questions(tiny_records))


def refuse_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, loading a model in this process fails the test: over gRPC the server encodes."""
    from retriever.encoder import Encoder

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a served run loaded a model in the benchmark's process")

    monkeypatch.setattr(Encoder, "_load", refuse)


def bench_config(out: Path, corpus: Path, questions: Path, index: Path, **changes: object) -> HeteroBenchConfig:
    config = HeteroBenchConfig(corpus=corpus, questions=questions, out=out, index=index, methods=METHODS,
                               scenarios=SCENARIOS, fusion=FUSION,
                               hetero=HeteroConfig(scenarios=SCENARIOS, depth=100, show_progress=False))
    return replace(config, **changes)


def test_served_rankings_and_metrics_equal_in_process(bench_server: RetrieverServer, encoder, tiny_corpus: Path,
                                                      questions: Path, lexical_index_dir: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = run_heteromix_bench(bench_config(tmp_path / "local", tiny_corpus, questions, lexical_index_dir,
                                             cache_dir=tmp_path / "cache"), encoder)
    refuse_model_loads(monkeypatch)
    queries_before = bench_server.batcher.stats.queries
    served = run_heteromix_bench(bench_config(tmp_path / "served", tiny_corpus, questions, lexical_index_dir,
                                              server=ServedIndex(f"127.0.0.1:{bench_server.port}", "tiny")))
    assert bench_server.batcher.stats.queries > queries_before  # the server encoded the dense and hybrid queries

    assert [r.label for r in served.runs] == [r.label for r in local.runs] and len(local.runs) == 15
    for mine, theirs in zip(local.runs, served.runs, strict=True):
        assert theirs.question_ids == mine.question_ids, mine.label
        assert [ids.tolist() for ids, _ in theirs.rankings] == [ids.tolist() for ids, _ in mine.rankings], mine.label
        for (_, want), (_, have) in zip(mine.rankings, theirs.rankings, strict=True):
            assert have.tolist() == pytest.approx(want.tolist(), abs=1e-6), mine.label
        assert theirs.per_question == mine.per_question, mine.label
        assert theirs.metrics == mine.metrics, mine.label
        assert theirs.first_ranks == mine.first_ranks, mine.label
    assert all(len(ids) for run in local.runs for ids, _ in run.rankings)
    # the runs are not all alike: the scenarios and modes do rank differently
    by_label = {r.label: r for r in local.runs}
    assert [i.tolist() for i, _ in by_label["dense / all"].rankings] != \
        [i.tolist() for i, _ in by_label["dense / source-soft"].rankings]
    assert [i.tolist() for i, _ in by_label["hybrid / all"].rankings] != \
        [i.tolist() for i, _ in by_label["dense / all"].rankings]

    local_json = json.loads((tmp_path / "local" / "metrics.json").read_text())
    served_json = json.loads((tmp_path / "served" / "metrics.json").read_text())
    assert [r["metrics"] for r in served_json["runs"]] == [r["metrics"] for r in local_json["runs"]]
    assert served_json["server"] == f"127.0.0.1:{bench_server.port}" and served_json["server_index"] == "tiny"
    assert served_json["model"] == local_json["model"] == encoder.name and "server" not in local_json
    for run in ("bm25.all", "hybrid.source-soft", "dense.source-hard-plain"):
        assert (tmp_path / "served" / f"run.{run}.trec").read_text() == \
            (tmp_path / "local" / f"run.{run}.trec").read_text()


def test_cli_bench_over_grpc(bench_server: RetrieverServer, tiny_corpus: Path, questions: Path,
                             tiny_index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_model_loads(monkeypatch)
    out = tmp_path / "out"
    code = main(["-q", "bench", "heteromix", "--corpus", str(tiny_corpus), "--ids", "none", "--questions",
                 str(questions), "--index", str(tiny_index_dir), "--server", f"127.0.0.1:{bench_server.port}",
                 "--server-index", "plain", "--methods", "dense", "--scenarios", "all,source-hard", "--out", str(out),
                 "--no-results-md", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "ranked over gRPC" in capsys.readouterr().out
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["server_index"] == "plain" and [r["method"] for r in payload["runs"]] == ["dense", "dense"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--units", "whole-record", "--methods", "bm25"], "--units whole-record cannot be ranked by a server"),
    (["--cache-dir", "somewhere"], "--cache-dir does nothing with --server"),
    (["--model", "some/model"], "the encoder options"),
    (["--precision", "float32"], "the encoder options"),
])
def test_flags_that_cannot_apply_over_grpc_are_refused(flags: list[str], message: str, tiny_corpus: Path,
                                                       questions: Path, tiny_index_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # no server listens there: the refusal comes before any connection, and nothing is written
    args = ["-q", "bench", "heteromix", "--corpus", str(tiny_corpus), "--ids", "none", "--questions",
            str(questions), "--server", "127.0.0.1:1", "--out", str(tmp_path / "out"), "--no-results-md", *flags]
    if "--units" not in flags:
        args += ["--index", str(tiny_index_dir)]
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_server_flags_need_a_server_and_server_needs_index(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "bench", "heteromix", "--server-index", "tiny", "--out", str(tmp_path / "out")]) == 1
    assert "--server-index: only with --server" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="--server needs --index"):
        HeteroBenchConfig(corpus=tmp_path / "c", questions=tmp_path / "q", out=tmp_path,
                          server=ServedIndex("127.0.0.1:1"))
    with pytest.raises(InvalidInputError, match="--units whole-record cannot be ranked by a server"):
        HeteroBenchConfig(corpus=tmp_path / "c", questions=tmp_path / "q", out=tmp_path, methods=(Method.BM25,),
                          units=UnitScheme.WHOLE_RECORD, server=ServedIndex("127.0.0.1:1"))
    with pytest.raises(InvalidInputError, match="the encoder options"):
        HeteroBenchConfig(corpus=tmp_path / "c", questions=tmp_path / "q", out=tmp_path, index=tmp_path,
                          server=ServedIndex("127.0.0.1:1"), encoder=EncoderConfig(batch_size=8))


def test_another_build_or_a_missing_lexical_part_is_refused_before_ranking(
        bench_server: RetrieverServer, tiny_corpus: Path, questions: Path, tiny_index_dir: Path,
        tmp_path: Path) -> None:
    address = f"127.0.0.1:{bench_server.port}"
    queries_before = bench_server.batcher.stats.queries
    with pytest.raises(IncompatibleIndexError, match="answers dense, not bm25, hybrid: build its lexical part"):
        run_heteromix_bench(bench_config(tmp_path / "a", tiny_corpus, questions, tiny_index_dir,
                                         server=ServedIndex(address, "plain")))
    rebuilt = copy_index(tiny_index_dir, tmp_path / "rebuilt")
    edit_manifest(rebuilt, lambda data: data.update(created="2001-01-01T00:00:00+00:00"))
    with pytest.raises(IncompatibleIndexError, match="is not the build in .*build time"):
        run_heteromix_bench(bench_config(tmp_path / "b", tiny_corpus, questions, rebuilt,
                                         methods=(Method.DENSE,), server=ServedIndex(address, "plain")))
    assert bench_server.batcher.stats.queries == queries_before
    assert not (tmp_path / "a" / "metrics.json").exists() and not (tmp_path / "b" / "metrics.json").exists()


def test_a_server_that_turns_instructions_into_filters_is_refused(encoder, tiny_index_dir: Path, tiny_corpus: Path,
                                                                  questions: Path, tmp_path: Path) -> None:
    with running_server(encoder, [("tiny", tiny_index_dir)], resolution=SourceResolution.RULES) as srv:
        address = f"127.0.0.1:{srv.port}"
        dense_hard = bench_config(tmp_path / "hard", tiny_corpus, questions, tiny_index_dir, methods=(Method.DENSE,),
                                  scenarios=(Scenario.SOURCE_HARD,), server=ServedIndex(address),
                                  hetero=HeteroConfig(scenarios=(Scenario.SOURCE_HARD,), show_progress=False))
        report: BenchReport = run_heteromix_bench(dense_hard)  # its queries name their sources: nothing to resolve
        assert report.runs[0].metrics["pooled"]["source@10"] == 1.0
        soft = replace(dense_hard, out=tmp_path / "soft", scenarios=(Scenario.SOURCE_SOFT,),
                       hetero=HeteroConfig(scenarios=(Scenario.SOURCE_SOFT,), show_progress=False))
        with pytest.raises(IncompatibleIndexError, match="after reading its instruction.*--resolve encoder-only"):
            run_heteromix_bench(soft)
        assert not (tmp_path / "soft" / "metrics.json").exists()
