from __future__ import annotations

from dataclasses import replace

import pytest

from retriever.errors import InvalidInputError
from retriever.instructions import resolve_sources, source_instruction
from retriever.query import GROUP_OVERFETCH, Mode, Query, SourceResolution
from retriever.records import Source
from retriever.searcher import Searcher


@pytest.fixture(scope="module")
def searcher(tiny_index, encoder) -> Searcher:
    return Searcher(tiny_index, encoder)


def test_exact_source_filter_returns_k_units_of_that_source(searcher) -> None:
    for source in Source:
        available = searcher.index.manifest.counts[source.value]
        result = searcher.search([Query("when was it released?", sources=(source,), k=7)])[0]
        assert len(result.hits) == min(7, available)
        assert {h.source for h in result.hits} == {source}
        assert result.sources == (source,)
        assert not result.resolved


def test_hits_are_sorted_by_score(searcher) -> None:
    hits = searcher.search([Query("Jenson Button birthplace", k=20)])[0].hits
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.unit_id for h in hits}) == len(hits)


def test_instruction_naming_sources_is_resolved_into_a_filter(searcher) -> None:
    result = searcher.search([Query("what year?", instruction="retrieve evidence from tables and infoboxes")])[0]
    assert result.resolved
    assert set(result.sources) == {Source.TABLE, Source.INFOBOX}
    assert {h.source for h in result.hits} <= {Source.TABLE, Source.INFOBOX}


def test_encoder_only_resolution_does_not_filter(tiny_index, encoder) -> None:
    searcher = Searcher(tiny_index, encoder, resolution=SourceResolution.ENCODER_ONLY)
    result = searcher.search([Query("who?", instruction=source_instruction(Source.KB), k=60)])[0]
    assert not result.resolved and result.sources == ()
    assert len({h.source for h in result.hits}) > 1


def test_batch_results_keep_input_order_and_match_single_queries(searcher) -> None:
    queries = [Query("album release date", k=5), Query("football club", sources=(Source.TABLE,), k=5), Query("born in", sources=(Source.KB,), k=5)]
    batch = searcher.search(queries)
    for query, result in zip(queries, batch):
        single = searcher.search([query])[0]
        assert [h.unit_id for h in result.hits] == [h.unit_id for h in single.hits]
        assert [h.score for h in result.hits] == pytest.approx([h.score for h in single.hits], abs=1e-5)


def test_score_threshold(searcher) -> None:
    hits = searcher.search([Query("album", k=20, score_threshold=0.2)])[0].hits
    assert all(h.score >= 0.2 for h in hits)


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_query_is_invalid(searcher, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="must not be empty"):
        searcher.search([Query(bad, k=3)])


def test_k_must_be_positive(searcher) -> None:
    with pytest.raises(InvalidInputError, match="k must be >= 1"):
        searcher.search([Query("x", k=0)])


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("retrieve evidence from table sources", [Source.TABLE]),
        ("from tables and infoboxes", [Source.TABLE, Source.INFOBOX]),
        ("use the knowledge base or passages", [Source.TEXT, Source.KB]),
        ("Given a question, retrieve relevant evidence that can answer the question from all knowledge sources:", []),
        ("be concise", []),
        (None, []),
    ],
)
def test_resolve_sources(instruction, expected) -> None:
    assert resolve_sources(instruction) == expected


def test_default_instruction_depends_on_whether_the_model_was_instruction_tuned(tiny_index, encoder, monkeypatch) -> None:
    assert encoder.instruction_tuned is True  # the default model saved its query prompts
    searcher = Searcher(tiny_index, encoder)
    assert searcher.plan(Query("q", sources=(Source.TABLE,))).instruction == source_instruction(Source.TABLE)
    assert searcher.plan(Query("q")).instruction == encoder.prompts["query"]
    assert searcher.plan(Query("q", instruction="")).instruction == ""
    monkeypatch.setattr(encoder, "instruction_tuned", False)  # as the zero-shot model, which saved none
    assert searcher.plan(Query("q", sources=(Source.TABLE,))).instruction == ""
    assert searcher.plan(Query("q")).instruction == ""


