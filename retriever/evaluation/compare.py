"""Side-by-side tables of saved benchmark outputs (``metrics.json`` of ``retriever bench heteromix``).

A run directory holds one benchmark of one model; comparing models (an ablation, a merge weight,
a new checkpoint against the bundled one) means reading several of them and lining up the same
method and scenario per dataset. Nothing is recomputed here: the figures are the saved ones.

``paired_markdown`` (``bench compare --paired``) asks whether a difference is more than chance: it
reads the saved run files (``run.<method>.<scenario>.trec``) and the question file named in
``metrics.json``, scores each question's reciprocal rank of its first gold record (record ranks, as
the benchmark counts them), and reports per dataset and pooled the mean difference against the
first run, its paired standard error and a seeded bootstrap 95 % interval over the questions.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from retriever.errors import InvalidInputError
from retriever.evaluation.report import POOLED, fmt
from retriever.questions import Question, read_questions

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SavedRun:
    """One (method, scenario) run of one saved benchmark: ``metrics[group][metric]``."""

    label: str
    method: str
    scenario: str
    metrics: dict[str, dict[str, float]]


def load_saved_runs(directory: Path, label: str) -> list[SavedRun]:
    """Read ``directory/metrics.json``; errors name the file and the missing field."""
    path = directory if directory.suffix == ".json" and not directory.is_dir() else directory / METRICS_FILE
    try:
        payload = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: not found (expected the --out directory of `retriever bench` "
                                f"or its {METRICS_FILE})") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from exc
    runs = payload.get("runs") if isinstance(payload, dict) else None
    if not isinstance(runs, list):
        raise InvalidInputError(f"{path}: field 'runs' is missing or not a list")
    out = []
    for i, run in enumerate(runs):
        try:
            out.append(SavedRun(label, str(run["method"]), str(run["scenario"]), dict(run["metrics"])))
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path}: runs[{i}] lacks field {exc} (method, scenario, metrics)") from exc
    return out


def _cell(run: SavedRun, group: str, metric: str) -> str:
    value: Any = run.metrics.get(group, {}).get(metric)
    return fmt(float(value)) if isinstance(value, int | float) else "–"


def compare_table(runs: Sequence[SavedRun], metric: str, scenarios: Sequence[str] | None = None,
                  methods: Sequence[str] | None = None) -> str:
    """Markdown: one row per (scenario, method, label), one column per dataset and pooled."""
    kept = [r for r in runs if (not scenarios or r.scenario in scenarios) and (not methods or r.method in methods)]
    if not kept:
        raise InvalidInputError("no saved run matches the requested scenarios and methods "
                                f"(have: {sorted({(r.method, r.scenario) for r in runs})})")
    datasets = sorted({d for r in kept for d in r.metrics if d != POOLED})
    order = list(scenarios) if scenarios else list(dict.fromkeys(r.scenario for r in kept))
    head = "| scenario | method | run | " + " | ".join([*datasets, POOLED]) + " |"
    lines = [head, "|---|---|---|" + "---|" * (len(datasets) + 1)]
    for scenario in order:
        for run in (r for r in kept if r.scenario == scenario):
            cells = [_cell(run, d, metric) for d in [*datasets, POOLED]]
            lines.append(f"| {run.scenario} | {run.method} | {run.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_markdown(directories: Sequence[Path], labels: Sequence[str] | None, metrics: Sequence[str],
                     scenarios: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> str:
    """One table per metric over the saved benchmarks in ``directories`` (labelled by ``labels``)."""
    if labels and len(labels) != len(directories):
        raise InvalidInputError(f"--labels has {len(labels)} names for {len(directories)} directories")
    names = list(labels) if labels else [str(d) for d in directories]
    runs = [run for d, name in zip(directories, names, strict=True) for run in load_saved_runs(d, name)]
    blocks = [f"{metric}:\n\n{compare_table(runs, metric, scenarios, methods)}" for metric in metrics]
    return "\n\n".join(blocks)


#: The scenarios in which every gold record counts, so a run file and the question file are enough to judge.
PAIRED_SCENARIOS = ("all", "all-plain")
_PART = re.compile(r"#(w?\d+)$")


def record_of(docid: str) -> str:
    """A run file's docid → its record: ``rec#3`` (table row) and ``rec#w1`` (window) → ``rec``."""
    return _PART.sub("", docid)


def read_trec_records(path: Path) -> dict[str, list[str]]:
    """Each question's records in rank order (a record at the rank of its first unit)."""
    ranked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 6 or not parts[3].isdigit():
                    raise InvalidInputError(f"{path}:{number}: expected 'qid Q0 docid rank score tag'")
                ranked[parts[0]].append((int(parts[3]), record_of(parts[2])))
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: not found (a run file of `retriever bench heteromix --out`)") from None
    return {qid: list(dict.fromkeys(record for _, record in sorted(units))) for qid, units in ranked.items()}


def reciprocal_ranks(run: dict[str, list[str]], questions: Sequence[Question], depth: int) -> np.ndarray:
    """Per question, 1 / rank of its first gold record within ``depth`` records (0 when not found)."""
    out = np.zeros(len(questions))
    for i, q in enumerate(questions):
        gold = set(q.gold)
        out[i] = next((1.0 / (rank + 1) for rank, r in enumerate(run.get(q.id, [])[:depth]) if r in gold), 0.0)
    return out


