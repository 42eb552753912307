"""The instruction-aware dual encoder, on sentence-transformers.

Queries are encoded as ``instruction + question`` (see :mod:`retriever.instructions`);
documents are encoded as they are. Embeddings are L2-normalised float32, so inner product
is cosine similarity. Models load offline from a local directory, safetensors only; the
default is the model trained by the CPU recipe, shipped in the package (:mod:`retriever.bundled`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.backends import (
    SUPPORTED,
    Backend,
    Precision,
    attach_runtime,
    find_export,
    require_runtime,
)
from retriever.bundled import canonical_name
from retriever.errors import ModelError
from retriever.instructions import compose_query, instruction_for
from retriever.machine import usable_cpus
from retriever.model_dir import (
    check_model_dir,
    hub_offline,
    model_checksum,
    model_prompts,
    saved_max_seq_length,
    saved_prompts,
)
from retriever.records import Source
from retriever.router import Router, find_router
from retriever.tokens import QueryTokenCounter, count_with, own_counter

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class EncoderConfig:
    """How to load and run the encoder.

    Attributes:
        model: a local sentence-transformers directory, or None for the bundled model.
        device: ``cpu``, ``cuda``, ``cuda:1``... or None to pick CUDA when present.
        batch_size: texts per forward pass; larger is faster until memory runs out.
        max_seq_length: tokens per text (longer ones are truncated); None keeps the model's.
        backend: what runs the transformer: torch, or an export of it (``retriever export-model``)
            run by ONNX Runtime or OpenVINO; tokenization and pooling are the same for all.
        precision: weights' dtype for inference (int8: a quantized ONNX export).
        show_progress: show a progress bar while encoding many texts.
        threads: torch CPU threads (None: one per core; an index build's encoder actors set
            their share so that several actors do not oversubscribe the cores).
    """

    model: str | None = None
    device: str | None = None
    batch_size: int = 64
    max_seq_length: int | None = None
    precision: Precision = Precision.AUTO
    backend: Backend = Backend.TORCH
    show_progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"max_seq_length must be >= 8, got {self.max_seq_length}")
        if self.precision is not Precision.AUTO and self.precision not in SUPPORTED[self.backend]:
            runs = ", ".join(p.value for p in SUPPORTED[self.backend])
            raise ValueError(f"backend {self.backend.value} does not run {self.precision.value} (it runs {runs})")


def resolve_precision(config: EncoderConfig, device: str) -> Precision:
    """The precision ``auto`` means: float16 for torch on CUDA, else float32."""
    if config.precision is not Precision.AUTO:
        return config.precision
    return Precision.FLOAT16 if device.startswith("cuda") and config.backend is Backend.TORCH else Precision.FLOAT32


def encoding_of(config: EncoderConfig, model_dir: Path, device: str) -> dict[str, str]:
    """What encodes with ``config``, as index manifests record it: backend, precision and, for an
    export, the SHA-256 of its weights file.

    Raises:
        ModelError: the export is missing or changed.
    """
    precision = resolve_precision(config, device)
    encoding = {"backend": config.backend.value, "precision": precision.value}
    if config.backend is not Backend.TORCH:
        entry = find_export(model_dir, config.backend, precision)
        encoding["export_sha256"] = entry.files[entry.file]
    return encoding


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {requested!r} requested but CUDA is not available")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ModelInfo:
    """What a build must know about a model before (or without) loading its weights.

    Reads only small files: the checksum pass over the weights, ``sentence_bert_config.json``
    and the tokenizer. An index build plans its units with this (window sizes are counted in
    the model's tokens), so bad input fails before the model loads, and the encoder actors of a
    distributed build load the weights where they run.
    """

    name: str
    model_dir: Path
    checksum: str
    max_seq_length: int

    @classmethod
    def describe(cls, config: EncoderConfig) -> ModelInfo:
        """Raises: ModelError when the directory is missing or holds no safetensors weights."""
        model_dir = check_model_dir(config.model)
        name = canonical_name(config.model) or str(config.model)
        max_len = config.max_seq_length or saved_max_seq_length(model_dir)
        return cls(name, model_dir, model_checksum(model_dir), max_len)

    def token_counter(self) -> Any:
        """A :data:`~retriever.linearize.TokenCounter` with the model's own tokenizer (no weights)."""
        hub_offline()
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        except Exception as exc:  # transformers raises many types; wrap them all
            raise ModelError(f"cannot load the tokenizer of {self.model_dir}: {exc}") from exc
        return own_counter(tokenizer)


class Encoder:
    """Instruction-aware dual encoder over one sentence-transformers model."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        self.config = config or EncoderConfig()
        started = time.perf_counter()
        info = ModelInfo.describe(self.config)
        self.info = info
        self.model_dir, self.name, self.checksum = info.model_dir, info.name, info.checksum
        self.device = pick_device(self.config.device)
        self.backend = self.config.backend
        self.precision = resolve_precision(self.config, self.device)
        if self.backend is not Backend.TORCH:  # fail before the weights load
            require_runtime(self.backend)
            find_export(self.model_dir, self.backend, self.precision)
        #: The exported file that runs the transformer (None for torch): ``{"file": ..., "sha256": ...}``.
        self.export: dict[str, str] | None = None
        self.model = self._load()
        #: The model's source router (None: it has none, so instructions resolve by the rules).
        self.router: Router | None = find_router(self.model_dir, self.checksum)
        # The tokenizer and model are not safe to call from two threads at once (the server's batcher
        # and a publish's canary both encode); calls hold this lock, so keep them short.
        self._lock = threading.Lock()
        logger.info("loaded model %s (%s, %d-d) on %s, backend %s at %s, in %.1fs", self.name, self.checksum[:12],
                    self.dimension, self.device, self.backend.value, self.precision.value,
                    time.perf_counter() - started)

    def _load(self) -> Any:
        hub_offline()
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        threads = self.config.threads or usable_cpus()
        if self.device == "cpu":
            torch.set_num_threads(threads)
        elif self.backend is not Backend.TORCH:
            raise ModelError(f"backend {self.backend.value} runs on the CPU here; use --device cpu or --backend torch")
        # transformers draws a "Loading weights" bar; --no-progress hides it too (the switch is
        # process-wide, so it is put back as it was).
        hide_bar = not self.config.show_progress and hf_logging.is_progress_bar_enabled()
        if hide_bar:
            hf_logging.disable_progress_bar()
        try:
            model = SentenceTransformer(
                str(self.model_dir), device=self.device, local_files_only=True, trust_remote_code=False,
                model_kwargs={"use_safetensors": True},
            )
        except Exception as exc:  # sentence-transformers raises many types; wrap them all
            raise ModelError(f"cannot load model from {self.model_dir}: {exc}") from exc
        finally:
            if hide_bar:
                hf_logging.enable_progress_bar()
        if self.config.max_seq_length:
            model.max_seq_length = self.config.max_seq_length
        if self.backend is Backend.TORCH:
            dtype = {Precision.FLOAT32: None, Precision.FLOAT16: torch.float16,
                     Precision.BFLOAT16: torch.bfloat16}[self.precision]
            if dtype is not None:
                model = model.to(dtype)
        else:
            entry = attach_runtime(model, self.model_dir, self.backend, self.precision, threads)
            self.export = {"file": entry.file, "sha256": entry.files[entry.file]}
        # Models trained here save their prompts; others get the project's templates, which
        # record the protocol's instruction strings but are not applied by default (see
        # ``instruction_tuned``).
        self.instruction_tuned = bool(saved_prompts(self.model_dir).get("query"))
        model.prompts = dict[str, str | None](model_prompts(self.model_dir))
        return model

    @property
    def dimension(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            raise ModelError(f"{self.model_dir}: the model does not report its embedding dimension")
        return int(dim)

    instruction_tuned: bool
    """True when the model saved its own query prompts (it was trained with instructions).

    Queries without an explicit instruction get the saved prompt only then; an untrained model
    such as the bundled all-MiniLM-L6-v2 ranks better with the bare question (benchmarks/RESULTS.md).
    """

    @property
    def encoding(self) -> dict[str, str]:
        """How this encoder computes embeddings, as index manifests record it (see :func:`encoding_of`)."""
        encoding = {"backend": self.backend.value, "precision": self.precision.value}
        if self.export is not None:
            encoding["export_sha256"] = self.export["sha256"]
        return encoding

    @property
    def prompts(self) -> dict[str, str]:
        """The instruction strings this model is used with (saved with it / in index manifests)."""
        return dict(self.model.prompts)

    def default_instruction(self, sources: Sequence[Source] = ()) -> str:
        """The instruction a query without one is encoded with: the model's saved prompt for a
        single requested source, else its general one; "" for a model that was not instruction-tuned."""
        return instruction_for(self.prompts, sources) if self.instruction_tuned else ""

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text without special tokens (a :data:`~retriever.linearize.TokenCounter`)."""
        return count_with(self.tokenizer, texts)

    def query_token_counter(self) -> QueryTokenCounter:
        """A counter of queries' tokens that other threads may use while this encoder encodes."""
        with self._lock:  # copies the tokenizer: never while a batch is being tokenized
            return QueryTokenCounter(self.tokenizer, self.max_seq_length)

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> np.ndarray:
        """Embed documents (no instruction); returns float32 ``[n, dim]``, rows L2-normalised."""
        return self._encode(list(texts), self.config.show_progress if show_progress is None else show_progress)

    def encode_queries(self, questions: Sequence[str], instructions: Sequence[str | None] | str | None = None,
                       show_progress: bool = False) -> np.ndarray:
        """Embed ``instruction + question`` for each query; returns float32 ``[n, dim]``.

        Args:
            questions: the query texts.
            instructions: one instruction for all queries, one per query, or None for none.
        """
        if instructions is None or isinstance(instructions, str):
            instructions = [instructions] * len(questions)
        if len(instructions) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(instructions)} instructions")
        texts = [compose_query(i, q) for i, q in zip(instructions, questions)]
        return self._encode(texts, show_progress)

    def _encode(self, texts: list[str], show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # sentence-transformers sorts by length inside encode(), so batches are padded little. A bar
        # for one batch tells nothing (a server's start would print one per canary batch).
        show_progress = show_progress and len(texts) > self.config.batch_size
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=self.config.batch_size, show_progress_bar=show_progress,
                convert_to_numpy=True, normalize_embeddings=True,
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.precision is not Precision.FLOAT32:
            # normalised in half precision the norms are off by ~1e-3; inner product must stay cosine
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors
