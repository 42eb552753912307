"""The columnar unit store: round trips, streaming writes, memory mapping and every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import retriever.index.store as store_module
from retriever.errors import CorruptIndexError
from retriever.index.store import SOURCE_CODE, UNITS_NAME, UNITS_SCHEMA, UnitStore, UnitStoreWriter
from retriever.linearize import Unit
from retriever.records import Source

UNITS = [
    Unit("t1", Source.TEXT, 0, "Zürich", "Zürich is the largest city in Switzerland."),
    Unit("t1", Source.TEXT, 1, "Zürich", "Its old town ∑ straddles the Limmat 🏙️."),
    Unit("t2", Source.TEXT, 0, "", "A passage with an empty title."),
    Unit("tab", Source.TABLE, 0, "東京 stations", "station: 新宿 | lines: 12"),
    Unit("tab", Source.TABLE, 3, "東京 stations", "station: e\u0301clair | lines: 0"),
    Unit("Q42", Source.KB, 0, "", "Douglas Adams | occupation | writer"),
    Unit("box", Source.INFOBOX, 0, "Ada Lovelace", "born: 10 December 1815"),
    Unit("box", Source.INFOBOX, 2, "", ""),
]


def units_of(store: UnitStore) -> list[Unit]:
    return [store.unit(i) for i in range(len(store))]


def many_units(n: int, start: int = 0) -> list[Unit]:
    sources = list(Source)
    return [Unit(f"r{i}", sources[i * len(sources) // max(n, 1)], i % 5, f"title {i}" if i % 3 else "", f"text {i} ü")
            for i in range(start, start + n)]


def test_round_trip_of_every_source_with_unicode_and_empty_titles(tmp_path: Path) -> None:
    path = tmp_path / UNITS_NAME
    UnitStore.from_units(UNITS).write(path)
    store = UnitStore.open(path, expected=len(UNITS))
    assert len(store) == len(UNITS)
    assert units_of(store) == UNITS
    assert list(store.record_ids) == [u.record_id for u in UNITS]
    assert list(store.titles) == [u.title for u in UNITS]
    assert list(store.texts) == [u.text for u in UNITS]
    assert store.sources.dtype == np.uint8 and store.sources.tolist() == [SOURCE_CODE[u.source] for u in UNITS]
    assert store.parts.dtype == np.int32 and store.parts.tolist() == [u.part for u in UNITS]
    for i, unit in enumerate(UNITS):
        assert (store.record_id(i), store.source_of(i), store.title(i), store.text(i)) == \
            (unit.record_id, unit.source, unit.title, unit.text)
    assert units_of(UnitStore.from_units(UNITS)) == UNITS
    assert [p.name for p in tmp_path.iterdir()] == [UNITS_NAME]  # the temporary file was renamed away


def test_empty_store_round_trips(tmp_path: Path) -> None:
    UnitStore.from_units([]).write(tmp_path / UNITS_NAME)
    store = UnitStore.open(tmp_path / UNITS_NAME, expected=0)
    assert len(store) == 0 and list(store.texts) == [] and store.sources.shape == (0,)


def test_streaming_writer_with_several_batches_equals_from_units(tmp_path: Path) -> None:
    units = many_units(40)
    sizes = [7, 0, 13, 1, 19]
    path = tmp_path / UNITS_NAME
    with UnitStoreWriter(path) as writer:
        start = 0
        for size in sizes:
            writer.write(units[start:start + size])
            start += size
            assert writer.count == start
    streamed = UnitStore.open(path, expected=len(units))
    whole = UnitStore.from_units(units)
    assert units_of(streamed) == units_of(whole) == units
    assert list(streamed.texts) == list(whole.texts)
    assert np.array_equal(streamed.sources, whole.sources) and np.array_equal(streamed.parts, whole.parts)
    with pytest.raises(ValueError, match="closed"):
        writer.write(units[:1])


def test_writer_splits_a_batch_whose_strings_overflow_one_arrow_array(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_array = pa.array

    def overflowing(values, type=None):  # as pa.array does past 2 GiB of strings: a chunked result
        array = real_array(values, type=type)
        return pa.chunked_array([array]) if type == pa.string() and len(array) > 4 else array

    monkeypatch.setattr(pa, "array", overflowing)
    units = many_units(11)
    with UnitStoreWriter(tmp_path / UNITS_NAME) as writer:
        writer.write(units)
    monkeypatch.undo()
    assert writer.count == 11
    assert units_of(UnitStore.open(tmp_path / UNITS_NAME, expected=11)) == units


def test_lazy_columns_are_read_only_sequences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_ITER_ROWS", 3)  # iteration crosses slice and batch boundaries
    units = many_units(20)
    path = tmp_path / UNITS_NAME
    with UnitStoreWriter(path) as writer:
        writer.write(units[:8])
        writer.write(units[8:])
    store = UnitStore.open(path, expected=20)
    texts = [u.text for u in units]
    assert list(store.texts) == texts
    assert len(store.texts) == 20
    assert store.texts[-1] == texts[-1] and store.texts[9] == texts[9]
    assert store.texts[5:12] == texts[5:12] and store.texts[::7] == texts[::7] and store.texts[18:40] == texts[18:]
    assert texts[10] in store.texts and store.record_ids.index("r13") == 13
    with pytest.raises(IndexError):
        store.texts[20]
    with pytest.raises(TypeError):
        store.texts[0] = "x"  # type: ignore[index]
    with pytest.raises(ValueError):
        store.sources[0] = 3
    with pytest.raises(ValueError):
        store.parts[0] = 3


def test_write_may_replace_the_file_the_store_is_mapped_from(tmp_path: Path) -> None:
    path = tmp_path / UNITS_NAME
    UnitStore.from_units(UNITS).write(path)
    store = UnitStore.open(path, expected=len(UNITS))
    store.write(path)
    assert units_of(store) == UNITS
    assert units_of(UnitStore.open(path, expected=len(UNITS))) == UNITS


def resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_open_memory_maps_and_reads_only_the_rows_asked_for(tmp_path: Path) -> None:
    n, batch, filler = 200_000, 10_000, "x" * 400
    path = tmp_path / UNITS_NAME
    with UnitStoreWriter(path) as writer:
        for start in range(0, n, batch):
            writer.write([Unit(f"r{i}", Source.TEXT if i < n // 2 else Source.KB, i % 7, f"t{i}", f"{i} {filler}")
                          for i in range(start, start + batch)])
    text_bytes = n * len(filler)
    before = resident_bytes()
    store = UnitStore.open(path, expected=n)
    rows = [0, 1, batch - 1, batch, n // 2 - 1, n // 2, n - 1]
    got = [store.unit(i) for i in rows]
    grown = resident_bytes() - before
    assert grown < text_bytes // 8, f"opening grew RSS by {grown} bytes for {text_bytes} bytes of text"
    assert got == [Unit(f"r{i}", Source.TEXT if i < n // 2 else Source.KB, i % 7, f"t{i}", f"{i} {filler}")
                   for i in rows]
    assert len(store) == len(store.texts) == n
    assert int(store.sources.sum()) == (n // 2) * SOURCE_CODE[Source.KB]
    # A server reads hits all over the file: through the map, every read made the kernel map up to
    # 64 KiB around it (fault-around), and 2,000 of them made most of the text column resident.
    before = resident_bytes()
    picked = np.random.default_rng(7).choice(n, size=2_000, replace=False).tolist()
    assert [store.text(i) for i in picked] == [f"{i} {filler}" for i in picked]
    assert [store.record_id(i) for i in picked[:50]] == [f"r{i}" for i in picked[:50]]
    assert store.titles[-1] == f"t{n - 1}" and store.texts[-n] == f"0 {filler}"
    grown = resident_bytes() - before
    assert grown < text_bytes // 8, f"2,000 random reads grew RSS by {grown} bytes for {text_bytes} bytes of text"


def write_table(path: Path, columns: dict[str, pa.Array]) -> Path:
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def good_columns() -> dict[str, pa.Array]:
    return {"record_id": pa.array(["a", "b", "c"]), "source": pa.array([0, 1, 3], pa.uint8()),
            "part": pa.array([0, 0, 2], pa.int32()), "title": pa.array(["", "T", ""]), "text": pa.array(["x", "y", "z"])}


def truncated(path: Path) -> None:
    UnitStore.from_units(UNITS).write(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def footer_cut(path: Path) -> None:
    UnitStore.from_units(UNITS).write(path)
    path.write_bytes(path.read_bytes()[:-8])


def writer_never_closed(path: Path) -> None:
    writer = UnitStoreWriter(path)
    writer.write(UNITS)
    writer.abort()


def writer_raised(path: Path) -> None:
    with pytest.raises(RuntimeError), UnitStoreWriter(path) as writer:
        writer.write(UNITS)
        raise RuntimeError("encoder failed")


def not_arrow(path: Path) -> None:
    path.write_text('["t1", "text", 0, "", "a"]\n')


def missing(path: Path) -> None:
    pass


def wrong_type(path: Path) -> None:
    write_table(path, {**good_columns(), "part": pa.array([0, 0, 2], pa.int64())})


def binary_text(path: Path) -> None:
    write_table(path, {**good_columns(), "text": pa.array([b"x", b"y", b"z"])})


def missing_column(path: Path) -> None:
    columns = good_columns()
    del columns["title"]
    write_table(path, columns)


def source_nine(path: Path) -> None:
    write_table(path, {**good_columns(), "source": pa.array([0, 9, 3], pa.uint8())})


def null_text(path: Path) -> None:
    write_table(path, {**good_columns(), "text": pa.array(["x", None, "z"])})


@pytest.mark.parametrize(("damage", "expected", "message"), [
    (truncated, len(UNITS), "not a complete Arrow IPC unit store"),
    (footer_cut, len(UNITS), "not a complete Arrow IPC unit store"),
    (writer_never_closed, len(UNITS), "not a complete Arrow IPC unit store"),
    (writer_raised, len(UNITS), "not a complete Arrow IPC unit store"),
    (not_arrow, 1, "not a complete Arrow IPC unit store"),
    (missing, 1, "not a complete Arrow IPC unit store"),
    (wrong_type, 3, "column 'part' has type int64, expected int32"),
    (binary_text, 3, "column 'text' has type binary"),
    (missing_column, 3, r"columns \['record_id', 'source', 'part', 'text'\]"),
    (source_nine, 3, "column 'source' of unit 1 is 9, expected 0-3"),
    (null_text, 3, "column 'text' has null values"),
    (lambda path: write_table(path, good_columns()), 4, "3 units, manifest says 4"),
])
def test_damaged_stores_are_refused_naming_the_file(tmp_path: Path, damage, expected: int, message: str) -> None:
    path = tmp_path / UNITS_NAME
    damage(path)
    with pytest.raises(CorruptIndexError, match=message) as info:
        UnitStore.open(path, expected=expected)
    assert str(path) in str(info.value)


def test_the_good_table_of_the_refusal_cases_opens(tmp_path: Path) -> None:
    """The refusal cases differ from a store that opens in the one damaged place only."""
    store = UnitStore.open(write_table(tmp_path / UNITS_NAME, good_columns()), expected=3)
    assert [store.source_of(i) for i in range(3)] == [Source.TEXT, Source.TABLE, Source.INFOBOX]
    assert UNITS_SCHEMA.names == list(good_columns())


def mapped_resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[:1] == ["Rss:"]:
                total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs /proc (Linux)")
def test_an_open_store_keeps_no_page_of_its_file_mapped_while_hits_are_read(tmp_path: Path) -> None:
    # Reading the table at open faults pages of every record batch in (2 MiB each on a 10M-unit
    # store); the store lets them go, and reads hits' offsets and bytes with pread, so a server's
    # resident set does not grow with the file however many hits it reads.
    n, batch = 50_000, 4_096
    path = (tmp_path / UNITS_NAME).resolve()
    with UnitStoreWriter(path) as writer:
        for start in range(0, n, batch):
            writer.write([Unit(f"r{i}", Source.TEXT, i % 3, f"t{i}", f"{i} " + "y" * (i % 500))
                          for i in range(start, min(n, start + batch))])
    store = UnitStore.open(path, expected=n)
    assert mapped_resident_kib(path) == 0
    picked = np.random.default_rng(3).choice(n, size=2_000, replace=False).tolist()
    assert [store.unit(i) for i in picked] == [Unit(f"r{i}", Source.TEXT, i % 3, f"t{i}", f"{i} " + "y" * (i % 500))
                                               for i in picked]
    assert mapped_resident_kib(path) == 0
