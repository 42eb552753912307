"""Choosing and training a FAISS index per shard (``--factory auto``).

The pieces, in the order a build uses them:

1. :func:`choose_factory` picks a factory string from the shard's size and a per-shard memory
   budget, using the memory model :func:`bytes_per_unit` / :func:`index_bytes`.
2. :func:`train_index` trains an empty index on a sample; :func:`add_in_chunks` fills it.
3. The recall gate, in :mod:`retriever.index.recall` and re-exported here:
   :func:`held_aside_queries` makes queries from a sample of the vectors,
   :func:`exact_ground_truth` computes their exact top-k over the vectors streamed in chunks, and
   :func:`tune_search` finds the cheapest search parameters reaching a recall target (measured by
   :func:`measure_recall`); the caller fails the build when the returned recall is below its gate.

All indexes use inner product on L2-normalised vectors, like :mod:`retriever.index.shards`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from retriever.errors import InvalidInputError
from retriever.index.recall import (
    DEFAULT_QUERY_NOISE,
    EF_SEARCH_CANDIDATES,
    K_FACTOR_CANDIDATES,
    as_matrix,
    exact_ground_truth,
    held_aside_queries,
    measure_recall,
    tune_search,
)
from retriever.index.shards import SearchParams, faiss_module

__all__ = [
    "ACCURACY_FALLBACKS", "DEFAULT_QUERY_NOISE", "EF_SEARCH_CANDIDATES", "EXACT_LADDER", "EXACT_MAX_UNITS",
    "IVF_SQ8_MAX_UNITS",
    "K_FACTOR_CANDIDATES", "LARGE_LADDER", "MAX_NLIST", "MEDIUM_LADDER", "MIN_NLIST", "FactoryChoice",
    "add_in_chunks", "bytes_per_unit", "choose_factory", "exact_ground_truth", "factory_ladder", "format_factory",
    "held_aside_queries", "index_bytes", "ivf_lists", "measure_recall", "pq_subquantizers", "train_index",
    "tune_search",
]

logger = logging.getLogger(__name__)

#: Shards up to this many units get an exact ``Flat`` index.
EXACT_MAX_UNITS = 100_000
#: Shards up to this many units (and above ``EXACT_MAX_UNITS``) get ``IVF{nlist},SQ8``.
IVF_SQ8_MAX_UNITS = 2_000_000
#: IVF lists ≈ ``NLIST_PER_SQRT_UNIT * sqrt(n)``, rounded to a power of two within the bounds below.
NLIST_PER_SQRT_UNIT = 4
MIN_NLIST = 64
MAX_NLIST = 65_536
#: Dimensions per 4-bit PQ sub-quantizer: the preferred PQ codes, and the compact last resort.
PQ_DIMS_PER_CODE = 4
PQ_DIMS_PER_CODE_COMPACT = 8

#: Candidate factories per size tier, best first; a memory budget steps down the list.
#: ``fsr`` is PQ fast-scan encoding residuals from the IVF centroid: for inner product it costs one
#: bias per list and measured better recall than ``fs`` at the same code size.
EXACT_LADDER: tuple[str, ...] = ("Flat", "SQ8", "PQ{m}x4fs", "PQ{m_compact}x4fs")
MEDIUM_LADDER: tuple[str, ...] = ("IVF{nlist},SQ8", "IVF{nlist},PQ{m}x4fsr", "IVF{nlist},PQ{m_compact}x4fsr")
LARGE_LADDER: tuple[str, ...] = ("IVF{nlist},PQ{m}x4fsr,Refine(SQ8)", *MEDIUM_LADDER)
#: More accurate candidates built, in order, when a choice misses the recall gate (and they fit the
#: budget). The refined choice finds its candidates with 4-bit PQ codes and re-ranks the top
#: ``k * k_factor`` with 8-bit codes; among many near-equal neighbours (near-duplicate units) the
#: 4-bit stage can leave true neighbours out of any affordable candidate list. ``IVF,SQ8`` scans the
#: same 8-bit codes directly (no 4-bit stage), is smaller, and slower per probed list.
ACCURACY_FALLBACKS: dict[str, tuple[str, ...]] = {LARGE_LADDER[0]: (MEDIUM_LADDER[0],)}

#: Memory-model constants (bytes).
IVF_ID_BYTES = 8  # one int64 id per vector in an inverted list
IVF_LIST_BYTES = 8  # the serialized size of each inverted list
HNSW_EXTRA_BYTES = 16  # level (int32) + offset (int64) + expected upper-level links (≈ one int32)
FAST_SCAN_BLOCK = 32  # fast-scan codes are stored in blocks of 32 vectors per list


@dataclass(frozen=True)
class FactoryChoice:
    """The index :func:`choose_factory` picked for one shard.

    Attributes:
        factory: the FAISS factory string (inner product metric).
        reason: why, in words, with the figures that decided it.
        estimated_bytes: :func:`index_bytes` of the choice for the shard's size.
        search: starting search parameters, before :func:`tune_search`.
        tunable: the :class:`SearchParams` fields :func:`tune_search` varies (empty when exact).
        fallbacks: more accurate factories that also fit the budget, built in order when this one
            misses the recall gate (:data:`ACCURACY_FALLBACKS`).
    """

    factory: str
    reason: str
    estimated_bytes: int
    search: SearchParams
    tunable: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()


# --- memory model -----------------------------------------------------------------------------


def bytes_per_unit(factory: str, dimension: int) -> float:
    """Bytes each stored vector costs in a FAISS index built with ``factory``.

    The code size comes from ``faiss.contrib.factory_tools.get_code_size``: ``Flat`` 4d,
    ``SQ8`` d, ``PQ{m}x4fs[r]`` m/2, ``HNSW{M}`` 4d + 2·M·4. On top of it: an int64 id per vector
    in IVF lists (``IVFx,Flat`` 4d+8, ``IVFx,SQ8`` d+8, ``IVFx,PQ{m}x4fs`` m/2+8), HNSW's level and
    offset plus its expected upper-level links (16), and refinement codes (``RFlat`` 4d,
    ``Refine(SQ8)`` d). It models the serialized index, which is also what a loaded index holds;
    while building, growing IVF lists can hold up to twice their codes.

    Raises:
        InvalidInputError: the factory string has no memory model, or the dimension is not positive.
    """
    _check_dimension(dimension)
    from faiss.contrib.factory_tools import get_code_size

    try:
        code = float(get_code_size(dimension, factory))
    except RuntimeError as exc:
        raise InvalidInputError(f"no memory model for FAISS factory {factory!r}: {exc}") from exc
    if factory.startswith("IVF"):
        code += IVF_ID_BYTES
    if re.match(r"HNSW\d+", factory):
        code += HNSW_EXTRA_BYTES
    return code


def index_bytes(factory: str, n: int, dimension: int) -> int:
    """Estimated size of an index of ``n`` vectors: ``n * bytes_per_unit`` plus fixed terms.

    Fixed terms: IVF centroids (nlist·4d) and list headers (nlist·8), PQ codebooks (16·4d for
    4-bit codes), scalar-quantizer ranges (2·4d), and the padding of fast-scan lists to blocks of
    32 vectors (half a block of codes per non-empty list, expected).

    Raises:
        InvalidInputError: as :func:`bytes_per_unit`, or ``n`` is negative.
    """
    if n < 0:
        raise InvalidInputError(f"a shard cannot hold {n} vectors")
    total = n * bytes_per_unit(factory, dimension)
    nlist_match = re.match(r"IVF(\d+)", factory)
    nlist = int(nlist_match.group(1)) if nlist_match else 0
    total += nlist * (4 * dimension + IVF_LIST_BYTES)
    pq = re.search(r"PQ(\d+)x(\d+)(fsr?)?", factory)
    if pq:
        m, nbits, fast_scan = int(pq.group(1)), int(pq.group(2)), pq.group(3)
        total += (1 << nbits) * 4 * dimension
        if fast_scan:
            lists = min(n, nlist) if nlist else min(n, 1)
            total += lists * (FAST_SCAN_BLOCK / 2) * ((m + 1) // 2)
    total += factory.count("SQ") * 2 * 4 * dimension
    return math.ceil(total)


# --- choosing ---------------------------------------------------------------------------------


def ivf_lists(n: int) -> int:
    """IVF list count for ``n`` vectors: ``4·sqrt(n)`` rounded to the nearest power of two, in [64, 65536]."""
    if n <= 0:
        return MIN_NLIST
    exponent = round(math.log2(NLIST_PER_SQRT_UNIT * math.sqrt(n)))
    return int(min(MAX_NLIST, max(MIN_NLIST, 1 << exponent)))


def pq_subquantizers(dimension: int, dims_per_code: int) -> int:
    """The largest sub-quantizer count ``m <= dimension / dims_per_code`` that divides ``dimension``."""
    _check_dimension(dimension)
    for m in range(max(1, dimension // dims_per_code), 0, -1):
        if dimension % m == 0:
            return m
    return 1


def factory_ladder(n: int, dimension: int) -> tuple[str, ...]:
    """The candidate factory strings for a shard of ``n`` vectors, preferred first (see :func:`choose_factory`)."""
    return tuple(format_factory(t, n, dimension) for t in _ladder_templates(n))


def _ladder_templates(n: int) -> tuple[str, ...]:
    if n <= EXACT_MAX_UNITS:
        return EXACT_LADDER
    if n <= IVF_SQ8_MAX_UNITS:
        return MEDIUM_LADDER
    return LARGE_LADDER


def format_factory(template: str, n: int, dimension: int) -> str:
    """Fill a ladder template's ``{nlist}``, ``{m}`` and ``{m_compact}`` for ``n`` vectors of ``dimension``."""
    return template.format(nlist=ivf_lists(n), m=pq_subquantizers(dimension, PQ_DIMS_PER_CODE),
                           m_compact=pq_subquantizers(dimension, PQ_DIMS_PER_CODE_COMPACT))


