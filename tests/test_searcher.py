from __future__ import annotations

import pytest

from retriever.errors import InvalidInputError
from retriever.instructions import resolve_sources, source_instruction
from retriever.query import Query, SourceResolution
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
    assert encoder.instruction_tuned is False  # the bundled model saved no query prompts
    searcher = Searcher(tiny_index, encoder)
    assert searcher.plan(Query("q", sources=(Source.TABLE,))).instruction == ""
    monkeypatch.setattr(encoder, "instruction_tuned", True)
    assert searcher.plan(Query("q", sources=(Source.TABLE,))).instruction == source_instruction(Source.TABLE)
    assert searcher.plan(Query("q")).instruction == encoder.prompts["query"]
    assert searcher.plan(Query("q", instruction="")).instruction == ""
