"""The data canary: does an index's content still say what its manifest and model say it does?

File hashes prove that files are the ones the manifest lists, not that the manifest is honest:
anyone who can edit the files can rewrite their hashes. The canary checks the data against the
one thing an index cannot fake, the model:

1. **Norms** (every vector of every exact shard): vectors are L2-normalised at build time, so a
   norm off 1 by more than :data:`NORM_TOLERANCE` is a damaged vector.
2. **Re-encoding** (a random sample, :data:`CANARY_UNITS` by default, spread over every shard and
   always including each shard's first and last unit): each sampled unit's text is encoded again
   and searched in its own shard. Its own id must come back among the top :data:`CANARY_K` with
   a score (the inner product with the stored vector, i.e. their cosine) of at least
   :data:`MIN_COSINE`. This catches vectors that were changed, negated, reordered or swapped,
   and a unit store whose texts no longer line up with the vectors.

The sample is random per check (its seed is logged and given in the error), so no fixed set of
units is the only one ever verified; a change to ``m`` of ``n`` units is caught with probability
about ``1 - (1 - s/n)^m`` for a sample of ``s``. Encoding runs in small batches under the
encoder's lock, so a server that publishes while serving keeps answering queries in between; it
stops after :data:`CANARY_BUDGET_SECONDS` once at least one batch was checked.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retriever.errors import CorruptIndexError
from retriever.index.loaded import Index

logger = logging.getLogger(__name__)

CANARY_UNITS = 64
CANARY_K = 10
MIN_COSINE = 0.99
NORM_TOLERANCE = 1e-3
CANARY_BUDGET_SECONDS = 30.0
_BATCH = 8

#: ``texts -> float32 [n, d]`` L2-normalised document embeddings (``Encoder.encode_documents``).
EncodeDocuments = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class CanaryReport:
    """What the data canary checked."""

    sampled: int  # units re-encoded and searched
    norms_checked: int  # vectors whose norm was checked (exact shards)
    worst_cosine: float  # lowest cosine between a sampled unit's stored and re-encoded vector
    seed: int
    seconds: float


def canary_sample(index: Index, size: int, seed: int) -> list[int]:
    """Unit ids to re-encode: each shard's first and last, the rest drawn in proportion to shard size."""
    rng = np.random.default_rng(seed)
    total = max(len(index.store), 1)
    chosen: set[int] = set()
    for info in index.manifest.shards:
        first, last = info.start, info.start + info.count - 1
        chosen.update((first, last))
        share = max(0, round(size * info.count / total) - 2)
        if share and info.count > 2:
            chosen.update(int(i) for i in rng.choice(np.arange(first + 1, last), min(share, info.count - 2),
                                                     replace=False))
    return sorted(chosen)


def check_norms(index: Index) -> int:
    """Check the norm of every vector FAISS holds in plain form (exact shards); returns how many.

    Raises:
        CorruptIndexError: a vector's norm is off 1 by more than :data:`NORM_TOLERANCE`.
    """
    checked = 0
    for shard in index.shards.shards.values():
        flat = shard.flat_vectors()
        if flat is None:
            continue
        for start in range(0, len(flat), 65_536):
            norms = np.linalg.norm(flat[start:start + 65_536], axis=1)
            bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
            if bad.size:
                unit = shard.start + start + int(bad[0])
                raise CorruptIndexError(f"canary: the stored vector of unit {unit} ({shard.source} shard) has norm "
                                        f"{float(norms[bad[0]]):.4f}, expected 1 (the vectors were altered)")
        checked += len(flat)
    return checked


def run_data_canary(index: Index, encode: EncodeDocuments, size: int = CANARY_UNITS, seed: int | None = None,
                    budget_seconds: float = CANARY_BUDGET_SECONDS) -> CanaryReport:
    """Check the index's vectors and unit store against the model (see the module docstring).

    Args:
        index: the loaded index (already checked against its manifest and for model compatibility).
        encode: the document encoder of the model the index was built with.
        size: about how many units to re-encode (at least each shard's first and last); 0 checks
            the norms only (for indexes whose vectors are not the model's by construction).
        seed: the sample's seed; a fresh random one when None.
        budget_seconds: stop re-encoding after this long, once at least one batch was checked.

    Raises:
        CorruptIndexError: a vector is damaged, or a sampled unit is not found at its own id with
            its own text; the message names the unit, the shard and the seed.
    """
    started = time.perf_counter()
    seed = secrets.randbits(32) if seed is None else seed
    norms = check_norms(index)
    if size == 0:
        logger.warning("canary: re-encoding is off (0 units): only the norms of exact shards were checked (%d)", norms)
        return CanaryReport(0, norms, 1.0, seed, time.perf_counter() - started)
    units = canary_sample(index, size, seed)
    rng = np.random.default_rng(seed)
    units = [units[i] for i in rng.permutation(len(units))]  # a budget cut keeps a spread sample
    worst, checked = 1.0, 0
    for begin in range(0, len(units), _BATCH):
        if checked and time.perf_counter() - started > budget_seconds:
            logger.warning("canary: time budget of %.0fs spent after %d of %d sampled units", budget_seconds,
                           checked, len(units))
            break
        batch = units[begin:begin + _BATCH]
        vectors = np.asarray(encode([index.store.text(u) for u in batch]), dtype=np.float32)
        for unit, vector in zip(batch, vectors, strict=True):
            source = index.store.source_of(unit).value
            shard = index.shards.shards[source]
            scores, ids = shard.search(vector[None, :], CANARY_K)  # Shard.search caps k at its size
            hits = {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0}
            cosine = hits.get(unit)
            if cosine is None and _duplicate_found(index, unit, hits):
                continue
            if cosine is None:
                raise CorruptIndexError(
                    f"canary: unit {unit} ({source} shard) is not among the top {CANARY_K} for its own text "
                    f"(sample seed {seed}); the vectors do not match the unit store, or the model embeds "
                    "differently than at build time")
            if cosine < MIN_COSINE:
                raise CorruptIndexError(
                    f"canary: unit {unit} ({source} shard): its stored vector has cosine {cosine:.4f} with its "
                    f"re-encoded text, below {MIN_COSINE} (sample seed {seed})")
            worst = min(worst, cosine)
        checked += len(batch)
    report = CanaryReport(checked, norms, worst, seed, time.perf_counter() - started)
    logger.info("canary: %d units re-encoded (worst cosine %.4f), %d norms checked, seed %d, %.2fs",
                report.sampled, report.worst_cosine, report.norms_checked, seed, report.seconds)
    return report


def _duplicate_found(index: Index, unit: int, hits: dict[int, float]) -> bool:
    """True when more than CANARY_K units share the unit's text and crowd its own id out of the top hits."""
    text = index.store.text(unit)
    return len(hits) >= CANARY_K and all(
        score >= MIN_COSINE and index.store.text(i) == text for i, score in hits.items())
