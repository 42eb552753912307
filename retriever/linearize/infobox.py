"""Infoboxes: ``"<title> | <key>: <value> | ..."``, split into windows that repeat the title."""

from __future__ import annotations

from retriever.linearize.base import Unit, WindowBudget, pack_windows
from retriever.records import InfoboxRecord, Record, Source


class InfoboxLinearizer:
    source = Source.INFOBOX

    def single_window(self, record: Record) -> str:
        """The record as one unit, before the budget is checked."""
        prefix, pairs = self._parts(record)
        return prefix + " | ".join(pairs)

    def linearize(self, record: Record, budget: WindowBudget) -> list[Unit]:
        prefix, pairs = self._parts(record)
        full = prefix + " | ".join(pairs)
        windows = [full] if budget.fits(full) else pack_windows(prefix, pairs, " | ", budget)
        return [Unit(record.id, self.source, i, _checked(record).title, w) for i, w in enumerate(windows)]

    @staticmethod
    def _parts(record: Record) -> tuple[str, list[str]]:
        record = _checked(record)
        pairs: list[str] = []
        for key, value in record.attributes:
            key, value = " ".join(key.split()), " ".join(value.split())
            if value:
                pairs.append(f"{key}: {value}" if key else value)
        title = " ".join(record.title.split())
        return (f"{title} | " if title and pairs else title), pairs


def _checked(record: Record) -> InfoboxRecord:
    if not isinstance(record, InfoboxRecord):
        raise TypeError(f"InfoboxLinearizer got a {type(record).__name__}")
    return record
