"""Tables: one unit per row, ``"<title>, <section>: <column> is <value>, ..."``.

Empty cells are left out; a cell under an empty column name is written as its value alone.
Rows with no non-empty cell produce no unit (row indexes of the other rows are kept).
"""

from __future__ import annotations

from retriever.linearize.base import Unit, WindowBudget
from retriever.records import Record, Source, TableRecord


def row_text(record: TableRecord, row: tuple[str, ...]) -> str:
    context = ", ".join(p.strip() for p in (record.title, record.section) if p.strip())
    cells = []
    for i, value in enumerate(row):
        value = " ".join(value.split())
        if not value:
            continue
        column = " ".join(record.header[i].split()) if i < len(record.header) else ""
        cells.append(f"{column} is {value}" if column else value)
    body = ", ".join(cells)
    return f"{context}: {body}" if context else body


class TableLinearizer:
    source = Source.TABLE

    def single_window(self, record: Record) -> None:
        """Not checked against the budget: each unit is short by construction."""
        return None

    def linearize(self, record: Record, budget: WindowBudget) -> list[Unit]:
        if not isinstance(record, TableRecord):
            raise TypeError(f"TableLinearizer got a {type(record).__name__}")
        units = []
        for index, row in enumerate(record.rows):
            if any(cell.strip() for cell in row):
                units.append(Unit(record.id, self.source, index, record.title, row_text(record, row)))
        return units
