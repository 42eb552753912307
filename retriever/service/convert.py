"""Proto ↔ library types, and request validation: everything that touches a message lives here.

Validation errors are :class:`~retriever.errors.InvalidInputError` whose message names the field
(``requests[3].top_k``) and the limit, so a client can fix the call without reading the server.
This module imports no model or index code (the client uses it): only the stubs, the query
types and the service's limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retriever.conversation import check_history
from retriever.errors import InvalidInputError
from retriever.query import FusionConfig, Hit, Mode, Query, SearchResult, Turn
from retriever.records import Source
from retriever.service.config import Limits, check_name
from retriever.service.proto import retriever_pb2 as pb

if TYPE_CHECKING:
    import grpc

    from retriever.service.registry import Generation

SOURCE_TO_PROTO: dict[Source, pb.Source] = {
    Source.TEXT: pb.SOURCE_TEXT,
    Source.TABLE: pb.SOURCE_TABLE,
    Source.KB: pb.SOURCE_KB,
    Source.INFOBOX: pb.SOURCE_INFOBOX,
}
PROTO_TO_SOURCE: dict[int, Source] = {v: k for k, v in SOURCE_TO_PROTO.items()}
_VALID_NAMES = ", ".join(pb.Source.Name(v) for v in PROTO_TO_SOURCE)
MODE_TO_PROTO: dict[Mode, pb.SearchMode] = {
    Mode.DENSE: pb.SEARCH_MODE_DENSE,
    Mode.BM25: pb.SEARCH_MODE_BM25,
    Mode.HYBRID: pb.SEARCH_MODE_HYBRID,
}
PROTO_TO_MODE: dict[int, Mode] = {pb.SEARCH_MODE_UNSPECIFIED: Mode.DENSE, **{v: k for k, v in MODE_TO_PROTO.items()}}
_FUSION_FIELDS = ("rrf_k", "depth", "dense_weight", "bm25_weight")
#: Remaining times above this (about 11 days) mean the caller set no deadline.
NO_DEADLINE_SECONDS = 1e6


@dataclass(frozen=True)
class RetrieveSpec:
    """A validated RetrieveRequest in library terms."""

    query: Query
    with_text: bool
    index: str  # "" for the default index


@dataclass(frozen=True)
class RemoteResult:
    """A RetrieveResponse in library terms (what :class:`retriever.client.RetrieverClient` returns).

    Attributes:
        hits: ranked hits, best first.
        sources: the exact filter applied (empty when none).
        resolved: True when ``sources`` was resolved from the instruction.
        instruction: the instruction the query was encoded with.
        index, generation: the index generation that answered.
        model: the model that encoded the query.
        server_seconds: time spent in the server.
        mode: the mode that ranked the hits.
        text: the text that was searched (the query, or the follow-up resolved against the history).
        sources_confidence: the source router's confidence in its reading of the instruction
            (None when no router read it).
        preferred_sources, preferred_bonus: below the router's threshold, the sources it read,
            preferred instead of filtered, and what their units gained in score.
    """

    hits: list[Hit]
    sources: tuple[Source, ...]
    resolved: bool
    instruction: str
    index: str
    generation: int
    model: str
    server_seconds: float
    mode: Mode = Mode.DENSE
    text: str = ""
    sources_confidence: float | None = None
    preferred_sources: tuple[Source, ...] = ()
    preferred_bonus: float = 0.0

    def as_search_result(self) -> SearchResult:
        return SearchResult(self.hits, self.sources, self.resolved, self.instruction, self.mode, self.text,
                            self.sources_confidence, self.preferred_sources, self.preferred_bonus)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def parse_sources(values: list[int] | tuple[int, ...], field: str) -> tuple[Source, ...]:
    seen: list[Source] = []
    for i, value in enumerate(values):
        if value == pb.SOURCE_UNSPECIFIED:
            raise InvalidInputError(f"{field}[{i}]: SOURCE_UNSPECIFIED is not a source type; leave {field} "
                                    f"empty to search all of them")
        source = PROTO_TO_SOURCE.get(value)
        if source is None:
            raise InvalidInputError(f"{field}[{i}]: unknown source value {value}; expected one of {_VALID_NAMES}")
        if source in seen:
            raise InvalidInputError(f"{field}[{i}]: duplicate source {pb.Source.Name(value)}")
        seen.append(source)
    return tuple(seen)


def parse_retrieve(request: pb.RetrieveRequest, limits: Limits, prefix: str = "") -> RetrieveSpec:
    """Validate a RetrieveRequest against the limits.

    Raises:
        InvalidInputError: naming the field and the limit it breaks.
    """
    query = request.query
    if not query.strip():
        raise InvalidInputError(f"{prefix}query: must not be empty or whitespace")
    size = _utf8_len(query)
    if size > limits.max_query_bytes:
        raise InvalidInputError(f"{prefix}query: {size} bytes exceeds the limit of {limits.max_query_bytes} bytes "
                                "(RETRIEVER_MAX_QUERY_BYTES)")
    instruction: str | None = None
    if request.HasField("instruction"):
        instruction = request.instruction
        size = _utf8_len(instruction)
        if size > limits.max_instruction_bytes:
            raise InvalidInputError(f"{prefix}instruction: {size} bytes exceeds the limit of "
                                    f"{limits.max_instruction_bytes} bytes (RETRIEVER_MAX_INSTRUCTION_BYTES)")
    if not 1 <= request.top_k <= limits.max_top_k:
        raise InvalidInputError(f"{prefix}top_k: must be between 1 and {limits.max_top_k} "
                                f"(RETRIEVER_MAX_TOP_K), got {request.top_k}")
    threshold: float | None = None
    if request.HasField("score_threshold"):
        threshold = float(request.score_threshold)
        if math.isnan(threshold):
            raise InvalidInputError(f"{prefix}score_threshold: must be a number, got NaN")
    if request.index:
        try:
            check_name(request.index)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{prefix}index: {exc}") from None
    sources = parse_sources(list(request.sources), f"{prefix}sources")
    mode = PROTO_TO_MODE.get(request.mode)
    if mode is None:
        raise InvalidInputError(f"{prefix}mode: unknown value {request.mode}; expected one of "
                                f"{', '.join(pb.SearchMode.Name(v) for v in PROTO_TO_MODE)}")
    fusion = parse_fusion(request, mode, limits, prefix)
    max_per_record = 1
    if request.HasField("max_per_record"):
        if not request.group_by_record:
            raise InvalidInputError(f"{prefix}max_per_record: only with group_by_record; set group_by_record "
                                    "or leave max_per_record unset")
        max_per_record = request.max_per_record
        if not 1 <= max_per_record <= limits.max_top_k:
            raise InvalidInputError(f"{prefix}max_per_record: must be between 1 and {limits.max_top_k} "
                                    f"(RETRIEVER_MAX_TOP_K), got {max_per_record}")
    history = parse_history(request, limits, prefix)
    return RetrieveSpec(Query(query, instruction, sources, request.top_k, threshold, mode, fusion,
                              request.group_by_record, max_per_record, history),
                        request.with_text, request.index)


def parse_history(request: pb.RetrieveRequest, limits: Limits, prefix: str = "") -> tuple[Turn, ...]:
    """The request's conversation turns, checked against the history limits."""
    history = tuple(Turn(t.question, t.answer) for t in request.history)
    check_history(history, f"{prefix}history", limits.max_history_turns, limits.max_turn_chars,
                  settings=("RETRIEVER_MAX_HISTORY_TURNS", "RETRIEVER_MAX_TURN_CHARS"))
    return history


