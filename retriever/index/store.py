"""The unit store: for each unit id, its record id, source, part, title and embedded text.

Stored as ``units.jsonl`` (one JSON array per line; no pickle). Unit ids are line numbers,
and units are ordered by source so that each source is one contiguous id range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from retriever.errors import CorruptIndexError
from retriever.linearize import Unit
from retriever.records import Source

UNITS_NAME = "units.jsonl"
SOURCE_ORDER: tuple[Source, ...] = (Source.TEXT, Source.TABLE, Source.KB, Source.INFOBOX)
SOURCE_CODE: dict[Source, int] = {s: i for i, s in enumerate(SOURCE_ORDER)}


@dataclass
class UnitStore:
    record_ids: list[str]
    sources: np.ndarray  # [n] uint8, SOURCE_CODE of each unit
    parts: np.ndarray  # [n] int32
    titles: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.record_ids)

    @classmethod
    def from_units(cls, units: Sequence[Unit]) -> UnitStore:
        return cls(
            record_ids=[u.record_id for u in units],
            sources=np.fromiter((SOURCE_CODE[u.source] for u in units), dtype=np.uint8, count=len(units)),
            parts=np.fromiter((u.part for u in units), dtype=np.int32, count=len(units)),
            titles=[u.title for u in units],
            texts=[u.text for u in units],
        )

    def unit(self, i: int) -> Unit:
        return Unit(self.record_ids[i], SOURCE_ORDER[int(self.sources[i])], int(self.parts[i]),
                    self.titles[i], self.texts[i])

    def source_of(self, i: int) -> Source:
        return SOURCE_ORDER[int(self.sources[i])]

    def write(self, path: Path) -> None:
        with path.open("wb") as fh:
            for i in range(len(self)):
                fh.write(orjson.dumps([self.record_ids[i], SOURCE_ORDER[int(self.sources[i])].value,
                                       int(self.parts[i]), self.titles[i], self.texts[i]]))
                fh.write(b"\n")

    @classmethod
    def read(cls, path: Path, expected: int) -> UnitStore:
        record_ids: list[str] = []
        codes: list[int] = []
        parts: list[int] = []
        titles: list[str] = []
        texts: list[str] = []
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    rid, source, part, title, text = orjson.loads(line)
                    codes.append(SOURCE_CODE[Source(source)])
                except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
                    raise CorruptIndexError(f"{path}:{number}: malformed unit: {exc}") from exc
                record_ids.append(rid)
                parts.append(part)
                titles.append(title)
                texts.append(text)
        if len(record_ids) != expected:
            raise CorruptIndexError(f"{path}: {len(record_ids)} units, manifest says {expected}")
        return cls(record_ids, np.asarray(codes, dtype=np.uint8), np.asarray(parts, dtype=np.int32), titles, texts)
