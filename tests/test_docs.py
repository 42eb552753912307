"""Statements that several documents make must agree (one truth, stated where users look)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATED_IN = ["README.md", "docs/SERVICE.md", "protos/retriever/v1/retriever.proto"]


def plain(path: str) -> str:
    """The file's text without comment markers and with whitespace collapsed."""
    text = (ROOT / path).read_text(encoding="utf-8").replace("//", " ")
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("path", STATED_IN)
def test_unset_instruction_rule_is_the_servers(path: str) -> None:
    # What Searcher.plan does with instruction=None (tests/test_searcher.py checks the behaviour, and
    # tests/service/test_docker_readme.py the response's instruction over gRPC).
    text = plain(path)
    assert "gets its prompt for the single source requested in `sources`, else its general prompt" in text
    assert "saved none (the zero-shot `bundled:all-MiniLM-L6-v2`) gets the bare question" in text
    assert "default model (`bundled:heteromix-minilm-l6`) saved its prompts" in text.lower()
    assert "Unset: the model's saved prompt" not in text and "unset: the model's saved prompt" not in text