def _records_in_order(hits) -> list[tuple[Source, str]]:
    return list(dict.fromkeys((h.source, h.record_id) for h in hits))


def _grouped_oracle(searcher: Searcher, query: Query, depth: int | None = None) -> list[tuple[int, float]]:
    """Group the ungrouped ranking (default: all of it) in Python: records by best unit, units best first."""
    plain = replace(query, group_by_record=False, max_per_record=1, k=depth or len(searcher.store))
    full = searcher.search([plain])[0].hits
    by_record: dict[tuple[Source, str], list] = {}
    for hit in full:
        by_record.setdefault((hit.source, hit.record_id), []).append(hit)
    records = list(by_record.values())[:query.k]
    return [(h.unit_id, h.score) for units in records for h in units[:query.max_per_record]]


@pytest.mark.parametrize("max_per_record", [1, 3])
def test_group_by_record_returns_k_records_best_unit_first(searcher, max_per_record) -> None:
    query = Query("how many goals did he score in the season", sources=(Source.TABLE,), k=3,
                  group_by_record=True, max_per_record=max_per_record)
    ungrouped = searcher.search([replace(query, group_by_record=False, max_per_record=1, k=10)])[0].hits
    assert len(_records_in_order(ungrouped)) < 10  # rows of one table crowd the plain top-10
    hits = searcher.search([query])[0].hits
    records = _records_in_order(hits)
    assert len(records) == 3
    counts = {r: sum(1 for h in hits if (h.source, h.record_id) == r) for r in records}
    assert max(counts.values()) <= max_per_record
    if max_per_record > 1:
        assert max(counts.values()) > 1
    # each record's units are together, best first; records ordered by their best unit
    assert [(h.source, h.record_id) for h in hits] == [r for r in records for _ in range(counts[r])]
    firsts = [next(h for h in hits if (h.source, h.record_id) == r).score for r in records]
    assert firsts == sorted(firsts, reverse=True)
    assert [(h.unit_id, h.score) for h in hits] == _grouped_oracle(searcher, query)


def test_group_by_record_searches_deeper_until_k_records_or_the_end(searcher) -> None:
    store = searcher.store
    tables = {store.record_id(i) for i in range(len(store)) if store.source_of(i) is Source.TABLE}
    rows = sum(1 for i in range(len(store)) if store.source_of(i) is Source.TABLE)
    k = len(tables)
    assert rows > k * GROUP_OVERFETCH  # the first fetch (k * 4 units) cannot hold every table
    every = Query("list of matches", sources=(Source.TABLE,), k=k, group_by_record=True)
    hits = searcher.search([every])[0].hits
    assert {h.record_id for h in hits} == tables and len(hits) == k
    assert [(h.unit_id, h.score) for h in hits] == _grouped_oracle(searcher, every)
    # asking for more records than there are returns them all
    more = searcher.search([replace(every, k=k + 5)])[0].hits
    assert [h.unit_id for h in more] == [h.unit_id for h in hits]


@pytest.mark.parametrize("mode", [Mode.BM25, Mode.HYBRID])
def test_group_by_record_in_every_mode(tiny_index, encoder, mode) -> None:
    from retriever.index.lexical import LexicalIndex

    lexical = LexicalIndex.build(tiny_index.store.texts)
    searcher = Searcher(tiny_index, encoder, lexical=lexical)
    query = Query("goals season club", k=4, mode=mode, group_by_record=True, max_per_record=2)
    hits = searcher.search([query])[0].hits
    assert len(_records_in_order(hits)) == 4
    # hybrid fuses rankings cut at the depth searched (the fusion depth, 100, here): the same cut for the oracle
    depth = searcher.plan(query).depth if mode is Mode.HYBRID else None
    assert [(h.unit_id, h.score) for h in hits] == _grouped_oracle(searcher, query, depth)


def test_max_per_record_must_be_positive(searcher) -> None:
    with pytest.raises(InvalidInputError, match="max_per_record"):
        searcher.plan(Query("x", group_by_record=True, max_per_record=0))
    with pytest.raises(InvalidInputError, match="max_per_record: only with group_by_record"):
        searcher.plan(Query("x", max_per_record=2))
