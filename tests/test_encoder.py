from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.bundled import DEFAULT_MODEL
from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import ModelError
from retriever.instructions import compose_query, default_prompts
from retriever.model_dir import model_checksum


def test_bundled_model_loads_offline(encoder) -> None:
    assert encoder.name == DEFAULT_MODEL
    assert encoder.dimension == 384
    assert encoder.device == "cpu"
    assert len(encoder.checksum) == 64
    assert encoder.prompts == default_prompts()


def test_queries_are_instruction_plus_question(encoder) -> None:
    instruction = "Given a question, retrieve relevant evidence that can answer the question from table sources:"
    got = encoder.encode_queries(["who founded the club?"], instruction)
    direct = encoder.model.encode([f"{instruction} who founded the club?"], normalize_embeddings=True)
    np.testing.assert_allclose(got, direct, atol=1e-5)
    plain = encoder.encode_queries(["who founded the club?"], None)
    assert not np.allclose(got, plain, atol=1e-3)


def test_documents_are_normalized_float32(encoder) -> None:
    vectors = encoder.encode_documents(["a short text", "another, slightly longer text about tables"])
    assert vectors.dtype == np.float32
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode_documents([]).shape == (0, 384)


def test_count_tokens_matches_tokenizer(encoder) -> None:
    assert encoder.count_tokens(["hello world", ""]) == [2, 0]


def test_compose_query() -> None:
    assert compose_query(None, " q ") == "q"
    assert compose_query("retrieve from tables", "q") == "retrieve from tables: q"
    assert compose_query("Find evidence:", "q") == "Find evidence: q"


def test_model_directory_without_safetensors_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="pickled weights .* are refused"):
        Encoder(EncoderConfig(model=str(tmp_path)))


def test_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model directory not found"):
        Encoder(EncoderConfig(model=str(tmp_path / "absent")))


