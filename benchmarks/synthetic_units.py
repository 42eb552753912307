"""Synthetic units for the scale benchmark: real HeteroMix texts and vectors, copied and perturbed.

:class:`Bases` are real units (texts and embeddings of an index built with the real model).
:class:`SyntheticUnits` numbers ``N`` synthetic units in the index's source order: unit ``i`` is a
seeded base unit ``j(i)`` of its source, with vector ``normalize(base[j(i)] + sigma * g_i)`` (``g_i``
Gaussian of expected norm 1). Both come from ``(seed, i)`` alone, so any unit's vector can be
regenerated, for the build (:class:`SyntheticEncoder`, which reads ``i`` from the ``[syn i]`` marker
that ends each synthetic text) and for exact search. :func:`write_corpus` writes the records.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from retriever.encoder import Backend, Encoder, EncoderConfig, ModelInfo, Precision
from retriever.index import Index
from retriever.index.store import SOURCE_ORDER
from retriever.records import iter_lines

logger = logging.getLogger("scale")

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "heteromix" / "corpus.jsonl.gz"
SOURCES = [s.value for s in SOURCE_ORDER]  # text, table, kb, infobox: the unit-id order of an index
#: CompMix-IR's units per source (millions, of 10.2M): the synthetic corpus keeps these shares.
COMPMIX_SHARES = {"text": 5.9, "table": 1.0, "kb": 2.2, "infobox": 1.1}
#: Sources whose linearizer splits long texts into windows: their base texts are trimmed to one window.
WINDOWED = {"text", "infobox"}
MARKER = re.compile(r"\[syn (\d+)\]$")
PLACEHOLDER_ID, PLACEHOLDER_MARK = "@@SYN_ID@@", "@@SYN_MARK@@"
#: Bump when the records or vectors made from the same parameters change (a stale corpus is refused).
CORPUS_VERSION = 2
BLOCK = 4096  # units per block of the generator: one RNG stream per (seed, block)


def source_counts(units: int) -> dict[str, int]:
    total = sum(COMPMIX_SHARES.values())
    counts = {s: int(units * COMPMIX_SHARES[s] / total) for s in SOURCES}
    counts["text"] += units - sum(counts.values())
    return counts


# --- base units: real texts and real vectors ---------------------------------------------------


@dataclass
class Bases:
    """Real units: ``vectors [B, d]`` (L2-normalised), texts, titles and the base ids of each source."""

    vectors: np.ndarray
    texts: list[str]
    titles: list[str]
    pools: dict[str, np.ndarray]

    @classmethod
    def load(cls, index_dir: Path) -> Bases:
        import faiss

        index = Index.load(index_dir, use_gpu=False)
        n, store = index.manifest.total_units, index.store
        vectors = np.empty((n, index.manifest.dimension), np.float32)
        for shard in index.shards.shards.values():
            try:
                vectors[shard.start:shard.start + shard.count] = shard.cpu_index.reconstruct_n(0, shard.count)
            except RuntimeError:  # IVF shards reconstruct by id only through a direct map
                faiss.extract_index_ivf(shard.cpu_index).make_direct_map()
                vectors[shard.start:shard.start + shard.count] = shard.cpu_index.reconstruct_n(0, shard.count)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        pools = {s: np.flatnonzero(store.sources == code) for code, s in enumerate(SOURCES)}
        return cls(vectors, list(store.texts), list(store.titles), pools)


def sample_records(corpus: Path, wanted: dict[str, int], seed: int) -> list[str]:
    """Seeded record ids of each source until their units (a table: its rows) reach ``wanted``."""
    pools: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for _, raw in iter_lines(corpus):
        obj = orjson.loads(raw)
        pools[obj["source"]].append((obj["id"], len(obj.get("rows") or ()) or 1))
    rng = random.Random(seed)
    chosen = []
    for source, need in wanted.items():
        pool = sorted(pools[source])
        rng.shuffle(pool)
        got = 0
        for record_id, units in pool:
            if got >= need:
                break
            chosen.append(record_id)
            got += units
    return chosen


def record_template(source: str, title: str, text: str) -> bytes:
    """One JSON line whose linearized unit is ``text`` + marker, with the id and marker as placeholders.

    Inverts the linearizers (:mod:`retriever.linearize`) where the unit text allows it, so the unit keeps
    its title; otherwise the whole text goes into one field.
    """
    mark, name = PLACEHOLDER_MARK, " ".join(title.split())
    record: dict[str, Any]
    if source == "text":
        prefix = f"{title}: "
        record = ({"title": title, "text": text[len(prefix):] + mark} if title.strip() and text.startswith(prefix)
                  else {"text": text + mark})
    elif source == "kb":
        prefix = f"{name}, "
        predicate, sep, obj = text[len(prefix):].partition(", ")
        record = ({"subject": name, "predicate": predicate, "object": obj + mark} if name and text.startswith(prefix)
                  and sep else {"subject": "", "predicate": "", "object": text + mark})
    elif source == "table":
        head, sep, body = text.partition(": ")
        name = title.strip()
        record = ({"title": name, "section": head[len(name) + 2:], "header": [""], "rows": [[body + mark]]}
                  if name and sep and (head == name or head.startswith(f"{name}, "))
                  else {"title": "", "header": [""], "rows": [[text + mark]]})
    else:
        prefix = f"{name} | "
        record = ({"title": name, "attributes": [["", text[len(prefix):] + mark]]}
                  if name and text.startswith(prefix) else {"title": "", "attributes": [["", text + mark]]})
    return orjson.dumps({"id": PLACEHOLDER_ID, "source": source, "dataset": "synthetic", **record})


def trim_to_window(bases: Bases, count: Any, max_tokens: int, largest_id: int) -> int:
    """Trim windowed base texts so that text + any marker stays one window; returns how many were trimmed.

    A marker costs at most the tokens of ``[syn ]`` plus one per digit (numbers split unpredictably).
    """
    budget = max_tokens - count(["[syn ]"])[0] - len(str(largest_id))
    ids = np.concatenate([bases.pools[s] for s in sorted(WINDOWED)])
    trimmed = 0
    for i, n in zip(ids, count([bases.texts[i] for i in ids])):
        words = bases.texts[i].split(" ")
        if n <= budget:
            continue
        while n > budget and len(words) > 1:
            words = words[:max(1, len(words) - (n - budget))]
            n = count([" ".join(words)])[0]
        bases.texts[i] = " ".join(words)
        trimmed += 1
    return trimmed


# --- synthetic units: deterministic from (seed, i) ---------------------------------------------


class SyntheticUnits:
    """Unit ``i``: its source, its base unit ``j(i)`` and its vector, derived from ``(seed, i)`` alone.

    Units are numbered in the index's source order, so unit ``i`` of the built index is record ``syn-<i>``.
    """

    def __init__(self, bases: Bases, counts: dict[str, int], sigma: float, seed: int) -> None:
        missing = [s for s in SOURCES if counts.get(s) and not len(bases.pools[s])]
        if missing:
            raise SystemExit(f"the base index has no units of {missing}; use another base index")
        self.bases, self.sigma, self.seed = bases, sigma, seed
        self.ends = np.cumsum([counts.get(s, 0) for s in SOURCES])
        self.total = int(self.ends[-1])
        self.dimension = int(bases.vectors.shape[1])
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """``picks [BLOCK]`` base ids (-1 past the end) and ``noise [BLOCK, d]`` of one block."""
        if self._cached is None or self._cached[0] != block:
            rng = np.random.default_rng([self.seed, block])
            draws = rng.integers(0, 1 << 62, size=BLOCK)
            noise = rng.standard_normal((BLOCK, self.dimension), dtype=np.float32)
            source = np.searchsorted(self.ends, np.arange(block * BLOCK, (block + 1) * BLOCK), side="right")
            picks = np.full(BLOCK, -1, np.int64)
            for code, name in enumerate(SOURCES):
                rows = source == code
                if rows.any():
                    pool = self.bases.pools[name]
                    picks[rows] = pool[draws[rows] % len(pool)]
            self._cached = (block, picks, noise)
        return self._cached[1], self._cached[2]

    def base_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        out = np.empty(len(ids), np.int64)
        blocks = ids // BLOCK
        for block in np.unique(blocks):
            rows = np.flatnonzero(blocks == block)
            out[rows] = self._block(int(block))[0][ids[rows] % BLOCK]
        return out

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """``[len(ids), d]`` float32, L2-normalised: ``base[j(i)] + sigma * g_i`` (``E|g_i| = 1``)."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.dimension), np.float32)
        blocks = ids // BLOCK
        for block in np.unique(blocks):
            rows = np.flatnonzero(blocks == block)
            picks, noise = self._block(int(block))
            local = ids[rows] % BLOCK
            out[rows] = self.bases.vectors[picks[local]] + noise[local] * (self.sigma / math.sqrt(self.dimension))
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def chunks(self, size: int = 16 * BLOCK) -> Iterator[np.ndarray]:
        for start in range(0, self.total, size):
            yield self.vectors(np.arange(start, min(start + size, self.total)))


