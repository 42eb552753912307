"""Benchmark rankings from a running server: the harness's own queries, ranked over gRPC.

``retriever bench heteromix --server ADDRESS`` runs the same harness as an in-process run
(question files, scenario queries from :func:`~retriever.evaluation.heteromix.make_query`,
judgments, metrics, outputs); only the ranking moves. :class:`RemoteRetriever` turns each
harness query into the query :class:`~retriever.evaluation.retrievers.EngineRetriever` would
plan (:func:`~retriever.evaluation.retrievers.engine_query`: the same instruction, sources,
mode, fusion and depth), sends it as one ``RetrieveRequest`` of a ``RetrieveStream`` call, and
hands the hits back as the ``(unit ids, scores)`` ranking the scoring code reads.

The served index must be the ``--index`` build (:func:`check_served`): the local copy supplies
the unit store that maps unit ids to records for judging, and every hit is checked against it.
The harness searches with ``SourceResolution.ENCODER_ONLY`` (a source-soft query's instruction
must not become a filter), so the server must run ``--resolve encoder-only``: a probe before the
run (:func:`remote_retrievers`) and a check on every answer refuse a server that filtered by itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retriever.errors import IncompatibleIndexError
from retriever.evaluation.retrievers import UnitRetriever, engine_query, memoized
from retriever.index import Manifest
from retriever.index.lexical import LEXICAL_DIR, LEXICAL_MANIFEST, Bm25Config
from retriever.index.loaded import check_store_order, verify_files
from retriever.index.store import UNITS_NAME, UnitStore
from retriever.query import FusionConfig, Mode, Query
from retriever.searcher import Ranking

if TYPE_CHECKING:
    from retriever.client import RemoteResult, RetrieverClient
    from retriever.service.proto import retriever_pb2 as pb

logger = logging.getLogger(__name__)

#: Queries per RetrieveStream call (the server's default limit is 4096 per call; the deadline covers one call).
STREAM_CHUNK = 256
#: Default deadline of one RetrieveStream call, in seconds (``--timeout``).
CALL_TIMEOUT = 600.0
#: How long the harness waits for a server that is still loading (UNAVAILABLE) before giving up.
SERVER_READY_SECONDS = 300.0
ENCODER_ONLY_HINT = ("the benchmark ranks with encoder-only resolution (an instruction never becomes a filter): "
                     "start the server with `--resolve encoder-only` (RETRIEVER_RESOLUTION=encoder-only), or run "
                     "only scenarios whose queries name their sources or carry no instruction (all-plain, "
                     "source-hard, source-hard-plain)")


@dataclass(frozen=True)
class ServedIndex:
    """Where a served run ranks: the server's address and the served index name ("" for its default)."""

    address: str
    index: str = ""


@dataclass(frozen=True)
class Served:
    """What a served run needs from the server, checked: the local unit store and the served index's facts."""

    store: UnitStore
    name: str
    generation: int
    model: str
    prompts: dict[str, str]


class RemoteRetriever:
    """One search mode of a served index at the benchmark's depth (see the module docstring).

    Args:
        client: a connected client.
        mode, fusion: what :class:`~retriever.evaluation.retrievers.EngineRetriever` would search with.
        store: the local unit store of the served build; every hit is checked against it.
        index: the served index name ("" for the server's default).
        chunk: queries per RetrieveStream call.
        timeout: deadline per call in seconds (None: the client's).
    """

    def __init__(self, client: RetrieverClient, mode: Mode, fusion: FusionConfig, store: UnitStore,
                 index: str = "", chunk: int = STREAM_CHUNK, timeout: float | None = None) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.client, self.mode, self.fusion, self.store = client, mode, fusion, store
        self.index, self.chunk, self.timeout = index, chunk, timeout
        self.name = mode.value

    def rank(self, queries: Sequence[Query], depth: int) -> list[Ranking]:
        asked = [engine_query(q, self.mode, self.fusion, depth) for q in queries]
        out: list[Ranking] = []
        for start in range(0, len(asked), self.chunk):
            part = asked[start:start + self.chunk]
            results = list(self.client.retrieve_stream(part, index=self.index, timeout=self.timeout))
            out.extend(self.ranking(q, r) for q, r in zip(part, results, strict=True))
        return out

    def ranking(self, query: Query, result: RemoteResult) -> Ranking:
        """One answer as the harness's ranking, after checking it answers ``query`` as the harness would."""
        asked = tuple(dict.fromkeys(query.sources))
        if result.resolved or result.sources != asked:
            applied = ", ".join(s.value for s in result.sources) or "none"
            raise IncompatibleIndexError(
                f"the server filtered the {self.mode.value} query {query.text!r} to sources {applied} "
                f"(asked: {', '.join(s.value for s in asked) or 'none'}) after reading its instruction; "
                + ENCODER_ONLY_HINT)
        if result.mode is not self.mode:
            raise IncompatibleIndexError(f"the server answered a {self.mode.value} query in mode {result.mode.value}")
        units = len(self.store)
        for hit in result.hits:
            unit = hit.unit_id
            if not 0 <= unit < units or self.store.record_id(unit) != hit.record_id \
                    or self.store.source_of(unit) is not hit.source or int(self.store.parts[unit]) != hit.part:
                local = f"{self.store.record_id(unit)} part {int(self.store.parts[unit])}" if 0 <= unit < units \
                    else f"no unit (the index has {units})"
                raise IncompatibleIndexError(
                    f"served unit {unit} is {hit.source.value} record {hit.record_id} part {hit.part}, the local "
                    f"index has {local}: the server serves another build than --index")
        ids = np.fromiter((h.unit_id for h in result.hits), dtype=np.int64, count=len(result.hits))
        scores = np.fromiter((h.score for h in result.hits), dtype=np.float32, count=len(result.hits))
        return ids, scores


