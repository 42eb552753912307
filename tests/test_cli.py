from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from retriever.cli.main import main


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

    assert main(["-q", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bundled:all-MiniLM-L6-v2" in text and "Flat" in text
    assert main(["-q", "info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert sum(manifest["records"].values()) == 20


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
    assert out.count("? what type of music does rick witter & the dukes make") == 2
    assert "sources: table (requested)" in out


def test_module_entry_point_help() -> None:
    result = subprocess.run([sys.executable, "-m", "retriever", "--help"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    for command in ("build-index", "search", "info", "demo"):
        assert command in result.stdout
