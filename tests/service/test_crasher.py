"""The crasher (benchmarks/crasher.py) for one minute: kill -9 of the server and of builds while clients
query; every answer checked against the build that served it. Slow: run with ``pytest -m slow``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_one_minute_of_kills_gives_no_wrong_answer_and_no_partial_index(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("crasher", ROOT / "benchmarks" / "crasher.py")
    assert spec is not None and spec.loader is not None
    crasher = importlib.util.module_from_spec(spec)
    sys.modules["crasher"] = crasher  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(crasher)
    result = crasher.run(minutes=1.0, clients=3, seed=11, work=tmp_path / "work")
    print(json.dumps(result, indent=2))
    assert result["answers_checked"] > 0 and sum(result["events"].values()) > 0
    assert result["wrong_answers"] == 0, result["examples"]
    assert result["partial_indexes"] == [] and result["generations_serving_two_builds"] == []
    assert set(result["call_codes"]) <= {"OK", "UNAVAILABLE", "CANCELLED"}, result["call_codes"]
