"""The BM25 lexical index: ranking, ties, filters, and its no-pickle on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.errors import CorruptIndexError, IncompatibleIndexError
from retriever.index.lexical import LEXICAL_MANIFEST, Bm25Config, LexicalIndex, texts_sha256, top_k

TEXTS = [
    "Paris is the capital of France",
    "Berlin is the capital of Germany",
    "The Eiffel Tower stands in Paris",
    "Bananas are yellow fruit",
    "Berlin is the capital of Germany",  # duplicate of unit 1: a guaranteed score tie
]


@pytest.fixture(scope="module")
def lexical() -> LexicalIndex:
    return LexicalIndex.build(TEXTS)


def test_ranks_matching_units_and_drops_non_matching(lexical: LexicalIndex) -> None:
    ids, scores = lexical.search(["Where is the Eiffel Tower?"], k=5)[0]
    assert ids.tolist() == [2]  # only unit 2 shares a term; zero-score units are not evidence
    assert scores[0] > 0


def test_stemming_and_stop_words(lexical: LexicalIndex) -> None:
    # "capitals" stems to "capit" like "capital"; "the"/"of" are stop words and match nothing alone.
    assert set(lexical.search(["capitals"], k=5)[0][0].tolist()) == {0, 1, 4}
    assert lexical.search(["the of"], k=5)[0][0].tolist() == []


def test_ties_are_broken_by_unit_id(lexical: LexicalIndex) -> None:
    ids, scores = lexical.search(["Germany Berlin"], k=2)[0]
    assert ids.tolist() == [1, 4] and scores[0] == scores[1]
    ids, _ = lexical.search(["Germany Berlin"], k=1)[0]
    assert ids.tolist() == [1]


def test_mask_filters_exactly(lexical: LexicalIndex) -> None:
    mask = np.array([False, False, True, True, True])
    ids, _ = lexical.search(["capital Paris"], k=5, masks=[mask])[0]
    assert ids.tolist() == [2, 4]  # unit 0 (best overall) is filtered out, not just demoted


def test_top_k_keeps_ties_at_the_cut() -> None:
    scores = np.array([0.0, 2.0, 1.0, 2.0, 2.0], dtype=np.float32)
    ids, out = top_k(scores, 2)
    assert ids.tolist() == [1, 3] and out.tolist() == [2.0, 2.0]


def test_save_load_roundtrip_without_pickle(tmp_path: Path, lexical: LexicalIndex) -> None:
    path = tmp_path / "lex"
    lexical.save(path)
    names = sorted(p.name for p in path.iterdir())
    assert LEXICAL_MANIFEST in names and all(n.endswith((".npy", ".json")) for n in names)
    for npy in path.glob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises if anything was pickled
    loaded = LexicalIndex.load(path, units_sha256=texts_sha256(TEXTS))
    assert loaded.config == Bm25Config()
    for query in ("capital of Germany", "Eiffel", "yellow bananas"):
        a, b = lexical.search([query], 5)[0], loaded.search([query], 5)[0]
        assert a[0].tolist() == b[0].tolist() and np.allclose(a[1], b[1])


def test_load_refuses_other_units_and_altered_files(tmp_path: Path, lexical: LexicalIndex) -> None:
    path = tmp_path / "lex"
    lexical.save(path)
    with pytest.raises(IncompatibleIndexError):
        LexicalIndex.load(path, units_sha256=texts_sha256(TEXTS[:-1]))
    vocab = path / "vocab.index.json"
    vocab.write_text(vocab.read_text() + " ")
    with pytest.raises(CorruptIndexError):
        LexicalIndex.load(path)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        Bm25Config(b=1.5)
    with pytest.raises(ValueError):
        Bm25Config(method="tfidf")
