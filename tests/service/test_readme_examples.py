"""A new user's first questions find their gold evidence: the README's client example, run as written
against a server on the sample index, and ``retriever demo`` rank it in the top 3 with the default model.

Both ask real questions of ``retriever/data/sample_queries.jsonl`` whose gold records are in the
sample corpus, so a worse default model (or a broken linearizer, prompt or filter) fails here.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retriever.cli.main import main
from retriever.sample import ensure_sample_index, sample_questions
from tests.service.helpers import python_block, run_example, running_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[Path]:
    """A cache holding the real sample index built with the default model (about half a minute)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVER_CACHE_DIR", str(cache))
        ensure_sample_index(encoder)
        yield cache


def test_readme_client_example_finds_its_gold_in_the_top_3(sample_cache: Path, encoder: Any) -> None:
    block = python_block("README.md", "RetrieverClient(")
    asked = re.search(r'client\.retrieve\(\s*"([^"]+)"', block)
    assert asked, "the README's client example should ask a literal question"
    question = {q.text: q for q in sample_questions()}.get(asked.group(1))
    assert question is not None, f"the README asks {asked.group(1)!r}, which is not a sample question"
    with running_server(encoder, [("sample", ensure_sample_index(encoder))]) as server:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            run_example(block, server.port)
    ranks = [int(line.split()[0]) for line in out.getvalue().splitlines()
             if any(gold in line.split() for gold in question.gold)]
    assert ranks and min(ranks) <= 3, out.getvalue()
    # The README shows the output it documents: the same first three lines (rank, source, record, row).
    shown = re.search(r"```\n(1 .*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    assert shown, f"the README should show the example's output:\n{out.getvalue()}"
    got = [line.split()[:4] for line in out.getvalue().splitlines()[:3]]
    assert [line.split()[:4] for line in shown.group(1).splitlines()[:3]] == got, out.getvalue()


def test_demo_finds_each_gold_in_the_top_3(sample_cache: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIEVER_CACHE_DIR", str(sample_cache))
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    ranks = re.findall(r"^gold evidence \(.*\): rank (\d+)$", out, flags=re.M)
    assert len(ranks) == 3 and all(int(r) <= 3 for r in ranks), out
    assert "[sources: table]" in out and "[instruction: " in out