def choose_factory(n: int, dimension: int, memory_budget: int | None) -> FactoryChoice:
    """Choose a FAISS index for one shard from its size and its memory budget.

    Policy, preferred choice by size (thresholds are the module constants):

    * ``n <= EXACT_MAX_UNITS`` (100 000): ``Flat``, exact search.
    * ``n <= IVF_SQ8_MAX_UNITS`` (2 000 000): ``IVF{nlist},SQ8`` with nlist = :func:`ivf_lists`
      (4·√n rounded to a power of two, at least 64): 8-bit codes, about a quarter of ``Flat``.
    * larger: ``IVF{nlist},PQ{d/4}x4fsr,Refine(SQ8)``: 4-bit PQ fast-scan codes scanned fast,
      their top ``k·k_factor`` re-ranked with 8-bit codes.

    When :func:`index_bytes` of the preferred choice exceeds ``memory_budget``, the choice steps down
    the tier's ladder (:data:`EXACT_LADDER`, :data:`MEDIUM_LADDER`, :data:`LARGE_LADDER`) to the first
    one that fits: ``SQ8`` (brute force) for small shards, then PQ fast-scan codes of d/4 and d/8
    sub-quantizers without refinement. Those last steps trade much recall for memory; the recall gate
    (:func:`tune_search`) tells whether it is still acceptable. A refined large choice carries
    ``IVF{nlist},SQ8`` as its fallback (:data:`ACCURACY_FALLBACKS`), which the build tries when the
    refined index misses the gate. An explicit factory from the user bypasses this function.

    Args:
        n: vectors in the shard.
        dimension: vector dimension.
        memory_budget: bytes this shard may use (the caller splits an index's budget over its
            shards), or None for no limit.

    Raises:
        InvalidInputError: ``n``, ``dimension`` or the budget is invalid, or no candidate fits the
            budget (the message gives the smallest estimate).
    """
    _check_dimension(dimension)
    if n < 0:
        raise InvalidInputError(f"a shard cannot hold {n} vectors")
    if memory_budget is not None and memory_budget <= 0:
        raise InvalidInputError(f"memory budget must be a positive number of bytes, got {memory_budget}")
    templates = _ladder_templates(n)
    ladder = tuple(format_factory(t, n, dimension) for t in templates)
    estimates = [(factory, index_bytes(factory, n, dimension)) for factory in ladder]
    tier = _tier_reason(n, ladder[0])
    for position, (factory, estimate) in enumerate(estimates):
        if memory_budget is not None and estimate > memory_budget:
            continue
        reason = tier
        if position:
            skipped = ", ".join(f"{f} needs {b:,} B" for f, b in estimates[:position])
            reason = (f"{tier}; over the memory budget of {memory_budget:,} B ({skipped}), stepped down to "
                      f"{factory} ({estimate:,} B, approximate)")
        fallbacks = tuple(f for f in (format_factory(t, n, dimension)
                                      for t in ACCURACY_FALLBACKS.get(templates[position], ()))
                          if memory_budget is None or index_bytes(f, n, dimension) <= memory_budget)
        return FactoryChoice(factory, reason, estimate, _initial_params(factory), _tunable(factory), fallbacks)
    smallest = min(estimates, key=lambda item: item[1])
    raise InvalidInputError(
        f"no index of {n:,} vectors of dimension {dimension} fits the per-shard memory budget of "
        f"{memory_budget:,} B; the most compact candidate, {smallest[0]}, needs {smallest[1]:,} B "
        f"(candidates: {', '.join(f'{f} {b:,} B' for f, b in estimates)}); raise the budget or pass a factory")


