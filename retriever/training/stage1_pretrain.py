"""Stage 1: heterogeneous self-supervised pretraining, RetroMAE style.

The encoder reads a moderately masked unit (``encoder_mask_ratio``) and produces its sentence
embedding; a shallow decoder sees that embedding in place of the first position followed by a
heavily masked copy of the unit (``decoder_mask_ratio``) and must reconstruct the masked tokens.
The only path from the unmasked text to the decoder is the embedding, so the encoder learns to
pack the unit into it. Only the encoder is kept; the decoder is saved in checkpoints for resume.
Units come from all four source types of the pool (``source_weights``), linearized as the index does.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retriever.errors import ModelError
from retriever.records import Source
from retriever.training.config import PretrainConfig
from retriever.training.data import TrainingData, sample_weighted
from retriever.training.model import EmbeddingModel

logger = logging.getLogger(__name__)


class RetroMAEDecoder(nn.Module):
    """A shallow bidirectional transformer decoder with an LM head tied to the encoder's embeddings.

    Args:
        token_embeddings: the encoder's input embedding table ``[V, H]`` (shared, not copied).
        embedding_dim: dimension of the sentence embedding fed in at position 0.
        layers: transformer layers (RetroMAE uses one).
        heads: attention heads; must divide the hidden size.
        max_positions: longest sequence (positions are learned).
    """

    def __init__(self, token_embeddings: nn.Embedding, embedding_dim: int, layers: int, heads: int,
                 max_positions: int) -> None:
        super().__init__()
        hidden = token_embeddings.embedding_dim
        if hidden % heads:
            raise ModelError(f"[pretrain] decoder_heads={heads} does not divide the hidden size {hidden}")
        self.token_embeddings = [token_embeddings]  # a list: shared, not registered as a submodule
        self.project = nn.Linear(embedding_dim, hidden)
        self.positions = nn.Embedding(max_positions + 1, hidden)
        self.norm_in = nn.LayerNorm(hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=4 * hidden, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head_transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.head_bias = nn.Parameter(torch.zeros(token_embeddings.num_embeddings))

    def forward(self, sentence: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss.

        Args:
            sentence: ``[B, D]`` sentence embeddings from the encoder.
            input_ids: ``[B, T]`` the heavily masked copy.
            attention_mask: ``[B, T]`` 1 for real tokens.
            targets: ``[B, T]`` original ids at masked positions, -100 elsewhere.
        """
        table = self.token_embeddings[0]
        batch, length = input_ids.shape
        tokens = table(input_ids).to(self.project.weight.dtype)  # [B, T, H]
        x = torch.cat([self.project(sentence.to(self.project.weight.dtype)).unsqueeze(1), tokens], dim=1)
        x = x + self.positions(torch.arange(length + 1, device=x.device)).unsqueeze(0)  # [B, T+1, H]
        pad = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=x.device), attention_mask == 0], dim=1)
        hidden = self.layers(self.norm_in(x), src_key_padding_mask=pad)[:, 1:]  # [B, T, H]
        selected = targets != -100
        if not bool(selected.any()):
            return hidden.sum() * 0.0
        h = self.head_transform(hidden[selected])  # [M, H]
        logits = h @ table.weight.to(h.dtype).T + self.head_bias  # [M, V]
        return F.cross_entropy(logits.float(), targets[selected])


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, ratio: float, mask_id: int,
                special_ids: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``ratio`` of the real, non-special tokens by ``mask_id`` (at least one per text).

    Returns:
        ``(masked ids, targets)`` where targets hold the original id at masked positions, -100 elsewhere.
    """
    maskable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))
    noise = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    chosen = (noise < ratio) & maskable
    # Guarantee one masked token per text that has any maskable token.
    first_choice = torch.where(maskable, noise, torch.full_like(noise, 2.0)).argmin(dim=1)
    has_any = maskable.any(dim=1)
    chosen[has_any, first_choice[has_any]] = True
    masked = input_ids.masked_fill(chosen, mask_id)
    targets = input_ids.masked_fill(~chosen, -100)
    return masked, targets


class PretrainTask:
    """Builds stage-1 batches from the pool and computes the RetroMAE loss."""

    name = "pretrain"

    def __init__(self, model: EmbeddingModel, data: TrainingData, config: PretrainConfig, seed: int) -> None:
        self.model = model
        self.config = config
        self.seed = seed
        self.texts = [u.text for u in data.units]
        self.groups = data.pool_by_source()
        self.weights = {Source.parse(k): v for k, v in config.source_weights.items()}
        heads = config.decoder_heads or int(getattr(model.backbone.config, "num_attention_heads", 0) or 1)
        self.decoder = RetroMAEDecoder(model.input_embeddings(), model.dimension, config.decoder_layers, heads,
                                       model.st.max_seq_length)
        self.decoder.to(model.device)
        self.mask_id = model.mask_token_id()
        self.special_ids = model.special_token_ids()

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder}

    def batch_texts(self, rng: np.random.Generator) -> list[str]:
        return [self.texts[i] for i in sample_weighted(rng, self.groups, self.weights, self.config.batch_size)]

    def loss(self, rng: np.random.Generator, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One micro-batch: ``(loss, non-padding encoder tokens)``."""
        features = self.model.features(self.batch_texts(rng))
        ids, attention = features["input_ids"], features["attention_mask"]
        enc_ids, _ = mask_tokens(ids, attention, self.config.encoder_mask_ratio, self.mask_id, self.special_ids,
                                 generator)
        dec_ids, targets = mask_tokens(ids, attention, self.config.decoder_mask_ratio, self.mask_id,
                                       self.special_ids, generator)
        encoder_features: dict[str, Any] = {**features, "input_ids": enc_ids}
        sentence = self.model.embed_features(encoder_features)  # [B, D]
        loss = self.decoder(sentence, dec_ids, attention, targets)
        return loss, int(attention.sum())

    def estimate_tokens(self, rng: np.random.Generator, samples: int) -> float:
        """Mean non-padding tokens per micro-batch over a few drawn batches (no forward pass)."""
        counts = [int(self.model.features(self.batch_texts(rng))["attention_mask"].sum()) for _ in range(samples)]
        return float(np.mean(counts))
