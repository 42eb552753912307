"""A small Python client for the retrieval service.

    from retriever.client import RetrieverClient

    with RetrieverClient("127.0.0.1:50051") as client:
        result = client.retrieve("who founded the company?", sources=["table", "infobox"], top_k=5)
        for hit in result.hits:
            print(hit.score, hit.record_id, hit.title)

Errors come back as :class:`RemoteError` (a :class:`~retriever.errors.RetrieverError`) carrying
the gRPC status code and the server's message. :class:`AsyncRetrieverClient` is the same client for
asyncio applications (``grpc.aio``): the same methods, awaited, and ``retrieve_stream`` an async
iterator::

    async with AsyncRetrieverClient("127.0.0.1:50051") as client:
        result = await client.retrieve("who founded the company?", sources=["table"], top_k=5)

Importing this module loads grpc, protobuf, the generated stubs and the query types only: no
torch, FAISS, NumPy or model code, and it sets no environment variables
(``tests/test_client_imports.py`` checks this in a fresh interpreter).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from retriever.errors import RetrieverError
from retriever.query import FusionConfig, Mode, Query, Turn
from retriever.records import Source
from retriever.service import convert
from retriever.service.convert import RemoteResult
from retriever.service.proto import retriever_pb2 as pb
from retriever.service.proto import retriever_pb2_grpc

__all__ = ["AsyncRetrieverClient", "FusionConfig", "Mode", "PublishedIndex", "Query", "RemoteError", "RemoteResult",
           "RetrieverClient", "Turn"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
#: How often ``wait_until_ready`` asks a loading server again.
READY_POLL_SECONDS = 0.5


class RemoteError(RetrieverError):
    """A call the server answered with an error status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        super().__init__(f"{code.name}: {details}")


@dataclass(frozen=True)
class PublishedIndex:
    name: str
    generation: int
    previous_generation: int
    total_units: int
    load_seconds: float


def _pem(value: bytes | Path | None) -> bytes | None:
    return value.read_bytes() if isinstance(value, Path) else value


def _sources(values: Iterable[Source | str]) -> tuple[Source, ...]:
    return tuple(v if isinstance(v, Source) else Source.parse(v) for v in values)


def _turns(values: Iterable[Turn | str | tuple[str, str]]) -> tuple[Turn, ...]:
    """Turns given as :class:`Turn`, a question string, or a (question, answer) pair."""
    return tuple(v if isinstance(v, Turn) else Turn(v) if isinstance(v, str) else Turn(*v) for v in values)


def _remote_error(exc: grpc.RpcError) -> RemoteError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return RemoteError(code, details or "")


#: methods safe to retry: reads, which change nothing on the server (gRPC retries a stream only
#: until its first answer arrives)
RETRIED_METHODS = ("Retrieve", "RetrieveBatch", "RetrieveStream", "GetIndexInfo")


def retry_service_config(retries: int, initial_backoff_s: float = 0.05, max_backoff_s: float = 2.0) -> str:
    """The gRPC service config (JSON) that retries the read methods with exponential backoff."""
    import json

    return json.dumps({"methodConfig": [{
        "name": [{"service": "retriever.v1.Retriever", "method": m} for m in RETRIED_METHODS],
        "retryPolicy": {
            "maxAttempts": min(retries + 1, 5),  # gRPC caps attempts at 5
            "initialBackoff": f"{initial_backoff_s}s",
            "maxBackoff": f"{max_backoff_s}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"],
        },
    }]})


def _connect(channels: Any, address: str, max_message_bytes: int, retries: int,
             root_certificates: bytes | Path | None, client_certificate: bytes | Path | None,
             client_key: bytes | Path | None) -> Any:
    """A channel to ``address`` from ``channels`` (``grpc``, or ``grpc.aio`` for the asyncio client):
    TLS when ``root_certificates`` are given, the retry policy when ``retries``."""
    if retries < 0:
        raise ValueError("retries must be >= 0")
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes)]
    if retries:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", retry_service_config(retries))]
    if root_certificates is None:
        return channels.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(_pem(root_certificates), _pem(client_key), _pem(client_certificate))
    return channels.secure_channel(address, credentials, options=options)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _retrieve_request(query: str, instruction: str | None, sources: Iterable[Source | str], top_k: int,
                      score_threshold: float | None, with_text: bool, index: str, mode: Mode | str,
                      fusion: FusionConfig | None, group_by_record: bool, max_per_record: int,
                      history: Iterable[Turn | str | tuple[str, str]]) -> pb.RetrieveRequest:
    return convert.retrieve_request(
        Query(query, instruction, _sources(sources), top_k, score_threshold, Mode(mode), fusion or FusionConfig(),
              group_by_record, max_per_record, _turns(history)),
        with_text, index)


