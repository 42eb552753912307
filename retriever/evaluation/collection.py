"""The unit collection a benchmark searches, and where its dense and BM25 indexes come from.

Dense embeddings are cached as ordinary index directories under a cache root, keyed by the
corpus fingerprint (file bytes + selected ids), the model checksum, the linearizer version
and the window size, so a rerun with the same inputs never re-encodes. An existing index
directory can be used instead (``--index``); it is checked against the corpus fingerprint
in its manifest. BM25 indexes are cached the same way, keyed by the SHA-256 of the unit texts
and the BM25 settings.

Two unit schemes exist:

* ``index``: the project's linearizer with the encoder's window budget, exactly the units
  of a dense index (long passages and infoboxes split into windows). Dense, BM25 and
  hybrid all search these.
* ``whole-record``: every passage and infobox as one unit, the units of the HeteroMix
  README's BM25 reference (tables still one unit per row, triples one unit). BM25 only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from retriever.encoder import Encoder
from retriever.errors import IncompatibleIndexError, InvalidInputError, RetrieverError
from retriever.index import BuildConfig, Index, Manifest, build_index, load_units
from retriever.index.lexical import Bm25Config, LexicalIndex, texts_sha256
from retriever.index.store import UnitStore
from retriever.linearize import DEFAULT_LINK_ROWS, LINEARIZER_VERSION, WindowBudget
from retriever.records import file_fingerprint, read_id_list

logger = logging.getLogger(__name__)

#: Default cache root, relative to the working directory (``$RETRIEVER_CACHE_DIR`` overrides).
DEFAULT_CACHE_ROOT = Path("index_builds") / "cache"
#: A budget no record reaches: every passage and infobox stays one unit.
WHOLE_RECORD_TOKENS = 1 << 30


class UnitScheme(StrEnum):
    INDEX = "index"
    WHOLE_RECORD = "whole-record"


def cache_root(explicit: Path | None = None) -> Path:
    """``explicit``, else ``$RETRIEVER_CACHE_DIR``, else ``index_builds/cache``."""
    if explicit is not None:
        return explicit
    env = os.environ.get("RETRIEVER_CACHE_DIR")
    return Path(env) if env else DEFAULT_CACHE_ROOT


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus file and the optional id list selecting a tier of it (mini, lite)."""

    corpus: Path
    ids_file: Path | None = None

    def fingerprint(self) -> str:
        ids = read_id_list(self.ids_file) if self.ids_file else None
        return file_fingerprint(self.corpus, ids)


def dense_cache_key(fingerprint: str, model_checksum: str, max_tokens: int) -> str:
    raw = f"{fingerprint}\0{model_checksum}\0{LINEARIZER_VERSION}\0{max_tokens}\0links {DEFAULT_LINK_ROWS}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def check_index_matches(index_dir: Path, spec: CorpusSpec) -> Manifest:
    """Refuse an index directory built from another corpus or id list.

    Raises:
        IncompatibleIndexError: the manifest's corpus fingerprint differs.
    """
    manifest = Manifest.read(index_dir)
    fingerprint = spec.fingerprint()
    if manifest.corpus_fingerprint != fingerprint:
        ids = f" with ids {spec.ids_file}" if spec.ids_file else ""
        raise IncompatibleIndexError(
            f"{index_dir} was built from another corpus or id list (fingerprint {manifest.corpus_fingerprint[:12]}, "
            f"{manifest.corpus_path}) than {spec.corpus}{ids} (fingerprint {fingerprint[:12]}); pass the matching "
            "--corpus/--ids or drop --index to build a cached one")
    return manifest


def dense_index(spec: CorpusSpec, encoder: Encoder, root: Path, index_dir: Path | None = None,
                factory: str = "Flat") -> Index:
    """The dense index for ``spec`` and ``encoder``: ``index_dir`` if given (checked), else the cache.

    A cache miss encodes the whole corpus tier (minutes to hours on CPU) and stores it.
    """
    if index_dir is not None:
        check_index_matches(index_dir, spec)
        return Index.load(index_dir)
    max_tokens = max(16, encoder.max_seq_length - 2)
    key = dense_cache_key(spec.fingerprint(), encoder.checksum, max_tokens)
    path = root / f"dense-{key}"
    if path.exists():
        try:
            index = Index.load(path)
            index.manifest.check_compatible(encoder.checksum, encoder.prompts, str(path))
            logger.info("using cached embeddings %s", path)
            return index
        except RetrieverError as exc:
            logger.warning("cached index %s is unusable (%s); rebuilding", path, exc)
    logger.warning("no cached embeddings for this corpus and model: encoding %s into %s (slow on CPU)",
                   spec.corpus, path)
    build_index(BuildConfig(corpus=spec.corpus, out=path, ids_file=spec.ids_file, factory=factory,
                            max_tokens=max_tokens, overwrite=True), encoder)
    return Index.load(path)


def read_collection(spec: CorpusSpec, scheme: UnitScheme, encoder: Encoder | None) -> UnitStore:
    """Linearize the corpus into units without embedding them (for BM25-only runs).

    ``UnitScheme.INDEX`` needs the encoder's tokenizer to place window boundaries exactly as
    an index build would.
    """
    if scheme is UnitScheme.INDEX:
        if encoder is None:
            raise InvalidInputError("index units need the encoder's tokenizer; load an encoder")
        budget = WindowBudget(max_tokens=max(16, encoder.max_seq_length - 2), count=encoder.count_tokens)
        link_rows = DEFAULT_LINK_ROWS  # as build-index makes them
    else:
        budget = WindowBudget(max_tokens=WHOLE_RECORD_TOKENS)
        link_rows = 0  # the data README's reference units: passages as written
    _, units = load_units(spec.corpus, spec.ids_file, budget, link_rows)
    logger.info("linearized %s into %d %s units", spec.corpus, len(units), scheme.value)
    return UnitStore.from_units(units)


def lexical_index(store: UnitStore, root: Path, config: Bm25Config | None = None,
                  show_progress: bool = False) -> LexicalIndex:
    """The BM25 index over ``store``'s texts, from the cache or built (seconds for mini) and cached."""
    config = config or Bm25Config()
    digest = texts_sha256(store.texts)
    key = hashlib.sha256((digest + json.dumps(asdict(config), sort_keys=True)).encode()).hexdigest()[:20]
    path = root / f"bm25-{key}"
    if path.exists():
        try:
            lexical = LexicalIndex.load(path, units_sha256=digest)
            logger.info("using cached BM25 index %s", path)
            return lexical
        except RetrieverError as exc:
            logger.warning("cached BM25 index %s is unusable (%s); rebuilding", path, exc)
    lexical = LexicalIndex.build(store.texts, config, show_progress=show_progress)
    try:
        lexical.save(path, overwrite=True)
    except OSError as exc:
        logger.warning("cannot cache the BM25 index at %s: %s", path, exc)
    return lexical
