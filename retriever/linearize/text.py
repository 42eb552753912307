"""Free-text passages: ``"<title>: <text>"``, split into word windows when too long."""

from __future__ import annotations

from retriever.linearize.base import Unit, WindowBudget, pack_windows
from retriever.records import Record, Source, TextRecord


class TextLinearizer:
    source = Source.TEXT

    def single_window(self, record: Record) -> str:
        """The record as one unit, before the budget is checked."""
        prefix, body = self._parts(record)
        return prefix + body

    def linearize(self, record: Record, budget: WindowBudget) -> list[Unit]:
        prefix, body = self._parts(record)
        full = prefix + body
        if budget.fits(full):
            windows = [full]
        else:
            windows = pack_windows(prefix, body.split(" "), " ", budget)
        return [Unit(record.id, self.source, i, _checked(record).title, w) for i, w in enumerate(windows)]

    @staticmethod
    def _parts(record: Record) -> tuple[str, str]:
        record = _checked(record)
        return (f"{record.title}: " if record.title.strip() else ""), " ".join(record.text.split())


def _checked(record: Record) -> TextRecord:
    if not isinstance(record, TextRecord):
        raise TypeError(f"TextLinearizer got a {type(record).__name__}")
    return record
