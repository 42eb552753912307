"""Inference backends for the encoder: torch, ONNX Runtime, OpenVINO.

Exported weights live inside the model directory, laid out as sentence-transformers lays them out
(``onnx/model.onnx``, ``onnx/model_O2.onnx``, ``onnx/model_qint8_avx2.onnx``,
``openvino/openvino_model.xml``), and are listed with their SHA-256 in the model's export manifest
``exports.json``. The model's own checksum covers the torch weights only, so exporting does not
invalidate indexes built with the model; the index manifest records which backend and precision
encoded it.

Why not ``SentenceTransformer(..., backend="onnx")``: it needs optimum-onnx, which pins
transformers < 4.58 while sentence-transformers >= 6 needs transformers >= 5; optimum-intel 2.2
(``backend="openvino"``) pins transformers < 5.6 and pulls torchvision and another torch. So the
export is ``torch.onnx.export`` of the transformer with the graph inputs and output names optimum
uses (``input_ids``, ``attention_mask``, ``token_type_ids`` → ``last_hidden_state``), and only the
transformer's forward pass is swapped at run time: tokenization, pooling and normalisation stay
sentence-transformers' own, so every backend runs the same ``encode`` code path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from retriever.errors import ModelError

logger = logging.getLogger(__name__)

EXPORTS_FILE = "exports.json"
#: What the model checksum leaves out: exported copies of the weights, their manifest and the
#: recorded agreement checks (``retriever.agreement``).
EXPORT_PATHS = ("onnx/", "openvino/", EXPORTS_FILE, "agreement.json")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OPSET = 17


class Backend(StrEnum):
    TORCH = "torch"
    ONNX = "onnx"  # ONNX Runtime, CPU execution provider
    OPENVINO = "openvino"


class Precision(StrEnum):
    AUTO = "auto"  # float16 on CUDA, float32 on CPU
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"  # ONNX Runtime: dynamically quantized weights; OpenVINO: statically quantized (NNCF)


class Optimization(StrEnum):
    """ONNX graph optimisation levels, as optimum names them."""

    O1 = "O1"  # basic graph optimisations
    O2 = "O2"  # + transformer fusions (attention, layer norm, GELU)
    O3 = "O3"  # + GELU approximation
    O4 = "O4"  # + float16 weights (for GPUs)


#: What each backend can run, and the precision a torch reference of the same model is compared with.
SUPPORTED: dict[Backend, tuple[Precision, ...]] = {
    Backend.TORCH: (Precision.FLOAT32, Precision.FLOAT16, Precision.BFLOAT16),
    Backend.ONNX: (Precision.FLOAT32, Precision.FLOAT16, Precision.INT8),
    Backend.OPENVINO: (Precision.FLOAT32, Precision.BFLOAT16, Precision.INT8),
}

#: Precisions that run an export stored at another precision: OpenVINO's CPU plugin runs the
#: float32 IR in bfloat16 when asked (fast on processors with AVX512_BF16 or AMX units).
RUNTIME_PRECISIONS: dict[tuple[Backend, Precision], Precision] = {
    (Backend.OPENVINO, Precision.BFLOAT16): Precision.FLOAT32,
}


def runtime_available(backend: Backend) -> bool:
    """Whether the runtime package of ``backend`` is importable here."""
    module = {Backend.TORCH: "torch", Backend.ONNX: "onnxruntime", Backend.OPENVINO: "openvino"}[backend]
    return importlib.util.find_spec(module) is not None


def require_runtime(backend: Backend) -> None:
    if not runtime_available(backend):
        extra = "onnx" if backend is Backend.ONNX else "openvino"
        raise ModelError(f"backend {backend.value} needs its runtime package; install it with "
                         f"`pip install 'retriever[{extra}]'`")


# -- the export manifest ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportEntry:
    """One exported copy of the weights: what runs it and the files it consists of."""

    backend: str
    precision: str
    optimize: str | None
    file: str  # the file to load, relative to the model directory
    files: dict[str, str]  # every file of this export -> its SHA-256
    created: str
    seconds: float


def read_exports(model_dir: Path) -> list[ExportEntry]:
    """The exports listed in ``MODEL/exports.json`` (none when the file is absent).

    Raises:
        ModelError: the file is unreadable or malformed.
    """
    path = model_dir / EXPORTS_FILE
    if not path.is_file():
        return []
    try:
        data = orjson.loads(path.read_bytes())
        return [ExportEntry(**entry) for entry in data["exports"]]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable export manifest ({exc}); export the model again") from exc


def find_export(model_dir: Path, backend: Backend, precision: Precision) -> ExportEntry:
    """The newest export of ``model_dir`` for ``backend`` at ``precision``, its files checked.

    Raises:
        ModelError: no such export (says how to make one), or a file differs from its recorded SHA-256.
    """
    from retriever.index.files import sha256_file

    stored = RUNTIME_PRECISIONS.get((backend, precision), precision)
    matches = [e for e in read_exports(model_dir) if e.backend == backend.value and e.precision == stored.value]
    if not matches:
        quantize = " --quantize int8" if stored is Precision.INT8 else ""
        raise ModelError(f"{model_dir} has no {backend.value} export at {precision.value}; make one with "
                         f"`retriever export-model {model_dir} --backend {backend.value}{quantize}`")
    entry = matches[-1]
    for name, digest in entry.files.items():
        path = model_dir / name
        if not path.is_file() or sha256_file(path) != digest:
            raise ModelError(f"{path}: missing or changed since it was exported (SHA-256 differs from "
                             f"{EXPORTS_FILE}); export the model again")
    return entry


def _intact_export(model_dir: Path, backend: Backend, precision: Precision) -> ExportEntry | None:
    """:func:`find_export`, or None where there is no such export or its files changed."""
    try:
        return find_export(model_dir, backend, precision)
    except ModelError:
        return None


def _record_export(model_dir: Path, entry: ExportEntry) -> None:
    from retriever.index.files import write_json_atomic

    kept = [e for e in read_exports(model_dir) if e.file != entry.file]
    write_json_atomic(model_dir / EXPORTS_FILE, {"format": 1, "exports": [asdict(e) for e in [*kept, entry]]})


# -- export ----------------------------------------------------------------------------------------
def export_model(model_dir: Path, backend: Backend, quantize: bool = False,
                 optimize: Optimization | None = None) -> ExportEntry:
    """Export a sentence-transformers model directory's transformer for ``backend``.

    Writes the files beside the torch weights (the directory must be writable: export a copy of
    a read-only model) and records them in ``exports.json``.

    Args:
        model_dir: a local sentence-transformers model directory.
        backend: ``onnx`` or ``openvino``.
        quantize: int8: ``onnx`` quantizes the weights dynamically (activations at run time);
            ``openvino`` quantizes weights and activations statically with NNCF, calibrated on
            the bundled sample corpus and questions (:func:`_quantize_openvino`).
        optimize: ONNX Runtime graph optimisation level (``onnx`` only).

    Returns:
        The recorded export.

    Raises:
        ModelError: an unsupported combination, a missing runtime, or a failed export.
    """
    if backend is Backend.TORCH:
        raise ModelError("the torch backend runs the model's own weights; nothing to export")
    if backend is Backend.OPENVINO and optimize:
        raise ModelError("--optimize applies to --backend onnx (ONNX Runtime graph optimisation)")
    if backend is Backend.OPENVINO and quantize and importlib.util.find_spec("nncf") is None:
        raise ModelError("--backend openvino --quantize int8 needs nncf: pip install 'retriever[openvino]'")
    if quantize and optimize is Optimization.O4:
        raise ModelError("--optimize O4 makes float16 weights; it cannot be combined with --quantize int8")
    require_runtime(backend)
    if not os.access(model_dir, os.W_OK):
        raise ModelError(f"{model_dir} is not writable; copy the model directory and export the copy")
    started = time.perf_counter()

    out_dir = model_dir / backend.value
    out_dir.mkdir(exist_ok=True)
    plain = out_dir / "model.onnx"
    tmp = out_dir / f".model.{os.getpid()}.onnx"
    try:
        precision = Precision.FLOAT32
        if backend is Backend.OPENVINO:
            target = out_dir / "openvino_model.xml"
            # int8 quantizes the float32 IR (also the float32 and bfloat16 export): the one already
            # recorded when it is intact, since exporting it again would replace the export that
            # float32 and bfloat16 indexes were encoded with; else a new one, recorded first
            float32 = _intact_export(model_dir, backend, Precision.FLOAT32) if quantize else None
            if float32 is None:
                _torch_onnx_export(model_dir, tmp)
                _to_openvino(tmp, target)
                if quantize:
                    _record_export(model_dir, _entry(model_dir, backend, Precision.FLOAT32, None, target,
                                                     [target, target.with_suffix(".bin")], started))
            else:
                target = model_dir / float32.file
            if quantize:
                source, target = target, out_dir / "openvino_model_qint8_quantized.xml"
                _quantize_openvino(model_dir, source, target)
                precision = Precision.INT8
            files = [target, target.with_suffix(".bin")]
        else:
            _torch_onnx_export(model_dir, tmp)
            target = plain
            if optimize is not None:
                target = out_dir / f"model_{optimize.value}.onnx"
                _optimize_onnx(tmp, target, optimize)
                precision = Precision.FLOAT16 if optimize is Optimization.O4 else Precision.FLOAT32
            if quantize:
                source = target if optimize is not None else tmp
                target = out_dir / "model_qint8_avx2.onnx"
                _quantize_onnx(source, target)
                precision = Precision.INT8
            if target == plain:
                os.replace(tmp, plain)
            files = [target]
    finally:
        tmp.unlink(missing_ok=True)
    entry = _entry(model_dir, backend, precision, optimize, target, files, started)
    _record_export(model_dir, entry)
    logger.info("exported %s to %s (%s) in %.1fs", model_dir, entry.file, precision.value, entry.seconds)
    return entry


def _entry(model_dir: Path, backend: Backend, precision: Precision, optimize: Optimization | None, target: Path,
           files: list[Path], started: float) -> ExportEntry:
    """The record of an export whose loadable file is ``target`` (``files`` checksummed)."""
    from retriever.index.files import sha256_file

    return ExportEntry(
        backend=backend.value, precision=precision.value, optimize=optimize.value if optimize else None,
        file=target.relative_to(model_dir).as_posix(),
        files={p.relative_to(model_dir).as_posix(): sha256_file(p) for p in files},
        created=datetime.now(UTC).isoformat(timespec="seconds"), seconds=round(time.perf_counter() - started, 1))


def _torch_onnx_export(model_dir: Path, path: Path) -> None:
    """The transformer of the model as ONNX: token ids in, ``last_hidden_state`` out, dynamic batch and length."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True, trust_remote_code=False,
                                    model_kwargs={"use_safetensors": True})
    except Exception as exc:  # sentence-transformers raises many types; wrap them all
        raise ModelError(f"cannot load model from {model_dir}: {exc}") from exc
    transformer: Any = model[0].model
    transformer.eval()
    sample = model.tokenizer(["a sample sentence", "another one, a little longer"], padding=True,
                             return_tensors="pt")
    names = [n for n in _INPUTS if n in sample]

    class _LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs)), return_dict=True).last_hidden_state

    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    try:
        with torch.inference_mode():
            # The TorchScript exporter: the dynamo one needs onnxscript and does not keep these names.
            torch.onnx.export(_LastHidden().eval(), tuple(sample[n] for n in names), str(path), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=_OPSET,
                              dynamo=False)
    except Exception as exc:  # the exporter raises many types; wrap them all
        raise ModelError(f"torch.onnx.export of {model_dir} failed: {exc}") from exc


def _optimize_onnx(source: Path, target: Path, level: Optimization) -> None:
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_gelu_approximation = level in (Optimization.O3, Optimization.O4)
    optimized = optimizer.optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0,
                                         optimization_options=options, opt_level=1 if level is Optimization.O1 else 2)
    if level is Optimization.O4:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(target))


def _quantize_onnx(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel int8 weights; activations quantized at run time (no calibration data needed).
    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)


#: Calibration batches for OpenVINO int8: the bundled sample corpus's units and questions, 8 a batch.
CALIBRATION_BATCH = 8


def _quantize_openvino(model_dir: Path, source: Path, target: Path) -> None:
    """Static int8 quantization of an OpenVINO IR with NNCF (``nncf.quantize`` with its transformer
    model type, which leaves the operations its scheme does not quantize in floating point), calibrated on the
    bundled sample corpus's units (linearized as a build would) and its questions, tokenized with
    the model's own tokenizer at its ``max_seq_length``. The file name is the one
    sentence-transformers' ``export_static_quantized_openvino_model`` writes."""
    import nncf
    import numpy as np
    import openvino as ov

    from retriever.encoder import Encoder, EncoderConfig
    from retriever.linearize import WindowBudget, linearize_all
    from retriever.records import read_records
    from retriever.sample import SAMPLE_CORPUS, data_file, sample_questions

    encoder = Encoder(EncoderConfig(model=str(model_dir), device="cpu", show_progress=False))
    length = encoder.max_seq_length
    budget = WindowBudget(length - 2, encoder.count_tokens)
    texts = [unit.text for unit in linearize_all(read_records(data_file(SAMPLE_CORPUS)), budget)]
    texts += [q.text for q in sample_questions()]
    tokenizer = encoder.tokenizer
    ir = ov.Core().read_model(str(source))
    names = [next(iter(i.get_names())) for i in ir.inputs]
    batches = []
    for i in range(0, len(texts), CALIBRATION_BATCH):
        encoded = tokenizer(texts[i:i + CALIBRATION_BATCH], padding=True, truncation=True, max_length=length,
                            return_tensors="np")
        batches.append({name: np.asarray(encoded[name], dtype=np.int64) for name in names})
    quantized = nncf.quantize(ir, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(batches))
    ov.save_model(quantized, str(target), compress_to_fp16=False)


