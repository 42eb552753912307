"""``--backend auto`` (retriever.calibration): the fastest option that passes the agreement gate."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from retriever import agreement, calibration
from retriever.backends import Backend, Precision
from retriever.calibration import calibrate
from retriever.encoder import EncoderConfig
from retriever.errors import ModelError

SPEEDS = {"torch/float32": 50.0, "torch/bfloat16": 100.0}
#: Queries per second: the other order (as torch and OpenVINO bf16 rank on an AMX processor, docs/BACKENDS.md).
QUERY_SPEEDS = {"torch/float32": 80.0, "torch/bfloat16": 60.0}


@pytest.fixture
def setup(encoder, tmp_path: Path, monkeypatch):
    """Two torch candidates of a model in ``tmp_path``; bf16 is twice as fast and, when ``noisy``, disagrees."""
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(agreement, "CANARY_DOCS", 24)
    monkeypatch.setattr(agreement, "CANARY_QUERIES", 8)
    monkeypatch.setattr(calibration, "check_model_dir", lambda model: tmp_path)
    monkeypatch.setattr(calibration, "model_checksum", lambda model_dir: "c" * 64)
    monkeypatch.setattr(calibration, "candidate_configs", lambda config, device, precision=Precision.AUTO: [
        replace(config, backend=Backend.TORCH, precision=p) for p in (Precision.FLOAT32, Precision.BFLOAT16)
        if precision in (Precision.AUTO, p)])
    state = SimpleNamespace(noise=0.0, loads=[])
    rng = np.random.default_rng(0)

    def noisy(fn):
        def encode(*args, **kwargs):
            x = fn(*args, **kwargs)
            x = x + rng.normal(0, state.noise / np.sqrt(x.shape[1]), x.shape).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)
        return encode

    def load(config: EncoderConfig):
        label = f"{config.backend.value}/{config.precision.value}"
        state.loads.append(label)
        bad = state.noise > 0 and config.precision is Precision.BFLOAT16
        return SimpleNamespace(
            label=label, checksum=encoder.checksum, model_dir=tmp_path, max_seq_length=encoder.max_seq_length,
            count_tokens=encoder.count_tokens, config=encoder.config,
            encoding={"backend": config.backend.value, "precision": config.precision.value},
            encode_documents=noisy(encoder.encode_documents) if bad else encoder.encode_documents,
            encode_queries=noisy(encoder.encode_queries) if bad else encoder.encode_queries)

    state.model_dir = tmp_path
    state.run = lambda precision=Precision.AUTO, reference=None: calibrate(
        EncoderConfig(model="m", device="cpu", show_progress=False), reference, precision, load=load,
        speed=lambda enc, texts: SPEEDS[enc.label], query_speed=lambda enc, questions: QUERY_SPEEDS[enc.label])
    return state


def test_an_option_that_fails_the_gate_is_never_chosen_however_fast(setup) -> None:
    setup.noise = 0.3  # cosine ~0.96 to float32: int8-like
    result = setup.run()
    by_label = {c.label: c for c in result.candidates}
    assert result.chosen.label == "torch/float32"
    assert not by_label["torch/bfloat16"].passed and by_label["torch/bfloat16"].min_cosine < agreement.MIN_COSINE
    assert by_label["torch/bfloat16"].units_per_s is None  # a failed option is not timed
    assert "agreement" in by_label["torch/bfloat16"].why and "failed" in result.table()
    setup.loads.clear()
    again = setup.run()  # the failed check is recorded: nothing is loaded to learn it again
    assert again.cached and setup.loads == [] and again.chosen.label == "torch/float32"
    with pytest.raises(ModelError, match="no option at bfloat16 passed the agreement check"):
        setup.run(Precision.BFLOAT16)


def test_a_build_gates_on_cosine_and_queries_for_an_index_on_the_whole_check(setup) -> None:
    setup.noise = 0.11  # cosine ~0.993 to float32, yet some canary questions' top-10 change
    build = setup.run()
    bf16 = {c.label: c for c in build.candidates}["torch/bfloat16"]
    assert build.chosen.label == "torch/bfloat16" and bf16.min_cosine >= agreement.MIN_COSINE
    check = agreement.recorded(setup.model_dir, calibration.TORCH_FLOAT32, bf16.encoding)
    assert check is not None and not check.passed and check.same_top_k < 1.0
    serve = setup.run(reference=dict(calibration.TORCH_FLOAT32))  # queries for a torch/float32 index
    assert serve.chosen.label == "torch/float32"
    assert not {c.label: c for c in serve.candidates}["torch/bfloat16"].passed


def test_the_fastest_option_that_passes_is_chosen_and_the_next_start_reads_the_cache(setup) -> None:
    first = setup.run()
    assert first.chosen.label == "torch/bfloat16" and first.chosen.units_per_s == 100.0 and not first.cached
    assert {c.label: c.passed for c in first.candidates} == {"torch/float32": True, "torch/bfloat16": True}
    assert {c.label: c.why for c in first.candidates}["torch/float32"] == "slower than torch/bfloat16 at documents"
    setup.loads.clear()
    again = setup.run()
    assert again.cached and again.chosen.label == "torch/bfloat16" and setup.loads == []  # nothing loaded


def test_a_build_ranks_by_documents_and_queries_for_an_index_by_queries_and_the_build_names_the_faster(
        setup, caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="retriever.calibration"):
        build = setup.run()
    assert build.job == "documents" and build.chosen.label == "torch/bfloat16"  # 100 against 50 units/s
    assert {c.label: c.queries_per_s for c in build.candidates} == QUERY_SPEEDS  # both timed, both shown
    hint = calibration.query_hint(build)
    assert hint is not None and "torch/float32 encodes queries 1.33x" in hint and "--precision float32" in hint
    assert hint in caplog.text and "queries/s" in build.table()
    # queries for an index whose documents are bf16 (float32 passes the whole check: no noise)
    serve = setup.run(reference={"backend": "torch", "precision": "bfloat16"})
    assert serve.job == "queries" and serve.chosen.label == "torch/float32"  # 80 against 60 queries/s
    assert calibration.query_hint(serve) is None  # a hint is for builds
    assert "slower than torch/float32 at queries" in {c.label: c.why for c in serve.candidates}["torch/bfloat16"]


def test_a_cache_with_document_timings_only_measures_the_query_speed_once(setup, monkeypatch) -> None:
    setup.run()
    path = calibration.calibration_path("c" * 64)
    import orjson

    data = orjson.loads(path.read_bytes())
    for timings in data["timings"].values():  # as the first format wrote it: no query timings
        for key in [k for k in timings if k.startswith("queries:")]:
            del timings[key]
    path.write_bytes(orjson.dumps(data))
    setup.loads.clear()
    again = setup.run()
    assert not again.cached and sorted(setup.loads) == ["torch/bfloat16", "torch/float32"]
    assert {c.label: c.queries_per_s for c in again.candidates} == QUERY_SPEEDS
    setup.loads.clear()
    assert setup.run().cached and setup.loads == []


def test_a_changed_machine_key_measures_again(setup, monkeypatch) -> None:
    setup.run()
    setup.loads.clear()
    monkeypatch.setattr(calibration, "machine_key", lambda device, threads, batch_size: "another processor")
    result = setup.run()
    assert not result.cached and "torch/bfloat16" in setup.loads  # timed again (the gate stays recorded)


def test_backend_auto_on_the_command_line_calibrates_against_the_index_encoding(monkeypatch) -> None:
    from retriever.cli import index_commands

    seen = {}

    def fake(config, documents, precision=Precision.AUTO):
        seen.update(documents=documents, precision=precision, backend=config.backend)
        return replace(config, backend=Backend.OPENVINO, precision=Precision.BFLOAT16)

    monkeypatch.setattr(calibration, "auto_config", fake)
    args = argparse.Namespace(model=None, device="cpu", batch_size=64, precision=Precision.AUTO, backend="auto",
                              no_progress=True)
    documents = {"backend": "torch", "precision": "float32"}
    config = index_commands.encoder_config(args, None, documents)
    assert (config.backend, config.precision) == (Backend.OPENVINO, Precision.BFLOAT16)
    assert seen == {"documents": documents, "precision": Precision.AUTO, "backend": Backend.TORCH}


def test_a_machine_without_lscpu_knows_no_flags_and_skips_bf16(monkeypatch) -> None:
    from retriever import machine

    def missing(*args, **kwargs):
        raise FileNotFoundError("lscpu")

    machine.cpu_flags.cache_clear()
    monkeypatch.setattr(machine.subprocess, "run", missing)
    try:
        assert machine.cpu_flags()["simd"] == [] and not machine.has_native_bf16()
    finally:
        machine.cpu_flags.cache_clear()


def test_threads_follow_the_processors_this_process_may_use(monkeypatch, tmp_path) -> None:
    from retriever import machine

    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(machine, "CGROUP_CPU_MAX", tmp_path / "absent")
    assert machine.usable_cpus() == 6  # the affinity mask, not os.cpu_count()
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(machine, "CGROUP_CPU_MAX", quota)
    quota.write_text("max 100000\n")
    assert machine.usable_cpus() == 6  # no quota
    quota.write_text("250000 100000\n")
    assert machine.usable_cpus() == 3  # docker --cpus 2.5, rounded up
    quota.write_text("20000 100000\n")
    assert machine.usable_cpus() == 1  # never 0


def test_auto_never_offers_int8_unless_asked_for_by_precision(monkeypatch, tmp_path) -> None:
    # every runtime installed, every export present, native bf16: int8 exports exist for onnx and openvino
    monkeypatch.setattr(calibration, "check_model_dir", lambda model: tmp_path)
    monkeypatch.setattr(calibration, "runtime_available", lambda backend: True)
    monkeypatch.setattr(calibration, "find_export", lambda model_dir, backend, precision: None)
    monkeypatch.setattr(calibration, "has_native_bf16", lambda: True)
    config = EncoderConfig(model="m", device="cpu", show_progress=False)
    offered = {(c.backend, c.precision) for c in calibration.candidate_configs(config, "cpu")}
    assert (Backend.OPENVINO, Precision.BFLOAT16) in offered and (Backend.TORCH, Precision.BFLOAT16) in offered
    assert not {p for _, p in offered} & {Precision.INT8}
    asked = {(c.backend, c.precision) for c in calibration.candidate_configs(config, "cpu", Precision.INT8)}
    assert asked == {(Backend.ONNX, Precision.INT8), (Backend.OPENVINO, Precision.INT8)}
