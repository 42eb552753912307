"""Golden strings: these are the exact texts that get embedded."""

from __future__ import annotations

from retriever.linearize import LINEARIZERS, Unit, WindowBudget, linearize, pack_windows
from retriever.records import InfoboxRecord, KbRecord, Source, TableRecord, TextRecord


def test_text_passage() -> None:
    record = TextRecord(id="p1", title="Eek! The Cat", text="Eek ! The Cat  is an\nanimated series .")
    assert linearize(record) == [Unit("p1", Source.TEXT, 0, "Eek! The Cat", "Eek! The Cat: Eek ! The Cat is an animated series .")]


def test_text_without_title() -> None:
    assert linearize(TextRecord(id="p", text="Just text."))[0].text == "Just text."


def test_table_one_unit_per_row_empty_cells_left_out() -> None:
    record = TableRecord(id="tab", title="\"Weird Al\" Yankovic", section="Filmography -- Television",
                         header=("Year", "Title", "", "Notes"),
                         rows=(("1997", "Eek ! The Cat", "Himself", ""), ("", "", " ", ""), ("2003", "The Simpsons", "", "Eps .")))
    units = linearize(record)
    assert [u.part for u in units] == [0, 2]  # the empty row 1 gives no unit; indexes are kept
    assert units[0].text == ('"Weird Al" Yankovic, Filmography -- Television: Year is 1997, Title is Eek ! The Cat, Himself')
    assert units[1].text == ('"Weird Al" Yankovic, Filmography -- Television: Year is 2003, Title is The Simpsons, Notes is Eps .')
    assert all(u.source is Source.TABLE and u.record_id == "tab" for u in units)


def test_table_without_section_and_extra_cells() -> None:
    # A record built in code; reading a corpus refuses rows longer than the header (tests/test_records.py).
    record = TableRecord(id="t", title="T", header=("a",), rows=(("1", "extra"),))
    assert linearize(record)[0].text == "T: a is 1, extra"


def test_kb_triple() -> None:
    record = KbRecord(id="k", subject="Jenson Button", predicate="was born in", object="Frome, Somerset, England")
    assert linearize(record) == [Unit("k", Source.KB, 0, "Jenson Button", "Jenson Button, was born in, Frome, Somerset, England")]


def test_infobox() -> None:
    record = InfoboxRecord(id="i", title="In Rainbows", attributes=(("Released", "10 October 2007"), ("Length", "42:39"), ("Empty", "")))
    assert linearize(record)[0].text == "In Rainbows | Released: 10 October 2007 | Length: 42:39"


def test_long_infobox_is_windowed_and_every_window_repeats_the_title() -> None:
    pairs = tuple((f"key{i}", "word " * 5) for i in range(20))  # 6 words per pair, 120 in all
    units = linearize(InfoboxRecord(id="i", title="Big Box", attributes=pairs), WindowBudget(max_tokens=40))
    assert len(units) >= 3
    assert [u.part for u in units] == list(range(len(units)))
    assert all(u.text.startswith("Big Box | key") for u in units)
    assert all(len(u.text.split()) <= 40 for u in units)
    joined = " | ".join(u.text.removeprefix("Big Box | ") for u in units)
    assert joined == " | ".join(f"key{i}: " + " ".join(["word"] * 5) for i in range(20))


def test_long_text_windows_cover_every_word_once() -> None:
    words = [f"w{i}" for i in range(100)]
    units = linearize(TextRecord(id="p", title="Title", text=" ".join(words)), WindowBudget(max_tokens=30))
    assert len(units) == 4  # 100 words + a 1-word prefix in windows of at most 30 words
    assert all(u.text.startswith("Title: ") for u in units)
    assert [w for u in units for w in u.text.removeprefix("Title: ").split()] == words
    sizes = [len(u.text.split()) for u in units]
    assert max(sizes) - min(sizes) <= 2, sizes  # balanced, no scrap window at the end


def test_pack_windows_single_oversized_piece_stands_alone() -> None:
    budget = WindowBudget(max_tokens=5)
    assert pack_windows("T | ", ["a b c d e f g", "h"], " | ", budget) == ["T | a b c d e f g", "T | h"]


def test_registry_covers_every_source() -> None:
    assert set(LINEARIZERS) == set(Source)
    assert all(lin.source is source for source, lin in LINEARIZERS.items())


def test_batched_linearization_equals_one_record_at_a_time_and_counts_the_batch_in_one_call() -> None:
    from retriever.linearize import linearize_all, linearize_batch

    records = [
        TextRecord(id="short", title="T", text="a few words"),
        TextRecord(id="long", title="Long", text=" ".join(f"w{i}" for i in range(100))),
        TableRecord(id="tab", title="Tab", section="", header=("h1", "h2"), rows=(("a", "b"), ("c", "d"))),
        KbRecord(id="kb", subject="S", predicate="p", object="o"),
        InfoboxRecord(id="box", title="Box", attributes=(("k", "v"),)),
        InfoboxRecord(id="bigbox", title="Big", attributes=tuple((f"k{i}", "word " * 5) for i in range(20))),
        TextRecord(id="short", title="T", text="a few words"),  # the same text twice
    ]
    calls: list[list[str]] = []

    def counting(texts):
        calls.append(list(texts))
        return [len(t.split()) for t in texts]

    one_at_a_time = [linearize(r, WindowBudget(max_tokens=30)) for r in records]
    budget = WindowBudget(max_tokens=30, count=counting)
    calls.clear()
    batched = linearize_batch(records, budget)
    assert batched == one_at_a_time
    singles = [LINEARIZERS[r.source].single_window(r) for r in records]
    assert calls[0] == [s for s in singles if s is not None]  # every budget check of the batch in the first call
    # after it, only the windowing of the two records too long for one window is counted
    # pack_windows: the long text's words (its joiner, a space, costs nothing), the big box's pairs and joiner
    assert len(calls) == 1 + 1 + 2
    assert list(linearize_all(records, budget)) == [u for units in one_at_a_time for u in units]


def test_own_counter_counts_as_the_tokenizer_call_does(encoder) -> None:
    from retriever.tokens import count_with, own_counter

    texts = ["", "Radiohead: In Rainbows", "naïve café – 東京 " * 3, "word " * 700, "x" * 3000,
             "Released: 10 October 2007 | Length: 42:39"]
    tokenizer = encoder.model.tokenizer
    expected = count_with(tokenizer, texts)
    assert max(expected) > 512  # longer than the model's maximum: counted, not truncated
    counter = encoder.info.token_counter()
    assert counter(texts) == expected and counter([]) == []
    import copy

    assert own_counter(copy.deepcopy(tokenizer))(texts) == expected
