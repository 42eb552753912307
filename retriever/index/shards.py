"""FAISS indexes, one per source type, searched together or filtered exactly.

Each source type's units live in their own FAISS index (a shard) that covers a contiguous
range of unit ids. Filtering by source therefore searches only the requested shards and
merges their top-k: asking for tables returns the best k table units, never the tables
that happened to fall in an unfiltered top-k. All vectors are L2-normalised and searched
by inner product (cosine similarity).

On CPU, exact (``Flat``) shards are searched with a torch matrix product over the vectors
FAISS holds (no copy), which the project measured faster than the faiss-cpu wheel's own flat
search and than NumPy's OpenBLAS (``benchmarks/flat_search_bench.py``). When FAISS sees a GPU, shards are moved to it.

Where the processor multiplies bfloat16 natively (AVX512_BF16 or AMX), a batch of queries is
first scored against a bfloat16 copy of an exact shard's vectors (half the bytes to stream),
and only the candidates that can still be in the top k are scored again in float32: exact by
construction (:func:`exact_topk`), at half a shard's size in extra memory, made at the first
batch search (``RETRIEVER_EXACT_BF16=0`` turns it off).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.errors import CorruptIndexError, DependencyError, InvalidInputError

logger = logging.getLogger(__name__)


def faiss_module() -> Any:
    """The ``faiss`` module; a missing wheel is an error that says which extra to install."""
    try:
        import faiss
    except ImportError as exc:
        raise DependencyError("FAISS is not installed: pip install 'retriever[cpu]' (faiss-cpu) or, on a CUDA machine, "
                         "'retriever[gpu]' (faiss-gpu); `make` picks one for you") from exc
    return faiss


def gpu_count() -> int:
    faiss = faiss_module()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


@dataclass(frozen=True)
class SearchParams:
    """Knobs of approximate indexes (ignored by exact ones).

    Attributes:
        nprobe: IVF lists visited per query; more is slower and more accurate.
        ef_search: HNSW candidate-list size; more is slower and more accurate.
        k_factor: refinement indexes (``...,RFlat``, ``...,Refine(SQ8)``) fetch ``k * k_factor``
            candidates from their compressed base index and re-rank them with the finer codes;
            more is slower and more accurate.

    Raises:
        InvalidInputError: a knob is below 1.
    """

    nprobe: int = 16
    ef_search: int = 128
    k_factor: int = 1

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search", "k_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"search parameter {name} must be an integer >= 1, got {value!r}")


def apply_search_params(index: Any, params: SearchParams) -> None:
    """Set ``params`` on a CPU FAISS index, reaching through wrappers.

    ``nprobe`` goes to the IVF index found by ``faiss.try_extract_index_ivf`` (which looks inside
    ``IndexRefine``, ``IndexPreTransform`` and ID maps), ``k_factor`` to an ``IndexRefine`` at the
    top, and ``ef_search`` to an HNSW index at the top or as the refinement's base. Knobs an
    index does not have are ignored. (``faiss.ParameterSpace`` calls the refinement knob
    ``k_factor_rf``; setting the attribute directly avoids depending on that name.)
    """
    faiss = faiss_module()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = params.nprobe
    top = faiss.downcast_index(index)
    base = top
    if isinstance(top, faiss.IndexRefine):
        top.k_factor = float(params.k_factor)
        base = faiss.downcast_index(top.base_index)
    hnsw = getattr(base, "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = params.ef_search


class Shard:
    """One FAISS index over the unit ids ``[start, start + count)``."""

    def __init__(self, source: str, start: int, index: Any, factory: str, use_gpu: bool = True) -> None:
        self.source, self.start, self.factory = source, start, factory
        self.count = int(index.ntotal)
        self.cpu_index = index
        self.index = index
        self._flat: np.ndarray | None = None
        faiss = faiss_module()
        if use_gpu and gpu_count() > 0:
            try:
                self.index = faiss.index_cpu_to_all_gpus(index)
                logger.info("shard %s (%s, %d vectors) moved to GPU", source, factory, self.count)
            except RuntimeError as exc:
                logger.info("shard %s (%s) stays on CPU: %s", source, factory, str(exc).splitlines()[0])
        self._vectors: np.ndarray | None = None
        if isinstance(index, faiss.IndexFlat) and self.count:
            # [count, d] view of FAISS's own buffer; no copy.
            ptr = faiss.rev_swig_ptr(index.get_xb(), self.count * index.d)
            self._vectors = np.asarray(ptr).reshape(self.count, index.d)
        if self.index is index:
            self._flat = self._vectors
        self._bf16: Bf16Copy | None = None  # made at the first batch search
        self._bf16_lock = threading.Lock()

    def _bf16_vectors(self) -> Bf16Copy | None:
        """The bfloat16 copy of this exact shard's vectors for :func:`exact_topk`, or None where it is
        off (:func:`bf16_prefilter`) or the shard is too small to gain from it."""
        if self._flat is None or self.count < BF16_MIN_VECTORS or not bf16_prefilter():
            return None
        with self._bf16_lock:
            if self._bf16 is None:
                self._bf16 = Bf16Copy.of(self._flat)
            return self._bf16

    def flat_vectors(self) -> np.ndarray | None:
        """The ``[count, d]`` vectors of an exact shard (read-only view, no copy); None for compressed ones."""
        return self._vectors

    def set_params(self, params: SearchParams) -> None:
        """Apply ``params`` (see :func:`apply_search_params`); on GPU, ``nprobe`` as well."""
        faiss = faiss_module()
        apply_search_params(self.cpu_index, params)
        if self.index is not self.cpu_index:
            try:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", params.nprobe)
            except (RuntimeError, AttributeError):
                pass

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this shard: ``scores [nq, k']``, global ``ids [nq, k']`` (k' = min(k, count))."""
        k = min(k, self.count)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self._flat is not None:
            scores, local = exact_topk(queries, self._flat, k, self._bf16_vectors() if len(queries) > 1 else None)
        else:
            scores, local = self.index.search(queries, k)
        ids = np.where(local >= 0, local + self.start, -1)
        return scores, ids


