"""The recall gate: held-aside queries, exact ground truth, measured recall and search tuning.

A build checks every approximate shard against exact search on queries in the query encoder's
space: :func:`pseudo_query_texts` cuts a word span out of each of a seeded sample of units, and
the build encodes them as the server encodes questions (the model's default instruction).
Perturbed copies of stored vectors (:func:`held_aside_queries`) are the fallback where there is
no text to encode (vectors handed over without units); they are easier than real questions: on
the full HeteroMix build, questions needed nprobe 64 where perturbed copies passed at 16 (text)
and 2 (table), while 24-word spans sit at or just below the questions' recall at every nprobe
(``benchmarks/recall_probe.py``, ``benchmarks/RESULTS.md``). :func:`exact_ground_truth` computes their exact
inner-product top-k over the vectors streamed in chunks, and :func:`tune_search` finds the cheapest
search parameters whose :func:`measure_recall` reaches the target, or reports the best figure.
The FAISS contrib helpers do the work (``exhaustive_search.knn_ground_truth``,
``evaluation.knn_intersection_measure``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from retriever.errors import InvalidInputError
from retriever.index.shards import SearchParams, apply_search_params, faiss_module

logger = logging.getLogger(__name__)

#: Search-parameter candidates tried by :func:`tune_search`, cheapest first.
EF_SEARCH_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024)
K_FACTOR_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: A typical perturbation for :func:`held_aside_queries` (cosine ≈ 0.97 to the source vector).
DEFAULT_QUERY_NOISE = 0.25
#: Words in a recall-gate pseudo-query (:func:`pseudo_query_texts`): the span length whose recall
#: curve on the full HeteroMix build sat closest to, and not above, HeteroMix dev questions'.
PSEUDO_QUERY_WORDS = 24


def pseudo_query_texts(texts: Sequence[str], seed: int, words: int = PSEUDO_QUERY_WORDS) -> list[str]:
    """A seeded span of ``words`` consecutive words of each text (the whole text when shorter).

    Encoded as queries they stand for questions about those units: a span is a partial view of its
    unit, from the query side of the encoder, so its neighbours are spread over IVF lists as a real
    question's are.
    """
    if words < 1:
        raise InvalidInputError(f"a pseudo-query needs at least one word, got {words}")
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        split = text.split()
        start = int(rng.integers(0, len(split) - words + 1)) if len(split) > words else 0
        out.append(" ".join(split[start:start + words]))
    return out


def held_aside_queries(vectors_sample: np.ndarray, count: int, seed: int, noise: float) -> np.ndarray:
    """Recall-gate queries: perturbed, re-normalised copies of ``count`` sampled vectors.

    Rows are drawn without replacement; each gets Gaussian noise of expected norm ``noise``
    (per-coordinate standard deviation ``noise / sqrt(d)``) and is L2-normalised again, so a query
    sits near a stored unit without being one of them (``noise`` 0.25 gives a cosine of about 0.97
    to its source; :data:`DEFAULT_QUERY_NOISE`). Their exact neighbours then come from
    :func:`exact_ground_truth`.

    Returns:
        ``[count, d]`` float32 queries.

    Raises:
        InvalidInputError: ``count`` exceeds the sample, or ``noise`` is negative.
    """
    sample = np.asarray(vectors_sample, dtype=np.float32)
    if sample.ndim != 2:
        raise InvalidInputError(f"vector sample must be a [n, d] matrix, got shape {sample.shape}")
    if not 0 < count <= len(sample):
        raise InvalidInputError(f"cannot draw {count} queries from a sample of {len(sample)} vectors")
    if noise < 0:
        raise InvalidInputError(f"query noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(sample), size=count, replace=False)
    queries = sample[rows] + rng.standard_normal((count, sample.shape[1]), dtype=np.float32) * (
        noise / math.sqrt(sample.shape[1]))
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    return np.ascontiguousarray(queries / np.maximum(norms, np.finfo(np.float32).tiny), dtype=np.float32)


def exact_ground_truth(queries: np.ndarray, vector_chunks: Iterable[np.ndarray], k: int) -> np.ndarray:
    """Exact inner-product top-``k`` ids of ``queries`` over vectors streamed in chunks.

    Ids number the vectors in stream order from 0; rows are padded with -1 when fewer than ``k``
    vectors were streamed. Uses ``faiss.contrib.exhaustive_search.knn_ground_truth`` (on GPUs
    when FAISS sees any).

    Returns:
        ``[nq, k]`` int64 ids, best first.
    """
    from faiss.contrib.exhaustive_search import knn_ground_truth

    faiss = faiss_module()
    queries = as_matrix(queries, None, "queries")
    dimension = queries.shape[1]

    def blocks() -> Iterator[np.ndarray]:
        for number, chunk in enumerate(vector_chunks):
            yield as_matrix(chunk, dimension, f"vector chunk {number}")

    _, ids = knn_ground_truth(queries, blocks(), k, metric_type=faiss.METRIC_INNER_PRODUCT)
    return np.asarray(ids, dtype=np.int64)


def measure_recall(index: Any, queries: np.ndarray, ground_truth_ids: np.ndarray, k: int = 10,
                   params: SearchParams | None = None) -> float:
    """Recall@k: the mean overlap of the index's top-``k`` with the exact top-``k``, in [0, 1].

    ``params`` (when given) are applied to the index and stay applied. ``k`` is capped by the
    index size and the ground truth's width. Uses ``faiss.contrib.evaluation.knn_intersection_measure``.

    Raises:
        InvalidInputError: the ground truth does not match the queries.
    """
    from faiss.contrib.evaluation import knn_intersection_measure

    queries = as_matrix(queries, index.d, "queries")
    truth = np.asarray(ground_truth_ids)
    if truth.ndim != 2 or len(truth) != len(queries):
        raise InvalidInputError(f"ground truth of shape {truth.shape} does not match {len(queries)} queries")
    k = min(k, int(index.ntotal), truth.shape[1])
    if k < 1:
        raise InvalidInputError("cannot measure recall on an empty index or with k < 1")
    if params is not None:
        apply_search_params(index, params)
    _, found = index.search(queries, k)
    return float(knn_intersection_measure(found, truth[:, :k]))


def tune_search(index: Any, factory: str, queries: np.ndarray, gt: np.ndarray, min_recall: float,
                k: int = 10) -> tuple[SearchParams, float]:
    """The cheapest search parameters whose recall@k reaches ``min_recall``, and that recall.

    * ``Flat``: exact, recall 1.0 without searching.
    * IVF: the smallest ``nprobe`` in 1, 2, 4, ..., nlist.
    * HNSW: the smallest ``ef_search`` in :data:`EF_SEARCH_CANDIDATES`.
    * Refinement (``Refine(...)``, ``RFlat``): the smallest ``nprobe`` (or ``ef_search``) at which
      the largest ``k_factor`` of :data:`K_FACTOR_CANDIDATES` reaches the target, then the smallest
      ``k_factor`` that still does: scanning lists costs more than re-ranking a few hundred codes.
    * Other indexes (``SQ8``, ``PQ...``): nothing to tune; their measured recall.

    When no candidate reaches ``min_recall``, returns the one with the best recall (the caller
    fails the build with that figure). The returned parameters are left applied to ``index``.

    Raises:
        InvalidInputError: bad ground truth or an empty index (see :func:`measure_recall`).
    """
    faiss = faiss_module()
    top = faiss.downcast_index(index)
    if factory == "Flat" or isinstance(top, faiss.IndexFlat):
        return SearchParams(), 1.0
    base = faiss.downcast_index(top.base_index) if isinstance(top, faiss.IndexRefine) else top
    ivf = faiss.try_extract_index_ivf(base)
    outer: list[SearchParams]
    if ivf is not None:
        nlist = int(ivf.nlist)
        probes = sorted({*(1 << i for i in range(nlist.bit_length()) if 1 << i <= nlist), nlist})
        outer = [SearchParams(nprobe=p) for p in probes]
    elif getattr(base, "hnsw", None) is not None:
        outer = [SearchParams(ef_search=max(ef, k)) for ef in EF_SEARCH_CANDIDATES]
    else:
        outer = [SearchParams()]
    factors = K_FACTOR_CANDIDATES if isinstance(top, faiss.IndexRefine) else (1,)

    def measure(params: SearchParams) -> float:
        recall = measure_recall(index, queries, gt, k, params)
        logger.debug("%s nprobe=%d ef_search=%d k_factor=%d: recall@%d %.4f",
                     factory, params.nprobe, params.ef_search, params.k_factor, k, recall)
        return recall

    best = (outer[0], -1.0)
    for candidate in outer:
        widest = replace(candidate, k_factor=factors[-1])
        recall = measure(widest)
        if recall > best[1]:
            best = (widest, recall)
        if recall < min_recall:
            continue
        chosen = (widest, recall)
        for factor in factors[:-1]:
            params = replace(candidate, k_factor=factor)
            narrower = measure(params)
            if narrower >= min_recall:
                chosen = (params, narrower)
                break
        apply_search_params(index, chosen[0])
        logger.info("%s reaches recall@%d %.4f >= %.3f with %s", factory, k, chosen[1], min_recall, chosen[0])
        return chosen
    apply_search_params(index, best[0])
    logger.warning("%s reaches at best recall@%d %.4f < %.3f (with %s)", factory, k, best[1], min_recall, best[0])
    return best


def as_matrix(vectors: np.ndarray, dimension: int | None, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``[n, dimension]`` matrix, or InvalidInputError naming ``what``."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or (dimension is not None and matrix.shape[1] != dimension):
        expected = "[n, d]" if dimension is None else f"[n, {dimension}]"
        raise InvalidInputError(f"{what} must be a {expected} matrix, got shape {matrix.shape}")
    return matrix
