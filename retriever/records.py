"""Record types for the four source kinds, their validation, and the corpus reader.

The corpus format is JSON Lines (optionally gzip-compressed), one record per line, in the
schema of HeteroMix (see the README, "Corpus format"). Every problem is reported as a
:class:`~retriever.errors.CorpusError` naming file, line and field.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from retriever.errors import CorpusError

logger = logging.getLogger(__name__)

#: Lines longer than this are refused before parsing (a 50 MB line is a broken file, not a record).
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024


class Source(StrEnum):
    """The four kinds of evidence; the value is the ``source`` field of a record."""

    TEXT = "text"
    TABLE = "table"
    KB = "kb"
    INFOBOX = "infobox"

    @classmethod
    def parse(cls, value: str, exact: bool = False) -> Source:
        """Parse a source name, raising ``ValueError`` with the valid names.

        Command-line and client arguments are case-insensitive; a corpus record's ``source``
        field is parsed ``exact`` (lowercase, as written in the README's corpus format), so a
        data pipeline that writes ``"TEXT"`` is told rather than silently accepted.
        """
        try:
            return cls(value if exact else value.strip().lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            case = " (lowercase)" if exact else ""
            raise ValueError(f"unknown source {value!r}; expected one of: {names}{case}") from None


@dataclass(frozen=True, slots=True)
class TextRecord:
    id: str
    text: str
    title: str = ""
    dataset: str = ""
    source: Source = field(default=Source.TEXT, init=False)


@dataclass(frozen=True, slots=True)
class TableRecord:
    id: str
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    section: str = ""
    dataset: str = ""
    row_links: tuple[tuple[str, ...], ...] | None = None
    source: Source = field(default=Source.TABLE, init=False)


@dataclass(frozen=True, slots=True)
class KbRecord:
    id: str
    subject: str
    predicate: str
    object: str
    dataset: str = ""
    parent: str | None = None
    source: Source = field(default=Source.KB, init=False)


@dataclass(frozen=True, slots=True)
class InfoboxRecord:
    id: str
    title: str
    attributes: tuple[tuple[str, str], ...]
    dataset: str = ""
    source: Source = field(default=Source.INFOBOX, init=False)


Record = TextRecord | TableRecord | KbRecord | InfoboxRecord


class UnknownFields(StrEnum):
    """What a record field the corpus format does not know is, when a corpus is read."""

    ERROR = "error"  # the default: the read fails naming file, line and field
    WARN = "warn"  # --lenient: skipped, one warning per field name at its first line and a count at the end
    IGNORE = "ignore"  # skipped silently (a second pass over a corpus already read with WARN)


class _Fields:
    """Typed access to one JSON object's fields, raising CorpusError that names the field."""

    def __init__(self, obj: dict[str, Any], path: str, line: int | None) -> None:
        self.obj, self.path, self.line = obj, path, line

    def error(self, name: str, message: str) -> CorpusError:
        return CorpusError(self.path, self.line, message, field=name)

    def string(self, name: str, *, required: bool = True, nonempty: bool = False) -> str:
        if name not in self.obj or self.obj[name] is None:
            if required:
                raise self.error(name, "missing required field")
            return ""
        value = self.obj[name]
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {type(value).__name__}")
        if nonempty and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def string_list(self, value: Any, name: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of strings, got {type(value).__name__}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"expected a string, got {type(item).__name__}")
            out.append(item)
        return tuple(out)

    def list_of_string_lists(self, name: str, *, required: bool = True) -> tuple[tuple[str, ...], ...] | None:
        if name not in self.obj or self.obj[name] is None:
            if required:
                raise self.error(name, "missing required field")
            return None
        value = self.obj[name]
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of lists, got {type(value).__name__}")
        return tuple(self.string_list(item, f"{name}[{i}]") for i, item in enumerate(value))


#: The fields each source type's records may have (README, "Corpus format"); any other is an error,
#: or with ``--lenient`` a warning.
FIELDS: dict[Source, frozenset[str]] = {
    source: frozenset({"id", "source", "dataset", *extra}) for source, extra in (
        (Source.TEXT, ("text", "title")),
        (Source.TABLE, ("title", "section", "header", "rows", "row_links")),
        (Source.KB, ("subject", "predicate", "object", "parent")),
        (Source.INFOBOX, ("title", "attributes")),
    )
}


def parse_record(obj: Any, path: str = "<record>", line: int | None = None,
                 ignored: list[str] | None = None) -> Record:
    """Validate one decoded JSON value and build its typed record.

    Args:
        obj: the decoded JSON value of one line.
        path: file name used in error messages.
        line: 1-based line number used in error messages.
        ignored: None (strict): a field the record's source type does not have is an error.
            A list (lenient): such fields are skipped and their names appended to it.

    Returns:
        The typed record.

    Raises:
        CorpusError: when a field is missing, unknown, has the wrong type or an unknown value,
            or a table row has more cells than the header has columns.
    """
    if not isinstance(obj, dict):
        raise CorpusError(path, line, f"expected a JSON object, got {type(obj).__name__}")
    f = _Fields(obj, path, line)
    record_id = f.string("id", nonempty=True)
    raw_source = f.string("source")
    try:
        source = Source.parse(raw_source, exact=True)
    except ValueError as exc:
        raise f.error("source", str(exc)) from None
    unknown = [name for name in obj if name not in FIELDS[source]]
    if unknown and ignored is None:
        raise f.error(unknown[0], f"unknown field for a {source.value} record (expected: "
                      f"{', '.join(sorted(FIELDS[source]))}; --lenient ignores unknown fields with a warning)")
    if ignored is not None:
        ignored.extend(unknown)
    dataset = f.string("dataset", required=False)
    if source is Source.TEXT:
        return TextRecord(id=record_id, text=f.string("text", nonempty=True),
                          title=f.string("title", required=False), dataset=dataset)
    if source is Source.TABLE:
        header = f.string_list(obj.get("header"), "header") if "header" in obj else None
        if header is None:
            raise f.error("header", "missing required field")
        rows = f.list_of_string_lists("rows") or ()
        if not rows:
            raise f.error("rows", "a table needs at least one row")
        for i, row in enumerate(rows):
            if len(row) > len(header):
                raise f.error(f"rows[{i}]", f"row {i} has {len(row)} cells but the header has {len(header)} "
                              "columns (a shorter row is fine: its missing cells are empty)")
        links = f.list_of_string_lists("row_links", required=False)
        if links is not None and len(links) != len(rows):
            raise f.error("row_links", f"has {len(links)} entries but the table has {len(rows)} rows")
        return TableRecord(id=record_id, title=f.string("title", required=False), header=header,
                           rows=rows, section=f.string("section", required=False),
                           dataset=dataset, row_links=links)
    if source is Source.KB:
        parent = f.string("parent", required=False) or None
        triple = (f.string("subject"), f.string("predicate"), f.string("object"))
        if not any(part.strip() for part in triple):
            raise f.error("subject", "a triple needs at least one non-empty field")
        return KbRecord(id=record_id, subject=triple[0], predicate=triple[1], object=triple[2],
                        dataset=dataset, parent=parent)
    pairs = f.list_of_string_lists("attributes") or ()
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise f.error(f"attributes[{i}]", f"expected a [key, value] pair, got {len(pair)} items")
    if not pairs:
        raise f.error("attributes", "an infobox needs at least one [key, value] pair")
    return InfoboxRecord(id=record_id, title=f.string("title", required=False),
                         attributes=tuple((k, v) for k, v in pairs), dataset=dataset)


def _open_binary(path: Path) -> Any:
    with path.open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


def iter_lines(path: str | Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, bytes)`` for the non-blank lines of a JSONL(.gz) file.

    Raises:
        CorpusError: when the file is missing, unreadable, or a line exceeds ``max_line_bytes``.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(str(path), None, "file not found")
    try:
        with _open_binary(path) as fh:
            number = 0
            while True:
                raw = fh.readline(max_line_bytes + 1)
                if not raw:
                    break
                number += 1
                if len(raw) > max_line_bytes:
                    raise CorpusError(str(path), number,
                                      f"line is longer than {max_line_bytes} bytes "
                                      "(a record this large is refused; is the file newline-delimited JSON?)")
                if raw.strip():
                    yield number, raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorpusError(str(path), None, f"cannot read file: {exc}") from exc


def iter_json_lines(path: str | Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed JSON)`` for the non-blank lines of a JSONL(.gz) file.

    Raises:
        CorpusError: as :func:`iter_lines`, or a line that is not JSON (naming file and line).
    """
    for number, raw in iter_lines(path, max_line_bytes):
        try:
            yield number, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorpusError(str(path), number, f"malformed JSON: {exc}") from None


def parse_line(raw: bytes, path: str, line: int, ignored: list[str] | None = None) -> Record:
    """Parse and validate one corpus line (the per-line half of :func:`read_records`; ``ignored`` as in
    :func:`parse_record`)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorpusError(path, line, f"malformed JSON: {exc}") from None
    return parse_record(obj, path, line, ignored)


def read_records(
    path: str | Path,
    ids: Iterable[str] | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    unknown: UnknownFields = UnknownFields.ERROR,
) -> Iterator[Record]:
    """Stream validated records from a corpus file.

    Every line is validated (also those not selected by ``ids``), ids must be unique across the
    file, and an empty file is an error.

    Args:
        path: a ``.jsonl`` or ``.jsonl.gz`` file (gzip is detected from the content).
        ids: when given, only records with these ids are yielded; ids absent from the
            file are reported after the whole file was read.
        max_line_bytes: longest accepted line.
        unknown: what a field the corpus format does not know is: an error (default), or
            skipped with a warning per field name (``--lenient``), or skipped silently.

    Raises:
        CorpusError: naming file, line and field for the first problem found.
    """
    ledger = IdLedger(str(path), ids)
    for number, raw in iter_lines(path, max_line_bytes):
        ignored: list[str] | None = None if unknown is UnknownFields.ERROR else []
        record = parse_line(raw, ledger.path, number, ignored)
        if ignored and unknown is UnknownFields.WARN:
            ledger.ignore(ignored, number)
        if ledger.admit(record.id, number):
            yield record
    ledger.finish()


class IdLedger:
    """The corpus-wide checks of a read: unique ids, an --ids selection, a non-empty file.

    Lines may be parsed anywhere (in parallel workers); their ids pass through one ledger in
    file order, so the first duplicate is reported at its line. The unknown fields of a read with
    :attr:`UnknownFields.WARN` pass through it too: one warning per field name at its first line,
    a count at the end.
    """

    def __init__(self, path: str, ids: Iterable[str] | None = None) -> None:
        self.path = path
        self.wanted = set(ids) if ids is not None else None
        self.seen: dict[str, int] = {}
        self.ignored: Counter[str] = Counter()

    def ignore(self, fields: Iterable[str], line: int) -> None:
        """Note the unknown fields a lenient read skipped on ``line`` (warns at each name's first line)."""
        for name in fields:
            if name not in self.ignored:
                logger.warning("%s:%d: field '%s': unknown field, ignored (--lenient)", self.path, line, name)
            self.ignored[name] += 1

    def admit(self, record_id: str, line: int) -> bool:
        """Record one id; True when the record is selected.

        Raises:
            CorpusError: the id was seen before.
        """
        first = self.seen.setdefault(record_id, line)
        if first != line:
            raise CorpusError(self.path, line, f"duplicate id {record_id!r} (first seen on line {first})",
                              field="id")
        return self.wanted is None or record_id in self.wanted

    def finish(self) -> None:
        """Raises: CorpusError when the file had no record or selected ids are missing."""
        if not self.seen:
            raise CorpusError(self.path, None, "the corpus is empty: no records found")
        if self.ignored:
            logger.warning("%s: ignored unknown fields (--lenient): %s", self.path,
                           ", ".join(f"'{name}' on {count} lines" for name, count in sorted(self.ignored.items())))
        if self.wanted is not None:
            missing = self.wanted.difference(self.seen)
            if missing:
                example = ", ".join(sorted(missing)[:3])
                raise CorpusError(self.path, None,
                                  f"{len(missing)} selected ids are not in the corpus (e.g. {example})")


def read_id_list(path: str | Path) -> list[str]:
    """Read a record-id list: one id per line, blank lines and ``#`` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(str(path), None, "id list not found")
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    if not out:
        raise CorpusError(str(path), None, "the id list is empty")
    return out


def file_fingerprint(path: str | Path, ids: Iterable[str] | None = None) -> str:
    """SHA-256 of a corpus file's bytes, plus the sorted selected ids when a subset is used."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if ids is not None:
        digest.update(b"\0ids\0")
        for record_id in sorted(set(ids)):
            digest.update(record_id.encode() + b"\n")
    return digest.hexdigest()
