"""Link context: a passage carries the table rows that link to it.

In multi-hop table + text questions (HybridQA, OTT-QA) the passage that answers is reached through
a table row: "the club that finished third in 1995" names the row, not the passage about the club.
Table records list, per row, the passages their cells link to (``row_links``). With link context,
each passage's text starts with up to ``rows`` of the rows that link to it, from tables of the same
corpus (``"Listed in: <row>; <row>. <passage text>"``, each row as its table unit reads), so the
passage is found by what the row says about it as well as by its own words: document expansion
with the corpus's own links, the "early fusion" of tables and passages of Chen et al. (OTT-QA,
ICLR 2021). The row text is part of the unit: embedded, searched by BM25, and returned as the
hit's text.

When more than ``rows`` rows link to a passage, the first ones in corpus order are kept (a popular
entity is linked from hundreds of rows; the unit would otherwise be all context). Each row is cut
to :data:`ROW_WORDS` words. A window split of a long passage keeps the context in its first window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from retriever.records import Record, TableRecord, TextRecord

#: Rows per passage by default (``build-index --link-rows``, ``[data] link_rows``); 0 turns it off.
DEFAULT_LINK_ROWS = 2
#: The most words of one row carried into a passage.
ROW_WORDS = 64
#: What introduces the rows in the passage's text.
LEAD = "Listed in: "


@dataclass(frozen=True)
class LinkContext:
    """For each linked passage id, the texts of the rows that link to it (at most the collector's cap)."""

    by_passage: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def apply(self, record: Record) -> Record:
        """``record`` with its link context at the start of its text (unchanged if it has none)."""
        if not isinstance(record, TextRecord):
            return record
        linked = self.by_passage.get(record.id)
        if not linked:
            return record
        return replace(record, text=f"{LEAD}{'; '.join(linked)}. {record.text}")


class LinkCollector:
    """Gathers link context from records seen in corpus order (:meth:`add`), then :meth:`context`."""

    def __init__(self, rows: int = DEFAULT_LINK_ROWS) -> None:
        if rows < 0:
            raise ValueError(f"link rows must be >= 0, got {rows}")
        self.rows = rows
        self._by_passage: dict[str, list[str]] = {}

    def add(self, record: Record) -> None:
        if not self.rows or not isinstance(record, TableRecord) or not record.row_links:
            return
        from retriever.linearize.table import row_text

        for index, targets in enumerate(record.row_links):
            if index >= len(record.rows) or not targets:
                continue
            text: str | None = None
            for target in targets:
                kept = self._by_passage.setdefault(target, [])
                if len(kept) < self.rows:
                    if text is None:
                        text = _cut(row_text(record, record.rows[index]))
                    if text and text not in kept:
                        kept.append(text)

    def context(self) -> LinkContext:
        return LinkContext({k: tuple(v) for k, v in self._by_passage.items() if v})


def collect_links(records: Iterable[Record], rows: int = DEFAULT_LINK_ROWS) -> LinkContext | None:
    """The link context of ``records`` (None when ``rows`` is 0). Consumes ``records`` whatever
    ``rows`` is, so an index build's validation pass is this call."""
    collector = LinkCollector(rows)
    for record in records:
        collector.add(record)
    return collector.context() if rows else None


def _cut(text: str) -> str:
    words = text.split()
    return " ".join(words[:ROW_WORDS]) if len(words) > ROW_WORDS else " ".join(words)
