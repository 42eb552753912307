"""The router grammar (train and held-apart dev phrasings), its figures, the head fit and the [router] config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.errors import ModelError
from retriever.records import Source
from retriever.router import ROUTER_FILE, Routing, SourceRouter
from retriever.training import config_from_dict, train
from retriever.training.config import RouterConfig, TrainConfigError
from retriever.training.instruction_pool import (
    ROUTER_CONTRAST,
    ROUTER_EXCLUDE,
    ROUTER_INCLUDE,
    ROUTER_JOINS,
    ROUTER_NAMES,
    ROUTER_UNNAMED,
    Mention,
    RouterExample,
    naming_instruction,
    router_examples,
)
from retriever.training.router import fit_head, misreadings, read_rules, score_readings, tag_targets
from tests.training.conftest import tiny_config


def test_grammar_is_seeded_and_covers_every_kind() -> None:
    first = router_examples("train", 200, 3)
    assert first == router_examples("train", 200, 3)
    assert first != router_examples("train", 200, 4)
    assert {e.kind for e in first} == {"single", "multi", "negation", "unnamed"}
    assert all(not e.sources for e in first if e.kind == "unnamed")
    assert all(len(e.sources) == 1 for e in first if e.kind == "single")
    assert any(len(e.sources) == 3 for e in first if e.kind == "negation")  # "anything but X": the other three
    with pytest.raises(ValueError, match="split"):
        router_examples("test", 1, 0)


def test_dev_phrasings_never_occur_in_training() -> None:
    for source in Source:
        assert not set(ROUTER_NAMES["train"][source]) & set(ROUTER_NAMES["dev"][source])
        for other in Source:  # no name stands for two sources
            assert source == other or not set(ROUTER_NAMES["train"][source]) & set(ROUTER_NAMES["dev"][other])
    for pieces in (ROUTER_INCLUDE, ROUTER_EXCLUDE, ROUTER_CONTRAST, ROUTER_JOINS, ROUTER_UNNAMED):
        assert not set(pieces["train"]) & set(pieces["dev"])
    train = {_core(e.text) for e in router_examples("train", 2000, 0)}
    dev = {_core(e.text) for e in router_examples("dev", 500, 0)}
    assert not train & dev


def test_naming_instruction_names_exactly_the_sources_in_its_split() -> None:
    rng = np.random.default_rng(5)
    for split in ("train", "dev"):
        for sources in ([Source.TABLE], [Source.KB, Source.INFOBOX]):
            text = naming_instruction(split, sources, rng).lower()
            for source in Source:
                named = any(n.lower() in text for n in ROUTER_NAMES[split][source])
                assert named == (source in sources), (split, sources, text)
    again = [naming_instruction("dev", [Source.TEXT], np.random.default_rng(9)) for _ in range(2)]
    assert again[0] == again[1]
    with pytest.raises(ValueError, match="at least one"):
        naming_instruction("dev", [], rng)
    with pytest.raises(ValueError, match="split"):
        naming_instruction("test", [Source.TEXT], rng)


def test_every_drawn_name_is_marked_as_a_mention() -> None:
    for split in ("train", "dev"):
        for e in router_examples(split, 400, 1):
            for m in e.mentions:
                assert e.text[m.start:m.end].lower() in {n.lower() for n in ROUTER_NAMES[split][m.source]}, e
            asked = {m.source for m in e.mentions if not m.excluded}
            excluded = {m.source for m in e.mentions if m.excluded}
            if e.kind == "unnamed":
                assert not e.mentions
            elif e.kind == "negation":
                assert excluded and not excluded & e.sources
            else:
                assert not excluded and asked == set(e.sources)


def test_tokens_overlapping_a_mention_take_its_tag(tiny_st_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_st_model))
    text = "use tables, not fact triples"
    example = RouterExample(text, frozenset({Source.TABLE}), "negation",
                            (Mention(4, 10, Source.TABLE, False), Mention(16, 28, Source.KB, True)))
    batch, tags = tag_targets(tokenizer, [example, RouterExample("be concise", frozenset(), "unnamed")], 32)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    expected = [3 if 4 <= a < 10 else 6 if 16 <= a < 28 else 0 for a, z in offsets]
    assert tags[0][:len(offsets)].tolist() == expected and {3, 6} <= set(expected)
    assert (tags[1][batch["attention_mask"][1] == 1] == 0).all() and (tags[1][batch["attention_mask"][1] == 0] == -100).all()
    with pytest.raises(ValueError, match="marks no mention"):
        tag_targets(tokenizer, [RouterExample("use tables", frozenset({Source.TABLE}), "single")], 32)


def _core(text: str) -> str:
    """An instruction without its typed casing and ending."""
    text = text.lower().removesuffix(" please.")
    return text.rstrip(".!:")


def test_scores_count_exact_sets_and_wrong_filters() -> None:
    examples = [RouterExample("a", frozenset({Source.TABLE}), "single"),
                RouterExample("b", frozenset({Source.TEXT, Source.KB, Source.INFOBOX}), "negation"),
                RouterExample("c", frozenset(), "unnamed")]
    readings = [Routing((Source.TABLE,), 0.95), Routing((Source.TABLE,), 0.6), Routing((), 0.9)]
    s = score_readings(examples, readings, threshold=0.5)
    assert s["exact_set_accuracy"] == pytest.approx(2 / 3) and s["accuracy[negation]"] == 0.0
    assert s["filtered_right"] == pytest.approx(1 / 3) and s["filtered_wrong"] == pytest.approx(1 / 3)
    assert s["precision[table]"] == 0.5 and s["recall[table]"] == 1.0
    high = score_readings(examples, readings, threshold=0.9)
    assert high["filtered_wrong"] == 0.0 and high["unfiltered"] == pytest.approx(2 / 3)
    assert high["served_right"] == pytest.approx(2 / 3)
    assert read_rules([RouterExample("anything but tables", frozenset(), "negation")])[0].sources == (Source.TABLE,)


def test_head_fits_separable_readings() -> None:
    examples = [RouterExample("x", frozenset({s}), "single") for s in Source] + \
        [RouterExample("y", frozenset(), "unnamed")]
    x = np.eye(len(examples), dtype=np.float32)
    layers = fit_head(x, examples, hidden=8, steps=300, lr=0.05, weight_decay=0.0, seed=0)
    read = SourceRouter(layers, 0.5, "c").read(x)
    assert [r.sources for r in read] == [(s,) for s in Source] + [()]


def test_router_config_is_validated_and_left_out_of_the_fingerprint(tiny_data, tiny_st_model, tmp_path: Path) -> None:
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path / "run")
    base = config_from_dict(raw)
    other = config_from_dict({**raw, "router": {**raw["router"], "threshold": 0.5}})
    assert base.fingerprint() == other.fingerprint() and other.router.threshold == 0.5
    with pytest.raises(TrainConfigError, match=r"\[router\] threshold"):
        config_from_dict({**raw, "router": {"threshold": 1.5}})
    with pytest.raises(TrainConfigError, match="router"):
        config_from_dict({**raw, "router": {"thresold": 0.5}})


def test_train_writes_a_router_next_to_the_model(tiny_data, tiny_st_model, tmp_path: Path) -> None:
    from retriever.encoder import Encoder, EncoderConfig

    raw = tiny_config(tiny_data, tiny_st_model, tmp_path / "run", run={"stages": ["finetune"]})
    report = train(config_from_dict(raw))
    assert (report.model_dir / ROUTER_FILE).is_file()
    assert report.router is not None and report.router["dev"]["n"] == 20
    loaded = Encoder(EncoderConfig(model=str(report.model_dir), show_progress=False))
    assert loaded.router is not None and loaded.router.model_checksum == loaded.checksum
    assert loaded.router.threshold == RouterConfig().threshold


def test_keys_added_later_leave_the_fingerprint_alone_at_their_default(tiny_data, tiny_st_model,
                                                                       tmp_path: Path) -> None:
    raw = tiny_config(tiny_data, tiny_st_model, tmp_path / "run")
    base = config_from_dict(raw)
    same = config_from_dict({**raw, "finetune": {**raw["finetune"], "grammar_phrasing_prob": 0.0}})
    other = config_from_dict({**raw, "finetune": {**raw["finetune"], "grammar_phrasing_prob": 0.5}})
    lenient = config_from_dict({**raw, "data": {**raw["data"], "lenient": True}})
    assert base.fingerprint() == same.fingerprint()
    assert other.fingerprint() != base.fingerprint() and lenient.fingerprint() != base.fingerprint()


def test_a_tuned_router_learns_a_toy_pool_and_reads_the_same_once_saved(tiny_st_model: Path,
                                                                          tmp_path: Path) -> None:
    import shutil

    from retriever.router import TunedRouter, TunedSpec, find_router
    from retriever.training.router import fit_tuned

    def named(text: str, name: str, source: Source, excluded: bool = False) -> Mention:
        return Mention(text.index(name), text.index(name) + len(name), source, excluded)

    pool = {"use tables": (Source.TABLE,), "use text": (Source.TEXT,), "anything but tables":
            (Source.TEXT, Source.KB, Source.INFOBOX), "use text, not tables": (Source.TEXT,), "be concise": ()}
    mentions = {"use tables": (named("use tables", "tables", Source.TABLE),),
                "use text": (named("use text", "text", Source.TEXT),),
                "anything but tables": (named("anything but tables", "tables", Source.TABLE, True),),
                "use text, not tables": (named("use text, not tables", "text", Source.TEXT),
                                         named("use text, not tables", "tables", Source.TABLE, True)),
                "be concise": ()}
    examples = [RouterExample(t, frozenset(s), "toy", mentions[t]) for t, s in pool.items()] * 32
    router = fit_tuned(tiny_st_model, examples, TunedSpec(layers=2, rank=8, alpha=16), epochs=8, lr=1e-2,
                       head_lr=5e-2, seed=0, model_checksum="c" * 64, threshold=0.7, batch_size=16)
    readings = router.read_texts(list(pool))
    assert {t: set(r.sources) for t, r in zip(pool, readings, strict=True)} == {t: set(s) for t, s in pool.items()}
    # the exclusions it learned never filter to the source they exclude
    assert all(Source.TABLE not in r.sources for t, r in zip(pool, readings, strict=True) if "not" in t or "but" in t)
    # saved next to a copy of the model, it is found, rebuilt from the model's own weights, and reads alike
    model = tmp_path / "model"
    shutil.copytree(tiny_st_model, model)
    router.save(model / ROUTER_FILE)
    loaded = find_router(model, "c" * 64)
    assert isinstance(loaded, TunedRouter) and loaded.spec == router.spec and loaded.threshold == 0.7
    for before, after in zip(router.probabilities_of(list(pool)), loaded.probabilities_of(list(pool)), strict=True):
        np.testing.assert_allclose(after, before, atol=2e-3)
    assert loaded.tags and [r.sources for r in loaded.read_texts(list(pool))] == [r.sources for r in readings]
    assert (model / ROUTER_FILE).stat().st_size < 200_000  # adapters and head only, not the model
    # the server's resolver uses it without the model's embedding, and filters when it is sure
    from retriever.query import SourceResolution
    from retriever.router import SourceResolver

    resolver = SourceResolver(SourceResolution.FILTER, loaded)
    resolver.warm()
    assert resolver.mode is SourceResolution.MODEL and "LoRA" in resolver.describe()
    resolution = resolver.resolve("use tables")
    assert resolution.confidence is not None
    assert resolution.sources == ((Source.TABLE,) if resolution.confidence >= 0.7 else ())
    with pytest.raises(ModelError, match="trained on model cccc"):
        find_router(model, "d" * 64)
    # with name prototypes (the model's embedding of training names), a name's source is read by the nearest one;
    # here every name embeds next to the kb prototype, so "use tables" reads as kb, and reading needs an embed
    from retriever.errors import InvalidInputError
    from retriever.router import NamePrototypes, SourceResolver, load_router

    prototypes = NamePrototypes(np.eye(4, dtype=np.float32), np.array([0, 1, 2, 3]))
    named = TunedRouter(model, router.spec, router.adapter, router.head, 0.7, "c" * 64, prototypes=prototypes)
    named.save(tmp_path / "named.safetensors")
    again = load_router(tmp_path / "named.safetensors", model, "c" * 64)
    assert isinstance(again, TunedRouter) and again.needs_embed and again.prototypes is not None
    np.testing.assert_array_equal(again.prototypes.labels, [0, 1, 2, 3])

    def near_kb(texts):
        return np.tile(np.array([[0.0, 0.0, 1.0, 0.0]], np.float32), (len(texts), 1))

    assert again.read_texts(["use tables"], near_kb)[0].sources == (Source.KB,)
    with pytest.raises(InvalidInputError, match="give an embed"):
        again.read_texts(["use tables"])
    assert SourceResolver(SourceResolution.FILTER, again).mode is SourceResolution.RULES  # no embed: not usable
    resolved = SourceResolver(SourceResolution.FILTER, again, near_kb).resolve("use tables")
    assert resolved.confidence is not None and resolved.sources == ((Source.KB,) if resolved.confidence >= 0.7 else ())
    # a router saved before tagging (format 2: 5 sigmoid outputs on the mean-pooled state) still loads and reads
    hidden = router.head[0].shape[0]
    pooled = TunedRouter(model, router.spec, router.adapter, (np.zeros((hidden, 5), np.float32),
                         np.array([6, 6, -6, -6, -6], np.float32)), 0.7, "c" * 64)
    pooled.save(tmp_path / "pooled.safetensors")
    old = load_router(tmp_path / "pooled.safetensors", model, "c" * 64)
    assert isinstance(old, TunedRouter) and not old.tags
    assert old.read_texts(["whatever it says"])[0].sources == (Source.TEXT,)
    # without the model's weights next to it the router cannot be rebuilt: a model error, at load
    (model / "model.safetensors").unlink()
    unloadable = find_router(model, "c" * 64)
    assert isinstance(unloadable, TunedRouter)
    with pytest.raises(ModelError, match="transformer weights"):
        unloadable.warm()


def test_misreadings_lists_exactly_the_instructions_read_as_another_set() -> None:
    dev = router_examples("dev", 8, 3)
    readings = [Routing(tuple(e.sources), 0.9) for e in dev]
    assert misreadings(dev, readings) == []
    wrong = next(i for i, e in enumerate(dev) if e.kind == "single")
    readings[wrong] = Routing((Source.KB,) if Source.KB not in dev[wrong].sources else (Source.TEXT,), 0.42)
    misses = misreadings(dev, readings)
    assert len(misses) == 1 and misses[0]["text"] == dev[wrong].text and misses[0]["kind"] == "single"
    assert misses[0]["allowed"] == sorted(s.value for s in dev[wrong].sources) and misses[0]["confidence"] == 0.42
    assert misses[0]["read"] != misses[0]["allowed"]
