"""``--factory auto``: the policy, the memory model, training, the recall gate and tuning.

Approximate indexes are checked against an exact ``IndexFlatIP`` oracle on seeded clustered data.
"""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import faiss
import numpy as np
import pytest

from retriever.errors import InvalidInputError
from retriever.index import factory as fm
from retriever.index.factory import (
    EXACT_LADDER,
    LARGE_LADDER,
    MEDIUM_LADDER,
    add_in_chunks,
    bytes_per_unit,
    choose_factory,
    exact_ground_truth,
    factory_ladder,
    format_factory,
    held_aside_queries,
    index_bytes,
    ivf_lists,
    measure_recall,
    train_index,
    tune_search,
)
from retriever.index.shards import SearchParams, Shard

DIM = 64
N = 20_000
CENTRES = 200
QUERIES = 300
GATE = 0.95
SCALING_DOC = Path(__file__).resolve().parents[2] / "docs" / "SCALING.md"


def clustered(seed: int, n: int = N, dim: int = DIM) -> np.ndarray:
    """``n`` L2-normalised vectors drawn around ``CENTRES`` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, CENTRES, n)] + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def chunks(x: np.ndarray, size: int = 4096):
    return (x[i:i + size] for i in range(0, len(x), size))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """FAISS on one thread: on a shared 2-core machine OpenMP's spinning threads cost ~5x here."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors, held-aside queries and the oracle's exact top-10 ids."""
    x = clustered(7)
    queries = held_aside_queries(x, QUERIES, seed=11, noise=fm.DEFAULT_QUERY_NOISE)
    oracle = faiss.IndexFlatIP(DIM)
    oracle.add(x)
    _, truth = oracle.search(queries, 10)
    return x, queries, truth


def build(factory: str, x: np.ndarray, seed: int = 0):
    index, used = train_index(factory, DIM, x, seed)
    assert used == factory
    assert add_in_chunks(index, chunks(x)) == len(x)
    assert index.ntotal == len(x)
    return index


# --- choose_factory: thresholds and budget (no index is built) --------------------------------


@pytest.mark.parametrize(("n", "expected"), [
    (0, "Flat"),
    (100_000, "Flat"),
    (100_001, "IVF1024,SQ8"),
    (2_000_000, "IVF4096,SQ8"),
    (2_000_001, "IVF4096,PQ96x4fsr,Refine(SQ8)"),
    (50_000_000, "IVF32768,PQ96x4fsr,Refine(SQ8)"),
    (10**11, "IVF65536,PQ96x4fsr,Refine(SQ8)"),
])
def test_choose_factory_thresholds(n: int, expected: str) -> None:
    choice = choose_factory(n, 384, None)
    assert choice.factory == expected
    assert choice.estimated_bytes == index_bytes(expected, n, 384)
    assert ("exact" in choice.reason) == (expected == "Flat")


def test_exact_choice_has_nothing_to_tune_and_refine_tunes_both() -> None:
    assert choose_factory(10, 384, None).tunable == ()
    assert choose_factory(10**6, 384, None).tunable == ("nprobe",)
    assert choose_factory(10**7, 384, None).tunable == ("nprobe", "k_factor")


def test_only_a_refined_choice_carries_the_more_accurate_fallback_and_only_when_it_fits() -> None:
    assert choose_factory(10**7, 384, None).fallbacks == ("IVF16384,SQ8",)
    assert choose_factory(10**7, 384, 5_000_000_000).fallbacks == ("IVF16384,SQ8",)  # SQ8 is the smaller
    assert choose_factory(10**7, 384, 1_000_000_000).fallbacks == ()  # stepped down to PQ: nothing fits
    assert choose_factory(10**6, 384, None).fallbacks == () and choose_factory(10, 384, None).fallbacks == ()


def test_an_auto_shard_below_the_gate_is_rebuilt_with_its_fallback(data, monkeypatch, caplog) -> None:
    """A refined choice whose 4-bit stage cannot reach the gate (k_factor capped at 1 here) is
    replaced by IVF,SQ8 from the same vectors and gate; a given factory still fails the build."""
    from retriever.index import recall as recall_module
    from retriever.index.shard_builder import RecallTooLowError, build_shard

    x, queries, _ = data
    monkeypatch.setattr(fm, "EXACT_MAX_UNITS", 1_000)
    monkeypatch.setattr(fm, "IVF_SQ8_MAX_UNITS", 5_000)  # 20 000 vectors: the large tier
    monkeypatch.setattr(recall_module, "K_FACTOR_CANDIDATES", (1,))

    def shard(factory: str):
        return build_shard(factory, len(x), DIM, None, GATE, lambda: chunks(x), "text", lambda: queries)

    caplog.set_level(logging.INFO, logger="retriever.index.shard_builder")
    built = shard("auto")
    assert built.factory == "IVF512,SQ8" and built.recall is not None and built.recall >= GATE
    assert "IVF512,PQ16x4fsr,Refine(SQ8)" in built.reason and "IVF512,SQ8 was built instead" in built.reason
    assert "building the more accurate IVF512,SQ8" in caplog.text
    with pytest.raises(RecallTooLowError, match=r"IVF512,PQ16x4fsr,Refine\(SQ8\) reaches recall@10 0\.\d+"):
        shard("IVF512,PQ16x4fsr,Refine(SQ8)")


def test_ivf_lists_is_a_power_of_two_near_four_sqrt_n() -> None:
    assert [ivf_lists(n) for n in (1, 1_000, 100_001, 1_000_000, 10**12)] == [64, 128, 1024, 4096, 65536]


@pytest.mark.parametrize(("n", "budget", "expected"), [
    (50_000, 76_800_000, "Flat"),  # exactly Flat's 50 000 * 1536 bytes
    (50_000, 76_799_999, "SQ8"),
    (50_000, 5_000_000, "PQ96x4fs"),
    (50_000, 1_400_000, "PQ48x4fs"),
    (1_000_000, 500_000_000, "IVF4096,SQ8"),
    (1_000_000, 100_000_000, "IVF4096,PQ96x4fsr"),
    (1_000_000, 40_000_000, "IVF4096,PQ48x4fsr"),
    (10_000_000, 5_000_000_000, "IVF16384,PQ96x4fsr,Refine(SQ8)"),
    (10_000_000, 4_000_000_000, "IVF16384,SQ8"),
])
def test_budget_steps_down_to_the_first_candidate_that_fits(n: int, budget: int, expected: str) -> None:
    choice = choose_factory(n, 384, budget)
    assert choice.factory == expected
    assert choice.estimated_bytes <= budget
    ladder = factory_ladder(n, 384)
    for skipped in ladder[:ladder.index(expected)]:
        assert index_bytes(skipped, n, 384) > budget
        assert skipped in choice.reason
    assert ("stepped down" in choice.reason) == (expected != ladder[0])


def test_budget_too_small_raises_with_the_numbers() -> None:
    with pytest.raises(InvalidInputError, match=r"1,000,000 B.*PQ48x4fs.*needs 1,2\d\d,\d\d\d B"):
        choose_factory(50_000, 384, 1_000_000)


@pytest.mark.parametrize(("n", "dimension", "budget"), [(-1, 64, None), (10, 0, None), (10, 64, 0)])
def test_choose_factory_rejects_bad_arguments(n: int, dimension: int, budget: int | None) -> None:
    with pytest.raises(InvalidInputError):
        choose_factory(n, dimension, budget)


# --- memory model ----------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "expected"), [
    ("Flat", 4 * 384),
    ("SQ8", 384),
    ("IVF4096,Flat", 4 * 384 + 8),
    ("IVF4096,SQ8", 384 + 8),
    ("HNSW32", 4 * 384 + 2 * 32 * 4 + 16),
    ("IVF4096,PQ96x4fsr", 48 + 8),
    ("IVF4096,PQ48x8", 48 + 8),
    ("IVF4096,PQ96x4fsr,RFlat", 48 + 8 + 4 * 384),
    ("IVF4096,PQ96x4fsr,Refine(SQ8)", 48 + 8 + 384),
])
def test_bytes_per_unit_formula(factory: str, expected: int) -> None:
    assert bytes_per_unit(factory, 384) == expected


def test_memory_model_rejects_unknown_factories() -> None:
    with pytest.raises(InvalidInputError, match="no memory model"):
        bytes_per_unit("LSH", 384)


@pytest.mark.parametrize("factory", [
    "Flat", "SQ8", "IVF256,Flat", "IVF256,SQ8", "HNSW32", "PQ16x4fs", "IVF256,PQ16x4fsr", "IVF256,PQ8x4fsr",
    "IVF256,PQ16x4fsr,Refine(SQ8)", "IVF256,PQ16x4fs,RFlat", "IVF512,PQ16x4fsr,Refine(SQ8)",
])
def test_memory_model_matches_serialized_size(data, factory: str) -> None:
    x, _, _ = data
    index = build(factory, x)
    actual = len(faiss.serialize_index(index))
    estimate = index_bytes(factory, len(x), DIM)
    # Required: within 20 %. The model is within ~1 % on this data; 3 % still catches a missing fixed term.
    assert abs(estimate - actual) <= 0.03 * actual, (estimate, actual)


def test_scaling_doc_table_matches_the_model() -> None:
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([\d,]+) \|", SCALING_DOC.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 8
    for factory, documented in rows:
        assert bytes_per_unit(factory, 384) == int(documented.replace(",", "")), factory


# --- training, recall and tuning -------------------------------------------------------------


LADDER_FACTORIES = sorted({format_factory(t, N, DIM) for t in (*EXACT_LADDER, *MEDIUM_LADDER, *LARGE_LADDER)})
#: Ladder steps that keep 8-bit (or better) codes for the final ranking; the gate must pass.
GATED = [f for f in LADDER_FACTORIES if "SQ8" in f or f == "Flat"] + ["IVF512,Flat", "HNSW32"]
#: Budget steps down to bare 4-bit PQ: tuning reports a figure, which on this data is below the gate.
COMPACT = [f for f in LADDER_FACTORIES if f not in GATED]


def test_ladders_at_test_scale_cover_every_family() -> None:
    assert GATED[:4] == ["Flat", "IVF512,PQ16x4fsr,Refine(SQ8)", "IVF512,SQ8", "SQ8"]
    assert COMPACT == ["IVF512,PQ16x4fsr", "IVF512,PQ8x4fsr", "PQ16x4fs", "PQ8x4fs"]


@pytest.mark.parametrize("factory", GATED)
def test_gated_families_reach_the_recall_gate(data, factory: str) -> None:
    x, queries, truth = data
    index = build(factory, x)
    params, recall = tune_search(index, factory, queries, truth, GATE)
    assert recall >= GATE
    # The figure is reproducible with the returned parameters, independently of the tuning loop.
    _, found = index.search(queries, 10)
    assert recall == pytest.approx(measure_recall(index, queries, truth, 10, params))
    assert recall == pytest.approx(np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, truth)]) / 10)


def test_tuning_picks_the_smallest_sufficient_nprobe(data) -> None:
    x, queries, truth = data
    index = build("IVF1024,SQ8", x)
    params, recall = tune_search(index, "IVF1024,SQ8", queries, truth, GATE)
    assert params.nprobe > 1 and recall >= GATE
    assert measure_recall(index, queries, truth, 10, SearchParams(nprobe=params.nprobe // 2)) < GATE
    # A target that one list reaches is met by nprobe 1.
    assert tune_search(index, "IVF1024,SQ8", queries, truth, 0.3)[0].nprobe == 1


def test_refinement_tunes_k_factor_down(data) -> None:
    x, queries, truth = data
    factory = "IVF512,PQ16x4fsr,Refine(SQ8)"
    index = build(factory, x)
    params, recall = tune_search(index, factory, queries, truth, GATE)
    assert 1 < params.k_factor < fm.K_FACTOR_CANDIDATES[-1]
    smaller = SearchParams(nprobe=params.nprobe, k_factor=params.k_factor // 2)
    assert measure_recall(index, queries, truth, 10, smaller) < GATE <= recall


def test_too_low_nprobe_cap_reports_recall_below_the_gate(data) -> None:
    x, queries, truth = data
    index = build("IVF1024,SQ8", x)
    assert measure_recall(index, queries, truth, 10, SearchParams(nprobe=1)) < GATE


@pytest.mark.parametrize("factory", COMPACT)
def test_compact_families_report_their_best_recall(data, factory: str) -> None:
    x, queries, truth = data
    index = build(factory, x)
    params, recall = tune_search(index, factory, queries, truth, GATE)
    assert 0.1 < recall < GATE
    assert recall == pytest.approx(measure_recall(index, queries, truth, 10, params))
    if factory.startswith("IVF"):  # the best of all nprobe, not the last tried
        tried = [measure_recall(index, queries, truth, 10, SearchParams(nprobe=1 << i)) for i in range(10)]
        assert recall == pytest.approx(max(tried))


def test_flat_is_exact_without_search(data) -> None:
    x, queries, truth = data
    index = build("Flat", x)
    assert tune_search(index, "Flat", queries, truth, GATE) == (SearchParams(), 1.0)
    assert measure_recall(index, queries, truth) == 1.0


def test_exact_ground_truth_over_chunks_equals_one_inner_product_search() -> None:
    rng = np.random.default_rng(3)
    # Rows of unequal norms, so inner product and L2 rank differently.
    x = (rng.standard_normal((9_000, 32)) * rng.uniform(0.2, 3.0, (9_000, 1))).astype(np.float32)
    queries = rng.standard_normal((40, 32)).astype(np.float32)
    oracle = faiss.IndexFlatIP(32)
    oracle.add(x)
    _, expected = oracle.search(queries, 10)
    l2 = faiss.IndexFlatL2(32)
    l2.add(x)
    assert not np.array_equal(l2.search(queries, 10)[1], expected)
    bounds = [0, 1, 2_500, 2_501, 7_000, 9_000]
    got = exact_ground_truth(queries, (x[a:b] for a, b in itertools.pairwise(bounds)), 10)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_held_aside_queries_are_near_but_not_copies(data) -> None:
    x, _, _ = data
    queries = held_aside_queries(x, 50, seed=5, noise=0.25)
    assert queries.shape == (50, DIM) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    best = (queries @ x.T).max(axis=1)
    assert np.all(best < 0.999) and np.all(best > 0.9)
    np.testing.assert_array_equal(queries, held_aside_queries(x, 50, seed=5, noise=0.25))
    assert not np.array_equal(queries, held_aside_queries(x, 50, seed=6, noise=0.25))
    with pytest.raises(InvalidInputError, match="cannot draw"):
        held_aside_queries(x[:10], 11, seed=0, noise=0.25)


def test_pseudo_queries_are_seeded_word_spans() -> None:
    from retriever.index.recall import pseudo_query_texts

    texts = [" ".join(f"w{i}" for i in range(100)), "short text", ""]
    spans = pseudo_query_texts(texts, seed=3, words=24)
    first = spans[0].split()
    assert len(first) == 24 and " ".join(first) in texts[0]
    assert spans[1:] == ["short text", ""]
    assert spans == pseudo_query_texts(texts, seed=3, words=24)
    assert pseudo_query_texts(texts * 20, seed=4, words=24) != pseudo_query_texts(texts * 20, seed=5, words=24)
    with pytest.raises(InvalidInputError, match="at least one word"):
        pseudo_query_texts(texts, seed=0, words=0)


def test_too_small_sample_falls_back_to_flat(data, caplog) -> None:
    x, _, _ = data
    with caplog.at_level(logging.WARNING, logger="retriever.index.factory"):
        index, used = train_index("IVF1024,SQ8", DIM, x[:100], seed=0)
    assert used == "Flat" and isinstance(index, faiss.IndexFlat) and index.ntotal == 0
    assert "cannot train 'IVF1024,SQ8' on 100 vectors" in caplog.text


def test_training_is_seeded(data) -> None:
    x, _, _ = data

    def centroids(seed: int) -> np.ndarray:
        index, _ = train_index("IVF64,PQ8x4fsr", DIM, x[:5_000], seed)
        return faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 64)

    np.testing.assert_array_equal(centroids(1), centroids(1))
    assert not np.array_equal(centroids(1), centroids(2))


def test_train_index_rejects_bad_input(data) -> None:
    x, _, _ = data
    with pytest.raises(InvalidInputError, match="invalid FAISS factory"):
        train_index("IVF,Nonsense", DIM, x, seed=0)
    with pytest.raises(InvalidInputError, match=r"\[n, 64\]"):
        train_index("Flat", DIM, x[:, :32], seed=0)


# --- Shard.set_params on wrapped indexes -----------------------------------------------------


def test_shard_set_params_reaches_inside_refinement(data) -> None:
    x, queries, truth = data
    factory = "IVF256,PQ16x4fsr,Refine(SQ8)"
    shard = Shard("text", 0, build(factory, x), factory, use_gpu=False)
    shard.set_params(SearchParams(nprobe=7, k_factor=3))
    assert faiss.extract_index_ivf(shard.cpu_index).nprobe == 7
    assert faiss.downcast_index(shard.cpu_index).k_factor == 3
    # And it changes results: re-ranking more candidates finds more true neighbours.
    shard.set_params(SearchParams(nprobe=8, k_factor=1))
    low = np.mean([len(np.intersect1d(a, b)) for a, b in zip(shard.search(queries, 10)[1], truth)])
    shard.set_params(SearchParams(nprobe=8, k_factor=16))
    high = np.mean([len(np.intersect1d(a, b)) for a, b in zip(shard.search(queries, 10)[1], truth)])
    assert high > low + 1


def test_shard_set_params_still_sets_hnsw_and_plain_ivf(data) -> None:
    x, _, _ = data
    hnsw = Shard("kb", 0, build("HNSW32", x[:2_000]), "HNSW32", use_gpu=False)
    hnsw.set_params(SearchParams(ef_search=77))
    assert faiss.downcast_index(hnsw.cpu_index).hnsw.efSearch == 77
    ivf = Shard("kb", 0, build("IVF64,SQ8", x[:5_000]), "IVF64,SQ8", use_gpu=False)
    ivf.set_params(SearchParams(nprobe=5))
    assert faiss.extract_index_ivf(ivf.cpu_index).nprobe == 5


@pytest.mark.parametrize("field", ["nprobe", "ef_search", "k_factor"])
def test_search_params_reject_values_below_one(field: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        SearchParams(**{field: 0})


@pytest.mark.parametrize(("factory", "expected"), [
    ("IVF1024,SQ8", 200_000), ("HNSW32", 200_000), ("IVF8192,SQ8", 327_680),
    ("IVF16384,PQ96x4fsr,Refine(SQ8)", 655_360), ("IVF65536,SQ8", 1_000_000)])
def test_training_samples_grow_with_the_ivf_list_count(factory: str, expected: int) -> None:
    from retriever.index.shard_builder import train_sample_size

    assert train_sample_size(factory) == expected
