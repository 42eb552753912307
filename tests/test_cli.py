from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import retriever.service.server  # noqa: F401  (imported here so serve's timing excludes Python's grpc import)
from retriever.cli.main import build_parser, main


def test_build_search_info_round_trip(tmp_path: Path, tiny_corpus: Path, capsys) -> None:
    out = tmp_path / "idx"
    ids = tmp_path / "ids.txt"
    records = [json.loads(line) for line in tiny_corpus.read_text().splitlines()]
    chosen = [r["id"] for r in records if r["source"] in ("kb", "infobox")][:20]
    ids.write_text("\n".join(chosen) + "\n")
    assert main(["-q", "build-index", str(tiny_corpus), "--out", str(out), "--ids", str(ids), "--no-progress"]) == 0
    assert "20 records" in capsys.readouterr().out

    assert main(["-q", "search", str(out), "where was he born?", "-k", "3", "--source", "kb", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(h["source"] == "kb" and h["record_id"] in chosen for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert all(h["sources"] == ["kb"] and not h["sources_resolved"] and h["sources_confidence"] is None for h in hits)
    assert main(["-q", "search", str(out), "where was he born?", "-k", "3", "--instruction", "anything but tables",
                 "--resolve", "model", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and all(0 < h["sources_confidence"] <= 1 and "table" not in h["sources"] for h in hits)
    assert main(["-q", "search", str(out), "where was he born?", "--instruction", "anything but tables",
                 "--resolve", "rules"]) == 0
    assert "sources: table (resolved from the instruction)" in capsys.readouterr().out  # the rules miss "but"

    assert main(["-q", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bundled:heteromix-minilm-l6" in text and "Flat" in text and "encoded with torch float32" in text
    assert main(["-q", "info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert sum(manifest["records"].values()) == 20
    assert manifest["encoding"] == {"backend": "torch", "precision": "float32"}


def test_a_backend_without_its_precision_or_export_exits_1_saying_how(tiny_index_dir: Path, tmp_path: Path,
                                                                     capsys) -> None:
    assert main(["-q", "search", str(tiny_index_dir), "q", "--precision", "int8"]) == 1
    assert "backend torch does not run int8 (it runs float32, float16, bfloat16)" in capsys.readouterr().err
    import shutil

    from retriever.bundled import ZERO_SHOT_MODEL, bundled_model_dir

    model = Path(shutil.copytree(bundled_model_dir(ZERO_SHOT_MODEL), tmp_path / "model"))
    assert main(["-q", "search", str(tiny_index_dir), "q", "--model", str(model), "--backend", "openvino"]) == 1
    err = capsys.readouterr().err
    assert "no openvino export at float32" in err or "needs its runtime package" in err


def test_bad_corpus_exits_1_with_file_and_line(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": "a", "source": "text", "text": "ok"}\n{"id": "b", "source": "tabel"}\n')
    assert main(["-q", "build-index", str(corpus), "--out", str(tmp_path / "idx")]) == 1
    err = capsys.readouterr().err
    assert f"{corpus}:2: field 'source': unknown source 'tabel'" in err
    assert not (tmp_path / "idx").exists()


def test_unknown_source_argument_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["search", str(tmp_path), "q", "--source", "video"])
    assert exc.value.code == 2


def test_search_on_missing_index(tmp_path: Path, capsys) -> None:
    assert main(["-q", "search", str(tmp_path / "absent"), "q"]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_demo_builds_once_then_reuses_the_cache(tmp_path: Path, tiny_corpus: Path, monkeypatch, capsys, caplog) -> None:
    import retriever.sample as sample

    real = sample.data_file
    monkeypatch.setattr(sample, "data_file", lambda name: tiny_corpus if name == sample.SAMPLE_CORPUS else real(name))
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="retriever.sample"):
        assert main(["demo", "--no-progress"]) == 0
        assert main(["demo", "--no-progress"]) == 0
    builds = [r for r in caplog.records if "building the sample index" in r.getMessage()]
    assert len(builds) == 1
    out = capsys.readouterr().out
    from retriever.cli.index_commands import demo_queries

    for query, gold in demo_queries(3):
        assert out.count(f"? {query.text}") == 2
        assert out.count(f"gold evidence ({', '.join(sorted(gold))}): ") == 2  # a rank, or "not in the top 3"
    assert "sources: table (requested)" in out


def test_module_entry_point_help() -> None:
    result = subprocess.run([sys.executable, "-m", "retriever", "--help"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    for command in ("build-index", "search", "info", "demo"):
        assert command in result.stdout


# -- fail fast ---------------------------------------------------------------------------------------------------
# Every check that needs no model runs before the model loads. How "fast" is measured: wall time of the CLI's
# main() in this process, with the model's load (Encoder._load) and the tokenizer (ModelInfo.token_counter)
# patched to raise, so a path that reaches either fails the test whatever its timing. Importing torch or
# transformers takes 10-45 s on the shared 2-core machine: a path that imported them would also blow the
# budget in a fresh process. Python's import of the CLI and of the gRPC server module (done by this test module)
# is not counted: it is paid once by every command, good input or bad.
FAST_SECONDS = 2.0


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def no_model(monkeypatch) -> None:
    from retriever.encoder import Encoder, ModelInfo

    def refuse(*args, **kwargs):
        raise ModelLoaded("the model (or its tokenizer) was loaded on a path that must fail before it")

    monkeypatch.setattr(Encoder, "_load", refuse)
    monkeypatch.setattr(ModelInfo, "token_counter", refuse)


def fails_fast(argv: list[str], capsys, code: int = 1) -> str:
    """Run the CLI; it must exit with ``code`` within FAST_SECONDS. Returns stderr."""
    build_parser()  # the first call imports every command's modules: an import, not the command's work
    started = time.perf_counter()
    try:
        result = main(argv)
    except SystemExit as exc:  # argparse usage errors
        result = exc.code
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert result == code, err
    assert elapsed < FAST_SECONDS, f"{argv} took {elapsed:.2f}s"
    return err


def corpus_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD_LINE = '{"id": "t%d", "source": "text", "text": "a passage"}'


@pytest.mark.parametrize(("lines", "message"), [
    ([GOOD_LINE % i for i in range(3000)] + ['{"id": "x", "source": "text", "titel": "T", "text": "a"}'],
     ":3001: field 'titel': unknown field for a text record"),
    ([GOOD_LINE % 0, '{"id": "x", "source": "table", "header": ["A"], "rows": [["1", "2", "3"]]}'],
     ":2: field 'rows[0]': row 0 has 3 cells but the header has 1 columns"),
    ([GOOD_LINE % 0, '{"id": "x", "source": "TEXT", "text": "a"}'],
     ":2: field 'source': unknown source 'TEXT'; expected one of: text, table, kb, infobox (lowercase)"),
    ([GOOD_LINE % 0, GOOD_LINE % 0], ":2: field 'id': duplicate id 't0'"),
])
def test_build_index_bad_corpus_fails_before_the_tokenizer(tmp_path: Path, capsys, no_model, lines, message) -> None:
    corpus = corpus_lines(tmp_path / "c.jsonl", lines)
    err = fails_fast(["-q", "build-index", str(corpus), "--out", str(tmp_path / "idx")], capsys)
    assert f"error: {corpus}{message}" in err
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx*"))


def test_build_index_lenient_warns_and_goes_on_to_the_model(tmp_path: Path, caplog, no_model) -> None:
    corpus = corpus_lines(tmp_path / "c.jsonl", [GOOD_LINE % 0, '{"id": "x", "source": "text", "titel": "T", "text": "a"}'])
    with pytest.raises(ModelLoaded):  # validation passed: the next step is the tokenizer
        main(["build-index", str(corpus), "--out", str(tmp_path / "idx"), "--lenient"])
    assert f"{corpus}:2: field 'titel': unknown field, ignored (--lenient)" in caplog.messages


def test_build_index_argument_checks_fail_fast(tmp_path: Path, tiny_corpus: Path, capsys, no_model) -> None:
    out = str(tmp_path / "idx")
    err = fails_fast(["-q", "build-index", str(tmp_path / "absent.jsonl"), "--out", out], capsys)
    assert "absent.jsonl: file not found" in err
    err = fails_fast(["-q", "build-index", str(tiny_corpus), "--out", out, "--ids", str(tmp_path / "no-ids")], capsys)
    assert "no-ids: id list not found" in err
    (tmp_path / "idx").mkdir()
    err = fails_fast(["-q", "build-index", str(tiny_corpus), "--out", out], capsys)
    assert "already exists (use --overwrite to replace it, or --resume" in err
    err = fails_fast(["-q", "build-index", str(tiny_corpus), "--out", out + "2", "--model", str(tmp_path / "nomodel")],
                     capsys)
    assert "model directory not found" in err
    err = fails_fast(["-q", "build-index", str(tiny_corpus), "--out", out + "2", "--workers", "2"], capsys)
    assert "--workers and --ray-address apply to --engine ray only" in err
    err = fails_fast(["-q", "build-index", str(tiny_corpus), "--out", out + "2", "--factory", "Flat",
                      "--memory-budget", "1GiB"], capsys)
    assert "--memory-budget applies to --factory auto only" in err
    err = fails_fast(["build-index", str(tiny_corpus), "--out", out + "2", "--part-size", "0"], capsys, code=2)
    assert "--part-size: must be >= 1, got 0" in err
    err = fails_fast(["build-index", str(tiny_corpus), "--out", out + "2", "--min-recall", "2"], capsys, code=2)
    assert "--min-recall: must be in [0, 1]" in err


def test_search_checks_fail_fast(tmp_path: Path, tiny_index_dir: Path, capsys, no_model) -> None:
    index = str(tiny_index_dir)
    assert "no manifest.json" in fails_fast(["-q", "search", str(tmp_path / "absent"), "q"], capsys)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("{}\n")
    err = fails_fast(["-q", "search", str(corpus), "q"], capsys)
    assert "corpus.jsonl: a file, not an index directory (build an index from a corpus with `retriever build-index" in err
    for mode in ("bm25", "hybrid"):
        err = fails_fast(["-q", "search", index, "q", "--mode", mode, "--lexical", str(tmp_path / "nolex")], capsys)
        assert "nolex: no lexical.json (build it with `retriever build-lexical`)" in err
    assert "query text must not be empty" in fails_fast(["-q", "search", index, " "], capsys)
    err = fails_fast(["-q", "search", index, "q", "--max-per-record", "2"], capsys)
    assert "max_per_record: only with group_by_record" in err
    err = fails_fast(["-q", "search", index, "q", "--model", str(tmp_path)], capsys)
    assert "no *.safetensors weights found" in err
    assert "--top-k: must be >= 1, got 0" in fails_fast(["search", index, "q", "-k", "0"], capsys, code=2)
    for argv in (["search", index, "q"], ["query", "q"]):  # one message, with the valid names, for both
        err = fails_fast([*argv, "--source", "tables"], capsys, code=2)
        assert "--source: unknown source 'tables'; expected one of: text, table, kb, infobox" in err


def test_a_query_to_an_address_where_no_server_answers_says_so(capsys) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    for argv in (["query", "q"], ["publish", "sample", "/nowhere"]):
        err = fails_fast([*argv, "--server", address, "--timeout", "3"], capsys)
        assert f"no server answers at {address} (start one with `retriever serve`" in err


def test_bm25_search_never_loads_the_dense_model(tmp_path: Path, tiny_index_dir: Path, capsys, no_model) -> None:
    lexical = tmp_path / "lexical"
    assert main(["-q", "build-lexical", str(tiny_index_dir), "--out", str(lexical)]) == 0
    capsys.readouterr()
    assert main(["-q", "search", str(tiny_index_dir), "where was he born?", "--mode", "bm25", "--lexical",
                 str(lexical), "--json", "-k", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_serve_checks_fail_fast_and_a_busy_port_is_one_line(tmp_path: Path, tiny_index_dir: Path, capfd,
                                                           no_model) -> None:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            err = fails_fast(["-q", "serve", "--index", str(tiny_index_dir), "--port", str(port)], capfd)
        assert err.splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: the address is already in use "
                                    "(another server is running there: stop it, or choose another --port / "
                                    "RETRIEVER_PORT; 0 picks a free one)"]
        err = fails_fast(["-q", "serve", "--index", str(tiny_index_dir), "--index", f"b={tmp_path}"], capfd)
        assert f"{tmp_path}: no manifest.json" in err
        err = fails_fast(["-q", "serve", "--index", str(tiny_index_dir), "--model", str(tmp_path / "m")], capfd)
        assert "model directory not found" in err
        err = fails_fast(["-q", "serve", "--index", str(tiny_index_dir), "--token-file", str(tmp_path / "t")], capfd)
        assert "cannot read the token file" in err
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def test_bench_inputs_fail_fast(tmp_path: Path, tiny_corpus: Path, capsys, no_model) -> None:
    questions = corpus_lines(tmp_path / "q.jsonl", [json.dumps(
        {"id": "q1", "text": "who?", "dataset": "d", "gold_source": "text", "gold": ["t0"], "answers": ["x"]})])
    base = ["-q", "bench", "heteromix", "--corpus", str(tiny_corpus), "--questions", str(questions), "--ids", "none",
            "--no-results-md", "--cache-dir", str(tmp_path / "cache"), "--methods", "dense"]
    err = fails_fast([*base, "--out", str(tmp_path / "o1"), "--questions", str(tmp_path / "absent.jsonl")], capsys)
    assert "absent.jsonl: file not found" in err
    err = fails_fast([*base, "--out", str(tmp_path / "o2"), "--corpus", str(tmp_path / "absent.jsonl.gz")], capsys)
    assert "absent.jsonl.gz: file not found" in err
    err = fails_fast([*base, "--out", str(tmp_path / "o3"), "--ids", str(tmp_path / "absent.ids")], capsys)
    assert "absent.ids: id list not found" in err
    (tmp_path / "file").write_text("x")
    err = fails_fast([*base, "--out", str(tmp_path / "file" / "sub")], capsys)
    assert "cannot create the output directory" in err
    err = fails_fast([*base, "--out", str(tmp_path / "o4"), "--index", str(tmp_path / "noindex")], capsys)
    assert "no manifest.json" in err


def test_train_checks_fail_fast(tmp_path: Path, capsys, monkeypatch) -> None:
    import retriever.training.pipeline as pipeline  # imports torch: once per process, not counted

    def refuse(*args, **kwargs):
        raise ModelLoaded("the model was loaded on a path that must fail before it")

    monkeypatch.setattr(pipeline, "EmbeddingModel", refuse)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the config's data paths are relative to the root
    base = ["-q", "train", "--config", "configs/train_smoke.toml"]
    assert "absent.toml" in fails_fast(["-q", "train", "--config", str(tmp_path / "absent.toml")], capsys)
    err = fails_fast([*base, "--output-dir", str(tmp_path / "r1"), "--set", 'data.corpus="nowhere.jsonl"'], capsys)
    assert "[data] corpus: nowhere.jsonl does not exist" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "weights").write_text("a previous run")
    # data files shipped in the package, so this holds without ../shared/data beside the clone
    ids = tmp_path / "ids.txt"
    ids.write_text("none\n")
    shipped = ["--set", 'data.corpus="retriever/data/sample_corpus.jsonl.gz"',
               "--set", 'data.train_queries="retriever/data/sample_queries.jsonl"', "--set", "data.pairs_files=[]",
               "--set", 'evaluation.dev_queries="retriever/data/sample_queries.jsonl"',
               "--set", f'evaluation.dev_ids="{ids}"']
    err = fails_fast([*base, "--output-dir", str(run), *shipped], capsys)
    assert "already holds a run; pass --resume to continue it or --overwrite" in err


def test_search_with_history_prints_the_searched_text(tiny_index_dir: Path, capsys) -> None:
    assert main(["-q", "search", str(tiny_index_dir), "where was she born?", "-k", "1", "--source", "kb",
                 "--turn", "Who directed it?", "--answer", "nobody", "--turn", "Tell me about Uta Barth.", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)
    assert hit["searched"] == "where was she born? Uta Barth" and hit["title"] == "Uta Barth"
    assert main(["-q", "search", str(tiny_index_dir), "where was she born?", "-k", "1", "--source", "kb",
                 "--turn", "Tell me about Uta Barth."]) == 0
    assert capsys.readouterr().out.startswith("searched: where was she born? Uta Barth\n")
    assert main(["-q", "search", str(tiny_index_dir), "where was she born?", "-k", "1", "--json"]) == 0
    assert "searched" not in json.loads(capsys.readouterr().out)


def test_answer_without_a_turn_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["search", str(tmp_path), "q", "--answer", "a"])
    assert "--answer: give it right after the --turn" in capsys.readouterr().err


def test_the_command_quiets_openblas_spinning_before_numpy_loads_and_keeps_a_users_setting() -> None:
    # numpy's OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it loads; its default spin took the cores
    # from the encoder's threads after every exact search (docs/BACKENDS.md)
    probe = ("import os, sys, json; import retriever.cli.main as m; m.build_parser(); "
             "print(json.dumps([os.environ.get('OPENBLAS_THREAD_TIMEOUT'), 'numpy' in sys.modules]))")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    first = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], env=env, capture_output=True,
                           text=True, timeout=120, check=True, cwd=root)
    assert json.loads(first.stdout.strip().splitlines()[-1]) == ["4", True]
    # numpy was not loaded before the variable was set: the setting precedes it in the import log
    imports = [line.rsplit("|", 1)[-1].strip() for line in first.stderr.splitlines() if line.startswith("import time:")]
    assert "retriever.cli.main" in imports and "numpy" in imports
    assert imports.index("numpy") > imports.index("retriever.cli.main")  # by the commands, after main's top ran
    mine = subprocess.run([sys.executable, "-c", probe], env={**env, "OPENBLAS_THREAD_TIMEOUT": "20"},
                          capture_output=True, text=True, timeout=120, check=True, cwd=root)
    assert json.loads(mine.stdout.strip().splitlines()[-1]) == ["20", True]
