"""The model under training: a sentence-transformers model, optionally with LoRA adapters.

Training embeds texts through the model's own ``preprocess`` and ``forward`` (the same
tokenization and pooling as ``encode``), so what is trained is exactly what the index encodes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from retriever.errors import ModelError
from retriever.instructions import default_prompts
from retriever.model_dir import check_safe, hub_offline, resolve_model_dir
from retriever.training import llm
from retriever.training.config import ModelConfig

logger = logging.getLogger(__name__)

#: texts per length-sorted forward pass in :meth:`EmbeddingModel.embed` (see there)
BUCKET_SIZE = 16


class EmbeddingModel:
    """A trainable embedding model (sentence-transformers) and the knobs the stages need.

    Args:
        source: a local sentence-transformers directory or a plain transformers checkpoint.
        config: the ``[model]`` section.
        device: torch device string.
    """

    def __init__(self, source: Path, config: ModelConfig, device: str) -> None:
        self.source = source
        self.config = config
        self.device = device
        self.st = self._load(source)
        self.saved_max_seq_length = int(self.st.max_seq_length or config.max_seq_length)
        self.st.max_seq_length = min(config.max_seq_length, self.saved_max_seq_length)
        if config.gradient_checkpointing:
            self.backbone.gradient_checkpointing_enable()  # type: ignore[operator]
        self.st.train()

    @classmethod
    def from_config(cls, config: ModelConfig, device: str) -> EmbeddingModel:
        return cls(resolve_model_dir(config.base), config, device)

    def _load(self, path: Path) -> Any:
        hub_offline()
        from sentence_transformers import SentenceTransformer

        if not llm.is_sentence_transformers_dir(path):
            return llm.build_from_checkpoint(path, self.config.pooling, self.config.max_seq_length, self.device)
        check_safe(path)
        try:
            return SentenceTransformer(str(path), device=self.device, local_files_only=True, trust_remote_code=False,
                                       model_kwargs={"use_safetensors": True})
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model from {path}: {exc}") from exc

    # -- structure -------------------------------------------------------------------------
    @property
    def transformer(self) -> Any:
        """The sentence-transformers ``Transformer`` module (first module)."""
        return self.st[0]

    @property
    def backbone(self) -> torch.nn.Module:
        """The transformers model (a peft wrapper while LoRA is applied)."""
        return self.transformer.model  # type: ignore[no-any-return]

    @property
    def tokenizer(self) -> Any:
        return self.st.tokenizer

    @property
    def dimension(self) -> int:
        return int(self.st.get_embedding_dimension())

    def input_embeddings(self) -> torch.nn.Embedding:
        """The backbone's token embedding table (shared with the RetroMAE decoder)."""
        return self.backbone.get_input_embeddings()  # type: ignore[operator,no-any-return]

    def mask_token_id(self) -> int:
        """The token that replaces masked tokens: the tokenizer's mask, else ``mask_token``, else unk."""
        tok = self.tokenizer
        if tok.mask_token_id is not None:
            return int(tok.mask_token_id)
        if self.config.mask_token is not None:
            ids = tok.convert_tokens_to_ids([self.config.mask_token])
            if ids and ids[0] is not None and ids[0] != tok.unk_token_id:
                return int(ids[0])
            raise ModelError(f"[model] mask_token {self.config.mask_token!r} is not in the tokenizer's vocabulary")
        if tok.unk_token_id is not None:
            return int(tok.unk_token_id)
        raise ModelError("the tokenizer has no mask or unk token; set [model] mask_token to a token of its vocabulary")

    def special_token_ids(self) -> list[int]:
        return [int(i) for i in self.tokenizer.all_special_ids]

    # -- LoRA ------------------------------------------------------------------------------
    def start_stage(self) -> None:
        """Add fresh LoRA adapters when configured (only they are trained in this stage)."""
        if self.config.lora.enabled and not llm.has_lora(self.transformer):
            llm.apply_lora(self.transformer, self.config.lora)
            if self.config.gradient_checkpointing:
                self.backbone.enable_input_require_grads()  # type: ignore[operator]
        self.st.to(self.device)
        self.st.train()

    def end_stage(self) -> None:
        """Merge LoRA adapters into the weights (a no-op without LoRA)."""
        llm.merge_lora(self.transformer)

    def named_trainable_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for name, parameter in self.st.named_parameters():
            if parameter.requires_grad:
                yield name, parameter

    # -- embedding -------------------------------------------------------------------------
    def features(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, Any]:
        """Tokenize like ``encode`` does (``max_length`` shortens truncation for this call)."""
        saved = self.st.max_seq_length
        if max_length is not None:
            self.st.max_seq_length = min(max_length, saved)
        try:
            features = self.st.preprocess(list(texts))
        finally:
            self.st.max_seq_length = saved
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def embed_features(self, features: dict[str, Any]) -> torch.Tensor:
        """Pooled, L2-normalised embeddings ``[n, dim]`` (with gradients)."""
        output = self.st(dict(features))
        return F.normalize(output["sentence_embedding"].float(), dim=-1)

    def embed(self, texts: Sequence[str], max_length: int | None = None,
              bucket_size: int = BUCKET_SIZE) -> tuple[torch.Tensor, int]:
        """Embed texts with gradients; returns ``(embeddings [n, dim], non-padding tokens)``.

        With a right-padding tokenizer the texts run through the model in length-sorted buckets
        of ``bucket_size``, each cut to its own longest text, so a batch that mixes 15-token
        triples with 128-token passages does not pay for padding every triple to 128. The
        result is the same as one padded forward pass (attention ignores padding) up to float
        rounding; ``bucket_size`` 0 turns bucketing off.
        """
        features = self.features(texts, max_length)
        mask = features["attention_mask"]
        tokens = int(mask.sum())
        n = int(mask.shape[0])
        if not bucket_size or n <= bucket_size or self.tokenizer.padding_side != "right":
            return self.embed_features(features), tokens
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for start in range(0, n, bucket_size):
            rows = order[start:start + bucket_size]
            width = int(lengths[rows].max())
            chunk = {k: v[rows, :width] if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[0] == n
                     else v for k, v in features.items()}
            parts.append(self.embed_features(chunk))
        inverse = torch.argsort(order)
        return torch.cat(parts)[inverse.to(parts[0].device)], tokens

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embed without gradients in eval mode (mining, dev checks); float32 ``[n, dim]`` on CPU.

        Batches are cut from the texts sorted by length (characters), so short kb triples are not
        padded to the length of the passages beside them; rows come back in the input order.
        """
        was_training = self.st.training
        self.st.eval()
        try:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = []
            for start in range(0, len(texts), batch_size):
                features = self.features([texts[i] for i in order[start:start + batch_size]])
                out.append(self.embed_features(features).cpu())
            if not out:
                return torch.zeros(0, self.dimension)
            return torch.cat(out)[torch.argsort(torch.tensor(order))]
        finally:
            self.st.train(was_training)

    # -- saving ----------------------------------------------------------------------------
    def save(self, path: Path, prompts: dict[str, str] | None = None) -> None:
        """Save a sentence-transformers directory (safetensors, prompts) at ``path``, atomically.

        LoRA adapters must have been merged (:meth:`end_stage`).
        """
        if llm.has_lora(self.transformer):
            raise ModelError("merge the LoRA adapters (end_stage) before saving")
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.st.prompts = dict(prompts or default_prompts())
        trained_length = self.st.max_seq_length
        self.st.max_seq_length = self.saved_max_seq_length
        try:
            self.st.save(str(tmp), create_model_card=False, safe_serialization=True)
        finally:
            self.st.max_seq_length = trained_length
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        logger.info("saved model to %s", path)