def _to_openvino(source: Path, target: Path) -> None:
    import openvino as ov

    model = ov.convert_model(str(source))
    # convert_model records the ONNX file it read (a temporary name with the process id) in the IR;
    # left in, every export of the same weights would get another SHA-256, and the indexes built
    # with the previous one would be refused as encoded by another export.
    info = model.get_rt_info()
    if "conversion_parameters" in info.keys():
        del info["conversion_parameters"]
    # float32 weights as exported (save_model would halve them to float16 by default).
    ov.save_model(model, str(target), compress_to_fp16=False)


# -- run time --------------------------------------------------------------------------------------
def attach_runtime(model: Any, model_dir: Path, backend: Backend, precision: Precision, threads: int) -> ExportEntry:
    """Replace the transformer's forward pass of a loaded SentenceTransformer with an exported copy.

    Returns:
        The export that now runs.
    """
    require_runtime(backend)
    entry = find_export(model_dir, backend, precision)
    transformer = model[0]
    transformer.model = _runtime_module(model_dir / entry.file, backend, precision, threads, transformer.model.config)
    # None: sentence-transformers passes every feature but its own bookkeeping; the runtime takes what its graph needs.
    transformer.model_forward_params = None
    return entry


def _runtime_module(path: Path, backend: Backend, precision: Precision, threads: int, config: Any) -> Any:
    """An ONNX Runtime session or OpenVINO compiled model standing in for the transformer's forward."""
    import torch

    if backend is Backend.ONNX:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]

        def run(feeds: dict[str, Any]) -> Any:
            return session.run(["last_hidden_state"], feeds)[0]
    else:
        import openvino as ov

        # The CPU plugin runs an f32 model in bf16 by default where the processor has bf16 units
        # (AVX512_BF16, AMX): embeddings then differ from torch by ~1e-3. float32 means float32;
        # bfloat16 asks for bf16 (emulated, and slow, where those units are missing). int8 runs
        # the quantized matrix products in int8 and the rest in bf16 where the units are native.
        from retriever.machine import has_native_bf16

        bf16 = precision is Precision.BFLOAT16 or (precision is Precision.INT8 and has_native_bf16())
        hint = "bf16" if bf16 else "f32"
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "INFERENCE_PRECISION_HINT": hint})
        inputs = [next(iter(i.get_names())) for i in compiled.inputs]

        def run(feeds: dict[str, Any]) -> Any:
            return compiled(feeds)[0]

    class Runtime(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config

        def forward(self, **features: Any) -> dict[str, Any]:
            # [batch, seq] int64 ids and mask in; [batch, seq, hidden] float32 out
            feeds = {name: features[name].cpu().numpy() for name in inputs}
            return {"last_hidden_state": torch.from_numpy(run(feeds)).float()}

    return Runtime()
