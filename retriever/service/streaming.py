"""RetrieveStream's window: many queries through the shared batcher, answered in order, a bounded way ahead.

:class:`StreamWindow` submits a stream's queries to the :class:`~retriever.service.batching.Batcher`
one job per query, at most ``window`` of them ahead of the answers already handed over, and
yields the answers in request order. Each query is a job of its own, so the worker batches a
stream's queries with those of other calls in arrival order and one long stream never holds more
of the queue than ``window`` queries.

Why resuming the generator means "delivered": grpcio's synchronous server (``grpc/_server.py``,
grpcio 1.85, ``_send_message_callback_to_blocking_iterator_adapter``) calls ``next()`` on the
response iterator, passes the message to ``_send_response``, which starts the send operation and
waits on the call's condition until that operation has completed (``while True:
state.condition.wait(); if token not in state.due: return ...``), and only then calls ``next()``
again; it stops calling it once the call is no longer active (cancelled, deadline passed). So
when the generator resumes after a ``yield``, its previous message has been taken by the
transport, and HTTP/2 flow control stops the transport from taking more while the client does
not read (about 64 KiB per stream by default; grpc/grpc pull request #37044 shows the same
stall in Python). A generator that submits new queries only when it resumes therefore makes the
server encode at most ``window`` queries beyond what the transport accepted, and a slow reader
slows it down (``tests/service/test_stream.py`` checks the stall).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

from retriever.errors import CancelledError, DeadlineExceededError, OverloadedError
from retriever.query import SearchResult
from retriever.service.batching import Batcher, BoundQuery, Reservation, await_results


class StreamWindow:
    """The queries of one stream and the futures of those submitted; :meth:`close` cancels the rest.

    Args:
        batcher: the server's batcher.
        queries: every query of the stream, bound and planned (see :func:`~retriever.service.batching.bind`).
        window: most queries submitted and not yet handed over (>= 1).
        deadline: ``time.monotonic()`` seconds; None for no deadline.
        is_active: False once the caller went away.
    """

    def __init__(self, batcher: Batcher, queries: Sequence[BoundQuery], window: int, deadline: float | None,
                 is_active: Callable[[], bool] = lambda: True, reservation: Reservation | None = None) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.batcher, self.queries, self.window = batcher, queries, window
        self.deadline, self.is_active = deadline, is_active
        #: The call's admission (:meth:`Batcher.reserve`), consumed by its first query queued.
        self.reservation = reservation
        #: Queries submitted to the batcher so far (the next one to submit).
        self.submitted = 0
        #: Answers handed over so far (the next position to answer).
        self.delivered = 0
        self._pending: deque[Future[list[SearchResult]]] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def __iter__(self) -> Iterator[tuple[int, SearchResult]]:
        """Yield ``(position, result)`` in request order; resuming after a yield counts it as handed over.

        Raises:
            DeadlineExceededError, CancelledError: the deadline passed or the call went away (the
                queries not yet encoded never are).
            OverloadedError: the batcher's queue is full and none of this stream's queries is in it.
            NotReadyError: the server is shutting down.
        """
        try:
            while self.delivered < len(self.queries):
                self._top_up()
                future = self._pending[0]
                result = await_results(future, self.deadline)[0]
                with self._lock:
                    self._pending.popleft()
                yield self.delivered, result
                self.delivered += 1  # grpcio asks for the next message only once this one was sent
        finally:
            self.close()

    def _top_up(self) -> None:
        """Submit queries until ``window`` are ahead of the answers handed over.

        The stream was admitted as one call (``RetrieverServicer._admit``, latency budget
        included), so its queries are not judged by the budget again: the window bounds them.
        When the batcher's queue is full, a stream with queries of its own already queued waits
        for them (its window shrinks for a while, so it yields the queue to other calls); a stream
        with nothing queued fails like a single call would.
        """
        with self._lock:  # against close(): nothing is submitted once the call has ended
            while not self._closed and self.submitted < len(self.queries) and len(self._pending) < self.window:
                try:
                    future = self.batcher.submit([self.queries[self.submitted]], self.deadline, self.is_active,
                                                 admitted=True, reservation=self.reservation)
                except OverloadedError:
                    if self._pending:
                        return
                    raise
                self._pending.append(future)
                self.submitted += 1
            if self._closed and not self._pending:  # the call ended with nothing of it in the batcher
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise DeadlineExceededError("the deadline passed; the remaining queries were not queued")
                raise CancelledError("the call was cancelled")

    def close(self) -> None:
        """Cancel every submitted query not yet answered; submit nothing more (idempotent, any thread)."""
        with self._lock:
            self._closed = True
            for future in self._pending:
                future.cancel()  # the worker skips it wherever it is; a no-op once answered
