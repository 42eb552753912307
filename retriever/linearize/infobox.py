"""Infoboxes: ``"<title> | <key>: <value> | ..."``, split into windows that repeat the title."""

from __future__ import annotations

from retriever.linearize.base import Unit, WindowBudget, pack_windows
from retriever.records import InfoboxRecord, Record, Source


class InfoboxLinearizer:
    source = Source.INFOBOX

    def linearize(self, record: Record, budget: WindowBudget) -> list[Unit]:
        if not isinstance(record, InfoboxRecord):
            raise TypeError(f"InfoboxLinearizer got a {type(record).__name__}")
        pairs = []
        for key, value in record.attributes:
            key, value = " ".join(key.split()), " ".join(value.split())
            if value:
                pairs.append(f"{key}: {value}" if key else value)
        title = " ".join(record.title.split())
        prefix = f"{title} | " if title and pairs else title
        full = prefix + " | ".join(pairs)
        windows = [full] if budget.fits(full) else pack_windows(prefix, pairs, " | ", budget)
        return [Unit(record.id, self.source, i, record.title, w) for i, w in enumerate(windows)]
