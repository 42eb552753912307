"""Gate: BM25 on HeteroMix mini / dev.mini reproduces the data README's reference rows within 0.01.

The reference (``../shared/data/README.md``, "Reference BM25 figures") used bm25s with k1=0.9,
b=0.4, English stop words and PyStemmer's English stemmer over whole passages and infoboxes,
one unit per table row and per triple: the ``whole-record`` unit scheme. The figures below are
copied from that table; the harness computes its own (record ranks over the top-100 units).
Run with ``pytest -m slow tests/evaluation/test_heteromix_gate.py`` (about a minute).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from retriever.evaluation.bench import HeteroBenchConfig, Method, run_heteromix_bench
from retriever.evaluation.collection import UnitScheme
from retriever.evaluation.heteromix import HeteroConfig, Scenario
from tests.conftest import DATA_DIR

TOLERANCE = 0.01
HETEROMIX = DATA_DIR / "heteromix"

#: README "mini / dev.mini" rows: all sources → scenario ``all``; gold source only → ``source-hard``.
REFERENCE = {
    Scenario.ALL: {"hit@1": 0.710, "hit@10": 0.870, "hit@100": 0.952, "mrr@100": 0.768, "source@10": 0.357},
    Scenario.SOURCE_HARD: {"hit@1": 0.725, "hit@10": 0.843, "hit@100": 0.923, "mrr@100": 0.769, "source@10": 1.000},
}


@pytest.mark.slow
@pytest.mark.skipif(not (HETEROMIX / "corpus.jsonl.gz").is_file(), reason="HeteroMix data not present")
def test_bm25_matches_the_readme_reference(tmp_path: Path) -> None:
    scenarios = tuple(REFERENCE)
    report = run_heteromix_bench(HeteroBenchConfig(
        corpus=HETEROMIX / "corpus.jsonl.gz", ids_file=HETEROMIX / "mini.ids.txt",
        questions=HETEROMIX / "queries.dev.mini.jsonl", out=tmp_path / "out", methods=(Method.BM25,),
        scenarios=scenarios, units=UnitScheme.WHOLE_RECORD, cache_dir=tmp_path / "cache",
        hetero=HeteroConfig(scenarios=scenarios, show_progress=False)))
    assert len(report.store) == 34361  # the README's unit count for mini
    failures = []
    for run in report.runs:
        pooled = run.metrics["pooled"]
        assert pooled["n"] == 1800
        for key, expected in REFERENCE[run.scenario].items():
            if abs(pooled[key] - expected) > TOLERANCE:
                failures.append(f"{run.label} {key}: {pooled[key]:.3f}, reference {expected:.3f}")
    assert not failures, "; ".join(failures)
