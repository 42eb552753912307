"""Free-text passages: ``"<title>: <text>"``, split into word windows when too long."""

from __future__ import annotations

from retriever.linearize.base import Unit, WindowBudget, pack_windows
from retriever.records import Record, Source, TextRecord


class TextLinearizer:
    source = Source.TEXT

    def linearize(self, record: Record, budget: WindowBudget) -> list[Unit]:
        if not isinstance(record, TextRecord):
            raise TypeError(f"TextLinearizer got a {type(record).__name__}")
        prefix = f"{record.title}: " if record.title.strip() else ""
        body = " ".join(record.text.split())
        full = prefix + body
        if budget.fits(full):
            windows = [full]
        else:
            windows = pack_windows(prefix, body.split(" "), " ", budget)
        return [Unit(record.id, self.source, i, record.title, w) for i, w in enumerate(windows)]
