"""Served indexes by name, each with a generation number, and atomic hot swap.

Publishing loads a directory (the manifest validated in full, every file verified against it),
checks it against the loaded model, re-encodes a sample of its units to check the data (the
data canary, :mod:`retriever.index.verify`), runs a canary query through the serving path, and
only then replaces the name's current generation in one reference assignment. A request holds
the :class:`Generation` it resolved at its start, so calls in flight finish on that generation;
the old one is freed when the last of them ends.
Any failure leaves the previous generation serving.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from retriever.encoder import Encoder
from retriever.errors import CorruptIndexError, InvalidInputError, NotFoundError, NotReadyError, RetrieverError
from retriever.index import Index, Manifest
from retriever.index.manifest import MANIFEST_NAME
from retriever.index.verify import CANARY_UNITS, run_data_canary
from retriever.query import SearchResult, SourceResolution
from retriever.searcher import Searcher, find_lexical
from retriever.service.config import check_name

logger = logging.getLogger(__name__)

@dataclass(frozen=True, eq=False)
class Generation:
    """One loaded build of a served index name."""

    name: str
    number: int
    searcher: Searcher
    loaded: str  # ISO-8601 time it started serving

    @property
    def index(self) -> Index:
        return self.searcher.index

    @property
    def manifest(self) -> Manifest:
        return self.searcher.index.manifest


@dataclass(frozen=True)
class PublishResult:
    generation: Generation
    previous: int  # previous generation number, 0 when the name is new
    seconds: float


#: Runs one query with an explicit generation through the serving path: ``(generation, text) -> result``.
CanarySearch = Callable[[Generation, str], SearchResult]


def resolve_publish_path(path: str, roots: Sequence[Path]) -> Path:
    """The index directory a PublishIndex call names, when it is one and lies under a publish root.

    A path that does not exist, is not an index directory (no manifest) or resolves (symbolic
    links followed) outside every root gets the same NotFoundError, so the answer tells a caller
    nothing about the rest of the server's file system.

    Raises:
        InvalidInputError: an empty path.
        NotFoundError: anything else that is not an index directory under a root.
    """
    if not path.strip():
        raise InvalidInputError("path must name an index directory")
    try:
        resolved: Path | None = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        resolved = None
    if resolved is None or not any(resolved.is_relative_to(root) for root in roots) \
            or not (resolved / MANIFEST_NAME).is_file():
        raise NotFoundError("no index directory at that path under the server's publish roots")
    return resolved


def run_canary(generation: Generation, search: CanarySearch) -> None:
    """Query the new generation through the serving path and check the answer is sane.

    The data itself is checked by :func:`retriever.index.verify.run_data_canary` first; this
    checks that the serving path (batcher, search, hit building) answers on the new index.

    Raises:
        CorruptIndexError: the canary found nothing, non-finite or unsorted scores, or failed.
    """
    store = generation.index.store
    if len(store) == 0:
        raise CorruptIndexError("canary: the index has no units")
    text = store.text(0).strip() or "canary"
    try:
        result = search(generation, text)
    except RetrieverError:
        raise
    except Exception as exc:  # a build that breaks search (FAISS, shapes) must not be swapped in
        raise CorruptIndexError(f"canary: the query failed ({type(exc).__name__})") from exc
    scores = [hit.score for hit in result.hits]
    if not scores:
        raise CorruptIndexError("canary: the query returned no hits")
    if not all(math.isfinite(s) for s in scores) or scores != sorted(scores, reverse=True):
        raise CorruptIndexError("canary: scores are not finite or not sorted")


class IndexRegistry:
    """The served indexes. Reads are lock-free; publishes are serialized."""

    def __init__(self, encoder: Encoder, resolution: SourceResolution = SourceResolution.FILTER,
                 use_gpu: bool = True, params: Mapping[str, int] | None = None,
                 canary_units: int | None = None, router_threshold: float | None = None,
                 router_prior: float | None = None) -> None:
        self.encoder, self.resolution, self.use_gpu, self.params = encoder, resolution, use_gpu, params
        self.router_threshold, self.router_prior = router_threshold, router_prior
        self.canary_units = CANARY_UNITS if canary_units is None else canary_units
        self._current: dict[str, Generation] = {}
        self._default: str | None = None
        self._publish_lock = threading.Lock()
        self._canary: CanarySearch | None = None

    def set_canary(self, search: CanarySearch) -> None:
        """The search used for canary queries (the server passes its batcher's)."""
        self._canary = search

    @property
    def default_name(self) -> str | None:
        return self._default

    def names(self) -> list[str]:
        return list(self._current)

    def get(self, name: str | None = None) -> Generation:
        """The current generation of ``name`` (the default index when empty or None).

        Raises:
            NotReadyError: nothing is loaded yet.
            NotFoundError: no index of that name is served.
        """
        current = self._current  # one read: a consistent snapshot even while a publish swaps
        if not name:
            if self._default is None or self._default not in current:
                raise NotReadyError("no index is loaded yet")
            return current[self._default]
        try:
            return current[name]
        except KeyError:
            served = ", ".join(sorted(current)) or "none"
            raise NotFoundError(f"no index named {name!r} is served (served: {served})") from None

    def all(self) -> list[Generation]:
        return list(self._current.values())

    def publish(self, name: str, path: str | Path) -> PublishResult:
        """Load, verify and canary-check ``path``, then make it the current generation of ``name``.

        Raises:
            InvalidInputError: a bad name or empty path.
            NotFoundError: the directory does not exist.
            CorruptIndexError: a file fails its checks, or the canary fails.
            IncompatibleIndexError: the index was built with another model or prompts.
        """
        check_name(name)
        if not str(path).strip():
            raise InvalidInputError("path must name an index directory")
        with self._publish_lock:
            started = time.perf_counter()
            previous = self._current.get(name)
            try:
                index = Index.load(path, use_gpu=self.use_gpu, params=self.params)
            except OSError as exc:
                raise CorruptIndexError(f"cannot read the index directory: {exc.strerror or exc}") from exc
            # checks the model and prompts match; serves bm25 and hybrid when the index has a lexical part
            searcher = Searcher(index, self.encoder, self.resolution, find_lexical(index),
                                router_threshold=self.router_threshold, router_prior=self.router_prior)
            run_data_canary(index, self.encoder.encode_documents, self.canary_units)
            number = previous.number + 1 if previous else 1
            loaded = datetime.now(UTC).isoformat(timespec="seconds")
            generation = Generation(name, number, searcher, loaded)
            if self._canary is not None:
                run_canary(generation, self._canary)
            self._current = {**self._current, name: generation}
            if self._default is None:
                self._default = name
            seconds = time.perf_counter() - started
            logger.info("index %r generation %d now serving (%d units, loaded in %.2fs)", name, number,
                        len(index.store), seconds)
            return PublishResult(generation, previous.number if previous else 0, seconds)
