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
    record = parse_record({"id": "p", "source": "TEXT", "text": "body"})
    assert record == TextRecord(id="p", text="body", title="", dataset="")


def test_id_list(tmp_path: Path) -> None:
    path = write(tmp_path, ["# comment", "a", "", " b "], "ids.txt")
    assert read_id_list(path) == ["a", "b"]
    with pytest.raises(CorpusError, match="the id list is empty"):
        read_id_list(write(tmp_path, ["# nothing"], "empty.txt"))
