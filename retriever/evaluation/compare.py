"""Side-by-side tables of saved benchmark outputs (``metrics.json`` of ``retriever bench heteromix``).

A run directory holds one benchmark of one model; comparing models (an ablation, a merge weight,
a new checkpoint against the bundled one) means reading several of them and lining up the same
method and scenario per dataset. Nothing is recomputed here: the figures are the saved ones.

``paired_markdown`` (``bench compare --paired``) asks whether a difference is more than chance: it
reads each run's per-question metrics (``questions.<method>.<scenario>.jsonl``, as the benchmark
judged them), pairs the questions by id and reports per dataset and pooled the mean difference
against the first run, its paired standard error and a seeded bootstrap 95 % interval over the
questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from retriever.errors import InvalidInputError
from retriever.evaluation.report import POOLED, fmt, per_question_name

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SavedRun:
    """One (method, scenario) run of one saved benchmark: ``metrics[group][metric]``."""

    label: str
    method: str
    scenario: str
    metrics: dict[str, dict[str, float]]


def _metrics_path(directory: Path) -> Path:
    """``directory/metrics.json``, or ``directory`` itself when it names that file."""
    return directory if directory.suffix == ".json" and not directory.is_dir() else directory / METRICS_FILE


def _read_metrics(directory: Path) -> tuple[Path, Any]:
    """The path and parsed content of a saved benchmark's ``metrics.json``; errors name the file."""
    path = _metrics_path(directory)
    try:
        return path, orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: not found (expected the --out directory of `retriever bench` "
                                f"or its {METRICS_FILE})") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from exc


def load_saved_runs(directory: Path, label: str) -> list[SavedRun]:
    """Read ``directory/metrics.json``; errors name the file and the missing field."""
    path, payload = _read_metrics(directory)
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


def read_per_question(path: Path) -> dict[str, dict[str, Any]]:
    """A run's per-question file (``questions.<method>.<scenario>.jsonl``): question id → its line."""
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: not found (written by `retriever bench heteromix` and `bench compmix`; "
                                "older outputs lack it: run the benchmark again)") from None
    for number, line in enumerate(lines, 1):
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("dataset"), str):
            raise InvalidInputError(f"{path}:{number}: expected an object with string fields 'id' and 'dataset'")
        out[row["id"]] = row
    return out


@dataclass(frozen=True)
class PairedDifference:
    """Reference minus other over ``n`` paired questions: means, difference, paired SE, bootstrap 95 % interval."""

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


def _settings(directory: Path) -> dict[str, Any]:
    path, payload = _read_metrics(directory)
    if not isinstance(payload, dict):
        raise InvalidInputError(f"{path}: expected a JSON object")
    return payload


def paired_markdown(directories: Sequence[Path], labels: Sequence[str] | None, metrics: Sequence[str],
                    scenarios: Sequence[str] | None, methods: Sequence[str], draws: int = 2000, seed: int = 0) -> str:
    """Per scenario and metric, every (run, method) against the first: difference, paired SE, bootstrap interval.

    The reference is the first directory with the first of ``methods``; the others are every other
    directory × method pair whose per-question file exists (those without one are listed). Questions
    are paired by id; a question judged in one run but not the other (another index's gold) is
    left out and counted. Runs of another question file, depth or rank convention are refused.
    """
    if labels and len(labels) != len(directories):
        raise InvalidInputError(f"--labels has {len(labels)} names for {len(directories)} directories")
    if draws < 1:
        raise InvalidInputError(f"--bootstrap must be >= 1, got {draws}")
    names = list(labels) if labels else [str(d) for d in directories]
    dirs = [_metrics_path(d).parent for d in directories]
    settings = [_settings(d) for d in directories]
    for key in ("questions", "depth", "collapse", "limit"):
        values = {str(s.get(key)) for s in settings}
        if len(values) > 1:
            raise InvalidInputError(f"the runs differ in '{key}' ({', '.join(sorted(values))}): their questions "
                                    "or ranks do not pair")
    chosen = list(scenarios) if scenarios else list(settings[0].get("scenarios") or ["all"])
    rng = np.random.default_rng(seed)
    blocks = []
    for scenario in chosen:
        entries = [(name, d, m) for name, d in zip(names, dirs, strict=True) for m in methods]
        files = [d / per_question_name(m, scenario) for _, d, m in entries]
        absent = [f"{e[0]} / {e[2]}" for e, f in zip(entries[1:], files[1:], strict=True) if not f.is_file()]
        reference = read_per_question(files[0])
        others = [(e, read_per_question(f)) for e, f in zip(entries[1:], files[1:], strict=True) if f.is_file()]
        if not others:
            raise InvalidInputError(f"{scenario}: nothing to set against {entries[0][0]} / {entries[0][2]} (no "
                                    f"per-question file for {', '.join(absent) or 'another run or method'})")
        for metric in metrics:
            lines = [f"{scenario}, {metric}: {entries[0][0]} / {entries[0][2]} minus each run "
                     f"(mean − mean = difference ± paired standard error [bootstrap 95 % interval, {draws} draws, "
                     f"seed {seed}])", ""]
            rows, datasets, unpaired = [], sorted({r["dataset"] for r in reference.values()}), []
            for (name, _, method), run in others:
                ref_with = [q for q in reference if metric in reference[q]]
                run_with = sum(metric in row for row in run.values())
                ids = [q for q in ref_with if metric in run.get(q, {})]
                if len(ids) < len(ref_with) or len(ids) < run_with:
                    unpaired.append(f"{name} / {method}: {len(ids)} paired of {len(ref_with)} and {run_with}")
                if not ids:
                    raise InvalidInputError(f"{scenario}, {metric}: no question of {name} / {method} pairs with "
                                            "the reference (another question file, or a metric it lacks)")
                a = np.array([float(reference[q][metric]) for q in ids])
                b = np.array([float(run[q][metric]) for q in ids])
                groups = {d: [i for i, q in enumerate(ids) if reference[q]["dataset"] == d] for d in datasets}
                groups[POOLED] = list(range(len(ids)))
                cells = []
                for idx in groups.values():
                    if not idx:
                        cells.append("–")
                        continue
                    d = paired_difference(a[idx], b[idx], draws, rng)
                    cells.append(f"{d.reference:.3f} − {d.other:.3f} = {d.diff:+.3f} ± {d.se:.3f} "
                                 f"[{d.low:+.3f}, {d.high:+.3f}]")
                rows.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
            lines += ["| run | method | " + " | ".join([*datasets, POOLED]) + " |",
                      "|---|---|" + "---|" * (len(datasets) + 1), *rows]
            notes = ([f"No per-question file for {', '.join(absent)}."] if absent else []) + \
                [f"Unpaired questions left out: {'; '.join(unpaired)}."] * bool(unpaired)
            if notes:
                lines += ["", *notes]
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
