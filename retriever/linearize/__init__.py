"""Linearizers: structured records → the strings that are embedded (CompMix-IR style).

One linearizer per source type, in a registry keyed by :class:`~retriever.records.Source`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from retriever.linearize.base import (
    LINEARIZER_VERSION,
    Linearizer,
    TokenCounter,
    Unit,
    WindowBudget,
    count_words,
    pack_windows,
)
from retriever.linearize.infobox import InfoboxLinearizer
from retriever.linearize.kb import KbLinearizer
from retriever.linearize.table import TableLinearizer
from retriever.linearize.text import TextLinearizer
from retriever.records import Record, Source

LINEARIZERS: dict[Source, Linearizer] = {
    Source.TEXT: TextLinearizer(),
    Source.TABLE: TableLinearizer(),
    Source.KB: KbLinearizer(),
    Source.INFOBOX: InfoboxLinearizer(),
}


def linearize(record: Record, budget: WindowBudget | None = None) -> list[Unit]:
    """Linearize one record into its units (a table gives one unit per non-empty row)."""
    return LINEARIZERS[record.source].linearize(record, budget or WindowBudget())


def linearize_all(records: Iterable[Record], budget: WindowBudget | None = None) -> Iterator[Unit]:
    """Linearize records in order, yielding their units."""
    budget = budget or WindowBudget()
    for record in records:
        yield from LINEARIZERS[record.source].linearize(record, budget)


__all__ = [
    "LINEARIZERS", "LINEARIZER_VERSION", "Linearizer", "TokenCounter", "Unit", "WindowBudget",
    "count_words", "linearize", "linearize_all", "pack_windows",
]
