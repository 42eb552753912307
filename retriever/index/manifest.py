"""``manifest.json``: what an index directory contains and how it was made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from retriever.errors import CorruptIndexError, IncompatibleIndexError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2: the unit store is units.arrow (Arrow IPC), was units.jsonl


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_units(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        try:
            values = dict(data)
            values["shards"] = [ShardInfo(**s) for s in data["shards"]]
            values["files"] = [FileEntry(**f) for f in data["files"]]
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise CorruptIndexError(f"manifest is malformed: {exc}") from exc

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
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
        return cls.from_json(data)

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
