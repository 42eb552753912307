"""The ``retriever.v1.Retriever`` servicer: parse → validate → call the library → convert, nothing else.

Methods are registered with raw bytes in and out (:func:`generic_handler`) and parse the
request themselves, so malformed wire bytes become INVALID_ARGUMENT instead of the INTERNAL that
grpcio returns when its own deserializer fails. Every exception ends in
:func:`retriever.service.errors.status_for`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from retriever.errors import InvalidInputError, NotReadyError, OverloadedError
from retriever.query import SearchResult
from retriever.service import convert
from retriever.service.batching import Batcher, JobTimes, Reservation, bind
from retriever.service.config import Limits, check_name
from retriever.service.errors import PermissionDeniedError, status_for
from retriever.service.proto import retriever_pb2 as pb
from retriever.service.registry import IndexRegistry, resolve_publish_path
from retriever.service.requests import CallRecord
from retriever.service.streaming import StreamWindow

if TYPE_CHECKING:
    from retriever.service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

SERVICE_NAME = "retriever.v1.Retriever"
#: How far before a stream's computed deadline gRPC ending the call still counts as the deadline.
DEADLINE_TOLERANCE_SECONDS = 0.05
M = TypeVar("M", bound=Message)


def parse(cls: type[M], data: bytes) -> M:
    """Parse request bytes, turning any decoding failure into InvalidInputError."""
    try:
        return cls.FromString(data)
    except (DecodeError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"malformed {cls.DESCRIPTOR.name}: the request bytes are not a valid message") \
            from exc


class RetrieverServicer:
    """Answers the five RPCs; holds no state of its own besides its collaborators."""

    def __init__(self, limits: Limits, allow_publish: bool = False, metrics: ServiceMetrics | None = None,
                 log_queries: bool = False) -> None:
        self.limits, self.allow_publish = limits, allow_publish
        #: Call counts and latencies (None: metrics off); see :mod:`retriever.service.requests`.
        self.metrics, self.log_queries = metrics, log_queries
        #: Directories PublishIndex may load from (set by the server when it loads).
        self.publish_roots: tuple[Path, ...] = ()
        self.registry: IndexRegistry | None = None
        self.batcher: Batcher | None = None
        self.model = ""
        #: Set once the model, every index and their canary queries are ready.
        self.ready = threading.Event()
        #: Set when shutdown starts: new calls get UNAVAILABLE, calls in flight finish.
        self.draining = threading.Event()
        #: Query calls admitted and not yet answered, and refused calls being held (under ``_slots``).
        self._admitted_calls = 0
        self._held = 0
        self._slots = threading.Lock()

    def attach(self, registry: IndexRegistry, batcher: Batcher, model: str) -> None:
        """Connect the loaded model's registry and batcher (the server sets ``ready`` after the canaries)."""
        self.registry, self.batcher, self.model = registry, batcher, model

    # -- raw-bytes entry points ------------------------------------------------------------------
    def retrieve(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        return self._guard("Retrieve", context,
                           lambda record: self._retrieve(parse(pb.RetrieveRequest, data), context, record), query=True)

    def retrieve_batch(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        return self._guard("RetrieveBatch", context, lambda record: self._retrieve_batch(
            parse(pb.RetrieveBatchRequest, data), context, record), query=True)

    def retrieve_stream(self, data: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """RetrieveStream: a generator grpcio pulls one answer at a time (see :mod:`retriever.service.streaming`)."""
        record = CallRecord("RetrieveStream", context, self.metrics, self.log_queries)
        release: Callable[[], None] | None = None
        try:
            release = self._admit(record)  # one slot of max_concurrent_calls for the whole stream
            context.add_callback(release)  # grpc may stop pulling this generator and never close it
            for response in self._retrieve_stream(parse(pb.RetrieveStreamRequest, data), context, record):
                yield response.SerializeToString()
        except Exception as exc:  # as in _guard: every failure becomes a status
            code, message = status_for(exc, "RetrieveStream")
            refused = release is None and isinstance(exc, OverloadedError)
        else:
            record.finish(grpc.StatusCode.OK)
            return
        finally:
            if release is not None:
                release()
        record.finish(code, refused=refused)
        context.abort(code, message)

    def _release_once(self, reservation: Reservation) -> Callable[[], None]:
        """A function giving back one admitted query slot, and the call's reservation if its queries
        were never queued, the first time it is called (from any thread)."""
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):
                reservation.release()
                with self._slots:
                    self._admitted_calls -= 1

        return release

    def get_index_info(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        return self._guard("GetIndexInfo", context,
                           lambda record: self._index_info(parse(pb.GetIndexInfoRequest, data)))

    def publish_index(self, data: bytes, context: grpc.ServicerContext) -> bytes:
        return self._guard("PublishIndex", context, lambda record: self._publish(parse(pb.PublishIndexRequest, data)))

    def _guard(self, method: str, context: grpc.ServicerContext, call: Callable[[CallRecord], Message],
               query: bool = False) -> bytes:
        """Run ``call`` and turn any failure into a status; ``query`` calls are admitted first (:meth:`_admit`)."""
        record = CallRecord(method, context, self.metrics, self.log_queries)
        release: Callable[[], None] | None = None
        try:
            if query:
                release = self._admit(record)
            response = call(record).SerializeToString()
        except Exception as exc:  # the one place every failure becomes a status (errors.STATUS_CODES)
            code, message = status_for(exc, method)
            refused = query and release is None and isinstance(exc, OverloadedError)
        else:
            record.finish(grpc.StatusCode.OK)
            return response
        finally:
            if release is not None:
                release()
        record.finish(code, refused=refused)
        context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    def _admit(self, record: CallRecord) -> Callable[[], None]:
        """Take a query slot, before the request is even parsed, or refuse the call.

        Refused: ``max_concurrent_calls`` query calls are in flight, or the batcher expects to
        answer a query later than its latency budget (a batch call's exact size is checked again
        when it is queued). An admitted call's query is counted by the batcher from now on
        (``record.reservation``, consumed when it is queued), so that calls arriving together are
        not all admitted against the same idle batcher. A refusal is held ``limits.refusal_hold_ms`` when a hold slot is
        free (handler threads not taken by admitted calls; grpcio refuses at once beyond them), then
        RESOURCE_EXHAUSTED.

        Returns:
            The function giving the slot back (once, whatever calls it first).
        """
        _, batcher = self._parts()
        with self._slots:
            if self._admitted_calls >= self.limits.max_concurrent_calls:
                why = (f"the server is at capacity: {self._admitted_calls} calls in flight (max_concurrent_calls); "
                       "retry with backoff")
            elif (reservation := batcher.reserve(1)) is None:
                why = ("the server is at capacity: calls would be answered later than its latency budget; "
                       "retry with backoff")
            else:
                self._admitted_calls += 1
                record.reservation = reservation
                return self._release_once(reservation)
            # every handler thread not taken by an admitted call may hold a refusal (server.py sizes
            # the pool at twice the call slots, plus spares for health)
            hold = self._admitted_calls + self._held < 2 * self.limits.max_concurrent_calls
            if hold:
                self._held += 1
        if hold:
            time.sleep(self.limits.refusal_hold_ms / 1000)
            with self._slots:
                self._held -= 1
        raise OverloadedError(why)

    # -- the RPCs --------------------------------------------------------------------------------
    def _parts(self) -> tuple[IndexRegistry, Batcher]:
        if self.draining.is_set():
            raise NotReadyError("the server is shutting down")
        if not self.ready.is_set() or self.registry is None or self.batcher is None:
            raise NotReadyError("the server is not ready: the model, index or canary query is still loading, "
                                "or it is shutting down")
        return self.registry, self.batcher

    def _answer(self, specs: list[convert.RetrieveSpec], context: grpc.ServicerContext,
                started: float, record: CallRecord) -> list[pb.RetrieveResponse]:
        record.queries, record.indexes = [spec.query for spec in specs], [spec.index for spec in specs]
        registry, batcher = self._parts()
        bound = bind([(spec.index, spec.query) for spec in specs], registry.get)
        record.generations = [b.generation for b in bound]
        record.times = JobTimes()
        # _admit judged one query at the door; only a batch call's exact size is judged again
        results = batcher.search(bound, convert.time_remaining(context), context.is_active, context.add_callback,
                                 admitted=len(bound) == 1, reservation=record.reservation, times=record.times)
        record.results = results
        seconds = time.perf_counter() - started
        return [convert.result_to_proto(result, spec.with_text, b.generation, self.model, seconds)
                for result, spec, b in zip(results, specs, bound, strict=True)]

    def _retrieve(self, request: pb.RetrieveRequest, context: grpc.ServicerContext,
                  record: CallRecord) -> pb.RetrieveResponse:
        started = time.perf_counter()
        spec = convert.parse_retrieve(request, self.limits)
        return self._answer([spec], context, started, record)[0]

    def _retrieve_batch(self, request: pb.RetrieveBatchRequest, context: grpc.ServicerContext,
                        record: CallRecord) -> pb.RetrieveBatchResponse:
        started = time.perf_counter()
        specs = convert.parse_batch(request, self.limits)
        responses = self._answer(specs, context, started, record)
        return pb.RetrieveBatchResponse(responses=responses, server_seconds=time.perf_counter() - started)

    def _retrieve_stream(self, request: pb.RetrieveStreamRequest, context: grpc.ServicerContext,
                         record: CallRecord) -> Iterator[pb.RetrieveStreamResponse]:
        """Validate and plan every request, then answer them in order through a :class:`StreamWindow`."""
        started = time.perf_counter()
        registry, batcher = self._parts()
        specs, window = convert.parse_stream(request, self.limits, batcher.max_batch)
        record.queries, record.indexes = [spec.query for spec in specs], [spec.index for spec in specs]
        bound = bind([(spec.index, spec.query) for spec in specs], registry.get, positions=True)
        record.generations = [b.generation for b in bound]
        timeout = convert.time_remaining(context)
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = StreamWindow(batcher, bound, window, deadline, context.is_active, record.reservation)
        results: list[SearchResult] = []
        record.results = results

        def on_end() -> None:  # the call ended (answered, cancelled, deadline): stop its queued work
            stream.close()
            record.finish(_ended_code(deadline))  # a no-op when the handler already recorded the outcome

        context.add_callback(on_end)
        for position, result in stream:
            spec, b = specs[position], bound[position]
            response = convert.result_to_proto(result, spec.with_text, b.generation, self.model,
                                               time.perf_counter() - started)
            results.append(result)  # handed to gRPC: a client cancelling at this moment may not get it
            yield pb.RetrieveStreamResponse(position=position, response=response)

    def _index_info(self, request: pb.GetIndexInfoRequest) -> pb.GetIndexInfoResponse:
        registry, _ = self._parts()
        default = registry.default_name or ""
        generations = [registry.get(request.index)] if request.index else registry.all()
        return pb.GetIndexInfoResponse(
            indexes=[convert.index_info(g, g.name == default) for g in generations],
            default_index=default, model=self.model)

    def _publish(self, request: pb.PublishIndexRequest) -> pb.PublishIndexResponse:
        if not self.allow_publish:
            raise PermissionDeniedError("publishing is off on this server: start it with an admin token "
                                        "(--admin-token-file or RETRIEVER_ADMIN_TOKEN)")
        registry, _ = self._parts()
        check_name(request.index)
        result = registry.publish(request.index, resolve_publish_path(request.path, self.publish_roots))
        is_default = result.generation.name == registry.default_name
        return pb.PublishIndexResponse(info=convert.index_info(result.generation, is_default),
                                       previous_generation=result.previous, load_seconds=result.seconds)


def _ended_code(deadline: float | None) -> grpc.StatusCode:
    """The status of a stream that grpc ended before its handler did: DEADLINE_EXCEEDED or CANCELLED.

    gRPC ends the call at its deadline by the server's clock, a moment before or after ``deadline``
    (computed from ``time_remaining()`` when the handler started), hence the tolerance.
    """
    if deadline is not None and time.monotonic() >= deadline - DEADLINE_TOLERANCE_SECONDS:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def generic_handler(servicer: RetrieverServicer) -> grpc.GenericRpcHandler:
    """Register the methods with no (de)serializers: they take and return bytes."""
    methods: dict[str, Callable[[bytes, grpc.ServicerContext], bytes]] = {
        "Retrieve": servicer.retrieve,
        "RetrieveBatch": servicer.retrieve_batch,
        "GetIndexInfo": servicer.get_index_info,
        "PublishIndex": servicer.publish_index,
    }
    handlers: dict[str, Any] = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
    handlers["RetrieveStream"] = grpc.unary_stream_rpc_method_handler(servicer.retrieve_stream)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
