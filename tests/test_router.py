"""The source router: reading a probability row, the resolver's modes, the saved file, the shipped router."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.bundled import bundled_model_dir, bundled_names
from retriever.errors import InvalidInputError, ModelError
from retriever.instructions import resolve_sources
from retriever.model_dir import model_checksum
from retriever.query import Query, SourceResolution
from retriever.records import Source
from retriever.router import (
    ROUTER_FILE,
    ROUTER_PRIOR,
    ROUTER_SOURCES,
    NamePrototypes,
    SourceResolver,
    SourceRouter,
    TunedRouter,
    find_router,
    load_router,
    read_probabilities,
    read_tags,
    shipped_router_path,
)
from retriever.searcher import Searcher

ALL_BUT_TABLES = (Source.TEXT, Source.KB, Source.INFOBOX)

# Each instruction a one-hot "embedding"; the router's single layer maps it to the logits below
# (gate, then text, table, kb, infobox). 6 is a probability of 0.9975.
READINGS: dict[str, tuple[float, ...]] = {
    "anything but tables": (6, 6, -6, 6, 6),
    "tables or infoboxes": (6, -6, 6, -6, 6),
    "be concise": (-6, 0, 0, 0, 0),
    "maybe tables?": (6, -6, 0.5, -6, -6),  # table at 0.62: a reading, but not a sure one
    "every source": (6, 6, 6, 6, 6),
}


def fake_router(threshold: float = 0.9, checksum: str = "c" * 64) -> tuple[SourceRouter, object]:
    names = list(READINGS)
    weight = np.array([READINGS[n] for n in names], np.float32)  # [instructions, 5]
    router = SourceRouter([(weight, np.zeros(5, np.float32))], threshold, checksum)

    def embed(texts):
        out = np.zeros((len(texts), len(names)), np.float32)
        for i, text in enumerate(texts):
            out[i, names.index(text)] = 1.0
        return out

    return router, embed


def test_reading_negation_multi_source_and_none() -> None:
    router, embed = fake_router()
    read = dict(zip(READINGS, router.read(embed(list(READINGS))), strict=True))
    assert read["anything but tables"].sources == ALL_BUT_TABLES
    assert read["anything but tables"].confidence > 0.98
    assert read["tables or infoboxes"].sources == (Source.TABLE, Source.INFOBOX)
    assert read["be concise"].sources == () and read["be concise"].confidence > 0.99
    assert read["maybe tables?"].sources == (Source.TABLE,) and read["maybe tables?"].confidence < 0.7
    assert read["every source"].sources == ()  # all four: no filter


def test_confidence_is_the_probability_of_the_reading() -> None:
    p = np.array([0.9, 0.8, 0.3, 0.5, 0.1], np.float32)
    routing = read_probabilities(p)
    assert routing.sources == (Source.TEXT, Source.KB)
    assert routing.confidence == pytest.approx(0.9 * 0.8 * 0.7 * 0.5 * 0.9, rel=1e-6)
    assert read_probabilities(np.array([0.2, 1, 1, 1, 1], np.float32)).confidence == pytest.approx(0.8)


def tags(*tokens: tuple[int, float]) -> np.ndarray:
    """Tag probabilities ``[tokens, 9]``: each token's chosen tag at its probability, the rest on "not a name"
    (or, for a "not a name" token, on text-asked-for)."""
    out = np.zeros((len(tokens), 9), np.float32)
    for i, (tag, q) in enumerate(tokens):
        out[i, tag] = q
        out[i, 0 if tag else 1] += 1.0 - q
    return out


NONE, TEXT, NOT_TEXT, TABLE, NOT_TABLE, KB, NOT_KB, INFOBOX = range(8)


def test_tags_compose_names_asked_for_and_excluded() -> None:
    sure = 0.999
    # "use tables and infoboxes": two names asked for
    assert read_tags(tags((NONE, sure), (TABLE, sure), (NONE, sure), (INFOBOX, sure))).sources == (
        Source.TABLE, Source.INFOBOX)
    # "anything but tables": only an exclusion, so every other source
    assert read_tags(tags((NONE, sure), (NONE, sure), (NOT_TABLE, sure))).sources == ALL_BUT_TABLES
    # "search text (not tables)": asked for minus excluded
    assert read_tags(tags((NONE, sure), (TEXT, sure), (NONE, sure), (NOT_TABLE, sure))).sources == (Source.TEXT,)
    # no name, or all four asked for: no filter; every name it asks for also excluded: no filter
    assert read_tags(tags((NONE, sure), (NONE, sure))).sources == ()
    assert read_tags(tags((TEXT, sure), (NONE, sure), (TABLE, sure), (NONE, sure), (KB, sure), (NONE, sure),
                          (INFOBOX, sure))).sources == ()
    assert read_tags(tags((TABLE, sure), (NONE, sure), (NOT_TABLE, sure))).sources == ()
    # a multi-token name is one name: its tag is the one with the most mass over its tokens
    one = read_tags(tags((NONE, sure), (KB, 0.6), (TABLE, 0.9), (KB, 0.95)))
    assert one.sources == (Source.KB,)


def test_tag_confidence_is_the_probability_of_reading_these_names() -> None:
    p = tags((NONE, 0.9), (TABLE, 0.8))
    routing = read_tags(p)
    assert routing.sources == (Source.TABLE,)
    assert routing.confidence == pytest.approx(0.9 * 0.8 * 1.0)  # the name's whole tag mass is table's
    split = np.zeros((1, 9), np.float32)
    split[0, [TABLE, NOT_TABLE]] = 0.6, 0.4
    assert read_tags(split).sources == (Source.TABLE,) and read_tags(split).confidence == pytest.approx(0.6)


def test_prototypes_decide_which_source_a_name_stands_for() -> None:
    sure = 0.999
    p = tags((NONE, sure), (TABLE, sure), (NONE, sure), (NOT_TABLE, sure))  # "use <name>, not <name>"
    assert read_tags(p).sources == ()  # by the tags: asks for tables and excludes them
    # the prototypes read the first name as kb, the second as table: kb, not tables
    sources = np.array([[0.0, 0.1, 0.9, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32)
    routing = read_tags(p, sources)
    assert routing.sources == (Source.KB,) and routing.confidence == pytest.approx(sure ** 4 * 0.9, rel=1e-4)
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32)  # one name per source
    prototypes = NamePrototypes(vectors, np.array([0, 1, 2, 3]), temperature=0.05)
    q = prototypes.probabilities(np.array([[0.0, 1.0, 0.0]], np.float32))
    assert q.shape == (1, 4) and int(q.argmax()) == 1 and q.sum() == pytest.approx(1.0)
    assert q[0, 1] == pytest.approx(1 / (1 + 3 * np.exp(-1 / 0.05)), rel=1e-5)
    with pytest.raises(ModelError, match="every source type"):
        NamePrototypes(np.eye(3, dtype=np.float32), np.array([0, 1, 2]))
    with pytest.raises(ModelError, match="one label each"):
        NamePrototypes(np.eye(4, dtype=np.float32), np.array([0, 1, 2]))


def test_resolver_filters_only_when_confident() -> None:
    router, embed = fake_router(threshold=0.9)
    resolver = SourceResolver(SourceResolution.FILTER, router, embed)
    assert resolver.mode is SourceResolution.MODEL
    negation = resolver.resolve("anything but tables")
    assert negation.sources == ALL_BUT_TABLES and negation.confidence is not None and negation.confidence >= 0.9
    assert resolver.resolve("tables or infoboxes").sources == (Source.TABLE, Source.INFOBOX)
    unsure = resolver.resolve("maybe tables?")
    assert unsure.sources == () and unsure.confidence is not None and unsure.confidence < 0.9
    none = resolver.resolve("be concise")
    assert none.sources == () and none.confidence is not None and none.confidence > 0.99
    assert resolver.resolve(None).confidence is None and resolver.resolve("  ").sources == ()
    lenient = SourceResolver(SourceResolution.MODEL, fake_router(threshold=0.5)[0], embed)
    assert lenient.resolve("maybe tables?").sources == (Source.TABLE,)


def test_a_set_threshold_replaces_the_routers_own() -> None:
    router, embed = fake_router(threshold=0.9)
    lenient = SourceResolver(SourceResolution.FILTER, router, embed, threshold=0.5)
    assert lenient.threshold == 0.5 and router.threshold == 0.9  # the router itself is left as it was
    assert lenient.resolve("maybe tables?").sources == (Source.TABLE,)
    assert "0.50" in lenient.describe() and "its own 0.90" in lenient.describe()
    strict = SourceResolver(SourceResolution.MODEL, router, embed, threshold=1.0)
    assert strict.resolve("anything but tables").sources == ()  # never confident enough: no filter
    assert SourceResolver(SourceResolution.MODEL, router, embed).threshold == 0.9
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        SourceResolver(SourceResolution.MODEL, router, embed, threshold=1.5)
    with pytest.raises(InvalidInputError, match="no source router"):
        SourceResolver(SourceResolution.FILTER, threshold=0.5)  # the rules would read it: nothing to set
    with pytest.raises(InvalidInputError, match="--resolve rules does not use the router"):
        SourceResolver(SourceResolution.RULES, router, embed, threshold=0.5)


def test_below_the_threshold_the_reading_is_preferred_not_filtered() -> None:
    router, embed = fake_router(threshold=0.9)
    resolver = SourceResolver(SourceResolution.FILTER, router, embed)
    assert resolver.prior == ROUTER_PRIOR > 0 and f"{ROUTER_PRIOR:g} x confidence" in resolver.describe()
    unsure = resolver.resolve("maybe tables?")
    assert unsure.sources == () and unsure.preferred == (Source.TABLE,)
    assert unsure.confidence is not None and unsure.bonus == pytest.approx(ROUTER_PRIOR * unsure.confidence)
    sure = resolver.resolve("tables or infoboxes")  # filtered, so nothing is merely preferred
    assert sure.sources == (Source.TABLE, Source.INFOBOX) and sure.preferred == () and sure.bonus == 0.0
    none = resolver.resolve("be concise")
    assert none.preferred == () and none.bonus == 0.0
    never_sure = SourceResolver(SourceResolution.MODEL, router, embed, threshold=1.0, prior=0.5)
    negation = never_sure.resolve("anything but tables")
    assert negation.sources == () and negation.preferred == ALL_BUT_TABLES  # the excluded source never gains
    assert never_sure.resolve("every source").preferred == ()  # all four: nothing to prefer
    off = SourceResolver(SourceResolution.MODEL, router, embed, prior=0.0)
    assert off.resolve("maybe tables?").preferred == () and "no preference" in off.describe()
    assert SourceResolver(SourceResolution.RULES, router, embed).prior == 0.0
    assert SourceResolver(SourceResolution.FILTER, prior=0.0).prior == 0.0
    with pytest.raises(InvalidInputError, match=r"--router-prior must be in \[0, 1\]"):
        SourceResolver(SourceResolution.MODEL, router, embed, prior=1.5)
    with pytest.raises(InvalidInputError, match="--resolve encoder-only does not use the router"):
        SourceResolver(SourceResolution.ENCODER_ONLY, router, embed, prior=0.2)
    with pytest.raises(InvalidInputError, match="no source router"):
        SourceResolver(SourceResolution.FILTER, prior=0.2)


def test_a_preferred_source_gains_the_bonus_in_an_exact_ranking(tiny_index, encoder,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    router, embed = fake_router(threshold=0.9)
    monkeypatch.setattr(encoder, "router", router)
    monkeypatch.setattr(encoder, "encode_documents", lambda texts, show_progress=False: embed(texts))
    units = len(tiny_index.store)
    plain = Searcher(tiny_index, encoder, SourceResolution.ENCODER_ONLY)
    for prior, k in ((0.3, 7), (0.05, 25), (1.0, units)):
        searcher = Searcher(tiny_index, encoder, router_prior=prior)
        result = searcher.search([Query("when was he born?", instruction="maybe tables?", k=k)])[0]
        assert result.sources == () and result.preferred_sources == (Source.TABLE,)
        assert result.sources_confidence is not None
        bonus = prior * result.sources_confidence
        assert result.preferred_bonus == pytest.approx(bonus)
        # every unit, scored without the router, then the bonus added to the table's: the same top k
        everything = plain.search([Query("when was he born?", instruction="maybe tables?", k=units)])[0]
        expected = sorted(((h.score + (bonus if h.source is Source.TABLE else 0.0), h.unit_id)
                           for h in everything.hits), key=lambda s: (-s[0], s[1]))[:k]
        assert [h.unit_id for h in result.hits] == [u for _, u in expected]
        np.testing.assert_allclose([h.score for h in result.hits], [s for s, _ in expected], atol=1e-5)


def test_rules_mode_is_the_regexes_and_encoder_only_never_filters() -> None:
    router, embed = fake_router()
    for text in ("from tables and infoboxes", "anything but tables", "be concise"):
        rules = SourceResolver(SourceResolution.RULES, router, embed).resolve(text)
        assert rules.sources == tuple(resolve_sources(text)) and rules.confidence is None
    assert SourceResolver(SourceResolution.RULES).resolve("anything but tables").sources == (Source.TABLE,)
    assert SourceResolver(SourceResolution.FILTER).mode is SourceResolution.RULES  # no router: the rules
    assert SourceResolver(SourceResolution.ENCODER_ONLY, router, embed).resolve("anything but tables").sources == ()
    with pytest.raises(InvalidInputError, match="no source router"):
        SourceResolver(SourceResolution.MODEL)


def test_resolver_embeds_each_instruction_once() -> None:
    router, embed = fake_router()
    calls: list[list[str]] = []

    def counting(texts):
        calls.append(list(texts))
        return embed(texts)

    resolver = SourceResolver(SourceResolution.MODEL, router, counting)
    for _ in range(3):
        resolver.resolve("anything but tables")
    assert calls == [["anything but tables"]]


def test_saved_router_round_trips_and_refuses_another_model(tmp_path: Path) -> None:
    router, embed = fake_router(threshold=0.75)
    path = tmp_path / ROUTER_FILE
    router.save(path)
    again = load_router(path, tmp_path, "c" * 64)
    assert isinstance(again, SourceRouter) and again.threshold == 0.75
    x = embed(list(READINGS))
    np.testing.assert_array_equal(again.probabilities(x), router.probabilities(x))
    with pytest.raises(ModelError, match="trained on model"):
        load_router(path, tmp_path, "d" * 64)
    assert find_router(tmp_path, "c" * 64) is not None
    assert find_router(tmp_path / "elsewhere", "e" * 64) is None


def test_searcher_plan_reports_the_resolution(tiny_index, encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    router, embed = fake_router(threshold=0.9)
    monkeypatch.setattr(encoder, "router", router)
    monkeypatch.setattr(encoder, "encode_documents", lambda texts, show_progress=False: embed(texts))
    searcher = Searcher(tiny_index, encoder)
    planned = searcher.plan(Query("where was he born?", instruction="anything but tables"))
    assert planned.sources == ALL_BUT_TABLES and planned.resolved and planned.confidence is not None
    unsure = searcher.plan(Query("q", instruction="maybe tables?"))
    assert unsure.sources == () and not unsure.resolved and unsure.confidence is not None
    explicit = searcher.plan(Query("q", instruction="anything but tables", sources=(Source.TABLE,)))
    assert explicit.sources == (Source.TABLE,) and not explicit.resolved and explicit.confidence is None
    rules = Searcher(tiny_index, encoder, SourceResolution.RULES).plan(Query("q", instruction="anything but tables"))
    assert rules.sources == (Source.TABLE,) and rules.confidence is None
    lenient = Searcher(tiny_index, encoder, router_threshold=0.5).plan(Query("q", instruction="maybe tables?"))
    assert lenient.sources == (Source.TABLE,) and lenient.resolved


@pytest.mark.parametrize("name", bundled_names())
def test_shipped_router_matches_each_bundled_model(name: str) -> None:
    checksum = model_checksum(bundled_model_dir(name))
    path = shipped_router_path(checksum)
    assert path.is_file(), f"no router shipped for {name}; run `retriever train-router --model {name}` ({path.name})"
    router = load_router(path, bundled_model_dir(name), checksum)
    assert router.model_checksum == checksum
    if isinstance(router, TunedRouter):  # adapters and head only: the base weights are the model's
        assert path.stat().st_size < 1_000_000 and router.spec.rank > 0
    else:
        assert isinstance(router, SourceRouter) and router.dimension == 384 and path.stat().st_size < 64_000
    assert len(ROUTER_SOURCES) == 4


def test_bundled_encoder_loads_its_router_and_reads_the_issue_examples(encoder) -> None:
    assert encoder.router is not None
    resolver = SourceResolver.for_encoder(SourceResolution.FILTER, encoder)
    readings = dict(zip(EXAMPLES, resolver.read(list(EXAMPLES)), strict=True))
    wrong = {text: r.sources for text, r in readings.items() if set(r.sources) != set(EXAMPLES[text])}
    assert not wrong, wrong
    # exclusions: never a filter to the excluded source
    for text, allowed in (("anything but tables", ALL_BUT_TABLES), ("search text (not tables)", (Source.TEXT,))):
        assert resolver.read([text])[0].sources == allowed
        assert Source.TABLE not in resolver.resolve(text).sources
    # The shipped router splits this long name in two and reads "the top of the Wikipedia article" as
    # text (benchmarks/RESULTS.md, "Source router"): whatever it filters to keeps the infobox asked for.
    unsure = resolver.resolve("look it up in the summary box at the top of the Wikipedia article")
    assert not unsure.sources or Source.INFOBOX in unsure.sources, unsure


EXAMPLES: dict[str, tuple[Source, ...]] = {
    "use tabular data only!": (Source.TABLE,),
    "retrieve evidence from tables or infoboxes": (Source.TABLE, Source.INFOBOX),
    "be concise": (),
    "from tables": (Source.TABLE,),  # the README's own phrasings, the shortest users type
    "from tables and infoboxes": (Source.TABLE, Source.INFOBOX),
    "search the written articles (not tables or fact lists)": (Source.TEXT,),  # the issue's own examples
}