class SyntheticEncoder(Encoder):
    """Embeds a synthetic unit as :meth:`SyntheticUnits.vectors` of its marker; queries go to the real model.

    Its :class:`ModelInfo` is the bundled model's and its encoding torch float32 (what a server with
    the bundled model runs), so the index it builds is served with that model. Query encoding (the
    build's recall gate encodes pseudo-queries of sampled units, as the server encodes questions)
    loads the real model on first use.
    """

    def __init__(self, units: SyntheticUnits, config: EncoderConfig) -> None:
        self.config = config
        self.info = ModelInfo.describe(config)
        self.model_dir, self.name, self.checksum = self.info.model_dir, self.info.name, self.info.checksum
        self.device = "cpu"
        self.backend, self.precision, self.export = Backend.TORCH, Precision.FLOAT32, None
        self.units = units
        self._real: Encoder | None = None

    @property
    def real(self) -> Encoder:
        if self._real is None:
            self._real = Encoder(replace(self.config, backend=Backend.TORCH, precision=Precision.FLOAT32,
                                         show_progress=False))
        return self._real

    @property
    def instruction_tuned(self) -> bool:  # type: ignore[override]
        return self.real.instruction_tuned

    @property
    def prompts(self) -> dict[str, str]:
        return self.real.prompts

    def encode_queries(self, questions: Sequence[str], instructions: Sequence[str | None] | str | None = None,
                       show_progress: bool = False) -> np.ndarray:
        return self.real.encode_queries(questions, instructions, show_progress)

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> np.ndarray:
        ids = []
        for text in texts:
            found = MARKER.search(text)
            if found is None:
                raise ValueError(f"not a synthetic unit (no [syn N] marker at its end): {text[-80:]!r}")
            ids.append(int(found.group(1)))
        return self.units.vectors(np.array(ids, np.int64))


def write_corpus(path: Path, units: SyntheticUnits) -> None:
    """Write record ``syn-<i>`` for every unit (gzip level 1: 10M records take minutes), then rename into place."""
    sources = np.empty(len(units.bases.texts), np.int64)
    for code, name in enumerate(SOURCES):
        sources[units.bases.pools[name]] = code
    templates = [record_template(SOURCES[int(code)], title, text)
                 for code, title, text in zip(sources, units.bases.titles, units.bases.texts)]
    tmp = path.with_name(f".{path.name}.tmp")
    started = time.perf_counter()
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        for start in range(0, units.total, BLOCK):
            ids = range(start, min(start + BLOCK, units.total))
            picks = units.base_of(np.arange(ids.start, ids.stop))
            fh.write(b"".join(templates[j].replace(PLACEHOLDER_ID.encode(), f"syn-{i}".encode())
                              .replace(PLACEHOLDER_MARK.encode(), f" [syn {i}]".encode()) + b"\n"
                              for i, j in zip(ids, picks)))
    os.replace(tmp, path)
    logger.info("wrote %d synthetic records to %s in %.0fs", units.total, path, time.perf_counter() - started)
