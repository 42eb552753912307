"""Dynamic batching: concurrent calls share one encoder pass; the batcher decides only *when* to search.

Handler threads plan their queries on the generation of each index they name (:func:`bind`) and
submit them (one Retrieve = one query, one RetrieveBatch = many) to a bounded queue, then wait on
a future. A single worker thread takes the oldest job, adds queued jobs until ``max_batch``
queries or until ``wait`` has passed with nothing new, drops jobs whose deadline passed or whose
caller went away (no work starts for them), embeds all remaining queries in one
:func:`retriever.searcher.encode` call (generations share the encoder) and hands each
generation's rows to its :meth:`~retriever.searcher.Searcher.search_planned`, which ranks,
filters and thresholds them. One worker also means the tokenizer and model are never used from
two threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from retriever.encoder import Encoder
from retriever.errors import CancelledError, DeadlineExceededError, NotReadyError, OverloadedError
from retriever.query import PlannedQuery, Query, SearchResult
from retriever.searcher import encode
from retriever.service.registry import Generation

logger = logging.getLogger(__name__)

#: How long past its deadline a caller waits for an answer already being computed.
ANSWER_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class BoundQuery:
    """A planned query and the index generation that will answer it."""

    generation: Generation
    planned: PlannedQuery


def bind(requests: Sequence[tuple[str, Query]], generation_of: Callable[[str], Generation]) -> list[BoundQuery]:
    """Plan each ``(index name, query)`` on the current generation of that index.

    Every query naming the same index is bound to the same generation, even if a publish swaps
    it meanwhile, so one call never mixes two builds of an index.

    Raises:
        NotFoundError, NotReadyError: from ``generation_of``.
        InvalidInputError: a query the searcher refuses (see ``Searcher.plan``).
    """
    generations: dict[str, Generation] = {}
    bound = []
    for name, query in requests:
        if name not in generations:
            generations[name] = generation_of(name)
        generation = generations[name]
        bound.append(BoundQuery(generation, generation.searcher.plan(query)))
    return bound


@dataclass
class _Job:
    queries: Sequence[BoundQuery]
    deadline: float | None  # time.monotonic() seconds
    is_active: Callable[[], bool]
    future: Future[list[SearchResult]] = field(default_factory=Future)


@dataclass
class BatcherStats:
    """Counters since start (read without a lock: approximate while serving)."""

    batches: int = 0
    queries: int = 0
    largest_batch: int = 0
    expired: int = 0
    cancelled: int = 0
    rejected: int = 0
    failed: int = 0
    in_flight: int = 0  # jobs submitted and not yet answered


class Batcher:
    """A bounded queue and the worker thread that batches queries for the encoder."""

    def __init__(self, encoder: Encoder, max_batch: int = 32, wait_seconds: float = 0.002,
                 max_queued: int = 2048) -> None:
        if max_batch < 1 or max_queued < 1 or wait_seconds < 0:
            raise ValueError("max_batch and max_queued must be >= 1 and wait_seconds >= 0")
        self.encoder, self.max_batch, self.wait_seconds, self.max_queued = encoder, max_batch, wait_seconds, max_queued
        self.stats = BatcherStats()
        self._queue: deque[_Job] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="retriever-batcher", daemon=True)
        self._thread.start()

    def submit(self, queries: Sequence[BoundQuery], deadline: float | None = None,
               is_active: Callable[[], bool] = lambda: True) -> Future[list[SearchResult]]:
        """Queue queries for the worker; the future resolves to one result per query, in order.

        Raises:
            OverloadedError: the queue bound would be exceeded (nothing is queued).
            NotReadyError: the batcher is stopping.
            DeadlineExceededError: ``deadline`` has already passed.
        """
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("the deadline passed before the query was queued")
        job = _Job(list(queries), deadline, is_active)
        if not job.queries:
            job.future.set_result([])
            return job.future
        with self._cond:
            if self._stopping:
                raise NotReadyError("the server is shutting down")
            if self._queued + len(job.queries) > self.max_queued:
                self.stats.rejected += 1
                raise OverloadedError(f"too many queries queued ({self._queued} waiting, limit {self.max_queued}); "
                                      "retry with backoff")
            self._queue.append(job)
            self._queued += len(job.queries)
            self.stats.in_flight += 1
            self._cond.notify()
        return job.future

    def search(self, queries: Sequence[BoundQuery], timeout: float | None = None,
               is_active: Callable[[], bool] = lambda: True) -> list[SearchResult]:
        """Submit and wait for one result per query, in order.

        Args:
            queries: bound queries (see :func:`bind`).
            timeout: the caller's remaining time in seconds; None for no deadline.
            is_active: False once the caller went away (its queries are then skipped).

        Raises:
            DeadlineExceededError: the deadline passed before or while the queries were answered.
            OverloadedError, NotReadyError: see :meth:`submit`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.submit(queries, deadline, is_active)
        try:
            return future.result(timeout=None if timeout is None else max(timeout, 0.0) + ANSWER_GRACE_SECONDS)
        except TimeoutError as exc:
            raise DeadlineExceededError("the deadline passed while the query was being answered") from exc

    def stop(self, timeout: float | None = 5.0) -> None:
        """Answer what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[_Job]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return []
            jobs = [self._queue.popleft()]
            count = len(jobs[0].queries)
            until = time.monotonic() + self.wait_seconds
            while count < self.max_batch:
                if self._queue:
                    if count + len(self._queue[0].queries) > self.max_batch:
                        break
                    jobs.append(self._queue.popleft())
                    count += len(jobs[-1].queries)
                    continue
                remaining = until - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self._queued -= sum(len(job.queries) for job in jobs)
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            try:
                self._answer(self._live(jobs))
            except Exception as exc:  # keep the worker alive; the callers get the error (mapped upstream)
                self.stats.failed += 1
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                with self._cond:
                    self.stats.in_flight -= len(jobs)

    def _live(self, jobs: list[_Job]) -> list[_Job]:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.deadline is not None and now >= job.deadline:
                self.stats.expired += 1
                job.future.set_exception(DeadlineExceededError("the deadline passed while the query was queued"))
            elif not job.is_active():
                self.stats.cancelled += 1
                job.future.set_exception(CancelledError("the call was cancelled"))
            else:
                live.append(job)
        return live

    def _answer(self, jobs: list[_Job]) -> None:
        queries = [q for job in jobs for q in job.queries]
        if not queries:
            return
        vectors = encode(self.encoder, [q.planned for q in queries])  # one encoder call for the whole batch
        results: list[SearchResult | None] = [None] * len(queries)
        groups: dict[int, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(id(q.generation), []).append(i)
        for rows in groups.values():
            searcher = queries[rows[0]].generation.searcher
            found = searcher.search_planned([queries[i].planned for i in rows], vectors[rows])
            for i, result in zip(rows, found, strict=True):
                results[i] = result
        self.stats.batches += 1
        self.stats.queries += len(queries)
        self.stats.largest_batch = max(self.stats.largest_batch, len(queries))
        start = 0
        for job in jobs:
            end = start + len(job.queries)
            job.future.set_result([r for r in results[start:end] if r is not None])
            start = end
