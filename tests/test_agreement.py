"""The recorded agreement check between two encodings of one model (retriever.agreement)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from retriever import agreement
from retriever.agreement import Agreement, check_agreement, check_encoding, recorded
from retriever.errors import IncompatibleIndexError
from retriever.index import Index
from retriever.searcher import Searcher
from tests.conftest import edit_manifest

TORCH = {"backend": "torch", "precision": "float32"}
INT8 = {"backend": "onnx", "precision": "int8", "export_sha256": "a" * 64}


def _record(model_dir: Path, passed: bool) -> None:
    agreement._save(model_dir, Agreement(TORCH, INT8, 0.995 if passed else 0.93, 0.998, 1.0 if passed else 0.8,
                                         256, 64, passed, "2026-12-02T00:00:00+00:00"))


def test_the_same_encoding_needs_no_check(tmp_path: Path) -> None:
    check_encoding(SimpleNamespace(encoding=TORCH), SimpleNamespace(encoding=dict(TORCH), model_dir=tmp_path), "idx")


def test_another_encoding_is_refused_naming_both_until_a_passed_check_is_recorded(tmp_path: Path) -> None:
    manifest, encoder = SimpleNamespace(encoding=TORCH), SimpleNamespace(encoding=INT8, model_dir=tmp_path)
    with pytest.raises(IncompatibleIndexError, match=r"encoded with torch/float32 but queries would be encoded with "
                                                     r"onnx/int8, and no agreement check between them is recorded"):
        check_encoding(manifest, encoder, "idx")
    _record(tmp_path, passed=False)
    with pytest.raises(IncompatibleIndexError, match=r"agreement check failed \(min cosine 0\.9300"):
        check_encoding(manifest, encoder, "idx")
    _record(tmp_path, passed=True)
    check_encoding(manifest, encoder, "idx")
    assert recorded(tmp_path, TORCH, INT8).passed  # type: ignore[union-attr]
    # A record for another export of the same backend and precision does not count.
    other = SimpleNamespace(encoding={**INT8, "export_sha256": "b" * 64}, model_dir=tmp_path)
    with pytest.raises(IncompatibleIndexError, match="no agreement check"):
        check_encoding(manifest, other, "idx")


def test_another_export_of_the_same_encoding_is_named_as_such(tmp_path: Path) -> None:
    manifest = SimpleNamespace(encoding=INT8)
    again = SimpleNamespace(encoding={**INT8, "export_sha256": "b" * 64}, model_dir=tmp_path)
    with pytest.raises(IncompatibleIndexError, match=r"encoded with onnx/int8 export aaaaaaaaaaaa but the model's "
                                                     r"onnx/int8 export is now bbbbbbbbbbbb \(the model was exported "
                                                     r"again since the index was built.*rebuild the index"):
        check_encoding(manifest, again, "idx")


def test_a_searcher_refuses_an_index_encoded_another_way(tiny_index_dir: Path, encoder, tmp_path: Path) -> None:
    other = Path(shutil.copytree(tiny_index_dir, tmp_path / "onnx-encoded"))
    edit_manifest(other, lambda d: d.update(encoding=INT8))
    with pytest.raises(IncompatibleIndexError, match=r"onnx/int8 but queries would be encoded with torch/float32"):
        Searcher(Index.load(other, use_gpu=False), encoder)


def test_an_encoder_agrees_with_itself_and_the_check_is_recorded(encoder, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(agreement, "CANARY_DOCS", 24)
    monkeypatch.setattr(agreement, "CANARY_QUERIES", 8)
    same = SimpleNamespace(**{k: getattr(encoder, k) for k in ("checksum", "encoding", "max_seq_length", "count_tokens",
                                                               "encode_documents", "encode_queries")},
                           model_dir=tmp_path)
    record = check_agreement(same, same)  # type: ignore[arg-type]
    assert record.passed and record.min_cosine >= 0.9999 and record.same_top_k == 1.0
    assert (record.canary_docs, record.canary_queries) == (24, 8)
    assert recorded(tmp_path, encoder.encoding, encoder.encoding) == record


def test_check_agreement_refuses_an_index_whose_export_is_gone(tiny_index_dir: Path, tmp_path: Path, monkeypatch,
                                                               capsys) -> None:
    from retriever.cli import index_commands
    from retriever.cli.main import main

    index = Path(shutil.copytree(tiny_index_dir, tmp_path / "idx"))
    edit_manifest(index, lambda m: m.update(encoding={**INT8}))  # encoded with export aaaa...

    class ExportedAgain:  # the model directory now holds another onnx/int8 export
        def __init__(self, config) -> None:
            self.encoding = {**INT8, "export_sha256": "b" * 64}

    monkeypatch.setattr(index_commands, "Encoder", ExportedAgain)
    monkeypatch.setattr(agreement, "check_agreement",
                        lambda *a: pytest.fail("a check of the new export against itself is no check"))
    assert main(["-q", "check-agreement", str(index), "--backend", "onnx", "--precision", "int8"]) == 1
    err = capsys.readouterr().err
    assert "encoded with onnx/int8 export aaaaaaaaaaaa, which the model directory no longer holds" in err
    assert "export is now bbbbbbbbbbbb" in err and "rebuild the index" in err
    assert not (index.parent / "agreement.json").exists()
