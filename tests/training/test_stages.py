"""Each stage's loss decreases on a fixed batch; batch construction respects gold labels."""

from __future__ import annotations

import itertools

import pytest
import torch

from retriever.records import Source
from retriever.training.anchors import read_pairs_file
from retriever.training.config import AlignConfig, FinetuneConfig, ModelConfig, PretrainConfig
from retriever.training.data import load_training_data, tokenizer_budget
from retriever.training.model import EmbeddingModel
from retriever.training.negatives import mine_bm25
from retriever.training.stage1_pretrain import PretrainTask
from retriever.training.stage2_align import AlignTask
from retriever.training.stage3_finetune import FinetuneTask
from retriever.training.trainer import step_generators


@pytest.fixture()
def model(tiny_st_model):
    return EmbeddingModel(tiny_st_model, ModelConfig(base=str(tiny_st_model), max_seq_length=48), "cpu")


@pytest.fixture(scope="module")
def data(tiny_data, tiny_st_model):
    m = EmbeddingModel(tiny_st_model, ModelConfig(base=str(tiny_st_model), max_seq_length=48), "cpu")
    return load_training_data(tiny_data["corpus"], tiny_data["train"], tokenizer_budget(m.tokenizer, 62), seed=3)


def _fits_fixed_batch(task, model, steps: int = 12) -> list[float]:
    params = [p for _, p in model.named_trainable_parameters()]
    for module in task.extra_modules().values():
        params += [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for _ in range(steps):
        rng, generator = step_generators(5, task.name, 0, 0)  # the same batch, masks and dropout every time
        loss, tokens = task.loss(rng, generator)
        assert tokens > 0
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_pretrain_loss_decreases_on_a_fixed_batch(model, data):
    task = PretrainTask(model, data, PretrainConfig(steps=1, batch_size=4, decoder_heads=2), seed=1)
    losses = _fits_fixed_batch(task, model)
    # Reconstruction over a 30K vocabulary starts near ln(30522) = 10.3 and falls steadily.
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.5, losses


def test_align_loss_decreases_on_a_fixed_batch(model, data, tiny_data):
    pairs = read_pairs_file(tiny_data["pairs"])
    task = AlignTask(model, data, AlignConfig(steps=1, batch_size=6, temperature=0.05), pairs)
    losses = _fits_fixed_batch(task, model)
    assert losses[-1] < 0.5 * losses[0], losses


def test_finetune_loss_decreases_on_a_fixed_batch(model, data):
    config = FinetuneConfig(steps=1, batch_size=6, temperature=0.05, hard_negatives=2, mine_depth=5)
    task = FinetuneTask(model, data, config, mine_bm25(data, config.mine_depth))
    losses = _fits_fixed_batch(task, model)
    assert losses[-1] < 0.5 * losses[0], losses


def test_mined_negatives_never_contain_gold_records(data):
    mined = mine_bm25(data, 10)
    assert any(len(m) for per_q in mined for m in per_q.values())
    for item, per_q in zip(data.questions, mined, strict=True):
        for source, indexes in per_q.items():
            assert all(data.units[i].source is source for i in indexes)
            assert not {data.units[i].record_id for i in indexes} & item.gold_records


def test_source_specific_examples_get_other_source_negatives(model, data):
    config = FinetuneConfig(steps=1, batch_size=4, hard_negatives=4, other_source_share=0.5,
                            general_instruction_prob=0.0, canonical_phrasing_prob=1.0)
    task = FinetuneTask(model, data, config, mine_bm25(data, 10))
    rng, _ = step_generators(1, "finetune", 0, 0)
    examples = [task.draw(rng) for _ in range(40)]
    for e in examples:
        assert e.requested is not None
        assert e.query.startswith("Given a question, retrieve relevant evidence that can answer the question from")
        assert data.units[e.positive].source is e.requested
        sources = [data.units[i].source for i in e.negatives]
        assert len(e.negatives) == 4
        assert sum(s is not e.requested for s in sources) >= 2, sources
        assert not {data.units[i].record_id for i in e.negatives} & e.not_negative
    assert len({e.requested for e in examples}) == len(Source)


def test_general_instruction_excludes_related_records(model, data):
    config = FinetuneConfig(steps=1, batch_size=4, general_instruction_prob=1.0)
    task = FinetuneTask(model, data, config, mine_bm25(data, 10))
    rng, _ = step_generators(2, "finetune", 0, 0)
    for _ in range(20):
        e = task.draw(rng)
        assert e.requested is None
        item = next(t for t in data.questions if t.question.text in e.query)
        assert e.not_negative == item.gold_records | item.related_records
