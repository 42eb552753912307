"""``--backend auto``: the fastest way to run a model on this machine that still agrees with the reference.

Which backend and precision is fastest depends on the processor (bf16 units, VNNI, AMX), the
runtimes installed and the exports a model has (docs/BACKENDS.md: OpenVINO bf16 2.25x torch fp32
on an AVX-512 EPYC, torch bf16 0.21x on an AVX2 one). So ``auto`` measures it, once per model and
machine:

1. **Candidates**: every (backend, precision) that can run here: torch float32, float16 on CUDA,
   bfloat16 on CUDA and on processors with native bf16 (AVX512_BF16 or AMX; emulated it is several
   times slower), and each ONNX / OpenVINO export of the model (``retriever export-model``) whose
   runtime is installed (their bf16 under the same rule), except int8 exports: with the precision
   left to auto they are never candidates (their quality on HeteroMix mini moved single datasets by
   more than 0.01, and their canary cosine sits at the gate's edge: 0.990 passed on one processor);
   ``--precision int8`` (or any other) keeps only that precision.
2. **Gate**, by the agreement check of :mod:`retriever.agreement` against the *reference*
   (recorded in the model directory as ``retriever check-agreement`` records it):

   - queries for an index (``search``, ``serve``, ``bench``; the reference is the encoding of the
     index's documents): the whole check, cosine >= 0.99 on the canary documents and the same
     top-10 for every canary question, as the server demands before it mixes two encodings;
   - a build (the reference is torch float32; the documents and later their queries are encoded
     the chosen way, so nothing is mixed): the cosine part, every canary document's embedding
     within cosine 0.99 of torch float32's. Near-ties that swap the 10th and 11th canary document
     (bf16 does that for a few questions at cosine 0.9999) do not disqualify an option here;
     int8 asked for by name is gated the same way.

   The reference itself always passes.
3. **Speed**, of the job at hand, best of two rounds after a warm-up:

   - a build encodes documents: 128 canary documents (the first units of the bundled sample
     corpus) at the configured batch size, in units per second;
   - queries for an index encode short questions, one call at a time when few clients call and
     in batches of a few to a few dozen under load (the server's dynamic batching): the 64 canary
     questions with the model's default instruction, once one at a time and once in batches of
     :data:`QUERY_BATCH`, in queries per second over both. The two rankings differ: on an Intel
     Xeon with AMX torch bf16 builds fastest, while OpenVINO bf16 answers queries fastest
     (docs/BACKENDS.md, "Which speed auto ranks by").

   Both speeds are measured and shown for every candidate that passed. An index's encoding is
   its queries' too (other encodings must pass the whole check to search it), so a build whose
   choice is not also the fastest for queries logs the option that is, for operators who would
   rather build with it.

The fastest candidate that passed is chosen and logged with every candidate's figures. Timings are
cached in ``<cache>/calibration/<checksum>.json`` (``$RETRIEVER_CACHE_DIR``, else
``~/.cache/retriever``) under a key of the processor (model, SIMD flags), device, threads, batch
size and runtime versions, so the next start reads them; a new runtime, processor or export is
measured again. ``retriever calibrate`` runs it on demand and prints the table.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from retriever.agreement import MIN_COSINE, TOP_K, Agreement, canary_texts, check_agreement, recorded
from retriever.backends import SUPPORTED, Backend, Precision, find_export, runtime_available
from retriever.encoder import Encoder, EncoderConfig, encoding_of, pick_device
from retriever.errors import ModelError
from retriever.index.files import write_json_atomic
from retriever.machine import cpu_flags, has_native_bf16, usable_cpus
from retriever.model_dir import check_model_dir, model_checksum

logger = logging.getLogger(__name__)

CALIBRATION_FORMAT = 1
#: Timing rounds per candidate (the best counts).
ROUNDS = 2
#: Canary documents timed per round.
SPEED_TEXTS = 128
#: Queries per call in the batched half of the query speed (a served batch under load, docs/BACKENDS.md).
QUERY_BATCH = 16
#: A build logs the option that encodes queries this many times faster than its choice, if one passed.
QUERY_HINT_RATIO = 1.1
#: The two jobs a calibration ranks for (:class:`Calibration`'s ``job``).
DOCUMENTS, QUERIES = "documents", "queries"
#: The torch reference when no index says otherwise.
TORCH_FLOAT32 = {"backend": Backend.TORCH.value, "precision": Precision.FLOAT32.value}


@dataclass(frozen=True)
class Candidate:
    """One way to run the model, as measured."""

    backend: str
    precision: str
    encoding: dict[str, str]  # as index manifests record it (export checksum included)
    units_per_s: float | None = None  # documents; None: not measured (it failed the gate first)
    queries_per_s: float | None = None  # queries with the default instruction, one at a time and batched
    passed: bool = False  # the agreement check against the reference
    min_cosine: float | None = None
    why: str = ""  # why it was not chosen, when it was not

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


@dataclass(frozen=True)
class Calibration:
    """What ``auto`` chose and why."""

    chosen: Candidate
    candidates: list[Candidate]
    reference: dict[str, str]
    cached: bool  # every timing came from the cache
    seconds: float
    job: str  # "documents" (a build) or "queries" (for an index): the speed the choice ranks by

    def table(self) -> str:
        ranked = "units/s (a build encodes documents)" if self.job == DOCUMENTS else \
            "queries/s (queries for an index)"
        lines = [f"reference (documents): {self.reference['backend']}/{self.reference['precision']}; "
                 f"ranked by {ranked}",
                 f"{'option':<20} {'units/s':>9} {'queries/s':>10} {'min cosine':>11}  gate"]
        for c in self.candidates:
            speed = f"{c.units_per_s:9.1f}" if c.units_per_s is not None else f"{'-':>9}"
            queries = f"{c.queries_per_s:10.1f}" if c.queries_per_s is not None else f"{'-':>10}"
            cosine = f"{c.min_cosine:11.5f}" if c.min_cosine is not None else f"{'-':>11}"
            mark = " <- chosen" if c is self.chosen else ""
            lines.append(f"{c.label:<20} {speed} {queries} {cosine}  "
                         f"{'passed' if c.passed else 'failed: ' + c.why}{mark}")
        return "\n".join(lines)


def candidate_configs(config: EncoderConfig, device: str, precision: Precision = Precision.AUTO) -> list[EncoderConfig]:
    """Every runnable (backend, precision) for ``config``'s model on ``device`` (only ``precision``
    unless auto), torch float32 first."""
    model_dir = check_model_dir(config.model)
    cuda = device.startswith("cuda")
    bf16 = cuda or has_native_bf16()  # emulated bf16 is several times slower: not worth measuring
    torch_precisions = (Precision.FLOAT16, Precision.BFLOAT16, Precision.FLOAT32) if cuda else (Precision.FLOAT32,
                                                                                             Precision.BFLOAT16)
    options = [(Backend.TORCH, p) for p in torch_precisions if bf16 or p is not Precision.BFLOAT16]
    if not cuda:  # the exported runtimes run on the CPU here
        for backend in (Backend.ONNX, Backend.OPENVINO):
            if not runtime_available(backend):
                continue
            for runs in SUPPORTED[backend]:
                if runs is Precision.BFLOAT16 and not bf16:
                    continue
                try:
                    find_export(model_dir, backend, runs)
                except ModelError:
                    continue
                options.append((backend, runs))
    # int8 is never auto's to choose: its canary cosine sits at the gate's edge (0.981-0.990 by export
    # and processor) and on HeteroMix mini it moved single datasets by more than 0.01 (docs/BACKENDS.md,
    # "The quality gate"); `--precision int8` asks for it by name.
    auto = precision is Precision.AUTO
    options = [(b, p) for b, p in options if p is precision or (auto and p is not Precision.INT8)]
    options.sort(key=lambda bp: (bp != (Backend.TORCH, Precision.FLOAT32)))
    return [replace(config, backend=b, precision=p, show_progress=False) for b, p in options]


def machine_key(device: str, threads: int, batch_size: int) -> str:
    """What the timings depend on besides the model: processor, device, threads, batch size, runtimes."""
    versions = {}
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    cpu = cpu_flags()
    gpu = ""
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(torch.device(device))
    key = {"cpu": cpu["model"], "simd": cpu["simd"], "device": device, "gpu": gpu, "threads": threads,
           "batch_size": batch_size, "versions": versions}
    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()


def calibration_path(checksum: str) -> Path:
    from retriever.sample import cache_dir

    return cache_dir() / "calibration" / f"{checksum[:16]}.json"


def _read_timings(path: Path, key: str) -> dict[str, float]:
    if not path.is_file():
        return {}
    try:
        data = orjson.loads(path.read_bytes())
        return {str(k): float(v) for k, v in data.get("timings", {}).get(key, {}).items()}
    except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        logger.warning("%s: unreadable calibration cache; measuring again", path)
        return {}


def _write_timings(path: Path, key: str, timings: dict[str, float]) -> None:
    data: dict[str, Any] = {"format": CALIBRATION_FORMAT, "timings": {}}
    if path.is_file():
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            pass
    data.setdefault("timings", {})[key] = timings
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError as exc:  # a read-only cache costs a calibration per start, nothing else
        logger.warning("cannot cache the calibration in %s (%s)", path, exc)


def _timing_key(encoding: dict[str, str], job: str = DOCUMENTS) -> str:
    key = orjson.dumps(encoding, option=orjson.OPT_SORT_KEYS).decode()
    return key if job == DOCUMENTS else f"{job}:{key}"  # documents keep the first format's keys


def measure_speed(encoder: Encoder, texts: list[str], rounds: int = ROUNDS) -> float:
    """Units per second encoding ``texts`` (after a warm-up batch), best of ``rounds``."""
    encoder.encode_documents(texts[: encoder.config.batch_size], show_progress=False)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        encoder.encode_documents(texts, show_progress=False)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def measure_query_speed(encoder: Encoder, questions: list[str], rounds: int = ROUNDS) -> float:
    """Queries per second encoding ``questions`` with the model's default instruction once one at a
    time and once in batches of :data:`QUERY_BATCH` (after a warm-up batch), best of ``rounds``."""
    instruction = encoder.default_instruction()
    encoder.encode_queries(questions[:QUERY_BATCH], instruction)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for question in questions:
            encoder.encode_queries([question], instruction)
        for i in range(0, len(questions), QUERY_BATCH):
            encoder.encode_queries(questions[i:i + QUERY_BATCH], instruction)
        best = min(best, time.perf_counter() - started)
    return 2 * len(questions) / best


def calibrate(config: EncoderConfig, reference: dict[str, str] | None = None, precision: Precision = Precision.AUTO,
              load: Callable[[EncoderConfig], Encoder] = Encoder,
              speed: Callable[[Encoder, list[str]], float] = measure_speed,
              query_speed: Callable[[Encoder, list[str]], float] = measure_query_speed) -> Calibration:
    """Measure the candidates of ``config``'s model and choose (see the module docstring).

    Args:
        config: the model, device, batch size and threads (its backend and precision are ignored).
        reference: the encoding of the documents the queries will search (an index's
            ``Manifest.encoding``); default torch float32.
        precision: only candidates of this precision (auto: all).
        load, speed, query_speed: how an encoder is loaded and its documents and queries timed
            (tests replace them).

    Raises:
        ModelError: the reference cannot run here (its runtime or export is missing), or no
            candidate of ``precision`` passed.
    """
    started = time.perf_counter()
    mixing = reference is not None  # queries will search documents encoded the reference's way
    job = QUERIES if mixing else DOCUMENTS
    reference = dict(reference or TORCH_FLOAT32)
    device = pick_device(config.device)
    model_dir = check_model_dir(config.model)
    configs = candidate_configs(config, device, precision)
    encodings = [encoding_of(c, model_dir, device) for c in configs]
    ref_config = next((c for c, e in zip(configs, encodings, strict=True) if e == reference), None)
    if ref_config is None:
        ref_config = replace(config, backend=Backend(reference["backend"]), precision=Precision(reference["precision"]),
                             show_progress=False)
        if encoding_of(ref_config, model_dir, device) != reference:
            raise ModelError(f"the documents were encoded with {reference['backend']}/{reference['precision']} "
                             f"from an export this model directory no longer has")
    threads = config.threads or usable_cpus()
    key = machine_key(device, threads, config.batch_size)
    path = calibration_path(model_checksum(model_dir))
    timings = _read_timings(path, key)
    measured = False
    reference_encoder: Encoder | None = None
    texts: list[str] = []
    questions: list[str] = []
    out: list[Candidate] = []
    try:
        for cfg, encoding in zip(configs, encodings, strict=True):
            candidate = Candidate(cfg.backend.value, encoding["precision"], encoding)
            if encoding == reference:
                candidate = replace(candidate, passed=True, min_cosine=1.0)
                found = None
            else:
                found = recorded(model_dir, reference, encoding)
                if found is not None:
                    candidate = replace(candidate, passed=_gate(found, mixing), min_cosine=found.min_cosine)
            need_gate = encoding != reference and found is None
            # an option known to fail the gate is never timed (nor loaded again to learn that)
            untimed = [j for j in (DOCUMENTS, QUERIES) if _timing_key(encoding, j) not in timings]
            need_speed = bool(untimed) and (candidate.passed or need_gate)
            if need_speed or need_gate:
                measured = True
                encoder = load(cfg)
                try:
                    if need_gate:
                        if reference_encoder is None:
                            reference_encoder = load(ref_config)
                        found = check_agreement(reference_encoder, encoder)
                        candidate = replace(candidate, passed=_gate(found, mixing), min_cosine=found.min_cosine)
                    if need_speed and candidate.passed:
                        if not texts:
                            texts, questions = canary_texts(encoder)
                            texts = texts[:SPEED_TEXTS]
                        if DOCUMENTS in untimed:
                            timings[_timing_key(encoding)] = round(speed(encoder, texts), 2)
                        if QUERIES in untimed:
                            timings[_timing_key(encoding, QUERIES)] = round(query_speed(encoder, questions), 2)
                finally:
                    del encoder
            if not candidate.passed:
                candidate = replace(candidate, why=_failed(found, mixing))
            out.append(replace(candidate, units_per_s=timings.get(_timing_key(encoding)),
                               queries_per_s=timings.get(_timing_key(encoding, QUERIES))))
    finally:
        del reference_encoder
    cached = not measured
    if measured:
        _write_timings(path, key, timings)
    passed = [c for c in out if c.passed and _speed(c, job) is not None]
    if not passed:
        raise ModelError(f"backend auto: no option{'' if precision is Precision.AUTO else ' at ' + precision.value} "
                         f"passed the agreement check against {reference['backend']}/{reference['precision']}: "
                         + "; ".join(_summary(c) for c in out))
    chosen = max(passed, key=lambda c: _speed(c, job) or 0.0)
    out = [c if c is chosen or not c.passed else replace(c, why=f"slower than {chosen.label} at {job}")
           for c in out]
    chosen = next(c for c in out if c.encoding == chosen.encoding)
    result = Calibration(chosen, out, reference, cached, time.perf_counter() - started, job)
    others = "; ".join(_summary(c) for c in out if c is not chosen) or "no other option here"
    logger.info("backend auto: %s (%s) for %s on %s, ranked by %s%s", _summary(chosen), others, model_dir, device,
                "units/s" if job == DOCUMENTS else "queries/s",
                " (cached timings)" if cached else f" (calibrated in {result.seconds:.0f}s)")
    hint = query_hint(result)
    if hint:
        logger.info("%s", hint)
    return result


def query_hint(calibration: Calibration) -> str | None:
    """For a build: the option that passed and encodes queries at least :data:`QUERY_HINT_RATIO` times
    faster than the chosen one (the index's queries will be encoded its way), or None."""
    chosen = calibration.chosen
    if calibration.job != DOCUMENTS or chosen.queries_per_s is None:
        return None
    own = chosen.queries_per_s
    faster = [(c.queries_per_s, c) for c in calibration.candidates
              if c.passed and c.queries_per_s is not None and c.queries_per_s >= QUERY_HINT_RATIO * own]
    if not faster:
        return None
    speed, best = max(faster, key=lambda pair: pair[0])
    return (f"{best.label} encodes queries {speed / own:.2f}x as fast as "
            f"{chosen.label} here ({speed:.0f} against {own:.0f} queries/s); "
            f"an index's queries are encoded as its documents were, so for serving speed build with "
            f"--backend {best.backend} --precision {best.precision}")


def _speed(candidate: Candidate, job: str) -> float | None:
    """``candidate``'s speed at ``job`` (None: not timed)."""
    return candidate.units_per_s if job == DOCUMENTS else candidate.queries_per_s


def _gate(check: Agreement, mixing: bool) -> bool:
    """Whether an option passes: the whole check when it will search another encoding's documents,
    else the cosine part (see the module docstring)."""
    return check.passed if mixing else check.min_cosine >= MIN_COSINE


def _failed(check: Agreement | None, mixing: bool) -> str:
    """Why an option failed the gate: the part of the check that failed, with its figure."""
    if check is None:
        return "agreement with the reference (not checked)"
    if check.min_cosine < MIN_COSINE or not mixing:
        return f"agreement with the reference (min cosine {check.min_cosine:.4f}, needs >= {MIN_COSINE})"
    return (f"agreement with the reference (same top-{TOP_K} for {100 * check.same_top_k:.1f}% of the canary "
            f"questions, needs 100%; min cosine {check.min_cosine:.5f})")


def _summary(c: Candidate) -> str:
    speed = "not timed" if c.units_per_s is None else f"{c.units_per_s:.1f} units/s"
    if c.queries_per_s is not None:
        speed += f", {c.queries_per_s:.1f} queries/s"
    return f"{c.label} {speed}" + ("" if c.passed else ", failed the agreement gate")


def auto_config(config: EncoderConfig, reference: dict[str, str] | None = None,
                precision: Precision = Precision.AUTO) -> EncoderConfig:
    """``config`` with the backend and precision ``auto`` chooses (see :func:`calibrate`)."""
    chosen = calibrate(config, reference, precision).chosen
    return replace(config, backend=Backend(chosen.backend), precision=Precision(chosen.precision))


def to_json(calibration: Calibration) -> dict[str, Any]:
    return {"chosen": calibration.chosen.label, "job": calibration.job, "reference": calibration.reference,
            "cached": calibration.cached, "seconds": round(calibration.seconds, 1),
            "query_hint": query_hint(calibration), "candidates": [asdict(c) for c in calibration.candidates]}