def parse_fusion(request: pb.RetrieveRequest, mode: Mode, limits: Limits, prefix: str = "") -> FusionConfig:
    """The request's fusion settings over the defaults (hybrid only)."""
    if not request.HasField("fusion"):
        return FusionConfig()
    if mode is not Mode.HYBRID:
        raise InvalidInputError(f"{prefix}fusion: only for SEARCH_MODE_HYBRID; leave it unset in mode "
                                f"{pb.SearchMode.Name(MODE_TO_PROTO[mode])}")
    fusion = request.fusion
    values = {name: getattr(fusion, name) for name in _FUSION_FIELDS if fusion.HasField(name)}
    depth = values.get("depth", FusionConfig.depth)
    if not 1 <= depth <= limits.max_fusion_depth:
        raise InvalidInputError(f"{prefix}fusion.depth: must be between 1 and {limits.max_fusion_depth} "
                                f"(RETRIEVER_MAX_FUSION_DEPTH), got {depth}")
    try:
        return FusionConfig(**values)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{prefix}{exc}") from None


def parse_batch(request: pb.RetrieveBatchRequest, limits: Limits) -> list[RetrieveSpec]:
    return parse_requests(request.requests, limits, limits.max_batch_queries, "RETRIEVER_MAX_BATCH_QUERIES")


def parse_stream(request: pb.RetrieveStreamRequest, limits: Limits,
                 default_window: int) -> tuple[list[RetrieveSpec], int]:
    """Validate a RetrieveStreamRequest: its requests and the window (``default_window`` when unset).

    Raises:
        InvalidInputError: naming the request position and field, or the window and its bound.
    """
    specs = parse_requests(request.requests, limits, limits.max_stream_queries, "RETRIEVER_MAX_STREAM_QUERIES")
    bound = limits.max_batch_queries
    if not request.HasField("window"):
        return specs, max(1, min(default_window, bound))
    if not 1 <= request.window <= bound:
        raise InvalidInputError(f"window: must be between 1 and {bound} (RETRIEVER_MAX_BATCH_QUERIES), "
                                f"got {request.window}; leave it unset for the server's default")
    return specs, request.window


