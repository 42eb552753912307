"""Question files (``queries.*.jsonl``): the one reader that training, the dev check and the benchmarks share.

One JSON object a line::

    {"id": "q1", "text": "who ...?", "dataset": "hybridqa", "gold_source": "text+table",
     "gold": ["rec1", "rec2"], "gold_rows": {"rec2": [0, 3]}, "answers": ["..."],
     "history": [{"question": "...", "answer": "..."}]}

``id``, ``text``, ``gold_source`` and ``gold`` are required; ``gold_source`` names one source or
several joined by ``+`` (the answer spans them); ``gold_rows`` (the table rows that hold the
answer), ``answers`` and ``history`` (earlier turns of a conversation) are optional. A bad line
is an :class:`~retriever.errors.InvalidInputError` naming file, line and field, before anything
else runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from retriever.errors import InvalidInputError
from retriever.query import Turn
from retriever.records import Source, iter_json_lines


@dataclass(frozen=True)
class Question:
    """One labelled question."""

    id: str
    text: str
    dataset: str
    gold_sources: tuple[Source, ...]
    gold: tuple[str, ...]
    gold_rows: Mapping[str, frozenset[int]] = field(default_factory=dict)
    answers: tuple[str, ...] = ()
    history: tuple[Turn, ...] = ()  # earlier turns of a conversation (optional field ``history``)

    @property
    def single_source(self) -> Source | None:
        """The one source the answer is in, or None when ``gold_source`` names several."""
        return self.gold_sources[0] if len(self.gold_sources) == 1 else None


def parse_gold_source(value: str) -> tuple[Source, ...]:
    """``"text"`` → (text,), ``"text+table"`` → (text, table); raises ValueError on unknown names."""
    parts = [p for p in value.split("+") if p.strip()]
    if not parts:
        raise ValueError("empty gold_source")
    return tuple(dict.fromkeys(Source.parse(p) for p in parts))


def read_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    """Read a question file (the first ``limit`` questions when given).

    Raises:
        InvalidInputError: naming file, line and field of the first bad question (a duplicate id
            included), or the file when it holds no question.
    """
    path = Path(path)
    out: list[Question] = []
    seen: set[str] = set()
    for number, obj in iter_json_lines(path):
        where = f"{path}:{number}"
        out.append(_question(obj, where))
        if out[-1].id in seen:
            raise InvalidInputError(f"{where}: field 'id': duplicate question id {out[-1].id!r}")
        seen.add(out[-1].id)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InvalidInputError(f"{path}: no questions")
    return out


def _question(obj: object, where: str) -> Question:
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{where}: expected a JSON object")
    for name in ("id", "text", "gold_source"):
        if not isinstance(obj.get(name), str) or not obj[name].strip():
            raise InvalidInputError(f"{where}: field '{name}': missing or not a non-empty string")
    gold = obj.get("gold")
    if not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold):
        raise InvalidInputError(f"{where}: field 'gold': expected a non-empty list of record ids")
    try:
        sources = parse_gold_source(obj["gold_source"])
    except ValueError as exc:
        raise InvalidInputError(f"{where}: field 'gold_source': {exc}") from None
    rows: dict[str, frozenset[int]] = {}
    raw_rows = obj.get("gold_rows") or {}
    if not isinstance(raw_rows, dict):
        raise InvalidInputError(f"{where}: field 'gold_rows': expected an object {{table id: [rows]}}")
    for table, indexes in raw_rows.items():
        if not isinstance(indexes, list) or not all(isinstance(i, int) and i >= 0 for i in indexes):
            raise InvalidInputError(f"{where}: field 'gold_rows.{table}': expected a list of row indexes >= 0")
        rows[table] = frozenset(indexes)
    answers = obj.get("answers") or []
    if not isinstance(answers, list):
        raise InvalidInputError(f"{where}: field 'answers': expected a list of strings")
    return Question(obj["id"], obj["text"], str(obj.get("dataset") or ""), sources,
                    tuple(dict.fromkeys(gold)), rows, tuple(str(a) for a in answers),
                    _history(obj.get("history"), where))


def _history(raw: object, where: str) -> tuple[Turn, ...]:
    """The optional ``history`` field: ``[{"question": str, "answer": str (optional)}, ...]``."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInputError(f"{where}: field 'history': expected a list of {{question, answer}} objects")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or not isinstance(turn.get("question"), str) \
                or not isinstance(turn.get("answer", ""), str):
            raise InvalidInputError(f"{where}: field 'history[{i}]': expected {{\"question\": str, \"answer\": str}}")
        turns.append(Turn(turn["question"], turn.get("answer", "")))
    return tuple(turns)