def _requests(queries: Sequence[Query], with_text: bool, index: str) -> list[pb.RetrieveRequest]:
    """The requests of a RetrieveBatch or RetrieveStream call."""
    return [convert.retrieve_request(q, with_text, index) for q in queries]


def _stream_request(queries: Sequence[Query], with_text: bool, index: str,
                    window: int | None) -> pb.RetrieveStreamRequest:
    request = pb.RetrieveStreamRequest(requests=_requests(queries, with_text, index))
    if window is not None:
        request.window = window
    return request


def _stream_result(message: pb.RetrieveStreamResponse, expected: int) -> RemoteResult:
    """A stream's answer, checked to come at its position."""
    if message.position != expected:
        raise RemoteError(grpc.StatusCode.INTERNAL, f"the server answered position {message.position} "
                          f"where {expected} was due")
    return convert.result_from_proto(message.response)


def _published(response: pb.PublishIndexResponse) -> PublishedIndex:
    return PublishedIndex(response.info.name, response.info.generation, response.previous_generation,
                          response.info.total_units, response.load_seconds)


def _not_connected(address: str, seconds: float) -> RemoteError:
    return RemoteError(grpc.StatusCode.UNAVAILABLE, f"cannot connect to {address} within {seconds:g} s")


class RetrieverClient:
    """A channel to one server; thread-safe, reuse it for many calls.

    Args:
        address: ``host:port``.
        token: bearer token, when the server requires one.
        timeout: default deadline per call in seconds (None: no deadline).
        root_certificates: PEM bytes (or a file) to connect with TLS.
        client_certificate, client_key: PEM bytes (or files) presented to a server requiring mTLS.
        max_message_bytes: largest response accepted.
        retries: extra attempts for ``Retrieve``, ``RetrieveBatch`` and ``GetIndexInfo`` when the
            server answers RESOURCE_EXHAUSTED (over its concurrency cap or queue bound) or
            UNAVAILABLE (not ready yet, restarting). gRPC's own retry policy waits a random time
            up to 50 ms, then up to 100, 200, ... ms (capped at 2 s) between attempts, so rejected
            clients back off instead of hammering a full server. ``PublishIndex`` is never
            retried. 0 turns retries off.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None, timeout: float | None = 30.0,
                 root_certificates: bytes | Path | None = None, client_certificate: bytes | Path | None = None,
                 client_key: bytes | Path | None = None, max_message_bytes: int = 64 * 1024 * 1024,
                 retries: int = 3) -> None:
        self.channel = _connect(grpc, address, max_message_bytes, retries, root_certificates, client_certificate,
                                client_key)
        self.stub = retriever_pb2_grpc.RetrieverStub(self.channel)
        self.address, self.timeout = address, timeout
        self._metadata = _metadata(token)

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _remote_error(exc) from None

    def retrieve(self, query: str, *, instruction: str | None = None, sources: Iterable[Source | str] = (),
                 top_k: int = 10, score_threshold: float | None = None, with_text: bool = False, index: str = "",
                 mode: Mode | str = Mode.DENSE, fusion: FusionConfig | None = None,
                 group_by_record: bool = False, max_per_record: int = 1,
                 history: Iterable[Turn | str | tuple[str, str]] = (),
                 timeout: float | None = None) -> RemoteResult:
        """Retrieve the best ``top_k`` units for one query (see docs/SERVICE.md for the semantics).

        ``mode`` is dense, bm25 or hybrid (the last two need an index with a lexical part, see
        :meth:`index_info`); ``fusion`` sets the hybrid's reciprocal-rank fusion.
        ``group_by_record`` makes ``top_k`` count distinct records (a table's rows, a passage's
        windows are one record), with up to ``max_per_record`` hits each. ``history`` holds the
        conversation's earlier turns, oldest first (a question, a (question, answer) pair or a
        :class:`Turn` each); a follow-up query is resolved against them and ``result.text`` says
        what was searched.

        Raises:
            RemoteError: the server refused or failed the call.
        """
        request = _retrieve_request(query, instruction, sources, top_k, score_threshold, with_text, index, mode,
                                    fusion, group_by_record, max_per_record, history)
        return convert.result_from_proto(self._call(self.stub.Retrieve, request, timeout))

    def retrieve_batch(self, queries: Sequence[Query], *, with_text: bool = False, index: str = "",
                       timeout: float | None = None) -> list[RemoteResult]:
        """Retrieve for many queries in one call; results keep the input order.

        Each query carries its own ``k`` and ``score_threshold``.
        """
        request = pb.RetrieveBatchRequest(requests=_requests(queries, with_text, index))
        response = self._call(self.stub.RetrieveBatch, request, timeout)
        return [convert.result_from_proto(r) for r in response.responses]

    def retrieve_stream(self, queries: Sequence[Query], *, with_text: bool = False, index: str = "",
                        window: int | None = None, timeout: float | None = None) -> Iterator[RemoteResult]:
        """Retrieve for many queries in one streaming call, yielding each result as it arrives, in input order.

        The server answers at most ``window`` queries (default: its ``--max-batch``) ahead of
        what this iterator has taken, so a slow consumer slows the server instead of piling up
        answers. ``timeout`` (default: the client's) covers the whole stream. Closing the
        iterator early (``break``) cancels the call: queries not yet encoded never are.

        Raises:
            RemoteError: the server refused the call (an invalid query: INVALID_ARGUMENT naming its
                position, before any answer) or ended it (DEADLINE_EXCEEDED, CANCELLED, ...) after
                the results already yielded.
        """
        call = self._call(self.stub.RetrieveStream, _stream_request(queries, with_text, index, window), timeout)
        try:
            for expected, message in enumerate(call):
                yield _stream_result(message, expected)
        except grpc.RpcError as exc:
            raise _remote_error(exc) from None
        finally:
            call.cancel()  # a no-op once the stream has ended

    def index_info(self, index: str = "", timeout: float | None = None) -> pb.GetIndexInfoResponse:
        """The manifest of each served index (or of ``index``)."""
        return self._call(self.stub.GetIndexInfo, pb.GetIndexInfoRequest(index=index), timeout)

    def wait_until_ready(self, timeout: float = 120.0, index: str = "",
                         connect_seconds: float = 10.0) -> pb.GetIndexInfoResponse:
        """Wait for a starting server to answer (model, index and canary loaded); returns its index info.

        A server answers UNAVAILABLE from the moment its port opens until it has loaded (a model
        load and a sample build can take a minute); this asks ``GetIndexInfo`` every half second
        until it answers, for up to ``timeout`` seconds. An address where nothing accepts a
        connection fails after ``connect_seconds``, not after ``timeout``.

        Raises:
            RemoteError: no connection within ``connect_seconds`` or UNAVAILABLE still after
                ``timeout`` seconds (UNAVAILABLE), or any other error at once.
        """
        deadline = time.monotonic() + timeout
        try:
            grpc.channel_ready_future(self.channel).result(timeout=min(connect_seconds, timeout))
        except grpc.FutureTimeoutError:
            raise _not_connected(self.address, min(connect_seconds, timeout)) from None
        while True:
            try:
                return self.index_info(index, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            except RemoteError as exc:
                if exc.code is not grpc.StatusCode.UNAVAILABLE or time.monotonic() + READY_POLL_SECONDS > deadline:
                    raise
            time.sleep(READY_POLL_SECONDS)

    def publish(self, index: str, path: str | Path, timeout: float | None = 600.0) -> PublishedIndex:
        """Ask the server to load the directory ``path`` (on the server) as the new generation of ``index``."""
        return _published(self._call(self.stub.PublishIndex, pb.PublishIndexRequest(index=index, path=str(path)),
                                     timeout))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RetrieverClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncRetrieverClient:
    """:class:`RetrieverClient` for asyncio applications, on ``grpc.aio``: the same arguments and
    methods, each awaited, and :meth:`retrieve_stream` an async iterator. Create and use it inside
    one running event loop (``async with AsyncRetrieverClient(...) as client``); concurrent calls
    from many tasks share its one channel."""

    def __init__(self, address: str = DEFAULT_ADDRESS, token: str | None = None, timeout: float | None = 30.0,
                 root_certificates: bytes | Path | None = None, client_certificate: bytes | Path | None = None,
                 client_key: bytes | Path | None = None, max_message_bytes: int = 64 * 1024 * 1024,
                 retries: int = 3) -> None:
        self.channel = _connect(grpc.aio, address, max_message_bytes, retries, root_certificates, client_certificate,
                                client_key)
        self.stub = retriever_pb2_grpc.RetrieverStub(self.channel)
        self.address, self.timeout = address, timeout
        self._metadata = _metadata(token)

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout,
                                metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _remote_error(exc) from None

    async def retrieve(self, query: str, *, instruction: str | None = None, sources: Iterable[Source | str] = (),
                       top_k: int = 10, score_threshold: float | None = None, with_text: bool = False,
                       index: str = "", mode: Mode | str = Mode.DENSE, fusion: FusionConfig | None = None,
                       group_by_record: bool = False, max_per_record: int = 1,
                       history: Iterable[Turn | str | tuple[str, str]] = (),
                       timeout: float | None = None) -> RemoteResult:
        """:meth:`RetrieverClient.retrieve`, awaited."""
        request = _retrieve_request(query, instruction, sources, top_k, score_threshold, with_text, index, mode,
                                    fusion, group_by_record, max_per_record, history)
        return convert.result_from_proto(await self._call(self.stub.Retrieve, request, timeout))

    async def retrieve_batch(self, queries: Sequence[Query], *, with_text: bool = False, index: str = "",
                             timeout: float | None = None) -> list[RemoteResult]:
        """:meth:`RetrieverClient.retrieve_batch`, awaited."""
        request = pb.RetrieveBatchRequest(requests=_requests(queries, with_text, index))
        response = await self._call(self.stub.RetrieveBatch, request, timeout)
        return [convert.result_from_proto(r) for r in response.responses]

    async def retrieve_stream(self, queries: Sequence[Query], *, with_text: bool = False, index: str = "",
                              window: int | None = None, timeout: float | None = None) -> AsyncIterator[RemoteResult]:
        """:meth:`RetrieverClient.retrieve_stream` as an async iterator: ``async for result in ...``;
        leaving the loop early cancels the call."""
        call = self.stub.RetrieveStream(_stream_request(queries, with_text, index, window),
                                        timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        expected = 0
        try:
            async for message in call:
                yield _stream_result(message, expected)
                expected += 1
        except grpc.RpcError as exc:
            raise _remote_error(exc) from None
        finally:
            call.cancel()  # a no-op once the stream has ended

    async def index_info(self, index: str = "", timeout: float | None = None) -> pb.GetIndexInfoResponse:
        """:meth:`RetrieverClient.index_info`, awaited."""
        return await self._call(self.stub.GetIndexInfo, pb.GetIndexInfoRequest(index=index), timeout)

    async def wait_until_ready(self, timeout: float = 120.0, index: str = "",
                               connect_seconds: float = 10.0) -> pb.GetIndexInfoResponse:
        """:meth:`RetrieverClient.wait_until_ready`, awaited (the waits are ``asyncio.sleep``)."""
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self.channel.channel_ready(), min(connect_seconds, timeout))
        except TimeoutError:
            raise _not_connected(self.address, min(connect_seconds, timeout)) from None
        while True:
            try:
                return await self.index_info(index, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            except RemoteError as exc:
                if exc.code is not grpc.StatusCode.UNAVAILABLE or time.monotonic() + READY_POLL_SECONDS > deadline:
                    raise
            await asyncio.sleep(READY_POLL_SECONDS)

    async def publish(self, index: str, path: str | Path, timeout: float | None = 600.0) -> PublishedIndex:
        """:meth:`RetrieverClient.publish`, awaited."""
        return _published(await self._call(self.stub.PublishIndex,
                                           pb.PublishIndexRequest(index=index, path=str(path)), timeout))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncRetrieverClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