def test_checksum_sees_a_flipped_weight_bit(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    before = model_checksum(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert model_checksum(tmp_path) != before


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EncoderConfig(batch_size=0)


def test_model_info_matches_the_loaded_encoder_without_loading_weights(tmp_path, encoder) -> None:
    """Builds plan with ModelInfo (tokenizer only); it must agree with the loaded model."""
    import json
    import shutil

    from retriever.encoder import Encoder, EncoderConfig, ModelInfo
    from retriever.model_dir import model_prompts

    info = ModelInfo.describe(EncoderConfig())
    assert (info.name, info.checksum, info.max_seq_length) == (encoder.name, encoder.checksum, encoder.max_seq_length)
    assert model_prompts(info.model_dir) == encoder.prompts
    texts = ["a short one", "Jenson Button, was born in, Frome, Somerset, England " * 20, ""]
    assert info.token_counter()(texts) == encoder.count_tokens(texts)
    # A saved null max_seq_length falls back as sentence-transformers does, and saved prompts are read.
    copy = tmp_path / "model"
    shutil.copytree(info.model_dir, copy)
    (copy / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": None, "do_lower_case": False}))
    config = json.loads((copy / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": "Find evidence: ", "query_table": "Find tables: ", "document": ""}
    (copy / "config_sentence_transformers.json").write_text(json.dumps(config))
    loaded = Encoder(EncoderConfig(model=str(copy), show_progress=False))
    described = ModelInfo.describe(EncoderConfig(model=str(copy)))
    assert described.max_seq_length == loaded.max_seq_length
    assert model_prompts(copy) == loaded.prompts and loaded.prompts["query_table"] == "Find tables: "


def test_counting_long_texts_prints_no_length_warning(capfd, caplog) -> None:
    from transformers import AutoTokenizer

    from retriever.bundled import bundled_model_dir
    from retriever.tokens import count_with

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_dir()), local_files_only=True)
    long_text = "word " * 2000
    assert tokenizer.model_max_length < 2000  # the warning's condition holds: the text is over the model's max
    with caplog.at_level("WARNING"):
        assert count_with(tokenizer, [long_text]) == [2000]
    captured = capfd.readouterr()
    assert "Token indices sequence length" not in captured.err + captured.out + caplog.text


@pytest.mark.parametrize("show_progress", [False, True])
def test_weights_progress_bar_follows_show_progress(monkeypatch, show_progress: bool) -> None:
    import sentence_transformers
    from transformers.utils import logging as hf_logging

    seen = []

    def fake_model(*args, **kwargs):
        seen.append(hf_logging.is_progress_bar_enabled())
        raise RuntimeError("stop after the check")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", fake_model)
    assert hf_logging.is_progress_bar_enabled()
    with pytest.raises(ModelError, match="stop after the check"):
        Encoder(EncoderConfig(show_progress=show_progress))
    assert seen == [show_progress]
    assert hf_logging.is_progress_bar_enabled()  # the process-wide switch is put back


def test_a_progress_bar_only_when_the_texts_span_several_batches(monkeypatch, capfd, encoder) -> None:
    """One batch gets no bar: a server's canary encodes a batch per shard and printed a bar for each."""
    from dataclasses import replace

    monkeypatch.setattr(encoder, "config", replace(encoder.config, batch_size=2, show_progress=True))
    encoder.encode_documents(["one", "two"])
    assert "Batches" not in capfd.readouterr().err
    encoder.encode_documents(["one", "two", "three"])
    assert "Batches" in capfd.readouterr().err


# -- backends (retriever.backends) ---------------------------------------------------------------
def test_a_precision_the_backend_cannot_run_is_refused() -> None:
    from retriever.backends import Backend, Precision

    with pytest.raises(ValueError, match="backend torch does not run int8"):
        EncoderConfig(precision=Precision.INT8)
    with pytest.raises(ValueError, match="backend openvino does not run float16"):
        EncoderConfig(backend=Backend.OPENVINO, precision=Precision.FLOAT16)
    assert EncoderConfig(backend=Backend.ONNX, precision=Precision.INT8).backend is Backend.ONNX
    assert EncoderConfig(backend=Backend.OPENVINO, precision=Precision.INT8).backend is Backend.OPENVINO


def test_exports_leave_the_model_checksum_alone(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    before = model_checksum(tmp_path)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"graph")
    (tmp_path / "openvino").mkdir()
    (tmp_path / "openvino" / "openvino_model.bin").write_bytes(b"weights")
    (tmp_path / "exports.json").write_text("{}")
    (tmp_path / "agreement.json").write_text("{}")
    assert model_checksum(tmp_path) == before
    (tmp_path / "onnx_notes.txt").write_text("not an export")  # only the export paths are left out
    assert model_checksum(tmp_path) != before


def test_a_missing_or_changed_export_is_refused(tmp_path: Path) -> None:
    from retriever.backends import Backend, ExportEntry, Precision, _record_export, find_export
    from retriever.index.files import sha256_file

    with pytest.raises(ModelError, match=r"no onnx export at int8; make one with `retriever export-model .* --quantize int8`"):
        find_export(tmp_path, Backend.ONNX, Precision.INT8)
    (tmp_path / "onnx").mkdir()
    graph = tmp_path / "onnx" / "model.onnx"
    graph.write_bytes(b"graph")
    _record_export(tmp_path, ExportEntry("onnx", "float32", None, "onnx/model.onnx",
                                         {"onnx/model.onnx": sha256_file(graph)}, "now", 0.0))
    assert find_export(tmp_path, Backend.ONNX, Precision.FLOAT32).file == "onnx/model.onnx"
    graph.write_bytes(b"graph, edited")
    with pytest.raises(ModelError, match="changed since it was exported"):
        find_export(tmp_path, Backend.ONNX, Precision.FLOAT32)


def test_the_torch_backend_has_nothing_to_export(tmp_path: Path) -> None:
    from retriever.backends import Backend, export_model

    with pytest.raises(ModelError, match="nothing to export"):
        export_model(tmp_path, Backend.TORCH)


@pytest.mark.parametrize(("backend", "module"), [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_an_export_encodes_like_torch_and_loads_offline(backend: str, module: str, tmp_path: Path, encoder) -> None:
    pytest.importorskip(module, reason=f"{module} is not installed (pip install 'retriever[{backend}]')")
    import shutil

    from retriever.backends import EXPORTS_FILE, Backend, Precision, export_model, read_exports
    from retriever.bundled import bundled_model_dir
    from retriever.index.files import sha256_file

    model = Path(shutil.copytree(bundled_model_dir(), tmp_path / "model"))
    entry = export_model(model, Backend(backend))
    assert entry.file == {"onnx": "onnx/model.onnx", "openvino": "openvino/openvino_model.xml"}[backend]
    assert read_exports(model)[-1] == entry and (model / EXPORTS_FILE).is_file()
    assert entry.files[entry.file] == sha256_file(model / entry.file)
    exported = Encoder(EncoderConfig(model=str(model), backend=Backend(backend), precision=Precision.FLOAT32,
                                     show_progress=False))
    assert exported.checksum == encoder.checksum  # same model: indexes built with it stay valid
    assert exported.encoding == {"backend": backend, "precision": "float32", "export_sha256": entry.files[entry.file]}
    texts = ["who founded the club?", "Jenson Button, was born in, Frome, Somerset, England", "In Rainbows | Length: 42:39"]
    cosine = np.sum(exported.encode_documents(texts) * encoder.encode_documents(texts), axis=1)
    assert cosine.min() > 0.9999
    queries = exported.encode_queries(["who founded the club?"], "retrieve evidence from table sources")
    np.testing.assert_allclose(queries, encoder.encode_queries(["who founded the club?"],
                                                               "retrieve evidence from table sources"), atol=1e-4)


def test_an_int8_onnx_export_loads_and_stays_close(tmp_path: Path, encoder) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'retriever[onnx]')")
    import shutil

    from retriever.backends import Backend, Precision, export_model
    from retriever.bundled import bundled_model_dir

    model = Path(shutil.copytree(bundled_model_dir(), tmp_path / "model"))
    entry = export_model(model, Backend.ONNX, quantize=True)
    assert (entry.file, entry.precision) == ("onnx/model_qint8_avx2.onnx", "int8")
    int8 = Encoder(EncoderConfig(model=str(model), backend=Backend.ONNX, precision=Precision.INT8, show_progress=False))
    texts = ["who founded the club?", "Jenson Button, was born in, Frome, Somerset, England"]
    cosine = np.sum(int8.encode_documents(texts) * encoder.encode_documents(texts), axis=1)
    assert 0.95 < cosine.min() < 0.99999  # close, and not the float32 graph under another name


def test_half_precision_vectors_are_renormalised_in_float32() -> None:
    from retriever.backends import Precision

    bf16 = Encoder(EncoderConfig(precision=Precision.BFLOAT16, device="cpu", show_progress=False))
    vectors = bf16.encode_documents(["a short text", "Jenson Button, was born in, Frome, Somerset, England"])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_openvino_bfloat16_runs_the_float32_export_at_bf16(tmp_path: Path, encoder) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'retriever[openvino]')")
    import shutil

    from retriever.backends import Backend, Precision, export_model
    from retriever.bundled import bundled_model_dir

    model = Path(shutil.copytree(bundled_model_dir(), tmp_path / "model"))
    entry = export_model(model, Backend.OPENVINO)
    bf16 = Encoder(EncoderConfig(model=str(model), backend=Backend.OPENVINO, precision=Precision.BFLOAT16,
                                 show_progress=False))
    assert bf16.encoding == {"backend": "openvino", "precision": "bfloat16", "export_sha256": entry.files[entry.file]}
    texts = ["who founded the club?", "Jenson Button, was born in, Frome, Somerset, England", "In Rainbows | Length: 42:39"]
    vectors = bf16.encode_documents(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # renormalised in float32
    assert np.sum(vectors * encoder.encode_documents(texts), axis=1).min() > 0.99
    # the IR does not name the temporary ONNX file it was converted from (a process id): exports of
    # the same weights in two processes are the same bytes, so indexes built with the first stay valid
    ir = (model / entry.file).read_text()
    assert "conversion_parameters" not in ir and ".model." not in ir


def test_openvino_int8_quantizes_the_float32_export_in_place_of_exporting_again(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'retriever[openvino]')")
    import shutil

    from retriever import backends
    from retriever.backends import Backend, export_model, read_exports
    from retriever.bundled import bundled_model_dir

    model = Path(shutil.copytree(bundled_model_dir(), tmp_path / "model"))
    float32 = export_model(model, Backend.OPENVINO)
    quantized_from: list[Path] = []

    def fake_quantize(model_dir: Path, source: Path, target: Path) -> None:  # NNCF's part is tested below
        quantized_from.append(source)
        shutil.copy(source, target)
        shutil.copy(source.with_suffix(".bin"), target.with_suffix(".bin"))

    def no_export(*args, **kwargs) -> None:
        raise AssertionError("the float32 export was made again")

    monkeypatch.setattr(backends, "_quantize_openvino", fake_quantize)
    monkeypatch.setattr(backends, "_torch_onnx_export", no_export)
    entry = export_model(model, Backend.OPENVINO, quantize=True)
    assert (entry.precision, entry.file) == ("int8", "openvino/openvino_model_qint8_quantized.xml")
    assert quantized_from == [model / float32.file]
    assert [e for e in read_exports(model) if e.precision == "float32"] == [float32]  # left exactly as it was


def test_openvino_int8_export_is_quantized_calibrated_and_close_to_torch(tmp_path: Path, encoder) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'retriever[openvino]')")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'retriever[openvino]')")
    import shutil

    from retriever.backends import Backend, Precision, export_model, read_exports
    from retriever.bundled import bundled_model_dir

    model = Path(shutil.copytree(bundled_model_dir(), tmp_path / "model"))
    entry = export_model(model, Backend.OPENVINO, quantize=True)
    assert (entry.precision, entry.file) == ("int8", "openvino/openvino_model_qint8_quantized.xml")
    # the float32 IR it was quantized from is recorded too (it is the float32 and bfloat16 export)
    assert {(e.precision, e.file) for e in read_exports(model)} == {
        ("float32", "openvino/openvino_model.xml"), ("int8", "openvino/openvino_model_qint8_quantized.xml")}
    assert "FakeQuantize" in (model / entry.file).read_text()  # quantized, not a copy
    int8 = Encoder(EncoderConfig(model=str(model), backend=Backend.OPENVINO, precision=Precision.INT8,
                                 show_progress=False))
    assert int8.encoding == {"backend": "openvino", "precision": "int8", "export_sha256": entry.files[entry.file]}
    texts = ["who founded the club?", "Jenson Button, was born in, Frome, Somerset, England", "In Rainbows | Length: 42:39"]
    cosine = np.sum(int8.encode_documents(texts) * encoder.encode_documents(texts), axis=1)
    assert cosine.min() > 0.95, cosine