def _tier_reason(n: int, preferred: str) -> str:
    if n <= EXACT_MAX_UNITS:
        return f"{n:,} vectors <= {EXACT_MAX_UNITS:,}: exact inner-product search ({preferred}) is affordable"
    if n <= IVF_SQ8_MAX_UNITS:
        return (f"{n:,} vectors <= {IVF_SQ8_MAX_UNITS:,}: {preferred}, IVF over ~4·sqrt(n) lists "
                f"with 8-bit scalar-quantized codes")
    return (f"{n:,} vectors > {IVF_SQ8_MAX_UNITS:,}: {preferred}, IVF with 4-bit PQ fast-scan codes "
            f"re-ranked from 8-bit codes")


def _initial_params(factory: str) -> SearchParams:
    nlist = re.match(r"IVF(\d+)", factory)
    nprobe = max(1, int(nlist.group(1)) // 64) if nlist else SearchParams().nprobe
    return SearchParams(nprobe=nprobe, k_factor=8 if "Refine" in factory or "RFlat" in factory else 1)


def _tunable(factory: str) -> tuple[str, ...]:
    names: list[str] = []
    if factory.startswith("IVF"):
        names.append("nprobe")
    if factory.startswith("HNSW"):
        names.append("ef_search")
    if "Refine" in factory or "RFlat" in factory:
        names.append("k_factor")
    return tuple(names)


# --- training and adding ----------------------------------------------------------------------


def train_index(factory: str, dimension: int, sample: np.ndarray, seed: int) -> tuple[Any, str]:
    """Create an empty inner-product index from ``factory`` and train it on ``sample``.

    Clustering (IVF centroids, PQ codebooks) is seeded with ``seed``. A sample too small to train
    the index (e.g. fewer vectors than IVF lists) falls back to exact ``Flat`` with a logged
    reason.

    Returns:
        The trained, empty index and the factory string actually used.

    Raises:
        InvalidInputError: the factory string is invalid or the sample has the wrong shape.
    """
    faiss = faiss_module()
    sample = as_matrix(sample, dimension, "training sample")
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidInputError(f"invalid FAISS factory string {factory!r}: {str(exc).splitlines()[0]}") from exc
    if index.is_trained:
        return index, factory
    _seed_clustering(index, seed)
    started = time.perf_counter()
    try:
        index.train(sample)
    except RuntimeError as exc:
        logger.warning("cannot train %r on %d vectors (%s); using exact Flat for this shard",
                       factory, len(sample), str(exc).splitlines()[0])
        return faiss.index_factory(dimension, "Flat", faiss.METRIC_INNER_PRODUCT), "Flat"
    logger.info("trained %s on %d vectors in %.1fs", factory, len(sample), time.perf_counter() - started)
    return index, factory


def _seed_clustering(index: Any, seed: int) -> None:
    faiss = faiss_module()
    top = faiss.downcast_index(index)
    parts = [faiss.downcast_index(top.base_index)] if isinstance(top, faiss.IndexRefine) else [top]
    for part in parts:
        ivf = faiss.try_extract_index_ivf(part)
        if ivf is not None:
            ivf.cp.seed = seed
            part = faiss.downcast_index(ivf)
        pq = getattr(part, "pq", None)
        if pq is not None:
            pq.cp.seed = seed


def add_in_chunks(index: Any, chunks: Iterable[np.ndarray]) -> int:
    """Add vectors to a trained index chunk by chunk; returns how many were added.

    Raises:
        InvalidInputError: a chunk has the wrong shape.
    """
    started = time.perf_counter()
    added = 0
    for chunk in chunks:
        matrix = as_matrix(chunk, index.d, f"chunk starting at vector {added}")
        index.add(matrix)
        added += len(matrix)
    logger.info("added %d vectors in %.1fs", added, time.perf_counter() - started)
    return added


def _check_dimension(dimension: int) -> None:
    if dimension < 1:
        raise InvalidInputError(f"vector dimension must be positive, got {dimension}")