def parse_requests(requests: Sequence[pb.RetrieveRequest], limits: Limits, most: int,
                   variable: str) -> list[RetrieveSpec]:
    """Validate the requests of a many-query call: 1 ..= ``most`` of them, each named by position."""
    count = len(requests)
    if count == 0:
        raise InvalidInputError("requests: must hold at least one request")
    if count > most:
        raise InvalidInputError(f"requests: {count} requests exceed the limit of {most} per call ({variable}); "
                                "split them over several calls")
    return [parse_retrieve(r, limits, f"requests[{i}].") for i, r in enumerate(requests)]


def hit_to_proto(hit: Hit, with_text: bool) -> pb.Hit:
    return pb.Hit(record_id=hit.record_id, source=SOURCE_TO_PROTO[hit.source], part=hit.part, score=hit.score,
                  title=hit.title, text=hit.text if with_text else "", unit_id=hit.unit_id)


def time_remaining(context: grpc.ServicerContext) -> float | None:
    """The caller's remaining time in seconds; None when it set no deadline."""
    remaining = context.time_remaining()
    if remaining is None or remaining > NO_DEADLINE_SECONDS:
        return None  # grpcio reports "no deadline" as a huge number of seconds
    return float(remaining)


def result_to_proto(result: SearchResult, with_text: bool, generation: Generation, model: str,
                    seconds: float) -> pb.RetrieveResponse:
    response = pb.RetrieveResponse(
        hits=[hit_to_proto(h, with_text) for h in result.hits],
        sources=[SOURCE_TO_PROTO[s] for s in result.sources],
        sources_resolved=result.resolved,
        instruction=result.instruction,
        index=generation.name,
        generation=generation.number,
        model=model,
        server_seconds=seconds,
        mode=MODE_TO_PROTO[result.mode],
        resolved_query=result.text,
        preferred_sources=[SOURCE_TO_PROTO[s] for s in result.preferred_sources],
        preferred_bonus=result.preferred_bonus,
    )
    if result.sources_confidence is not None:
        response.sources_confidence = result.sources_confidence
    return response


def index_info(generation: Generation, is_default: bool) -> pb.IndexInfo:
    m = generation.manifest
    counts = []
    for source, code in SOURCE_TO_PROTO.items():
        units, records = m.counts.get(source.value, 0), m.records.get(source.value, 0)
        if units or records:
            counts.append(pb.SourceCount(source=code, units=units, records=records))
    shards = [pb.ShardInfo(source=SOURCE_TO_PROTO[Source(s.source)], factory=s.factory, units=s.count)
              for s in m.shards]
    return pb.IndexInfo(
        name=generation.name, generation=generation.number, is_default=is_default, total_units=m.total_units,
        counts=counts, model_name=m.model_name, model_checksum=m.model_checksum, prompts=m.prompts,
        factory=m.factory, metric=m.metric, dimension=m.dimension, shards=shards,
        linearizer_version=m.linearizer_version, max_tokens=m.max_tokens, corpus_fingerprint=m.corpus_fingerprint,
        created=m.created, loaded=generation.loaded,
        modes=[MODE_TO_PROTO[mode] for mode in generation.searcher.modes],
    )


def retrieve_request(query: Query, with_text: bool = False, index: str = "") -> pb.RetrieveRequest:
    """Build a RetrieveRequest from library types (client side)."""
    request = pb.RetrieveRequest(query=query.text, sources=[SOURCE_TO_PROTO[s] for s in query.sources],
                                 top_k=query.k, with_text=with_text, index=index, mode=MODE_TO_PROTO[query.mode])
    if query.mode is Mode.HYBRID:
        f = query.fusion
        request.fusion.CopyFrom(pb.Fusion(rrf_k=f.rrf_k, depth=f.depth, dense_weight=f.dense_weight,
                                          bm25_weight=f.bm25_weight))
    if query.instruction is not None:
        request.instruction = query.instruction
    if query.group_by_record or query.max_per_record != 1:  # the server refuses max_per_record alone
        request.group_by_record = query.group_by_record
        request.max_per_record = query.max_per_record
    if query.score_threshold is not None:
        request.score_threshold = query.score_threshold
    request.history.extend(pb.Turn(question=t.question, answer=t.answer) for t in query.history)
    return request


def result_from_proto(response: pb.RetrieveResponse) -> RemoteResult:
    """A RetrieveResponse as library types (client side)."""
    hits = [Hit(h.unit_id, h.record_id, PROTO_TO_SOURCE[h.source], h.part, h.title, h.text, h.score)
            for h in response.hits]
    return RemoteResult(hits, tuple(PROTO_TO_SOURCE[s] for s in response.sources), response.sources_resolved,
                        response.instruction, response.index, response.generation, response.model,
                        response.server_seconds, PROTO_TO_MODE.get(response.mode, Mode.DENSE),
                        response.resolved_query,
                        response.sources_confidence if response.HasField("sources_confidence") else None,
                        tuple(PROTO_TO_SOURCE[s] for s in response.preferred_sources), response.preferred_bonus)
