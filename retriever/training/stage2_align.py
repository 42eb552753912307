"""Stage 2: text-anchored embedding alignment.

InfoNCE with in-batch negatives (``temperature``, 0.02 in UniHGKR) pulls each structured unit
(table row, triple, infobox window) toward a natural-language text with the same content: the
rule-based verbalizer's text, a linked passage or parent infobox, or a user-supplied pair
(:mod:`retriever.training.anchors`). With ``symmetric`` the loss is averaged over both directions.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from retriever.errors import CorpusError
from retriever.records import Source
from retriever.training.anchors import AnchorKind, AnchorPair, DataTextPair, link_anchor, verbalize
from retriever.training.config import AlignConfig
from retriever.training.data import TrainingData
from retriever.training.losses import info_nce, key_collisions
from retriever.training.model import EmbeddingModel

logger = logging.getLogger(__name__)

STRUCTURED = (Source.TABLE, Source.KB, Source.INFOBOX)


class AlignTask:
    """Draws (structured unit, text anchor) pairs and computes the alignment loss."""

    name = "align"

    def __init__(self, model: EmbeddingModel, data: TrainingData, config: AlignConfig,
                 pairs: list[DataTextPair]) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.pairs = pairs
        groups = data.pool_by_source()
        self.structured = np.concatenate([groups[s] for s in STRUCTURED]) if data.pool.size else np.zeros(0, np.int64)
        # Units that have a corpus link (a row with row_links, a kb fact with a parent).
        self.linked = np.array([i for i in self.structured if self._link(int(i), 0) is not None], dtype=np.int64)
        kinds = {AnchorKind.VERBALIZER: (config.verbalizer_weight, len(self.structured)),
                 AnchorKind.LINKS: (config.links_weight, len(self.linked)),
                 AnchorKind.PAIRS: (config.pairs_weight, len(pairs))}
        self.kinds = [k for k, (w, n) in kinds.items() if w > 0 and n > 0]
        if not self.kinds:
            raise CorpusError("<align>", None, "no anchor pairs available: the pool has no structured units "
                              "and no pairs file is configured")
        weights = np.array([kinds[k][0] for k in self.kinds], dtype=np.float64)
        self.kind_p = weights / weights.sum()
        logger.info("align: %d structured pool units, %d with corpus links, %d data-text pairs; kinds %s",
                    len(self.structured), len(self.linked), len(pairs),
                    ", ".join(f"{k.value}={p:.2f}" for k, p in zip(self.kinds, self.kind_p, strict=True)))

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def _link(self, index: int, pick: int) -> tuple[str, str] | None:
        unit = self.data.units[index]
        return link_anchor(self.data.records[unit.record_id], unit, self.data.records, self.data.units,
                           self.data.units_by_record, pick)

    def draw(self, rng: np.random.Generator) -> AnchorPair:
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))]
        if kind is AnchorKind.PAIRS:
            k = int(rng.integers(len(self.pairs)))
            pair = self.pairs[k]
            return AnchorPair(pair.raw_data, pair.nl_text, f"pair:{k}", f"pair:{k}", kind)
        if kind is AnchorKind.LINKS:
            index = int(self.linked[rng.integers(len(self.linked))])
            found = self._link(index, int(rng.integers(1 << 30)))
            if found is None:  # cannot happen: linked units were checked at start
                raise CorpusError("<align>", None, f"unit {index} lost its link")
            anchor, key = found
            unit = self.data.units[index]
            return AnchorPair(unit.text, anchor, f"{unit.record_id}#{unit.part}", key, kind)
        index = int(self.structured[rng.integers(len(self.structured))])
        unit = self.data.units[index]
        text = verbalize(self.data.records[unit.record_id], unit) or unit.text
        key = f"{unit.record_id}#{unit.part}"
        return AnchorPair(unit.text, text, key, "verbalized:" + key, kind)

    def batch(self, rng: np.random.Generator) -> list[AnchorPair]:
        return [self.draw(rng) for _ in range(self.config.batch_size)]

    def loss(self, rng: np.random.Generator, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        pairs = self.batch(rng)
        structured, s_tokens = self.model.embed([p.structured for p in pairs])  # [B, d]
        anchors, a_tokens = self.model.embed([p.anchor for p in pairs])  # [B, d]
        device = structured.device
        # Same structured unit or same anchor twice in a batch: not a negative.
        s_keys = [{p.structured_key, p.anchor_key} for p in pairs]
        invalid_sa = key_collisions(s_keys, [p.anchor_key for p in pairs], device)
        invalid_sa |= key_collisions([{p.structured_key} for p in pairs], [p.structured_key for p in pairs], device)
        loss = info_nce(structured, anchors, self.config.temperature, invalid_sa)
        if self.config.symmetric:
            loss = 0.5 * (loss + info_nce(anchors, structured, self.config.temperature, invalid_sa.T.contiguous()))
        return loss, s_tokens + a_tokens

    def estimate_tokens(self, rng: np.random.Generator, samples: int) -> float:
        counts = []
        for _ in range(samples):
            pairs = self.batch(rng)
            texts = [p.structured for p in pairs] + [p.anchor for p in pairs]
            counts.append(int(self.model.features(texts)["attention_mask"].sum()))
        return float(np.mean(counts))
