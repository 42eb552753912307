from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from retriever.errors import CorpusError
from retriever.records import (
    InfoboxRecord,
    KbRecord,
    Source,
    TableRecord,
    TextRecord,
    UnknownFields,
    parse_record,
    read_id_list,
    read_records,
)

GOOD = [
    {"id": "t1", "source": "text", "dataset": "d", "title": "Eek! The Cat", "text": "Eek ! The Cat is a series ."},
    {"id": "tab1", "source": "table", "title": "Films", "section": "Roles", "header": ["Year", "Title"],
     "rows": [["1997", "Eek"], ["2003", "Simpsons"]], "row_links": [["t1"], []]},
    {"id": "k1", "source": "kb", "subject": "Jenson Button", "predicate": "was born in", "object": "Frome",
     "parent": "i1"},
    {"id": "i1", "source": "infobox", "title": "In Rainbows", "attributes": [["Released", "10 October 2007"]]},
]


def write(tmp_path: Path, lines: list[str], name: str = "c.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_all_four_types(tmp_path: Path) -> None:
    path = write(tmp_path, [json.dumps(r) for r in GOOD])
    records = list(read_records(path))
    assert [type(r) for r in records] == [TextRecord, TableRecord, KbRecord, InfoboxRecord]
    assert [r.source for r in records] == [Source.TEXT, Source.TABLE, Source.KB, Source.INFOBOX]
    table = records[1]
    assert isinstance(table, TableRecord)
    assert table.rows == (("1997", "Eek"), ("2003", "Simpsons"))
    assert table.row_links == (("t1",), ())


def test_gzip_is_detected_by_content(tmp_path: Path) -> None:
    path = tmp_path / "corpus.data"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r) for r in GOOD))
    assert [r.id for r in read_records(path)] == ["t1", "tab1", "k1", "i1"]


def test_subset_by_ids_keeps_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, [json.dumps(r) for r in GOOD])
    assert [r.id for r in read_records(path, ids=["i1", "t1"])] == ["t1", "i1"]


