"""Benchmark outputs: run files, per-question metrics, metrics JSON, Markdown tables, Hit@k plots, RESULTS.md."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from retriever.index.store import UnitStore
from retriever.records import Source
from retriever.searcher import Ranking

logger = logging.getLogger(__name__)

POOLED = "pooled"
METRIC_LABELS = {"source@10": "top-10 from requested source"}
#: A line of its own in RESULTS.md just above the history appendix: new sections go in before it.
HISTORY_MARKER = "<!-- HISTORY -->"


class ScoredRun(Protocol):
    """What the writers need from a run (HeteroMix and CompMix runs both provide it)."""

    method: str
    question_ids: list[str]
    rankings: list[Ranking]
    metrics: dict[str, dict[str, float]]
    first_ranks: list[int | None]
    per_question: list[dict[str, float]]
    datasets: list[str]

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class Column:
    key: str
    title: str


def trec_docid(store: UnitStore, unit_id: int) -> str:
    """A unit's document id in run files: ``record#row`` for table rows, ``record#w<n>`` for window n > 0."""
    rid = store.record_id(unit_id)
    part = int(store.parts[unit_id])
    if store.source_of(unit_id) is Source.TABLE:
        return f"{rid}#{part}"
    return f"{rid}#w{part}" if part else rid


def write_trec(path: Path, run: ScoredRun, store: UnitStore, tag: str | None = None) -> None:
    """Write ``qid Q0 docid rank score tag`` lines, rank from 1 in the retriever's order."""
    tag = (tag or run.label).replace(" ", "_")
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for qid, (ids, scores) in zip(run.question_ids, run.rankings, strict=True):
            qid = qid.replace(" ", "_")
            for rank, (unit_id, score) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True), 1):
                fh.write(f"{qid} Q0 {trec_docid(store, unit_id)} {rank} {score:.6f} {tag}\n")
    os.replace(tmp, path)


def per_question_name(method: str, scenario: str) -> str:
    """The per-question file of one run in a ``--out`` directory."""
    return f"questions.{method}.{scenario}.jsonl"


def write_per_question(path: Path, run: ScoredRun) -> None:
    """One JSON object a judged question: ``{"id", "dataset", <metric>: value, ...}`` (``bench compare --paired``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        for qid, dataset, values in zip(run.question_ids, run.datasets, run.per_question, strict=True):
            fh.write(orjson.dumps({"id": qid, "dataset": dataset, **values}) + b"\n")
    os.replace(tmp, path)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def pooled_table(runs: Sequence[ScoredRun], columns: Sequence[Column], group: str = POOLED) -> str:
    """One row per run (method and scenario), one column per metric."""
    head = "| method | scenario | " + " | ".join(c.title for c in columns) + " | questions |"
    rule = "|---|---|" + "---|" * len(columns) + "---|"
    lines = [head, rule]
    for run in runs:
        metrics = run.metrics.get(group, {})
        values = " | ".join(fmt(metrics.get(c.key)) for c in columns)
        method, _, scenario = run.label.partition(" / ")
        lines.append(f"| {method} | {scenario} | {values} | {int(metrics.get('n', 0))} |")
    return "\n".join(lines)


def per_dataset_table(runs: Sequence[ScoredRun], key: str) -> str:
    """Rows: runs; columns: datasets (and pooled); cells: ``key``."""
    datasets = sorted({d for r in runs for d in r.metrics if d != POOLED})
    head = "| method | scenario | " + " | ".join(datasets) + " | pooled |"
    rule = "|---|---|" + "---|" * (len(datasets) + 1)
    lines = [head, rule]
    for run in runs:
        cells = [fmt(run.metrics.get(d, {}).get(key)) for d in [*datasets, POOLED]]
        method, _, scenario = run.label.partition(" / ")
        lines.append(f"| {method} | {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_hit_curves(path: Path, runs: Sequence[ScoredRun], max_k: int, title: str) -> None:
    """PNG of pooled Hit@k against k (1..max_k, log x) — one panel per scenario, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.label.partition(" / ")[2] for r in runs))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.6), sharey=True, squeeze=False)
    ks = list(range(1, max_k + 1))
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        for run in (r for r in runs if r.label.partition(" / ")[2] == scenario):
            n = max(len(run.first_ranks), 1)
            curve = [sum(1 for r in run.first_ranks if r is not None and r <= k) / n for k in ks]
            ax.plot(ks, curve, label=run.method)
        ax.set_xscale("log")
        ax.set_title(scenario)
        ax.set_xlabel("k")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("Hit@k (pooled)")
    axes[0][0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def replace_section(path: Path, name: str, body: str) -> None:
    """Replace (or add) the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``path``.

    An existing section is replaced where it stands. A new one goes in just above the first line
    that is exactly ``<!-- HISTORY -->`` (the history appendix stays last), else at the end.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    elif (at := _marker_line(text, HISTORY_MARKER)) is not None:
        text = text[:at].rstrip() + "\n\n" + block + "\n\n" + text[at:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    logger.info("updated section %r of %s", name, path)


def _marker_line(text: str, marker: str) -> int | None:
    """Offset of the first line that is exactly ``marker`` (not a mention inside other text)."""
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.strip() == marker:
            return offset
        offset += len(line)
    return None