def open_served(client: RetrieverClient, target: ServedIndex, index_dir: Path, manifest: Manifest,
                methods: Sequence[Mode], bm25: Bm25Config) -> Served:
    """Check the served index against the ``--index`` build and open that build's unit store (no FAISS shard).

    Raises:
        IncompatibleIndexError: the served index is another build, lacks a lexical part a method
            needs, or the local lexical part was built with other BM25 settings than the harness's.
        RemoteError: the server is unreachable or does not serve ``target.index``.
    """
    response = client.wait_until_ready(SERVER_READY_SECONDS, target.index)
    name = target.index or response.default_index
    found = [i for i in response.indexes if i.name == name]
    if not found:
        raise IncompatibleIndexError(f"the server at {target.address} does not serve an index named {name!r}")
    info = found[0]
    check_served(info, manifest, index_dir, methods)
    if any(m.uses_lexical for m in methods):
        check_lexical(index_dir, bm25)
    verify_files(index_dir, manifest)
    store = UnitStore.open(index_dir / UNITS_NAME, manifest.total_units)
    check_store_order(index_dir, manifest, store)
    logger.info("ranking over gRPC: %s index %s generation %d (model %s)", target.address, info.name,
                info.generation, response.model)
    return Served(store, info.name, info.generation, response.model, dict(manifest.prompts))


def check_served(info: pb.IndexInfo, manifest: Manifest, index_dir: Path, methods: Iterable[Mode]) -> None:
    """Refuse a served index that is not the build in ``index_dir``, or that cannot answer ``methods``."""
    from retriever.service.convert import PROTO_TO_MODE, PROTO_TO_SOURCE

    served_shards = [(PROTO_TO_SOURCE[s.source].value, s.factory, s.units) for s in info.shards]
    local_shards = [(s.source, s.factory, s.count) for s in manifest.shards]
    fields = [
        ("corpus fingerprint", info.corpus_fingerprint, manifest.corpus_fingerprint),
        ("model checksum", info.model_checksum, manifest.model_checksum),
        ("prompts", dict(info.prompts), manifest.prompts),
        ("linearizer version", info.linearizer_version, manifest.linearizer_version),
        ("max tokens", info.max_tokens, manifest.max_tokens),
        ("units", info.total_units, manifest.total_units),
        ("shards (source, factory, units)", served_shards, local_shards),
        ("build time", info.created, manifest.created),
    ]
    differ = [f"{label}: served {served!r}, local {local!r}" for label, served, local in fields if served != local]
    if differ:
        raise IncompatibleIndexError(
            f"the served index {info.name!r} (generation {info.generation}) is not the build in {index_dir}: "
            + "; ".join(differ) + ". Serve that directory (or pass --index with the served build)")
    modes = {PROTO_TO_MODE[m] for m in info.modes}
    missing = [m.value for m in methods if m not in modes]
    if missing:
        raise IncompatibleIndexError(
            f"the served index {info.name!r} answers {', '.join(m.value for m in Mode if m in modes) or 'nothing'}, "
            f"not {', '.join(missing)}: build its lexical part (`retriever build-lexical DIR`) and serve it again")


def check_lexical(index_dir: Path, bm25: Bm25Config) -> None:
    """The index's lexical part (what the server ranks BM25 with) must use the harness's BM25 settings."""
    path = index_dir / LEXICAL_DIR / LEXICAL_MANIFEST
    if not path.is_file():
        logger.warning("%s has no lexical part here: the served BM25 settings cannot be checked against the "
                       "harness's (%s)", index_dir, asdict(bm25))
        return
    try:
        config = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise IncompatibleIndexError(f"{path}: unreadable lexical manifest: {exc}") from exc
    if config != asdict(bm25):
        raise IncompatibleIndexError(f"{path}: the lexical part was built with BM25 settings {config}, the harness "
                                     f"ranks with {asdict(bm25)} in process; rebuild it with the harness's settings")


def remote_retrievers(client: RetrieverClient, target: ServedIndex, methods: Sequence[Mode], store: UnitStore,
                      fusion: FusionConfig, probes: Sequence[Query], depth: int,
                      timeout: float | None = None) -> list[UnitRetriever]:
    """One memoized remote retriever per method, as :func:`~retriever.evaluation.retrievers.engine_retrievers`.

    Each first ranks ``probes`` (a few of the run's own queries, see :func:`probe_queries`), so the
    server's limits (``top_k``, fusion depth), its source resolution and the unit mapping are checked
    before the run, with errors that say what to change.
    """
    out: list[UnitRetriever] = []
    for mode in methods:
        remote = RemoteRetriever(client, mode, fusion, store, target.index, timeout=timeout)
        remote.rank(probes, depth)  # past the Memo: BM25's cache key drops the instruction the probe is about
        out.append(memoized(remote, mode))
    return out


def probe_queries(queries: Iterable[Query]) -> list[Query]:
    """The first query of each distinct instruction among those that name no sources (else the first query)."""
    chosen: dict[str | None, Query] = {}
    first: Query | None = None
    for query in queries:
        first = first or query
        if not query.sources:
            chosen.setdefault(query.instruction, query)
    if not chosen and first is not None:
        return [first]
    return list(chosen.values())


def describe(target: ServedIndex, served: Served) -> Mapping[str, object]:
    """What ``metrics.json`` records about the server."""
    return {"server": target.address, "server_index": served.name, "server_generation": served.generation}