@dataclass(frozen=True)
class PairedDifference:
    """Reference minus other, over ``n`` questions: means, difference, paired SE, bootstrap 95 % interval."""

    n: int
    reference: float
    other: float
    diff: float
    se: float
    low: float
    high: float


def paired_difference(reference: np.ndarray, other: np.ndarray, draws: int,
                      rng: np.random.Generator) -> PairedDifference:
    diff = reference - other
    n = len(diff)
    boot = diff[rng.integers(n, size=(draws, n))].mean(axis=1)
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return PairedDifference(n, float(reference.mean()), float(other.mean()), float(diff.mean()), se,
                            float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))


def _saved_settings(directory: Path) -> dict[str, Any]:
    path = directory / METRICS_FILE
    try:
        payload = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: not found (expected the --out directory of `retriever bench`)") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("protocol") != "heteromix":
        raise InvalidInputError(f"{path}: --paired reads `retriever bench heteromix` outputs only")
    if payload.get("collapse") is not True:
        raise InvalidInputError(f"{path}: --paired compares record ranks; this run ranked units (--unit-ranks)")
    for key in ("questions", "depth"):
        if key not in payload:
            raise InvalidInputError(f"{path}: field '{key}' is missing")
    return payload


def paired_markdown(directories: Sequence[Path], labels: Sequence[str] | None, scenarios: Sequence[str] | None,
                    methods: Sequence[str], draws: int = 2000, seed: int = 0) -> str:
    """Per scenario, every (run, method) against the first: MRR difference, paired SE, bootstrap interval.

    The reference is the first directory with the first of ``methods``; the others are every
    directory × method pair after it. All runs must have answered the same question file (the one
    their ``metrics.json`` names) at the same depth.
    """
    if labels and len(labels) != len(directories):
        raise InvalidInputError(f"--labels has {len(labels)} names for {len(directories)} directories")
    if draws < 1:
        raise InvalidInputError(f"--bootstrap must be >= 1, got {draws}")
    chosen = list(scenarios) if scenarios else ["all"]
    wrong = [s for s in chosen if s not in PAIRED_SCENARIOS]
    if wrong:
        raise InvalidInputError(f"--paired judges {', '.join(PAIRED_SCENARIOS)} (every gold record counts); "
                                f"not {', '.join(wrong)}")
    names = list(labels) if labels else [str(d) for d in directories]
    settings = [_saved_settings(d) for d in directories]
    files = {str(s["questions"]) for s in settings}
    depths = {int(s["depth"]) for s in settings}
    if len(files) > 1 or len(depths) > 1:
        raise InvalidInputError(f"the runs answered different question files or depths: {sorted(files)}, "
                                f"{sorted(depths)}")
    questions = read_questions(files.pop(), settings[0].get("limit"))
    depth = depths.pop()
    rng = np.random.default_rng(seed)
    blocks = []
    for scenario in chosen:
        entries = [(name, d, m) for name, d in zip(names, directories, strict=True) for m in methods]
        # Every pair but the reference may lack its run file (a directory benchmarked with fewer methods).
        absent = [f"{name} / {m}" for name, d, m in entries[1:] if not (d / f"run.{m}.{scenario}.trec").is_file()]
        entries = entries[:1] + [e for e in entries[1:] if f"{e[0]} / {e[2]}" not in absent]
        if len(entries) < 2:
            raise InvalidInputError(f"{scenario}: nothing to compare the first run with (no run file for "
                                    f"{', '.join(absent) or 'another run or method'})")
        ranks = []
        for _, directory, method in entries:
            run = read_trec_records(directory / f"run.{method}.{scenario}.trec")
            unknown = set(run) - {q.id for q in questions}
            if unknown:
                raise InvalidInputError(f"{directory}/run.{method}.{scenario}.trec: {len(unknown)} question ids "
                                        f"are not in the question file (e.g. {sorted(unknown)[0]!r})")
            ranks.append(reciprocal_ranks(run, questions, depth))
        groups: dict[str, list[int]] = defaultdict(list)
        for i, q in enumerate(questions):
            groups[q.dataset].append(i)
        groups[POOLED] = list(range(len(questions)))
        ref_name, _, ref_method = entries[0]
        lines = [f"{scenario}: MRR@{depth}, reference {ref_name} / {ref_method} minus each run, paired standard "
                 f"error, bootstrap 95 % interval ({draws} draws, seed {seed})", "",
                 "| run | method | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
        for (name, _, method), other in zip(entries[1:], ranks[1:], strict=True):
            cells = []
            for idx in groups.values():
                d = paired_difference(ranks[0][idx], other[idx], draws, rng)
                cells.append(f"{d.reference:.3f} − {d.other:.3f} = {d.diff:+.3f} ± {d.se:.3f} "
                             f"[{d.low:+.3f}, {d.high:+.3f}]")
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
        if absent:
            lines += ["", f"No run file for {', '.join(absent)}."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
