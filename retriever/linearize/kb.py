"""Knowledge-base triples: ``"<subject>, <predicate>, <object>"``."""

from __future__ import annotations

from retriever.linearize.base import Unit, WindowBudget
from retriever.records import KbRecord, Record, Source


class KbLinearizer:
    source = Source.KB

    def single_window(self, record: Record) -> None:
        """Not checked against the budget: each unit is short by construction."""
        return None

    def linearize(self, record: Record, budget: WindowBudget) -> list[Unit]:
        if not isinstance(record, KbRecord):
            raise TypeError(f"KbLinearizer got a {type(record).__name__}")
        parts = (" ".join(p.split()) for p in (record.subject, record.predicate, record.object))
        return [Unit(record.id, self.source, 0, record.subject, ", ".join(parts))]
