"""Text anchors for stage 2: natural-language texts with the same content as a structured unit.

Three kinds (see docs/TRAINING.md for the templates):

- ``verbalizer``: a rule-based verbalizer of the structured record behind the unit;
- ``links``: corpus links: a table row and a passage in its ``row_links``; a kb fact and the
  window of its ``parent`` infobox that states it;
- ``pairs``: user-supplied data-text pairs in the CompMix format (``raw_data`` / ``nl_text``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from retriever.errors import CorpusError
from retriever.linearize import Unit
from retriever.records import InfoboxRecord, KbRecord, Record, Source, TableRecord


class AnchorKind(StrEnum):
    VERBALIZER = "verbalizer"
    LINKS = "links"
    PAIRS = "pairs"


@dataclass(frozen=True)
class AnchorPair:
    """A structured text and its text anchor; ``key``s identify duplicates inside a batch."""

    structured: str
    anchor: str
    structured_key: str
    anchor_key: str
    kind: AnchorKind


def _clean(text: str) -> str:
    return " ".join(text.split())


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def verbalize_row(record: TableRecord, row_index: int) -> str:
    """``The table "<title>" (<section>) has a row where <col> is <value>, <col> is <value> and ...``."""
    row = record.rows[row_index]
    cells = []
    for i, value in enumerate(row):
        value = _clean(value)
        if not value:
            continue
        column = _clean(record.header[i]) if i < len(record.header) else ""
        cells.append(f"{column} is {value}" if column else f"one entry reads {value}")
    title = _clean(record.title)
    section = _clean(record.section)
    where = f'The table "{title}"' if title else "A table"
    if section:
        where += f" ({section})"
    return f"{where} has a row where {_join(cells)}."


def verbalize_triple(record: KbRecord) -> str:
    """``The <predicate> of <subject> is <object>.``"""
    subject, predicate, obj = (_clean(p) for p in (record.subject, record.predicate, record.object))
    if not predicate:
        return f"{subject} is related to {obj}."
    return f"The {predicate} of {subject} is {obj}."


def verbalize_infobox(record: InfoboxRecord, window_text: str | None = None) -> str:
    """``According to its infobox, the <key> of <title> is <value>; the <key> of <title> is <value>.``

    Only the attributes present in ``window_text`` (one unit's window) are verbalized.
    """
    title = _clean(record.title) or "the subject"
    facts = []
    for key, value in record.attributes:
        key, value = _clean(key), _clean(value)
        if not value:
            continue
        piece = f"{key}: {value}" if key else value
        if window_text is not None and piece not in window_text:
            continue
        facts.append(f"the {key} of {title} is {value}" if key else f"{title} is described as {value}")
    return "According to its infobox, " + "; ".join(facts) + "." if facts else f"{title}."


def verbalize(record: Record, unit: Unit) -> str | None:
    """The verbalizer's text for a structured unit (None for text units)."""
    if isinstance(record, TableRecord):
        return verbalize_row(record, unit.part)
    if isinstance(record, KbRecord):
        return verbalize_triple(record)
    if isinstance(record, InfoboxRecord):
        return verbalize_infobox(record, unit.text)
    return None


def link_anchor(record: Record, unit: Unit, records: dict[str, Record], units: list[Unit],
                units_by_record: dict[str, list[int]], pick: int) -> tuple[str, str] | None:
    """``(anchor text, anchor key)`` from a corpus link of this unit, or None.

    ``pick`` chooses among several linked passages (taken modulo their count).
    """
    if isinstance(record, TableRecord) and record.row_links and unit.part < len(record.row_links):
        linked = [t for t in record.row_links[unit.part] if t in units_by_record]
        if linked:
            target = linked[pick % len(linked)]
            first = units_by_record[target][0]
            return units[first].text, target
        return None
    if isinstance(record, KbRecord) and record.parent and record.parent in units_by_record:
        windows = units_by_record[record.parent]
        value = _clean(record.object).lower()
        chosen = next((i for i in windows if value and value in units[i].text.lower()), windows[0])
        return units[chosen].text, f"{record.parent}#{units[chosen].part}"
    return None


@dataclass(frozen=True)
class DataTextPair:
    source: Source
    raw_data: str
    nl_text: str


_COMPMIX_SOURCES = {"kb": Source.KB, "text": Source.TEXT, "table": Source.TABLE, "info": Source.INFOBOX,
                    "infobox": Source.INFOBOX}


def read_pairs_file(path: str | Path) -> list[DataTextPair]:
    """Read a CompMix data-text pairs file: a JSON list of ``{source, raw_data, nl_text, ...}``.

    Raises:
        CorpusError: naming the file, the entry (as the line) and the field.
    """
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorpusError(str(path), None, f"cannot read a JSON list of data-text pairs: {exc}") from exc
    if not isinstance(items, list):
        raise CorpusError(str(path), None, f"expected a JSON list, got {type(items).__name__}")
    out = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise CorpusError(str(path), number, "expected an object (entry number given as the line)")
        for key in ("raw_data", "nl_text"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise CorpusError(str(path), number, "missing or empty string (entry number given as the line)",
                                  field=key)
        source = _COMPMIX_SOURCES.get(str(item.get("source", "")).strip().lower())
        if source is None:
            raise CorpusError(str(path), number, f"unknown source {item.get('source')!r}; expected one of "
                              f"{', '.join(sorted(_COMPMIX_SOURCES))}", field="source")
        out.append(DataTextPair(source, _clean(item["raw_data"]), _clean(item["nl_text"])))
    if not out:
        raise CorpusError(str(path), None, "the pairs file is empty")
    return out
