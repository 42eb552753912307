"""Tiny randomly initialised models and a tiny labelled corpus for the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_jsonl

CORPUS_RECORDS = {"text": 30, "table": 4, "kb": 40, "infobox": 10}


def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    from retriever.bundled import ZERO_SHOT_MODEL, bundled_model_dir

    return AutoTokenizer.from_pretrained(str(bundled_model_dir(ZERO_SHOT_MODEL)), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_st_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT as a sentence-transformers dir (mean pooling, normalised)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    transformer = Transformer(str(root / "hf"), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean"), Normalize()], device="cpu")
    model.save(str(root / "st"), create_model_card=False)
    return root / "st"


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide Llama-architecture decoder saved as a plain transformers checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    root = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    LlamaModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def _question(record: dict[str, Any], n: int) -> dict[str, Any] | None:
    source = record["source"]
    if source == "kb":
        text = f"what is the {record['predicate']} of {record['subject']}?"
        answers = [record["object"]]
    elif source == "text":
        text = f"what does the passage about {record.get('title') or record['text'][:30]} say?"
        answers = []
    elif source == "infobox":
        text = f"when was {record['title']} born?"
        answers = [record["attributes"][0][1]]
    else:
        row = record["rows"][0]
        text = f"in {record['title']}, what is listed for {row[0]}?"
        answers = [row[-1]]
    out = {"id": f"q{n}", "text": text, "dataset": f"ds_{source}", "gold": [record["id"]], "gold_source": source,
           "answers": answers}
    if source == "table":
        out["gold_rows"] = {record["id"]: [0]}
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_records: list[dict]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_data")
    taken: dict[str, int] = {}
    records = []
    for record in tiny_records:
        source = record["source"]
        if taken.get(source, 0) < CORPUS_RECORDS[source]:
            taken[source] = taken.get(source, 0) + 1
            records.append(record)
    corpus = write_jsonl(root / "corpus.jsonl", records)
    questions = [q for n, r in enumerate(records) if (q := _question(r, n))]
    train = write_jsonl(root / "queries.train.jsonl", questions)
    dev = write_jsonl(root / "queries.dev.jsonl", questions[::3])
    ids = root / "dev.ids.txt"
    ids.write_text("".join(r["id"] + "\n" for r in records[::2]), encoding="utf-8")
    pairs = root / "pairs.json"
    pairs.write_text(json.dumps([
        {"source": "kb", "raw_data": "Hoskinson Park, located in, Jefferson County",
         "nl_text": "Hoskinson Park is located in Jefferson County."},
        {"source": "info", "raw_data": "David Herman, Children, 2", "nl_text": "David Herman has two children."},
        {"source": "table", "raw_data": "2010 Man Booker Prize, Author is Howard Jacobson",
         "nl_text": "The 2010 Man Booker Prize went to Howard Jacobson."},
    ]), encoding="utf-8")
    return {"corpus": corpus, "train": train, "dev": dev, "dev_ids": ids, "pairs": pairs}


def tiny_config(tiny_data: dict[str, Path], base_model: Path, out: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config dict for a few steps of every stage on the tiny data."""
    stage = {"steps": 3, "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0}
    raw: dict[str, Any] = {
        "run": {"output_dir": str(out), "seed": 7, "device": "cpu", "show_progress": False, "log_every": 1,
                "checkpoint_every": 0},
        "model": {"base": str(base_model), "max_seq_length": 48},
        "data": {"corpus": str(tiny_data["corpus"]), "train_queries": str(tiny_data["train"]),
                 "pairs_files": [str(tiny_data["pairs"])]},
        "pretrain": dict(stage, decoder_heads=2),
        "align": dict(stage, temperature=0.05),
        "finetune": dict(stage, hard_negatives=2, mine_depth=5, temperature=0.05),
        "router": {"train_examples": 40, "dev_examples": 20, "steps": 20},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw
