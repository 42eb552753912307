"""A BM25 index over the same units as a dense index, for the ``bm25`` and ``hybrid`` search modes.

Built with bm25s and saved with its own array/JSON format (``np.save`` without pickle, a
JSON vocabulary), plus ``lexical.json``: the BM25 parameters, the tokenizer settings, the
number of units and the SHA-256 of the unit texts it was built from, and the size and hash
of every file. Loading checks all of it, so a lexical index can never be paired with the
units of another index by mistake. The default location is ``<index dir>/lexical``.

Unit ids are the dense index's unit ids (the row numbers of ``units.arrow``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from retriever.errors import CorruptIndexError, IncompatibleIndexError, InvalidInputError, NotFoundError
from retriever.index.files import publish_dir, sha256_file, staging_dir, write_json_atomic

logger = logging.getLogger(__name__)

LEXICAL_DIR = "lexical"
LEXICAL_MANIFEST = "lexical.json"
LEXICAL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Bm25Config:
    """BM25 scoring and tokenization (defaults: the HeteroMix reference baseline).

    Attributes:
        k1: term-frequency saturation.
        b: length normalisation.
        method: bm25s scoring variant (``lucene``, ``robertson``, ``atire``).
        stopwords: bm25s stop-word list name (``en``) or ``""`` for none.
        stemmer: PyStemmer language (``english``) or ``""`` for none.
    """

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stopwords: str = "en"
    stemmer: str = "english"

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.method not in ("lucene", "robertson", "atire"):
            raise ValueError(f"unknown BM25 method {self.method!r}; use lucene, robertson or atire")


def texts_sha256(texts: Sequence[str]) -> str:
    """SHA-256 over unit texts (length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class LexicalIndex:
    """BM25 over a fixed list of unit texts; ``search`` returns rank-ordered ``(ids, scores)``."""

    def __init__(self, model: Any, config: Bm25Config, units: int, units_sha256: str) -> None:
        self.model, self.config, self.units, self.units_sha256 = model, config, units, units_sha256
        self._stemmer = _stemmer(config.stemmer)

    @classmethod
    def build(cls, texts: Sequence[str], config: Bm25Config | None = None, show_progress: bool = False) -> LexicalIndex:
        """Tokenize and index ``texts`` (unit id = position)."""
        import bm25s

        config = config or Bm25Config()
        if not texts:
            raise InvalidInputError("cannot build a BM25 index over zero units")
        started = time.perf_counter()
        tokens = bm25s.tokenize(list(texts), stopwords=config.stopwords or None, stemmer=_stemmer(config.stemmer),
                                return_ids=True, show_progress=show_progress)
        model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        model.index(tokens, show_progress=show_progress)
        logger.info("BM25 index over %d units (%d terms) in %.1fs", len(texts), len(model.vocab_dict),
                    time.perf_counter() - started)
        return cls(model, config, len(texts), texts_sha256(texts))

    def save(self, directory: Path, overwrite: bool = False) -> None:
        """Write the index directory atomically (it appears only when complete)."""
        if directory.exists() and not overwrite:
            raise FileExistsError(f"{directory} already exists (use overwrite to replace it)")
        with staging_dir(directory) as staged:
            self.model.save(str(staged), corpus=None, allow_pickle=False, show_progress=False)
            files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(staged.iterdir())}
            write_json_atomic(staged / LEXICAL_MANIFEST, {
                "format_version": LEXICAL_FORMAT_VERSION, "config": asdict(self.config), "units": self.units,
                "units_sha256": self.units_sha256, "bm25s_version": _bm25s_version(), "files": files,
            })
            publish_dir(staged, directory, overwrite)

    @classmethod
    def load(cls, directory: Path, units_sha256: str | None = None) -> LexicalIndex:
        """Open a saved lexical index after checking its files.

        Args:
            directory: the lexical index directory.
            units_sha256: when given, the SHA-256 of the unit texts it must have been built from.

        Raises:
            NotFoundError: no lexical index there.
            CorruptIndexError: a file is missing or altered.
            IncompatibleIndexError: it was built from other units.
        """
        import bm25s

        path = directory / LEXICAL_MANIFEST
        if not path.is_file():
            raise NotFoundError(f"{directory}: no {LEXICAL_MANIFEST} (build it with `retriever build-lexical`)")
        try:
            meta = orjson.loads(path.read_bytes())
            config = Bm25Config(**meta["config"])
            if meta["format_version"] != LEXICAL_FORMAT_VERSION:
                raise CorruptIndexError(f"{path}: unsupported format_version {meta['format_version']}")
            files, units, digest = meta["files"], int(meta["units"]), str(meta["units_sha256"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptIndexError(f"{path}: malformed lexical manifest: {exc}") from exc
        for name, entry in files.items():
            file = directory / name
            if "/" in name or not file.is_file():
                raise CorruptIndexError(f"{directory}: missing file {name}")
            if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
                raise CorruptIndexError(f"{directory}: {name} does not match its size/SHA-256 in {LEXICAL_MANIFEST}")
        if units_sha256 is not None and units_sha256 != digest:
            raise IncompatibleIndexError(f"{directory} was built from other units than this index; rebuild it with "
                                         "`retriever build-lexical`")
        model = bm25s.BM25.load(str(directory), load_corpus=False, mmap=False, allow_pickle=False,
                                show_progress=False)
        if int(model.scores["num_docs"]) != units:
            raise CorruptIndexError(f"{directory}: holds {model.scores['num_docs']} documents, manifest says {units}")
        return cls(model, config, units, digest)

    def tokenize_queries(self, queries: Sequence[str]) -> list[list[str]]:
        import bm25s

        out = bm25s.tokenize(list(queries), stopwords=self.config.stopwords or None, stemmer=self._stemmer,
                             return_ids=False, show_progress=False)
        return [list(tokens) for tokens in out]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every unit for one query, float32 ``[units]`` (zeros when no term matches)."""
        tokens = [t for t in self.tokenize_queries([query])[0] if t in self.model.vocab_dict]
        if not tokens:
            return np.zeros(self.units, dtype=np.float32)
        return np.asarray(self.model.get_scores(tokens), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int, masks: Sequence[np.ndarray | None] | None = None,
               ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k units per query as ``(ids int64 [<=k], scores float32 [<=k])``, best first.

        Only units with a positive score are returned (a unit sharing no term with the query
        is not evidence). Ties on score are broken by unit id, ascending.

        Args:
            queries: query texts (instructions are not part of a BM25 query).
            k: hits per query.
            masks: per query, a boolean ``[units]`` array of allowed units (a source filter), or None.
        """
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        if masks is not None and len(masks) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(masks)} masks")
        out = []
        for i, query in enumerate(queries):
            scores = self.scores(query)
            mask = masks[i] if masks is not None else None
            if mask is not None:
                scores = np.where(mask, scores, 0.0).astype(np.float32)
            out.append(top_k(scores, k))
        return out


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive-scoring entries of ``scores``, best first, ties by index ascending."""
    candidates = np.flatnonzero(scores > 0)
    if len(candidates) > k:
        part = np.argpartition(-scores[candidates], k - 1)[:k]
        # Everything tied with the k-th score must be considered, or a tie could be cut by position.
        kth = scores[candidates[part]].min()
        candidates = candidates[scores[candidates] >= kth]
    order = np.lexsort((candidates, -scores[candidates]))[:k]
    ids = candidates[order].astype(np.int64)
    return ids, scores[ids].astype(np.float32)


def _stemmer(language: str) -> Any:
    if not language:
        return None
    import Stemmer

    try:
        return Stemmer.Stemmer(language)
    except KeyError as exc:
        raise ValueError(f"PyStemmer has no stemmer for {language!r}") from exc


def _bm25s_version() -> str:
    import bm25s

    return str(getattr(bm25s, "__version__", "unknown"))
