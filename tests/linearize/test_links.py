"""Link context: passages start with the table rows that link to them."""

from __future__ import annotations

from retriever.linearize import WindowBudget, collect_links, linearize, linearize_all
from retriever.linearize.links import ROW_WORDS
from retriever.records import Source, TableRecord, TextRecord

CLUBS = TableRecord(id="t1", title="League", section="1995", header=("Pos", "Club"),
                    rows=(("1", "Reds"), ("3", "Blues"), ("4", "Greens")),
                    row_links=(("p_reds",), ("p_blues",), ("p_greens", "p_blues")))
CUPS = TableRecord(id="t2", title="Cup", header=("Year", "Winner"), rows=(("1990", "Blues"),),
                   row_links=(("p_blues",),))
BLUES = TextRecord(id="p_blues", title="Blues FC", text="Blues FC is a football club.")
LONELY = TextRecord(id="p_alone", title="Alone", text="Nobody links here.")


def test_a_passage_starts_with_the_rows_that_link_to_it_in_corpus_order_up_to_the_cap() -> None:
    links = collect_links([CLUBS, BLUES, CUPS, LONELY], rows=2)
    assert links is not None
    [unit] = linearize(BLUES, WindowBudget(links=links))
    assert unit.text == ("Blues FC: Listed in: League, 1995: Pos is 3, Club is Blues; League, 1995: Pos is 4, "
                         "Club is Greens. Blues FC is a football club.")
    assert unit.record_id == "p_blues" and unit.source is Source.TEXT and unit.title == "Blues FC"
    # the third linking row (the cup) is past the cap of 2
    assert "Cup" not in unit.text
    [one] = linearize(BLUES, WindowBudget(links=collect_links([CLUBS, CUPS], rows=1)))
    assert one.text.startswith("Blues FC: Listed in: League, 1995: Pos is 3, Club is Blues. Blues FC")


def test_unlinked_passages_other_sources_and_zero_rows_are_unchanged() -> None:
    links = collect_links([CLUBS, CUPS, BLUES, LONELY], rows=2)
    plain = WindowBudget()
    assert linearize(LONELY, WindowBudget(links=links)) == linearize(LONELY, plain)
    assert linearize(CLUBS, WindowBudget(links=links)) == linearize(CLUBS, plain)  # rows carry nothing
    assert collect_links([CLUBS, BLUES], rows=0) is None
    seen = []
    assert collect_links((seen.append(r) or r for r in [CLUBS, BLUES]), rows=0) is None
    assert seen == [CLUBS, BLUES]  # consumed all the same: a build's validation pass reads every record


def test_batched_linearization_applies_the_same_context() -> None:
    links = collect_links([CLUBS, CUPS, BLUES, LONELY], rows=2)
    budget = WindowBudget(links=links)
    batched = list(linearize_all([CLUBS, BLUES, LONELY], budget))
    one_by_one = [u for r in (CLUBS, BLUES, LONELY) for u in linearize(r, budget)]
    assert batched == one_by_one
    assert sum(u.text.startswith("Blues FC: Listed in: ") for u in batched) == 1


def test_a_long_row_is_cut_and_a_long_passage_keeps_the_context_in_its_first_window_only() -> None:
    wide = TableRecord(id="w", title="Wide", header=tuple(f"c{i}" for i in range(100)),
                       rows=(tuple(f"v{i}" for i in range(100)),), row_links=(("p",),))
    links = collect_links([wide], rows=2)
    assert links is not None
    [row] = links.by_passage["p"]
    assert len(row.split()) == ROW_WORDS
    long = TextRecord(id="p", title="T", text=" ".join(f"w{i}" for i in range(200)))
    units = linearize(long, WindowBudget(max_tokens=60, links=links))
    assert len(units) > 2
    assert units[0].text.startswith("T: Listed in: Wide: c0 is v0")
    assert not any("Listed in" in u.text for u in units[1:])
    assert all(u.text.startswith("T: ") for u in units)
    words = " ".join(u.text.removeprefix("T: ") for u in units).split()
    assert words[-200:] == [f"w{i}" for i in range(200)]  # every word of the passage, once, in order


def test_a_row_linking_a_passage_twice_is_carried_once_and_empty_links_are_ignored() -> None:
    table = TableRecord(id="t", title="T", header=("a", "b"), rows=(("x", "y"), ("z", "")),
                        row_links=(("p", "p"), ()))
    links = collect_links([table], rows=3)
    assert links is not None and links.by_passage == {"p": ("T: a is x, b is y",)}