def inner_products(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``queries @ vectors.T`` in float32 (``[nq, n]``): one query by NumPy (a BLAS matrix-vector
    product), several by torch's CPU matrix product (by NumPy where torch is not installed).

    NumPy's OpenBLAS is slow at products of a few queries with many vectors: on 87K vectors, top-10
    for 8 / 16 / 32 queries took 14.1 / 16.8 / 19.9 ms with it and 8.3 / 10.7 / 16.4 ms with torch
    (``benchmarks/flat_search_bench.py``: ``numpy_blas_ms`` against ``project_ms``, same run;
    ``benchmarks/results/flat_search_lite-amx.json``). One query stays on NumPy's matrix-vector
    product: torch was slower there (3.7 against 2.9 ms) in the first run of that command, before
    this rule (its file was overwritten by the run cited).
    """
    if len(queries) == 1:
        return queries @ vectors.T
    try:
        import torch
    except ImportError:  # the index layer itself needs only NumPy and FAISS (`make test-faiss-other`)
        return queries @ vectors.T
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    with warnings.catch_warnings():  # FAISS's buffer view may be read-only; torch only reads it here
        warnings.simplefilter("ignore", UserWarning)
        v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    with torch.inference_mode():
        return (q @ v.T).numpy()


#: Exact shards smaller than this are never scored in bfloat16 first (nothing to gain).
BF16_MIN_VECTORS = 4096
#: Bound on ``|bf16 score - float32 score|`` in units of ``|q| * max |v|``: rounding both inputs
#: (2 u, u = 2^-8 for bfloat16's 8-bit significand), the rounded output (u) and the float32
#: accumulation (384-d: 2.3e-5), with room to spare: 4 u. (Measured on lite's 87,104 vectors and
#: 256 dev.mini queries: at most 0.0023 for unit vectors, against this 0.0156.)
BF16_ERROR = 4 * 2.0 ** -8


@dataclass(frozen=True)
class Bf16Copy:
    """An exact shard's vectors in bfloat16 (a torch tensor) and the largest float32 vector norm."""

    vectors: Any
    max_norm: float

    @classmethod
    def of(cls, vectors: np.ndarray) -> Bf16Copy:
        """The copy of ``[n, d]`` float32 ``vectors`` (needs torch)."""
        import torch

        with warnings.catch_warnings():  # FAISS's buffer may be read-only; it is only read here
            warnings.simplefilter("ignore", UserWarning)
            copy = torch.from_numpy(vectors).to(torch.bfloat16)
        return cls(copy, float(np.sqrt(np.max(np.einsum("ij,ij->i", vectors, vectors)))))


@functools.cache
def bf16_prefilter() -> bool:
    """Whether exact shards score batches in bfloat16 first: the processor multiplies bf16 natively,
    torch is installed, and ``RETRIEVER_EXACT_BF16`` is not ``0``."""
    if os.environ.get("RETRIEVER_EXACT_BF16", "1").strip() == "0":
        return False
    from retriever.machine import has_native_bf16

    if not has_native_bf16():
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int,
               bf16: Bf16Copy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k, ordered by score then id (deterministic on ties).

    With ``bf16`` (a bfloat16 copy of ``vectors``) a batch of queries is scored in bfloat16 first.
    Each bf16 score is within ``e = BF16_ERROR * |q| * max|v|`` of the float32 one, so every unit of
    a row's true top k scores at least ``t - 2e`` in bf16, ``t`` being the row's k-th highest bf16
    score (k units score at least ``t - e`` in float32, so the k-th float32 score is at least that).
    Those units, a few dozen of 87K on lite, are scored again in float32, and their top k is the
    exact one.
    """
    n = len(vectors)
    if bf16 is None or len(queries) < 2 or k >= n:
        return topk_of(inner_products(queries, vectors), k)
    import torch

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    with torch.inference_mode():
        approx = (torch.from_numpy(queries).to(torch.bfloat16) @ bf16.vectors.T).float().numpy()
    kth = np.take_along_axis(approx, top_columns(approx, k), axis=1).min(axis=1)
    floor = kth - 2 * (BF16_ERROR * np.linalg.norm(queries, axis=1) * bf16.max_norm + 1e-6)
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for i in range(len(queries)):
        candidates = np.flatnonzero(approx[i] >= floor[i])  # ascending ids; at least k of them
        if len(candidates) < k:  # only with NaN scores, where no bound holds: the whole row
            scores[i], ids[i] = (part[0] for part in topk_of(inner_products(queries[i:i + 1], vectors), k))
            continue
        exact = vectors[candidates] @ queries[i]
        order = np.lexsort((candidates, -exact))[:k]  # by score, then id
        scores[i], ids[i] = exact[order], candidates[order]
    return scores, ids


def topk_of(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top-k ``(scores, columns)`` of a ``[nq, n]`` score matrix, by score then column."""
    n = sims.shape[1]
    part = top_columns(sims, k) if k < n else np.broadcast_to(np.arange(n), sims.shape).copy()
    part_scores = np.take_along_axis(sims, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return np.take_along_axis(part_scores, order, axis=1).astype(np.float32), ids


#: Every how many columns :func:`top_columns` samples a row to find a floor for its top k.
SAMPLE_STRIDE = 64


def top_columns(sims: np.ndarray, k: int) -> np.ndarray:
    """The columns of each row's ``k`` highest scores (``0 < k < sims.shape[1]``), in no set order;
    among scores tied with the k-th, the lowest columns.

    The k-th highest score of every ``SAMPLE_STRIDE``-th column is a floor for the row's own k-th
    highest, so only the columns at or above it (a few hundred of 86K for k=10) are partitioned,
    not the whole row (``benchmarks/flat_search_bench.py``). (``torch.topk`` was tried: faster in
    isolation, but the OpenVINO int8 server on lite answered 51 / 110 QPS at 8 / 32 clients with it
    against 82 / 130 with NumPy's ``argpartition``, one run after the other:
    ``benchmarks/results/load_lite-ovint8-s20-topk.json`` and ``...-argpartition.json``.)
    """
    n = sims.shape[1]
    sample = sims[:, ::SAMPLE_STRIDE]
    m = sample.shape[1]
    floor = np.partition(sample, m - k, axis=1)[:, m - k] if m > k else np.full(len(sims), -np.inf, sims.dtype)
    part = np.empty((len(sims), k), np.intp)
    for i in range(len(sims)):
        above = np.flatnonzero(sims[i] >= floor[i])
        scores = sims[i, above]
        kth = np.partition(scores, len(scores) - k)[len(scores) - k] if len(above) >= k else np.nan
        if np.isnan(kth):  # only with NaN scores, where no floor or order holds: any k columns
            part[i] = np.argpartition(sims[i], n - k)[n - k:]
            continue
        higher = above[scores > kth]
        part[i] = np.concatenate([higher, above[scores == kth][: k - len(higher)]])  # ties: lowest columns
    return part


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard results into the global top-k (by score, then id); -1 pads short rows."""
    if not results:
        raise ValueError("nothing to merge")
    scores = np.concatenate([r[0] for r in results], axis=1)
    ids = np.concatenate([r[1] for r in results], axis=1)
    masked = np.where(ids >= 0, scores, -np.inf)
    order = np.lexsort((ids, -masked), axis=1)[:, :k]
    out_scores = np.take_along_axis(masked, order, axis=1)
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_ids = np.where(np.isfinite(out_scores), out_ids, -1)
    return out_scores.astype(np.float32), out_ids


class ShardedIndex:
    """The shards of one index directory, searched together."""

    def __init__(self, shards: Iterable[Shard]) -> None:
        self.shards = {s.source: s for s in shards}

    def set_params(self, params: SearchParams) -> None:
        for shard in self.shards.values():
            shard.set_params(params)

    def search(
        self, queries: np.ndarray, k: int, sources: Iterable[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact filter: search only the shards of ``sources`` (all when None) and merge."""
        names = list(self.shards) if sources is None else [s for s in dict.fromkeys(sources) if s in self.shards]
        if not names:
            return np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
        return merge_topk([self.shards[name].search(queries, k) for name in names], k)


def write_shard(index: Any, path: Path) -> None:
    faiss_module().write_index(index, str(path))


def read_shard(path: Path, dimension: int, count: int) -> Any:
    """Read one FAISS file, trusting nothing in it, and check its shape.

    No vector in the file may claim more bytes than the file holds (FAISS's deserialization
    limit is set to the file's size, so a lying header is refused before anything is
    allocated), and the reader must end exactly at the end of the file (appended bytes are
    refused).
    """
    faiss = faiss_module()
    size = path.stat().st_size
    limit = hasattr(faiss, "set_deserialization_vector_byte_limit")  # absent from older wheels
    previous = faiss.get_deserialization_vector_byte_limit() if limit else 0
    if limit:
        faiss.set_deserialization_vector_byte_limit(max(size, 1))
    try:
        with path.open("rb") as fh:
            index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
            consumed = fh.tell()
    except RuntimeError as exc:
        raise CorruptIndexError(f"{path.name}: unreadable FAISS file: {str(exc).splitlines()[0][:200]}") from exc
    finally:
        if limit:
            faiss.set_deserialization_vector_byte_limit(previous)
    if consumed != size:
        raise CorruptIndexError(f"{path.name}: {size - consumed} bytes after the end of the FAISS index")
    if index.d != dimension or index.ntotal != count:
        raise CorruptIndexError(f"{path.name}: holds {index.ntotal} vectors of dimension {index.d}, "
                                f"manifest says {count} of dimension {dimension}")
    return index