def test_subset_with_unknown_id_fails(tmp_path: Path) -> None:
    path = write(tmp_path, [json.dumps(r) for r in GOOD])
    with pytest.raises(CorpusError, match="1 selected ids are not in the corpus .*nope"):
        list(read_records(path, ids=["t1", "nope"]))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "source": "text", "text": ', r"c\.jsonl:2: malformed JSON"),
        ('["not", "an", "object"]', r"c\.jsonl:2: expected a JSON object, got list"),
        ('{"id": "x", "source": "video", "text": "a"}', r"c\.jsonl:2: field 'source': unknown source 'video'"),
        ('{"id": "x", "source": "text"}', r"c\.jsonl:2: field 'text': missing required field"),
        ('{"source": "text", "text": "a"}', r"c\.jsonl:2: field 'id': missing required field"),
        ('{"id": 7, "source": "text", "text": "a"}', r"c\.jsonl:2: field 'id': expected a string, got int"),
        ('{"id": "x", "source": "table", "title": "T", "header": ["a"], "rows": [["1", 2]]}',
         r"c\.jsonl:2: field 'rows\[0\]\[1\]': expected a string, got int"),
        ('{"id": "x", "source": "table", "title": "T", "header": "a", "rows": [["1"]]}',
         r"c\.jsonl:2: field 'header': expected a list of strings, got str"),
        ('{"id": "x", "source": "table", "title": "T", "header": ["a"], "rows": []}',
         r"c\.jsonl:2: field 'rows': a table needs at least one row"),
        ('{"id": "x", "source": "table", "title": "T", "header": ["a"], "rows": [["1"]], "row_links": [[], []]}',
         r"c\.jsonl:2: field 'row_links': has 2 entries but the table has 1 rows"),
        ('{"id": "x", "source": "kb", "subject": "s", "predicate": "p"}',
         r"c\.jsonl:2: field 'object': missing required field"),
        ('{"id": "x", "source": "infobox", "title": "T", "attributes": [["only key"]]}',
         r"c\.jsonl:2: field 'attributes\[0\]': expected a \[key, value\] pair, got 1 items"),
        ('{"id": "t1", "source": "text", "text": "again"}',
         r"c\.jsonl:2: field 'id': duplicate id 't1' \(first seen on line 1\)"),
        ('{"id": "x", "source": "text", "titel": "T", "text": "a"}',
         r"c\.jsonl:2: field 'titel': unknown field for a text record \(expected: dataset, id, source, text, title;"),
        ('{"id": "x", "source": "kb", "subject": "s", "predicate": "p", "object": "o", "title": "T"}',
         r"c\.jsonl:2: field 'title': unknown field for a kb record"),
        ('{"id": "x", "source": "table", "title": "T", "header": ["A"], "rows": [["0"], ["1", "2", "3"]]}',
         r"c\.jsonl:2: field 'rows\[1\]': row 1 has 3 cells but the header has 1 columns"),
        ('{"id": "x", "source": "TEXT", "text": "a"}',
         r"c\.jsonl:2: field 'source': unknown source 'TEXT'; expected one of: text, table, kb, infobox \(lowercase\)"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, [json.dumps(GOOD[0]), line])
    with pytest.raises(CorpusError, match=message):
        list(read_records(path))


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, ["", "   "])
    with pytest.raises(CorpusError, match="the corpus is empty"):
        list(read_records(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="file not found"):
        list(read_records(tmp_path / "absent.jsonl"))


def test_huge_single_line_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("w") as fh:
        fh.write('{"id": "x", "source": "text", "text": "' + "a" * (50 * 1024 * 1024) + '"}')
    with pytest.raises(CorpusError, match=r"huge\.jsonl:1: line is longer than 8388608 bytes"):
        list(read_records(path))


def test_parse_record_defaults() -> None:
    record = parse_record({"id": "p", "source": "text", "text": "body"})
    assert record == TextRecord(id="p", text="body", title="", dataset="")


def test_short_table_rows_are_valid() -> None:
    record = parse_record({"id": "x", "source": "table", "header": ["A", "B"], "rows": [["1"]]})
    assert isinstance(record, TableRecord) and record.rows == (("1",),)


def test_lenient_read_skips_unknown_fields_with_one_warning_per_name(tmp_path: Path, caplog) -> None:
    lines = [json.dumps({**GOOD[0], "titel": "x"}), json.dumps({**GOOD[3], "titel": "y", "url": "u"}),
             json.dumps({"id": "t2", "source": "text", "text": "b", "titel": "z"})]
    path = write(tmp_path, lines)
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: field 'titel': unknown field"):
        list(read_records(path))
    with caplog.at_level("WARNING", logger="retriever.records"):
        records = list(read_records(path, unknown=UnknownFields.WARN))
    assert list(read_records(path, unknown=UnknownFields.IGNORE)) == records
    assert [r.id for r in records] == ["t1", "i1", "t2"]
    assert records[0] == parse_record(GOOD[0])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"{path}:1: field 'titel': unknown field, ignored (--lenient)",
                        f"{path}:2: field 'url': unknown field, ignored (--lenient)",
                        f"{path}: ignored unknown fields (--lenient): 'titel' on 3 lines, 'url' on 1 lines"]


def test_shipped_sample_corpus_validates_strictly() -> None:
    from retriever.sample import SAMPLE_CORPUS, data_file

    assert sum(1 for _ in read_records(data_file(SAMPLE_CORPUS))) == 522


def test_id_list(tmp_path: Path) -> None:
    path = write(tmp_path, ["# comment", "a", "", " b "], "ids.txt")
    assert read_id_list(path) == ["a", "b"]
    with pytest.raises(CorpusError, match="the id list is empty"):
        read_id_list(write(tmp_path, ["# nothing"], "empty.txt"))
