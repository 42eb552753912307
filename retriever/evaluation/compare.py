"""Side-by-side tables of saved benchmark outputs (``metrics.json`` of ``retriever bench heteromix``).

A run directory holds one benchmark of one model; comparing models (an ablation, a merge weight,
a new checkpoint against the bundled one) means reading several of them and lining up the same
method and scenario per dataset. Nothing is recomputed here: the figures are the saved ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from retriever.errors import InvalidInputError
from retriever.evaluation.report import POOLED, fmt

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
