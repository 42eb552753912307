"""Each stage's loss decreases on a fixed batch; batch construction respects gold labels."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from retriever.instructions import SOURCE_NAMES, default_prompts
from retriever.records import Source
from retriever.training.anchors import read_pairs_file
from retriever.training.config import AlignConfig, FinetuneConfig, ModelConfig, PretrainConfig
from retriever.training.data import load_training_data, tokenizer_budget
from retriever.training.losses import info_nce, phrasing_consistency, source_preference
from retriever.training.model import EmbeddingModel
from retriever.training.negatives import interleave_mined, mine_bm25, mine_with_model
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


def test_an_unknown_corpus_field_stops_training_data_unless_lenient(tiny_data, tiny_st_model, tmp_path, caplog) -> None:
    import json

    from retriever.errors import CorpusError

    lines = tiny_data["corpus"].read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    record["titel"] = "typo"
    lines[1] = json.dumps(record)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    m = EmbeddingModel(tiny_st_model, ModelConfig(base=str(tiny_st_model), max_seq_length=48), "cpu")
    budget = tokenizer_budget(m.tokenizer, 62)
    with pytest.raises(CorpusError) as err:
        load_training_data(corpus, tiny_data["train"], budget, seed=3)
    assert "corpus.jsonl:2" in str(err.value) and "titel" in str(err.value)
    data = load_training_data(corpus, tiny_data["train"], budget, seed=3, lenient=True)
    assert data.questions and "field 'titel': unknown field, ignored (--lenient)" in caplog.text


def test_training_questions_are_read_as_the_benchmarks_read_them(tiny_data, tiny_st_model, tmp_path) -> None:
    from retriever.errors import InvalidInputError

    lines = tiny_data["train"].read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "queries.train.jsonl"
    bad.write_text("\n".join([*lines[:2], lines[2].replace('"gold_source": "', '"gold_source": "video+')]) + "\n",
                   encoding="utf-8")
    m = EmbeddingModel(tiny_st_model, ModelConfig(base=str(tiny_st_model), max_seq_length=48), "cpu")
    with pytest.raises(InvalidInputError, match=r"queries\.train\.jsonl:3: field 'gold_source'"):
        load_training_data(tiny_data["corpus"], bad, tokenizer_budget(m.tokenizer, 62), seed=3)


def test_training_passages_carry_their_link_context_as_an_index_build_makes_it(tiny_st_model, tmp_path) -> None:
    import json

    records = [
        {"id": "p", "source": "text", "title": "Blues FC", "text": "Blues FC is a football club."},
        {"id": "t", "source": "table", "title": "League", "header": ["Pos", "Club"], "rows": [["3", "Blues"]],
         "row_links": [["p"]]},
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    m = EmbeddingModel(tiny_st_model, ModelConfig(base=str(tiny_st_model), max_seq_length=48), "cpu")
    budget = tokenizer_budget(m.tokenizer, 62)
    linked = load_training_data(corpus, None, budget, seed=3)
    plain = load_training_data(corpus, None, budget, seed=3, link_rows=0)
    text = {u.record_id: u.text for u in linked.units}
    assert text["p"] == "Blues FC: Listed in: League: Pos is 3, Club is Blues. Blues FC is a football club."
    assert {u.record_id: u.text for u in plain.units}["p"] == "Blues FC: Blues FC is a football club."


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


def _draw(model, data, config: FinetuneConfig, seed: int, count: int = 40) -> list:
    task = FinetuneTask(model, data, config, mine_bm25(data, 10))
    rng, _ = step_generators(seed, "finetune", 0, 0)
    return [task.draw(rng) for _ in range(count)]


def test_finetune_with_source_preference_and_counterfactuals_decreases_on_a_fixed_batch(model, data):
    config = FinetuneConfig(steps=1, batch_size=6, temperature=0.05, hard_negatives=2, mine_depth=5,
                            source_loss_weight=1.0, counterfactual_prob=0.5, general_instruction_prob=0.2)
    task = FinetuneTask(model, data, config, mine_bm25(data, config.mine_depth))
    losses = _fits_fixed_batch(task, model)
    assert losses[-1] < 0.5 * losses[0], losses


def test_counterfactual_examples_ask_for_a_source_without_gold(model, data):
    config = FinetuneConfig(steps=1, batch_size=4, hard_negatives=4, general_instruction_prob=0.0,
                            canonical_phrasing_prob=1.0, counterfactual_prob=1.0)
    examples = _draw(model, data, config, seed=4)
    counterfactual = [e for e in examples if e.counterfactual]
    assert counterfactual
    for e in counterfactual:
        item = next(t for t in data.questions if e.query.endswith(t.question.text))
        assert e.requested not in item.sources
        assert e.query.startswith(f"Given a question, retrieve relevant evidence that can answer the question from "
                                  f"{SOURCE_NAMES[e.requested]}")
        assert data.units[e.positive].source is e.requested  # the best-mined unit of the asked-for source
        assert data.units[e.positive].record_id not in item.gold_records
        assert {data.units[i].record_id for i in e.negatives} & item.gold_records  # the real answer ranks below
        assert all(data.units[i].source is not e.requested for i in e.negatives)


def test_finetune_source_term_leaves_out_each_querys_own_gold(model, data, monkeypatch):
    import retriever.training.stage3_finetune as stage3

    seen = {}

    def spy(queries, docs, temperature, wanted, ignore=None):
        seen.update(wanted=wanted, ignore=ignore)
        return source_preference(queries, docs, temperature, wanted, ignore=ignore)

    monkeypatch.setattr(stage3, "source_preference", spy)
    config = FinetuneConfig(steps=1, batch_size=8, hard_negatives=2, source_loss_weight=1.0,
                            counterfactual_prob=0.5, general_instruction_prob=0.0)
    task = FinetuneTask(model, data, config, mine_bm25(data, 10))
    examples = task.batch(step_generators(2, "finetune", 0, 0)[0])
    monkeypatch.setattr(task, "batch", lambda rng: examples)
    task.loss(*step_generators(2, "finetune", 0, 0))
    doc_ids = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
    assert any(e.counterfactual for e in examples) and not all(e.counterfactual for e in examples)
    for r, e in enumerate(examples):
        expected = [not e.counterfactual and unit == e.positive for unit in doc_ids]
        assert seen["ignore"][r].tolist() == expected
    assert seen["wanted"][~seen["ignore"]].any()


def test_phrasing_consistency_is_the_kl_to_the_fixed_canonical_ranking():
    torch.manual_seed(3)
    teacher = torch.nn.functional.normalize(torch.randn(3, 6), dim=-1).requires_grad_()
    student = torch.nn.functional.normalize(torch.randn(3, 6), dim=-1).requires_grad_()
    docs = torch.nn.functional.normalize(torch.randn(7, 6), dim=-1).requires_grad_()
    invalid = torch.zeros(3, 7, dtype=torch.bool)
    invalid[0, 4] = invalid[2, 1] = True
    got = phrasing_consistency(teacher, student, docs, 0.1, invalid)
    expected = []
    for r in range(3):
        keep = ~invalid[r]
        p = torch.softmax(teacher[r] @ docs[keep].T / 0.1, dim=0)
        q = torch.softmax(student[r] @ docs[keep].T / 0.1, dim=0)
        expected.append((p * (p / q).log()).sum())
    assert torch.allclose(got, torch.stack(expected).mean(), atol=1e-5)
    assert got.item() > 0
    got.backward()
    assert teacher.grad is None and docs.grad is None  # only the other phrasing moves
    assert student.grad is not None and student.grad.abs().sum() > 0
    same = phrasing_consistency(student.detach(), student.detach(), docs.detach(), 0.1, invalid)
    assert abs(same.item()) < 1e-6


def test_consistency_pairs_each_question_with_the_canonical_phrasing_and_off_draws_as_before(model, data):
    base = dict(steps=1, batch_size=4, hard_negatives=2, general_instruction_prob=0.3, counterfactual_prob=0.3,
                grammar_phrasing_prob=0.5)
    plain = _draw(model, data, FinetuneConfig(**base), seed=5)
    assert all(e.paired_query == "" for e in plain)
    paired = _draw(model, data, FinetuneConfig(**base, consistency_weight=1.0), seed=5)
    assert paired[0].query == plain[0].query  # the first draw is the same; the pairing draws after it
    prompts = set(default_prompts().values())
    for e in paired:
        question = next(t.question.text for t in data.questions if e.query.endswith(t.question.text))
        assert e.paired_query.endswith(question) and e.paired_query != e.query
        canonical, other = (e.query, e.paired_query) if e.query_is_canonical else (e.paired_query, e.query)
        assert canonical.removesuffix(question).strip() in prompts, canonical
        assert other.removesuffix(question).strip() not in prompts, other
    assert {e.query_is_canonical for e in paired} == {True, False}


def test_finetune_with_the_consistency_term_decreases_on_a_fixed_batch(model, data):
    config = FinetuneConfig(steps=1, batch_size=6, temperature=0.05, hard_negatives=2, mine_depth=5,
                            consistency_weight=1.0, grammar_phrasing_prob=0.5)
    task = FinetuneTask(model, data, config, mine_bm25(data, config.mine_depth))
    losses = _fits_fixed_batch(task, model)
    assert losses[-1] < 0.5 * losses[0], losses


def test_source_preference_is_the_requested_sources_softmax_mass():
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    docs = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    wanted = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    got = source_preference(queries, docs, 0.5, wanted)
    scores = queries[0] @ docs.T / 0.5
    expected = -(scores[0].exp() / scores.exp().sum()).log()  # rows 2 (all wanted) and 3 (none) are skipped
    assert torch.allclose(got, expected)
    assert source_preference(queries, docs, 0.5, torch.zeros(3, 3, dtype=torch.bool)).item() == 0.0


def test_source_preference_ignores_the_masked_docs():
    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    docs = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    wanted = torch.tensor([[True, False, True, False, True], [True, True, False, False, False]])
    ignore = torch.zeros(2, 5, dtype=torch.bool)
    ignore[0, 0] = True  # query 0's own gold: the rest of its source must outrank docs 1 and 3
    ignore[1, 1] = True
    got = source_preference(queries, docs, 0.5, wanted, ignore=ignore)
    s0 = queries[0] @ docs.T / 0.5
    s1 = queries[1] @ docs.T / 0.5
    expected0 = -(s0[[2, 4]].exp().sum() / s0[1:].exp().sum()).log()
    expected1 = -(s1[0].exp() / s1[[0, 2, 3, 4]].exp().sum()).log()
    assert torch.allclose(got, (expected0 + expected1) / 2)
    # A query whose only wanted doc is ignored is skipped, not scored as -log 0.
    only = torch.tensor([[True, False, False, False, False]])
    assert source_preference(queries[:1], docs, 0.5, only, ignore=only).item() == 0.0


def test_info_nce_scores_only_the_selected_rows():
    torch.manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    docs = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    rows = torch.tensor([True, False, True, False])
    scores = queries @ docs.T / 0.1
    expected = torch.nn.functional.cross_entropy(scores[[0, 2]], torch.tensor([0, 2]))
    assert torch.allclose(info_nce(queries, docs, 0.1, rows=rows), expected)
    assert info_nce(queries, docs, 0.1, rows=torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_mined_negatives_never_contain_gold_records(data):
    mined = mine_bm25(data, 10)
    assert any(len(m) for per_q in mined for m in per_q.values())
    for item, per_q in zip(data.questions, mined, strict=True):
        for source, indexes in per_q.items():
            assert all(data.units[i].source is source for i in indexes)
            assert not {data.units[i].record_id for i in indexes} & item.gold_records


def test_mixed_mining_interleaves_both_rankings_without_gold(model, data):
    bm25, by_model = mine_bm25(data, 6), mine_with_model(data, model, 6)
    mixed = interleave_mined(bm25, by_model)
    # the tiny model and BM25 disagree somewhere, so the mix holds more than either
    assert any(len(r) > max(len(a.get(s, ())), len(b.get(s, ())))
               for a, b, m in zip(bm25, by_model, mixed, strict=True) for s, r in m.items())
    for a, b, m, item in zip(bm25, by_model, mixed, data.questions, strict=True):
        assert list(m) == [s for s in Source if s in a or s in b]  # a fixed source order: seeded draws repeat
        for source, ranked in m.items():
            x, y = list(a.get(source, [])), list(b.get(source, []))
            assert sorted(ranked.tolist()) == sorted(set(x) | set(y))
            assert len(set(ranked.tolist())) == len(ranked)
            if x and y:  # rank by rank: BM25's first, then the model's first
                assert ranked[0] == x[0] and y[0] in ranked[:2]
            assert not {data.units[i].record_id for i in ranked} & item.gold_records
    with pytest.raises(ValueError, match="questions"):
        interleave_mined(bm25, by_model[:-1])


def test_the_miner_model_mines_in_place_of_the_model_being_trained(model, data, tiny_st_model, tmp_path,
                                                                    monkeypatch):
    import shutil

    from retriever.training import pipeline
    from retriever.training.config import NegativeMiner

    other = tmp_path / "miner"
    shutil.copytree(tiny_st_model, other)
    used: list[Path] = []

    def spy(data, miner, depth):
        used.append(Path(miner.source))
        return mine_with_model(data, miner, depth)

    monkeypatch.setattr(pipeline, "mine_with_model", spy)
    settings = FinetuneConfig(steps=1, mine_depth=5, miner=NegativeMiner.MIXED, miner_model=str(other))
    mixed = pipeline._mine(model, data, settings)
    assert used == [other]
    expected = interleave_mined(mine_bm25(data, 5), mine_with_model(data, model, 5))  # the copy ranks alike
    assert [{k: v.tolist() for k, v in m.items()} for m in mixed] == \
        [{k: v.tolist() for k, v in m.items()} for m in expected]
    pipeline._mine(model, data, FinetuneConfig(steps=1, mine_depth=5, miner=NegativeMiner.MODEL))
    assert used == [other, Path(model.source)]


def test_source_specific_examples_get_other_source_negatives(model, data):
    config = FinetuneConfig(steps=1, batch_size=4, hard_negatives=4, other_source_share=0.5,
                            general_instruction_prob=0.0, canonical_phrasing_prob=1.0)
    examples = _draw(model, data, config, seed=1)
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


def test_length_bucketed_embedding_matches_one_padded_pass(model):
    texts = ["a b", "the table lists every river in the region and its length in kilometres", "c",
             "subject, predicate, object", "one two three four five six seven eight nine ten eleven", "x y z"] * 6
    model.st.eval()  # no dropout, so both paths see the same network
    torch.manual_seed(0)
    weights = torch.randn(len(texts), model.dimension)
    outputs, grads = [], []
    for bucket in (0, 5):
        model.st.zero_grad(set_to_none=True)
        emb, tokens = model.embed(texts, bucket_size=bucket)
        (emb * weights).sum().backward()
        outputs.append(emb.detach())
        grads.append(next(p for p in model.st.parameters() if p.grad is not None).grad.clone())
    assert tokens == int(model.features(texts)["attention_mask"].sum())
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    model.st.train()


def test_encode_sorts_by_length_and_returns_the_input_order(model, monkeypatch):
    texts = ["a much longer passage about the history of the city and its rivers, bridges and people " * 3,
             "short", "Heliodoro Castillo, country, Mexico", "x y", "a medium length sentence here"]
    batches: list[list[str]] = []
    features = model.features
    monkeypatch.setattr(model, "features", lambda chunk, *a: batches.append(list(chunk)) or features(chunk, *a))
    together = model.encode(texts, batch_size=2).numpy()
    assert [t for b in batches for t in b] == sorted(texts, key=len)
    monkeypatch.undo()
    alone = np.concatenate([model.encode([t]).numpy() for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
