"""Verbalizer golden strings, corpus-link anchors, the pairs file and the instruction pool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retriever.errors import CorpusError
from retriever.instructions import default_prompts, resolve_sources
from retriever.linearize import WindowBudget, linearize
from retriever.records import InfoboxRecord, KbRecord, Source, TableRecord, TextRecord
from retriever.training.anchors import (
    link_anchor,
    read_pairs_file,
    verbalize,
    verbalize_infobox,
    verbalize_row,
    verbalize_triple,
)
from retriever.training.instruction_pool import InstructionSampler, all_phrasings

TABLE = TableRecord(id="t1", title="Sally Kirkland", section="Filmography", header=("Year", "Title", "", "Notes"),
                    rows=(("2004", "Bloodlines", "Joyce", ""), ("2005", "Other", "", "")),
                    row_links=(("p1", "p2"), ()))
TRIPLE = KbRecord(id="k1", subject="Hoskinson Park", predicate="located in the administrative territorial entity",
                  object="Jefferson County", parent="i1")
INFOBOX = InfoboxRecord(id="i1", title="Hoskinson Park",
                        attributes=(("Type", "park"), ("Location", "Jefferson County"), ("Area", "")))
PASSAGE = TextRecord(id="p1", title="Bloodlines", text="Bloodlines is a 2004 film.")


def test_verbalizer_templates():
    assert verbalize_row(TABLE, 0) == ('The table "Sally Kirkland" (Filmography) has a row where Year is 2004, '
                                       'Title is Bloodlines and one entry reads Joyce.')
    assert verbalize_row(TABLE, 1) == ('The table "Sally Kirkland" (Filmography) has a row where Year is 2005 '
                                       'and Title is Other.')
    assert verbalize_triple(TRIPLE) == ("The located in the administrative territorial entity of Hoskinson Park is "
                                        "Jefferson County.")
    assert verbalize_infobox(INFOBOX) == ("According to its infobox, the Type of Hoskinson Park is park; the Location "
                                          "of Hoskinson Park is Jefferson County.")
    assert verbalize_infobox(INFOBOX, "Hoskinson Park | Location: Jefferson County") == (
        "According to its infobox, the Location of Hoskinson Park is Jefferson County.")


def test_verbalize_uses_the_unit_of_the_record():
    units = linearize(TABLE)
    assert [u.part for u in units] == [0, 1]
    assert verbalize(TABLE, units[1]) == verbalize_row(TABLE, 1)
    assert verbalize(PASSAGE, linearize(PASSAGE)[0]) is None


def test_link_anchors_follow_row_links_and_parents():
    records = {r.id: r for r in (TABLE, TRIPLE, INFOBOX, PASSAGE)}
    units = [u for r in records.values() for u in linearize(r, WindowBudget())]
    by_record: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_record.setdefault(u.record_id, []).append(i)
    row0, row1 = (units[i] for i in by_record["t1"])
    # p2 is not loaded, so every pick lands on p1.
    found = link_anchor(TABLE, row0, records, units, by_record, pick=1)
    assert found == ("Bloodlines: Bloodlines is a 2004 film.", "p1")
    assert link_anchor(TABLE, row1, records, units, by_record, pick=0) is None
    text, key = link_anchor(TRIPLE, units[by_record["k1"][0]], records, units, by_record, pick=0)
    assert key == "i1#0" and "Location: Jefferson County" in text
    assert link_anchor(INFOBOX, units[by_record["i1"][0]], records, units, by_record, pick=0) is None


def test_pairs_file_is_read_and_validated(tmp_path):
    good = tmp_path / "pairs.json"
    good.write_text(json.dumps([{"source": "info", "raw_data": "David Herman, Children, 2",
                                 "nl_text": "David Herman has two children.", "index": 3}]))
    [pair] = read_pairs_file(good)
    assert pair.source is Source.INFOBOX and pair.nl_text == "David Herman has two children."
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"source": "kb", "raw_data": "a, b, c", "nl_text": "ok"},
                               {"source": "kb", "raw_data": "a, b, c"}]))
    with pytest.raises(CorpusError, match=r"bad.json:2: field 'nl_text'"):
        read_pairs_file(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"source": "video", "raw_data": "x", "nl_text": "y"}]))
    with pytest.raises(CorpusError, match="unknown source 'video'"):
        read_pairs_file(wrong)


def test_the_bundled_compmix_pairs_file_reads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "compmix" / "data_2_text_subset.json"
    if not path.is_file():
        pytest.skip("CompMix sample not present")
    pairs = read_pairs_file(path)
    assert len(pairs) >= 50
    assert {p.source for p in pairs} >= {Source.KB, Source.TABLE, Source.INFOBOX}


@pytest.mark.parametrize("source", [None, *Source])
def test_every_phrasing_resolves_to_its_source(source):
    for phrasing in all_phrasings(source):
        found = resolve_sources(phrasing)
        if source is None:
            assert found in ([], list(Source)), phrasing
        else:
            assert found == [source], phrasing


def test_sampler_is_seeded_and_uses_the_saved_prompts_as_canonical():
    sampler = InstructionSampler(general_prob=0.3, canonical_prob=0.5)
    draw = [sampler.sample([Source.TABLE, Source.TEXT], np.random.default_rng(4)) for _ in range(1)]
    again = [sampler.sample([Source.TABLE, Source.TEXT], np.random.default_rng(4)) for _ in range(1)]
    assert draw == again
    rng = np.random.default_rng(0)
    seen = [sampler.sample([Source.TABLE, Source.TEXT], rng) for _ in range(400)]
    prompts = set(default_prompts().values())
    assert all(s.text in prompts for s in seen if s.canonical)
    assert {s.source for s in seen} == {None, Source.TABLE, Source.TEXT}
    general = sum(s.source is None for s in seen) / len(seen)
    assert 0.2 < general < 0.4


def test_grammar_phrasings_come_from_the_router_train_half_and_zero_changes_nothing():
    from retriever.training.instruction_pool import ROUTER_NAMES, ROUTER_UNNAMED

    before = InstructionSampler(general_prob=0.3, canonical_prob=0.5)
    zero = InstructionSampler(general_prob=0.3, canonical_prob=0.5, grammar_prob=0.0)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert [before.sample([Source.KB], rng_a) for _ in range(200)] == [zero.sample([Source.KB], rng_b)
                                                                         for _ in range(200)]
    grammar = InstructionSampler(general_prob=0.3, canonical_prob=0.0, grammar_prob=1.0)
    rng = np.random.default_rng(2)
    seen = [grammar.sample([Source.KB], rng) for _ in range(300)]
    unnamed = {u.lower().rstrip(".!:") for u in ROUTER_UNNAMED["train"]}
    for s in seen:
        text = s.text.lower()
        if s.source is None:
            assert text.removesuffix(" please.").rstrip(".!:") in unnamed, s.text
        else:
            assert any(n.lower() in text for n in ROUTER_NAMES["train"][Source.KB]), s.text
            assert not any(n.lower() in text for n in ROUTER_NAMES["dev"][Source.KB]), s.text
    assert len({s.text for s in seen}) > 50  # far more variety than SOURCE_PHRASINGS
