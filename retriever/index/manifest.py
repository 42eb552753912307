"""``manifest.json``: what an index directory contains and how it was made."""

from __future__ import annotations

import math
import re
from collections.abc import Set as AbstractSet
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from retriever.errors import CorruptIndexError, IncompatibleIndexError
from retriever.records import Source

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2: the unit store is units.arrow (Arrow IPC), was units.jsonl
#: The unit store's file name (``retriever.index.store`` writes it; named here to avoid an import cycle).
UNITS_FILE = "units.arrow"
METRIC = "inner_product"
#: The order of shards and unit ids: every text unit first, then tables, KB triples, infoboxes.
SOURCE_VALUES = tuple(s.value for s in Source)
SEARCH_KNOBS = ("nprobe", "ef_search", "k_factor")
MAX_DIMENSION = 65_536
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: How the documents were encoded (``Manifest.encoding``); indexes from before it was recorded read as the default.
BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("float32", "float16", "bfloat16", "int8")
DEFAULT_ENCODING = {"backend": "torch", "precision": "float32"}
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of the index directory, with the size and hash it must have."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardInfo:
    """One FAISS index holding the units of one source type (a contiguous unit-id range)."""

    source: str
    start: int
    count: int
    factory: str
    file: str
    reason: str = ""  # why this factory was chosen (``--factory auto``) or "given"
    recall_at_10: float | None = None  # measured against exact search; None for exact shards
    search: dict[str, int] = field(default_factory=dict)  # tuned search parameters (nprobe, ...)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model_name: str
    model_checksum: str
    prompts: dict[str, str]
    linearizer_version: str
    max_tokens: int
    dimension: int
    metric: str
    factory: str
    corpus_path: str
    corpus_fingerprint: str
    counts: dict[str, int]
    records: dict[str, int]
    shards: list[ShardInfo]
    files: list[FileEntry]
    created: str
    build_seconds: float
    build: dict[str, Any] = field(default_factory=dict)  # engine, parts, encode time, recall gate
    # backend and precision that encoded the documents; export_sha256 for an exported copy of the weights
    encoding: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENCODING))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_units(self) -> int:
        return sum(self.counts.values())

    @property
    def link_rows(self) -> int:
        """Table rows of link context each passage carries (0: none; indexes built before it existed)."""
        return int(self.build.get("link_rows", 0))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Build a manifest from parsed JSON after :func:`validate` accepted every field.

        Raises:
            CorruptIndexError: a field is missing, unknown, of the wrong type or out of range, or the
                fields disagree with each other; the message names the field.
        """
        validate(data)
        values = dict(data)
        values["shards"] = [ShardInfo(**s) for s in data["shards"]]
        values["files"] = [FileEntry(**f) for f in data["files"]]
        return cls(**values)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if directory.is_file():  # most often a corpus given where its index was meant
            raise CorruptIndexError(f"{directory}: a file, not an index directory (build an index from a corpus "
                                    "with `retriever build-index CORPUS --out DIR`, then pass DIR)")
        if not path.is_file():
            raise CorruptIndexError(f"{directory}: no {MANIFEST_NAME} (not an index directory, or a build "
                                    "that did not finish)")
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise CorruptIndexError(f"{path}: malformed JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(f"{path}: unsupported index format (expected format_version "
                                    f"{FORMAT_VERSION}); rebuild the index")
        try:
            return cls.from_json(data)
        except CorruptIndexError as exc:
            raise CorruptIndexError(f"{path}: {exc}") from None

    def check_compatible(self, model_checksum: str, prompts: dict[str, str], where: str) -> None:
        """Refuse to search this index with another model or other prompts."""
        if model_checksum != self.model_checksum:
            raise IncompatibleIndexError(
                f"{where} was built with model {self.model_name} (checksum {self.model_checksum[:12]}), "
                f"but the loaded model has checksum {model_checksum[:12]}; load the same model "
                "(--model) or rebuild the index")
        if prompts != self.prompts:
            changed = sorted(k for k in set(prompts) | set(self.prompts) if prompts.get(k) != self.prompts.get(k))
            raise IncompatibleIndexError(
                f"{where} was built with other instruction prompts (differing keys: {', '.join(changed)}); "
                "use the model the index was built with or rebuild the index")


# -- the schema -----------------------------------------------------------------------------------
class _Invalid(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"manifest field {where}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, where: str, low: int = 0, high: int | None = None) -> int:
    if not _is_int(value):
        raise _Invalid(where, f"expected an integer, got {type(value).__name__} {value!r:.40}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise _Invalid(where, f"{value} is out of range (expected {bound})")
    return int(value)


def _str(value: Any, where: str, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise _Invalid(where, f"expected a string, got {type(value).__name__}")
    if nonempty and not value:
        raise _Invalid(where, "must not be empty")
    return value


def _number(value: Any, where: str) -> float:
    if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value) or value < 0:
        raise _Invalid(where, f"expected a finite number >= 0, got {value!r:.40}")
    return float(value)


def _object(value: Any, where: str, required: set[str], optional: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(where, f"expected an object, got {type(value).__name__}")
    missing = sorted(required - set(value))
    if missing:
        raise _Invalid(where, f"missing {', '.join(missing)}")
    unknown = sorted(set(value) - required - set(optional))
    if unknown:
        raise _Invalid(where, f"unknown field(s) {', '.join(map(str, unknown))}")
    return value


def _source(value: Any, where: str) -> str:
    if value not in SOURCE_VALUES:
        raise _Invalid(where, f"{value!r:.40} is not a source type (expected one of {', '.join(SOURCE_VALUES)})")
    return str(value)


def _per_source(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _Invalid(where, f"expected an object, got {type(value).__name__}")
    for key, count in value.items():
        _source(key, f"{where} key")
        _int(count, f"{where}.{key}")
    return value


def _encoding(value: Any) -> None:
    encoding = _object(value, "encoding", {"backend", "precision"}, {"export_sha256"})
    if encoding["backend"] not in BACKENDS:
        raise _Invalid("encoding.backend", f"{encoding['backend']!r:.40} is not a backend (expected one of "
                                           f"{', '.join(BACKENDS)})")
    if encoding["precision"] not in PRECISIONS:
        raise _Invalid("encoding.precision", f"{encoding['precision']!r:.40} is not a precision (expected one of "
                                             f"{', '.join(PRECISIONS)})")
    exported = "export_sha256" in encoding
    if exported and (not isinstance(encoding["export_sha256"], str) or not _SHA256.match(encoding["export_sha256"])):
        raise _Invalid("encoding.export_sha256", "expected 64 lowercase hex digits")
    if exported != (encoding["backend"] != "torch"):
        raise _Invalid("encoding.export_sha256", "required for an exported backend (onnx, openvino), absent for torch")


def _names(cls: type) -> tuple[set[str], set[str]]:
    """The required and optional (defaulted) field names of a dataclass."""
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    return required, {f.name for f in fields(cls)} - required


def validate(data: Any) -> None:
    """Check a parsed manifest completely before anything in the directory is read.

    Types, enums and ranges of every field; then consistency: shards in source order
    (text, table, kb, infobox), each source at most once, covering ``[0, total_units)``
    contiguously, each with the unit count that ``counts`` gives its source (sources without a
    shard count 0); file names plain, unique and listed once, with a SHA-256 and a size; every
    shard's file and the unit store among them.

    Raises:
        CorruptIndexError: the first violation, naming the field (``shards[2].source`` ...).
    """
    try:
        _validate(data)
    except _Invalid as exc:
        raise CorruptIndexError(str(exc)) from None


def _validate(data: Any) -> None:
    required, optional = _names(Manifest)
    _object(data, "(top level)", required, optional)
    if data["format_version"] != FORMAT_VERSION:
        raise _Invalid("format_version", f"{data['format_version']!r:.20} is not supported (expected "
                                         f"{FORMAT_VERSION}); rebuild the index")
    for name in ("model_name", "model_checksum", "linearizer_version", "factory"):
        _str(data[name], name, nonempty=True)
    for name in ("corpus_path", "corpus_fingerprint", "created"):
        _str(data[name], name)
    prompts = data["prompts"]
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise _Invalid("prompts", "expected an object of strings")
    _int(data["max_tokens"], "max_tokens", 1)
    _int(data["dimension"], "dimension", 1, MAX_DIMENSION)
    if data["metric"] != METRIC:
        raise _Invalid("metric", f"{data['metric']!r:.40} is not supported (expected {METRIC!r})")
    _number(data["build_seconds"], "build_seconds")
    for name in ("build", "extra"):
        if name in data and not isinstance(data[name], dict):
            raise _Invalid(name, f"expected an object, got {type(data[name]).__name__}")
    if "link_rows" in data.get("build", {}):
        _int(data["build"]["link_rows"], "build.link_rows")
    if "encoding" in data:
        _encoding(data["encoding"])
    counts = _per_source(data["counts"], "counts")
    _per_source(data["records"], "records")

    files = data["files"]
    if not isinstance(files, list):
        raise _Invalid("files", "expected a list")
    file_required, file_optional = _names(FileEntry)
    listed: set[str] = set()
    for i, entry in enumerate(files):
        where = f"files[{i}]"
        _object(entry, where, file_required, file_optional)
        name = _str(entry["name"], f"{where}.name")
        if not _FILE_NAME.match(name) or name == MANIFEST_NAME:
            raise _Invalid(f"{where}.name", f"{name!r:.60} is not a plain file name of the index directory")
        if name in listed:
            raise _Invalid(f"{where}.name", f"{name!r} is listed twice")
        listed.add(name)
        _int(entry["bytes"], f"{where}.bytes")
        if not isinstance(entry["sha256"], str) or not _SHA256.match(entry["sha256"]):
            raise _Invalid(f"{where}.sha256", "expected 64 lowercase hex digits")
    if UNITS_FILE not in listed:
        raise _Invalid("files", f"the unit store {UNITS_FILE} is not listed")

    shards = data["shards"]
    if not isinstance(shards, list):
        raise _Invalid("shards", "expected a list")
    shard_required, shard_optional = _names(ShardInfo)
    expected_start, seen, shard_files = 0, list[str](), set[str]()
    for i, shard in enumerate(shards):
        where = f"shards[{i}]"
        _object(shard, where, shard_required, shard_optional)
        source = _source(shard["source"], f"{where}.source")
        if source in seen:
            raise _Invalid(f"{where}.source", f"a second shard for {source!r}")
        if seen and SOURCE_VALUES.index(source) < SOURCE_VALUES.index(seen[-1]):
            raise _Invalid(f"{where}.source", f"{source!r} after {seen[-1]!r}: shards must follow the source order "
                                              f"{', '.join(SOURCE_VALUES)}")
        seen.append(source)
        start = _int(shard["start"], f"{where}.start")
        count = _int(shard["count"], f"{where}.count", 1)
        if start != expected_start:
            raise _Invalid(f"{where}.start", f"{start}, but the shards before it end at {expected_start} (shards "
                                             "must cover the unit ids contiguously)")
        if count != counts.get(source):
            raise _Invalid(f"{where}.count", f"{count}, but counts.{source} is {counts.get(source)}")
        expected_start += count
        _str(shard["factory"], f"{where}.factory", nonempty=True)
        file = _str(shard["file"], f"{where}.file")
        if file not in listed or file == UNITS_FILE:
            raise _Invalid(f"{where}.file", f"{file!r:.60} is not one of the listed FAISS files")
        if file in shard_files:
            raise _Invalid(f"{where}.file", f"{file!r} is the file of another shard too")
        shard_files.add(file)
        if "reason" in shard:
            _str(shard["reason"], f"{where}.reason")
        recall = shard.get("recall_at_10")
        if recall is not None and (not isinstance(recall, int | float) or isinstance(recall, bool)
                                   or not 0.0 <= recall <= 1.0):
            raise _Invalid(f"{where}.recall_at_10", f"expected a number in [0, 1] or null, got {recall!r:.40}")
        search = shard.get("search", {})
        if not isinstance(search, dict):
            raise _Invalid(f"{where}.search", "expected an object")
        for knob, value in search.items():
            if knob not in SEARCH_KNOBS:
                raise _Invalid(f"{where}.search", f"unknown parameter {knob!r:.40} (known: {', '.join(SEARCH_KNOBS)})")
            _int(value, f"{where}.search.{knob}", 1)
    for source, count in counts.items():
        if count and source not in seen:
            raise _Invalid(f"counts.{source}", f"{count} units but no shard holds them")
