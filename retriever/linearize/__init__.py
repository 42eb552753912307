"""Linearizers: structured records → the strings that are embedded (CompMix-IR style).

One linearizer per source type, in a registry keyed by :class:`~retriever.records.Source`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

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
from retriever.linearize.links import DEFAULT_LINK_ROWS, LinkContext, collect_links
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
    """Linearize one record into its units (a table gives one unit per non-empty row); a passage
    starts with its link context when the budget carries one."""
    budget = budget or WindowBudget()
    if budget.links is not None:
        record = budget.links.apply(record)
    return LINEARIZERS[record.source].linearize(record, budget)


#: Records linearized together by :func:`linearize_all` (their budget checks counted in one call).
BATCH_RECORDS = 256


def linearize_batch(records: Sequence[Record], budget: WindowBudget | None = None) -> list[list[Unit]]:
    """Each record's units, as :func:`linearize` gives them, with the budget checks of the whole
    batch counted in one call of the budget's counter (a tokenizer is several times faster so)."""
    budget = budget or WindowBudget()
    if budget.links is not None:
        records = [budget.links.apply(r) for r in records]
    singles = [s for r in records if (s := LINEARIZERS[r.source].single_window(r)) is not None]
    primed = budget.primed(singles)
    return [LINEARIZERS[r.source].linearize(r, primed) for r in records]


def linearize_records(records: Iterable[Record], budget: WindowBudget | None = None
                      ) -> Iterator[tuple[Record, list[Unit]]]:
    """Each record in order with its units, linearized in batches of :data:`BATCH_RECORDS`."""
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= BATCH_RECORDS:
            yield from zip(batch, linearize_batch(batch, budget), strict=True)
            batch = []
    yield from zip(batch, linearize_batch(batch, budget), strict=True)


def linearize_all(records: Iterable[Record], budget: WindowBudget | None = None) -> Iterator[Unit]:
    """Linearize records in order, yielding their units (in batches of :data:`BATCH_RECORDS`)."""
    for _, units in linearize_records(records, budget):
        yield from units


__all__ = [
    "BATCH_RECORDS",
    "DEFAULT_LINK_ROWS",
    "LINEARIZERS",
    "LINEARIZER_VERSION",
    "Linearizer",
    "LinkContext",
    "TokenCounter",
    "Unit",
    "WindowBudget",
    "collect_links",
    "count_words",
    "linearize",
    "linearize_all",
    "linearize_batch",
    "linearize_records",
    "pack_windows",
]
