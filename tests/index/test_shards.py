"""Sharded search against an exact brute-force oracle on seeded data."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from retriever.index.factory import train_index
from retriever.index.shards import SearchParams, Shard, ShardedIndex, exact_topk, merge_topk


def create_index(dim: int, factory: str, vectors: np.ndarray):
    index, used = train_index(factory, dim, vectors, seed=0)
    index.add(vectors)
    return index, used

SOURCES = ("text", "table", "kb", "infobox")
SIZES = (700, 500, 300, 120)
DIM = 32


def normalized(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    vectors = normalized(rng, sum(SIZES))
    labels = np.repeat(np.arange(len(SOURCES)), SIZES)
    return vectors, labels, normalized(rng, 50)


def build(vectors: np.ndarray, factory: str, use_gpu: bool = False) -> ShardedIndex:
    shards, start = [], 0
    for source, size in zip(SOURCES, SIZES):
        index, used = create_index(DIM, factory, vectors[start:start + size])
        shards.append(Shard(source, start, index, used, use_gpu=use_gpu))
        start += size
    sharded = ShardedIndex(shards)
    sharded.set_params(SearchParams(nprobe=64, ef_search=256))
    return sharded


def oracle(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, allowed: set[int], k: int):
    ids = np.flatnonzero(np.isin(labels, sorted(allowed)))
    sims = queries @ vectors[ids].T
    out = []
    for row in sims:
        order = sorted(range(len(ids)), key=lambda j: (-row[j], ids[j]))[:k]
        out.append((ids[order], row[order]))
    return out


FILTERS = [None, *([s] for s in SOURCES), ["table", "infobox"], ["text", "kb", "infobox"]]


@pytest.mark.parametrize("sources", FILTERS, ids=lambda f: "+".join(f) if f else "all")
@pytest.mark.parametrize("k", [1, 10, 150])
def test_flat_filtered_search_equals_brute_force(data, sources, k) -> None:
    vectors, labels, queries = data
    index = build(vectors, "Flat")
    scores, ids = index.search(queries, k, sources)
    allowed = {SOURCES.index(s) for s in (sources or SOURCES)}
    expected = oracle(vectors, labels, queries, allowed, k)
    for got_ids, got_scores, (want_ids, want_scores) in zip(ids, scores, expected):
        assert got_ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-5)
        assert np.all(np.isin(labels[got_ids], sorted(allowed)))


def test_k_larger_than_a_filtered_source_pads_with_minus_one(data) -> None:
    vectors, _, queries = data
    scores, ids = build(vectors, "Flat").search(queries[:2], 200, ["infobox"])
    assert ids.shape == (2, 120)
    assert (ids >= sum(SIZES[:3])).all()


@pytest.mark.parametrize(("factory", "min_recall"), [("HNSW32", 0.95), ("IVF16,Flat", 0.95)])
def test_approximate_indexes_against_exact_oracle(data, factory, min_recall) -> None:
    vectors, labels, queries = data
    approx = build(vectors, factory)
    for sources in FILTERS:
        _, got = approx.search(queries, 10, sources)
        allowed = {SOURCES.index(s) for s in (sources or SOURCES)}
        want = oracle(vectors, labels, queries, allowed, 10)
        recall = np.mean([len(set(g.tolist()) & set(w[0].tolist())) / 10 for g, w in zip(got, want)])
        assert recall >= min_recall, (factory, sources, recall)
        assert np.all(np.isin(labels[got[got >= 0]], sorted(allowed)))


def test_untrainable_factory_falls_back_to_flat() -> None:
    rng = np.random.default_rng(0)
    index, used = create_index(DIM, "IVF4096,Flat", normalized(rng, 100))
    assert used == "Flat"
    assert index.ntotal == 100


def test_exact_topk_breaks_ties_by_id() -> None:
    vectors = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    scores, ids = exact_topk(np.array([[1, 0]], dtype=np.float32), vectors, 3)
    assert ids.tolist() == [[0, 2, 3]]
    assert scores.tolist() == [[1.0, 1.0, 1.0]]


def test_exact_topk_keeps_the_lowest_ids_among_scores_tied_with_the_kth() -> None:
    vectors = np.array([[0, 1], [1, 0], [1, 0], [0.5, 0.5], [1, 0], [1, 0], [1, 0]], dtype=np.float32)
    _, ids = exact_topk(np.array([[1, 0], [0, 1]], dtype=np.float32), vectors, 3)
    assert ids.tolist() == [[1, 2, 4], [0, 3, 1]]


def test_exact_topk_matches_a_stable_sort_on_many_duplicates() -> None:
    rng = np.random.default_rng(3)
    distinct = normalized(rng, 40)
    vectors = distinct[rng.integers(0, 40, 30000)]  # every vector repeated ~750 times: ties everywhere
    queries = normalized(rng, 9)
    for k in (1, 10, 300, 600):  # 600: more than the sampled columns, the whole rows are partitioned
        scores, ids = exact_topk(queries, vectors, k)
        sims = queries @ vectors.T
        want = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        assert ids.tolist() == want.tolist()
        assert np.array_equal(scores, np.take_along_axis(sims, want, axis=1))


def test_exact_topk_equals_a_full_sort_on_distinct_scores() -> None:
    rng = np.random.default_rng(5)
    vectors, queries = normalized(rng, 20000), normalized(rng, 7)
    sims = queries @ vectors.T
    for k in (1, 10, 100, 313):
        scores, ids = exact_topk(queries, vectors, k)
        assert ids.tolist() == np.argsort(-sims, axis=1, kind="stable")[:, :k].tolist()


def test_merge_topk_orders_across_shards() -> None:
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[3, 4]]))
    b = (np.array([[0.7, -1.0]], np.float32), np.array([[10, -1]]))
    scores, ids = merge_topk([a, b], 4)
    assert ids.tolist() == [[3, 10, 4, -1]]
    assert scores[0, :3].tolist() == pytest.approx([0.9, 0.7, 0.5])


def test_all_filter_combinations_are_exact_on_flat(data) -> None:
    vectors, labels, queries = data
    index = build(vectors, "Flat")
    for r in range(1, 5):
        for combo in itertools.combinations(SOURCES, r):
            _, ids = index.search(queries[:5], 7, list(combo))
            want = oracle(vectors, labels, queries[:5], {SOURCES.index(s) for s in combo}, 7)
            assert [row.tolist() for row in ids] == [w[0].tolist() for w in want]


def test_a_missing_faiss_wheel_says_which_extra_to_install(monkeypatch):
    from retriever.errors import DependencyError
    from retriever.index.shards import faiss_module

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(DependencyError, match=r"retriever\[cpu\].*retriever\[gpu\]"):
        faiss_module()


# -- the bfloat16 first pass of exact shards: the same top k as float32 -----------------------------------------


def bf16_copy(vectors: np.ndarray):
    pytest.importorskip("torch")
    from retriever.index.shards import Bf16Copy

    return Bf16Copy.of(vectors)


def assert_same_topk(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    """Same scores (float32 sums in another order: within 1e-6) and the same ids wherever a score is not tied."""
    (scores, ids), (want_scores, want_ids) = got, want
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    untied = np.abs(np.diff(want_scores, axis=1, prepend=np.inf)) > 1e-6
    untied &= np.abs(np.diff(want_scores, axis=1, append=-np.inf)) > 1e-6
    assert np.array_equal(ids[untied], want_ids[untied])


def test_the_bf16_first_pass_returns_the_exact_top_k_of_float32(monkeypatch) -> None:
    from retriever.index import shards

    rng = np.random.default_rng(11)
    vectors, queries = normalized(rng, 20000), normalized(rng, 9)
    copy = bf16_copy(vectors)
    full = []
    real = shards.inner_products
    for k in (1, 10, 100):
        monkeypatch.setattr(shards, "inner_products", lambda q, v: full.append(len(q)) or real(q, v))
        got = exact_topk(queries, vectors, k, copy)
        monkeypatch.setattr(shards, "inner_products", real)
        assert_same_topk(got, exact_topk(queries, vectors, k))
    assert not full  # every row's candidates covered its near-ties: no float32 product over all vectors


def test_the_bf16_error_stays_within_the_bound_the_first_pass_relies_on() -> None:
    torch = pytest.importorskip("torch")
    from retriever.index.shards import BF16_ERROR

    rng = np.random.default_rng(12)
    vectors = normalized(rng, 5000) * rng.uniform(0.5, 2.0, (5000, 1)).astype(np.float32)  # not unit norm
    queries = normalized(rng, 16) * 3
    copy = bf16_copy(vectors)
    approx = (torch.from_numpy(queries).to(torch.bfloat16) @ copy.vectors.T).float().numpy()
    bound = BF16_ERROR * np.linalg.norm(queries, axis=1, keepdims=True) * copy.max_norm
    assert np.all(np.abs(approx - queries @ vectors.T) <= bound)


def test_the_bf16_first_pass_stays_exact_among_hundreds_of_near_ties(monkeypatch) -> None:
    from retriever.index import shards

    rng = np.random.default_rng(13)
    distinct = normalized(rng, 30)
    # every vector one of 30, slightly moved: hundreds of scores within bf16's error of one another
    vectors = distinct[rng.integers(0, 30, 12000)] + rng.normal(0, 1e-3, (12000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = np.vstack([normalized(rng, 4), distinct[:2]])
    monkeypatch.setattr(shards, "inner_products", lambda q, v: pytest.fail("a float32 product over all vectors"))
    got = exact_topk(queries, vectors, 10, bf16_copy(vectors))
    monkeypatch.undo()
    assert_same_topk(got, exact_topk(queries, vectors, 10))


def test_a_shard_makes_its_bf16_copy_at_the_first_batch_search_only_when_on(monkeypatch) -> None:
    pytest.importorskip("torch")
    from retriever.index import shards

    rng = np.random.default_rng(14)
    vectors = normalized(rng, 6000)
    index, used = create_index(DIM, "Flat", vectors)
    monkeypatch.setattr(shards, "bf16_prefilter", lambda: True)
    shard = Shard("text", 0, index, used, use_gpu=False)
    one = shard.search(normalized(rng, 1), 5)
    assert shard._bf16 is None  # one query: float32 only, no copy
    queries = normalized(rng, 8)
    batch = shard.search(queries, 5)
    assert shard._bf16 is not None and shard._bf16.vectors.shape == (6000, DIM)
    assert_same_topk(batch, exact_topk(queries, vectors, 5))
    assert one[1].shape == (1, 5)
    monkeypatch.setattr(shards, "bf16_prefilter", lambda: False)
    off = Shard("text", 0, index, used, use_gpu=False)
    off.search(queries, 5)
    assert off._bf16 is None


def test_retriever_exact_bf16_0_turns_the_first_pass_off(monkeypatch) -> None:
    from retriever.index import shards

    shards.bf16_prefilter.cache_clear()
    monkeypatch.setenv("RETRIEVER_EXACT_BF16", "0")
    try:
        assert shards.bf16_prefilter() is False
    finally:
        shards.bf16_prefilter.cache_clear()


def test_a_nan_query_in_a_batch_is_scored_in_float32_in_full() -> None:
    rng = np.random.default_rng(15)
    vectors = normalized(rng, 6000)
    queries = normalized(rng, 3)
    queries[1] = np.nan  # no bf16 bound holds for it: fewer than k candidates clear a NaN floor
    scores, ids = exact_topk(queries, vectors, 5, bf16_copy(vectors))
    want_scores, want_ids = exact_topk(queries, vectors, 5)
    assert ids.shape == (3, 5) and np.array_equal(ids[1], want_ids[1])
    assert_same_topk((scores[[0, 2]], ids[[0, 2]]), (want_scores[[0, 2]], want_ids[[0, 2]]))
