"""Stage 3: instruction-aware retriever fine-tuning.

Each example is (instruction + question, gold unit): the instruction is drawn with the run's
seed from the pool in :mod:`retriever.training.instruction_pool` (general, or specific to a
source of the gold records, in several phrasings). The loss is InfoNCE over the batch's positives
(in-batch negatives) plus ``hard_negatives`` mined units per question. For a source-specific
instruction ``other_source_share`` of the hard negatives are relevant-looking units of the other
source types, and the question's gold units of other sources are added too.

That orders the gold unit above its negatives, but not the rest of the top-k: two further
(configurable) parts teach the model to put the requested source first. ``source_loss_weight``
adds :func:`~retriever.training.losses.source_preference`, which pushes the batch's other units
of the requested source (the query's own gold left out) above units of other sources;
``counterfactual_prob`` asks for sources the question has no gold in, so the instruction, not the
question's style, has to decide the source. ``consistency_weight`` adds
:func:`~retriever.training.losses.phrasing_consistency`: each question is also embedded behind a
second phrasing of its instruction, and that phrasing's ranking of the batch is pulled toward the
canonical phrasing's, so unseen phrasings rank as the canonical one does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from retriever.errors import CorpusError
from retriever.instructions import compose_query
from retriever.records import Source
from retriever.training.config import FinetuneConfig
from retriever.training.data import TrainingData, TrainingQuestion
from retriever.training.instruction_pool import InstructionSampler, SampledInstruction
from retriever.training.losses import info_nce, phrasing_consistency, source_preference
from retriever.training.model import EmbeddingModel
from retriever.training.negatives import Mined, interleave

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneExample:
    query: str
    positive: int
    negatives: tuple[int, ...]
    requested: Source | None
    #: records that must not be negatives of this query (gold; related ones for the general instruction)
    not_negative: frozenset[str]
    #: the instruction names a source without gold for this question (source-preference term only)
    counterfactual: bool = False
    #: the same question behind another phrasing of the instruction (consistency term; "" when off),
    #: and whether ``query`` holds the canonical phrasing (the term's fixed side)
    paired_query: str = ""
    query_is_canonical: bool = False


class FinetuneTask:
    """Draws instruction-aware examples and computes the contrastive loss."""

    name = "finetune"

    def __init__(self, model: EmbeddingModel, data: TrainingData, config: FinetuneConfig, mined: Mined) -> None:
        if not data.questions:
            raise CorpusError("<finetune>", None, "no training questions with gold units in the corpus")
        self.model = model
        self.data = data
        self.config = config
        self.mined = mined
        self.sampler = InstructionSampler(config.general_instruction_prob, config.canonical_phrasing_prob,
                                          config.grammar_phrasing_prob)
        by_dataset: dict[str, list[int]] = {}
        for i, t in enumerate(data.questions):
            by_dataset.setdefault(t.question.dataset, []).append(i)
        self.datasets = sorted(by_dataset)
        self.members = [np.array(by_dataset[d], dtype=np.int64) for d in self.datasets]
        sizes = np.array([len(m) for m in self.members], dtype=np.float64)
        p = sizes ** config.dataset_balance
        self.dataset_p = p / p.sum()
        logger.info("finetune: %d questions; dataset mix %s", len(data.questions),
                    ", ".join(f"{d}={q:.2f}" for d, q in zip(self.datasets, self.dataset_p, strict=True)))

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def draw(self, rng: np.random.Generator) -> FinetuneExample:
        d = int(rng.choice(len(self.datasets), p=self.dataset_p))
        q = int(self.members[d][rng.integers(len(self.members[d]))])
        item = self.data.questions[q]
        instruction = self.sampler.sample(item.sources, rng)
        requested = instruction.source
        if requested is not None and self.config.counterfactual_prob and rng.random() < self.config.counterfactual_prob:
            example = self._counterfactual(q, item, rng)
            if example is not None:
                return example
        if requested is None:
            positive = self._general_positive(item, rng)
            not_negative = item.gold_records | item.related_records
        else:
            options = item.positives[requested]
            positive = options[int(rng.integers(len(options)))]
            not_negative = item.gold_records
        negatives = self._negatives(q, item, requested, not_negative, rng)
        return self._paired(FinetuneExample(compose_query(instruction.text, item.question.text), positive, negatives,
                                            requested, frozenset(not_negative)), instruction, item, rng)

    def _paired(self, example: FinetuneExample, instruction: SampledInstruction, item: TrainingQuestion,
                rng: np.random.Generator) -> FinetuneExample:
        """``example`` with a second phrasing of its instruction when the consistency term is on
        (no draw otherwise, so runs without it sample exactly as before it existed)."""
        if not self.config.consistency_weight:
            return example
        other = self.sampler.counterpart(instruction, rng)
        return replace(example, paired_query=compose_query(other.text, item.question.text),
                       query_is_canonical=instruction.canonical)

    def _counterfactual(self, q: int, item: TrainingQuestion, rng: np.random.Generator) -> FinetuneExample | None:
        """An instruction for a source the question has no gold unit of (None when every source has gold).

        The positive slot holds the best BM25 unit of that source; the negatives are the question's
        gold units (of other sources, by construction) and mined units of the other sources.
        """
        mined = self.mined[q]
        absent = [s for s in Source if s not in item.sources and len(mined.get(s, ()))]
        if not absent:
            return None
        source = absent[int(rng.integers(len(absent)))]
        instruction = self.sampler.sample([source], rng, specific=True)
        positive = int(mined[source][0])
        wanted = self.config.hard_negatives
        gold = [i for s in item.sources for i in item.positives[s]]
        chosen = _take(gold, max(1, wanted // 2), rng)
        other_pool = interleave([m for s, m in mined.items() if s is not source])
        chosen += _take([i for i in other_pool if i not in chosen], wanted - len(chosen), rng)
        return self._paired(FinetuneExample(compose_query(instruction.text, item.question.text), positive,
                                            tuple(chosen), source, item.gold_records | item.related_records,
                                            counterfactual=True), instruction, item, rng)

    def _general_positive(self, item: TrainingQuestion, rng: np.random.Generator) -> int:
        # The answer's source when the label names one (ottqa: the passage, not the bridging table).
        preferred = item.question.single_source
        options = item.positives.get(preferred) if preferred else None
        if not options:
            options = [i for s in item.sources for i in item.positives[s]]
        return options[int(rng.integers(len(options)))]

    def _negatives(self, q: int, item: TrainingQuestion, requested: Source | None, not_negative: frozenset[str],
                   rng: np.random.Generator) -> tuple[int, ...]:
        wanted = self.config.hard_negatives
        if not wanted:
            return ()
        mined = self.mined[q]
        units = self.data.units

        def usable(indexes: np.ndarray | list[int]) -> list[int]:
            return [int(i) for i in indexes if units[int(i)].record_id not in not_negative]

        if requested is None:
            return tuple(_take(usable(interleave(list(mined.values()))), wanted, rng))
        others = [int(i) for s in item.sources if s is not requested for i in item.positives[s]]
        n_other = round(wanted * self.config.other_source_share)
        other_pool = usable(interleave([m for s, m in mined.items() if s is not requested]))
        chosen = _take(others, n_other, rng)
        chosen += _take(other_pool, n_other - len(chosen), rng)
        same_pool = usable(mined.get(requested, np.zeros(0, dtype=np.int64)))
        chosen += _take([i for i in same_pool if i not in chosen], wanted - len(chosen), rng)
        if len(chosen) < wanted:  # too few of one kind: fill from the other
            chosen += _take([i for i in other_pool if i not in chosen], wanted - len(chosen), rng)
        return tuple(chosen)

    def batch(self, rng: np.random.Generator) -> list[FinetuneExample]:
        return [self.draw(rng) for _ in range(self.config.batch_size)]

    def loss(self, rng: np.random.Generator, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        examples = self.batch(rng)
        queries, q_tokens = self.model.embed([e.query for e in examples], self.config.query_max_seq_length)
        doc_ids = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
        docs, d_tokens = self.model.embed([self.data.units[i].text for i in doc_ids])  # [B + B*k, d]
        invalid = torch.zeros(len(examples), len(doc_ids), dtype=torch.bool)
        for r, e in enumerate(examples):
            for c, unit in enumerate(doc_ids):
                if c == r:
                    continue
                record = self.data.units[unit].record_id
                if unit == e.positive or record in e.not_negative:
                    invalid[r, c] = True
        device = queries.device
        scored = torch.tensor([not e.counterfactual for e in examples], dtype=torch.bool, device=device)
        loss = info_nce(queries, docs, self.config.temperature, invalid.to(device), rows=scored)
        if self.config.source_loss_weight:
            sources = [self.data.units[i].source for i in doc_ids]
            wanted = torch.tensor([[e.requested is not None and s is e.requested for s in sources] for e in examples],
                                  dtype=torch.bool, device=device)
            # A scored query's own gold unit (every copy of it in the batch) is left out: the term
            # ranks the rest of its source. A counterfactual's positive is only a stand-in; it stays.
            own = torch.tensor([[not e.counterfactual and unit == e.positive for unit in doc_ids] for e in examples],
                               dtype=torch.bool, device=device)
            loss = loss + self.config.source_loss_weight * source_preference(queries, docs, self.config.temperature,
                                                                             wanted, ignore=own)
        if self.config.consistency_weight:
            paired, p_tokens = self.model.embed([e.paired_query for e in examples], self.config.query_max_seq_length)
            q_tokens += p_tokens
            canonical = torch.tensor([e.query_is_canonical for e in examples], dtype=torch.bool,
                                     device=device).unsqueeze(1)
            teacher = torch.where(canonical, queries, paired)
            student = torch.where(canonical, paired, queries)
            loss = loss + self.config.consistency_weight * phrasing_consistency(
                teacher, student, docs, self.config.temperature, invalid.to(device))
        return loss, q_tokens + d_tokens

    def estimate_tokens(self, rng: np.random.Generator, samples: int) -> float:
        counts = []
        for _ in range(samples):
            examples = self.batch(rng)
            q = self.model.features([e.query for e in examples] + [e.paired_query for e in examples if e.paired_query],
                                    self.config.query_max_seq_length)
            doc_ids = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
            d = self.model.features([self.data.units[i].text for i in doc_ids])
            counts.append(int(q["attention_mask"].sum()) + int(d["attention_mask"].sum()))
        return float(np.mean(counts))


def _take(candidates: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` distinct candidates, favouring the top of the ranking (drawn from the first 2n)."""
    if n <= 0 or not candidates:
        return []
    unique = list(dict.fromkeys(candidates))
    window = unique[: max(2 * n, n)]
    picks = rng.choice(len(window), size=min(n, len(window)), replace=False)
    return [window[int(i)] for i in sorted(picks)]
