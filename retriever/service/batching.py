"""Dynamic batching: concurrent calls share one encoder pass; the batcher decides only *when* to search.

Handler threads plan their queries on the generation of each index they name (:func:`bind`) and
submit them (one Retrieve = one query, one RetrieveBatch = many) to a bounded queue, then wait on
a future. A single worker thread takes the oldest job, adds queued jobs in order until the next
would take the batch over ``max_batch`` queries or over ``max_batch_tokens`` tokens (below), or
until ``wait`` has passed with nothing new, drops jobs whose deadline passed or whose
caller went away (no work starts for them), embeds all remaining queries in one
:func:`retriever.searcher.encode` call (generations share the encoder), ranks each generation's
rows with its :meth:`~retriever.searcher.Searcher.rank` (filters, modes, thresholds) and builds
the hits with :meth:`~retriever.searcher.Searcher.hits`. Deadlines and cancellation are checked
again between encoding and ranking and between ranking and building hits; a caller whose
deadline passes, or who goes away, returns at once and its job is cancelled, so it holds no
concurrency slot while the worker catches up. One worker also means the encoder's tokenizer and
model are never used from two threads.

Token budget (TEI's ``max_batch_tokens``): each job's tokens are counted once, when it is
submitted, in the caller's thread (a :class:`~retriever.encoder.QueryTokenCounter`, with its own
copy of the tokenizer, so counting never waits for the encoder): ``instruction + question`` as
the encoder composes it, special tokens included, capped at the model's ``max_seq_length``; BM25
queries encode nothing and count nothing. The encoder pads every query of a forward pass to the
longest one, so a batch costs ``queries needing a vector x the longest of them`` tokens (TEI's
rule for padded models): a job that would take a batch over the budget starts the next batch
instead, so one long query is batched with a few short ones, not with ``max_batch - 1`` of them
padded to its length. A job that adds no tokens (BM25 only) always fits. Jobs are never
reordered (no query is passed over, so none starves) and never split; a job over the budget on
its own is still answered, alone.

Admission by latency budget: the worker times every batch, and :class:`BatchCost` keeps a
moving estimate of a batch's seconds per batch size (seeded by :meth:`Batcher.calibrate` at
load). A call is admitted only when the batcher expects to answer it within the budget: the rest
of the batch in progress, plus the batches of the queries queued before it and of those admitted
at the door and not yet queued (a :class:`Reservation` each: without them, calls arriving together
at an idle batcher were all admitted before the first was queued, and waited for one another's
batches), plus its own. The others are refused at once (``OverloadedError``, RESOURCE_EXHAUSTED) before any parsing or
queueing work, so under overload the calls that are accepted keep their latency and the excess
comes back in milliseconds. The ``"auto"`` budget is :data:`AUTO_BUDGET_FACTOR` times one query's
time as :meth:`Batcher.calibrate` measured it on the idle machine at load (an anchor: batches
slowed by load raise the cost estimate, and so refuse more, but never loosen the budget itself),
which adapts to the hardware: where batches cost little more than one query (a GPU), whole
batches fit in it; on a small CPU it lets batches of a few queries form.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Literal

from retriever.encoder import Encoder
from retriever.errors import CancelledError, DeadlineExceededError, InvalidInputError, NotReadyError, OverloadedError
from retriever.query import PlannedQuery, Query, SearchResult
from retriever.searcher import Ranking, encode
from retriever.service.registry import Generation

logger = logging.getLogger(__name__)

#: The stage of a job before its encoding began (the other stages count as dropped after encoding).
QUEUED = "while the query was queued"
#: The automatic latency budget, in multiples of the calibrated time of a one-query batch. Admission
#: judges the expected (average) answer time, and the target is a p99 within 2x the single-client
#: p99: 1.5 leaves room for the spread (accepted p99 under a re-send storm, clients on their own core:
#: 1.38x and 1.56x the single-client p99 at 1.5, against 1.96x and 2.72x at 2.0; docs/RELIABILITY.md).
AUTO_BUDGET_FACTOR = 1.5
#: Largest batch :meth:`Batcher.calibrate` times (larger sizes are extrapolated, then learned).
CALIBRATION_MAX = 32
#: Questions the calibration encodes (typical lengths; their answers are thrown away).
CALIBRATION_QUESTIONS = (
    "when did the m864 projectile enter service",
    "who was the head coach of the team that won the 1998 championship game",
    "what is the population of the largest city in the province",
    "which album did the band release after their debut",
    "how many seats did the party win in the 2010 general election",
    "what was the revenue of the company in fiscal year 2019 compared to 2018",
    "where was the author of the novel born",
    "what position does he play",
)


@dataclass(frozen=True)
class BoundQuery:
    """A planned query and the index generation that will answer it."""

    generation: Generation
    planned: PlannedQuery


def bind(requests: Sequence[tuple[str, Query]], generation_of: Callable[[str], Generation],
         positions: bool = False) -> list[BoundQuery]:
    """Plan each ``(index name, query)`` on the current generation of that index.

    Every query naming the same index is bound to the same generation, even if a publish swaps
    it meanwhile, so one call never mixes two builds of an index.

    Args:
        positions: name the request (``requests[3]: ...``) in a refusal (many-query calls).

    Raises:
        NotFoundError, NotReadyError: from ``generation_of``.
        InvalidInputError: a query the searcher refuses (see ``Searcher.plan``).
    """
    generations: dict[str, Generation] = {}
    bound = []
    for i, (name, query) in enumerate(requests):
        if name not in generations:
            generations[name] = generation_of(name)
        generation = generations[name]
        try:
            planned = generation.searcher.plan(query)
        except InvalidInputError as exc:
            if not positions:
                raise
            raise InvalidInputError(f"requests[{i}]: {exc}") from None
        bound.append(BoundQuery(generation, planned))
    return bound


class BatchCost:
    """Estimated seconds of one batch (encode, rank, hits) by its number of queries.

    One exponentially weighted average per batch size seen (or calibrated); a size never seen
    is interpolated linearly between its nearest known neighbours, or scaled from the nearest
    one. Not thread-safe: the batcher reads and writes it under its lock.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self._seconds: dict[int, float] = {}

    def observe(self, queries: int, seconds: float) -> None:
        old = self._seconds.get(queries)
        self._seconds[queries] = seconds if old is None else old + self.alpha * (seconds - old)

    @property
    def known(self) -> bool:
        return bool(self._seconds)

    def seconds(self, queries: int) -> float:
        """Estimated seconds of a batch of ``queries`` (0 for none, or before any observation)."""
        if queries <= 0 or not self._seconds:
            return 0.0
        exact = self._seconds.get(queries)
        if exact is not None:
            return exact
        below = max((n for n in self._seconds if n < queries), default=None)
        above = min((n for n in self._seconds if n > queries), default=None)
        if below is not None and above is not None:
            low, high = self._seconds[below], self._seconds[above]
            return low + (high - low) * (queries - below) / (above - below)
        nearest = below if below is not None else above
        assert nearest is not None
        scaled = self._seconds[nearest] * queries / nearest
        # more queries never cost less than fewer, and a batch never costs less than nothing
        return max(scaled, self._seconds[nearest]) if queries > nearest else min(scaled, self._seconds[nearest])

    def work(self, queries: int, max_batch: int) -> float:
        """Estimated seconds to answer ``queries`` queued queries, in batches of ``max_batch``."""
        full, rest = divmod(queries, max_batch)
        return full * self.seconds(max_batch) + self.seconds(rest)


def padded_tokens(vectors: int, longest: int) -> int:
    """Tokens the encoder runs for ``vectors`` queries padded to the ``longest`` of them."""
    return vectors * longest


@dataclass
class JobTimes:
    """When one submitted job passed the batcher's stages (``time.perf_counter()`` seconds; None: not
    reached). The caller hands one to :meth:`Batcher.search` and reads it after the answer: the
    request log's ``stages_ms`` (:class:`~retriever.service.requests.CallRecord`)."""

    submitted: float | None = None  # queued
    taken: float | None = None  # taken into a batch by the worker
    answered: float | None = None  # its results handed to the caller's future


@dataclass
class _Job:
    queries: Sequence[BoundQuery]
    deadline: float | None  # time.monotonic() seconds
    is_active: Callable[[], bool]
    future: Future[list[SearchResult]] = field(default_factory=Future)
    times: JobTimes = field(default_factory=JobTimes)
    vectors: int = 0  # queries that need a vector (counted only with a token budget)
    longest: int = 0  # tokens of the longest of them, as the encoder sees it


class Reservation:
    """Queries admitted by :meth:`Batcher.reserve` and not yet queued: the latency budget counts them.

    Consumed when the call's job is queued (:meth:`Batcher.submit`); :meth:`release` gives it back
    when the call ends before that (bad request, deadline). Both are idempotent, from any thread.
    """

    def __init__(self, batcher: Batcher, queries: int) -> None:
        self._batcher, self.queries = batcher, queries
        self._held = True

    def release(self) -> None:
        with self._batcher._cond:
            self._drop()

    def _drop(self) -> None:
        """Give the queries back; call under the batcher's lock."""
        if self._held:
            self._held = False
            self._batcher._reserved -= self.queries


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
    dropped_after_encoding: int = 0  # jobs whose deadline passed or caller left after their encoding began
    in_flight: int = 0  # jobs submitted and not yet answered
    over_budget: int = 0  # calls refused because they would have been answered later than the latency budget


@dataclass(frozen=True)
class BatchTimings:
    """One answered batch, as the worker measured it.

    Attributes:
        queries: queries encoded together (after dropping expired and cancelled jobs).
        encode_seconds: the one encoder call.
        search_seconds: ranking and building hits, over every index generation in the batch.
        tokens: the batch's padded tokens as the token budget counts them (:func:`padded_tokens`);
            None when the batcher has no token budget (nothing is counted then).
    """

    queries: int
    encode_seconds: float
    search_seconds: float
    tokens: int | None = None


class Batcher:
    """A bounded queue and the worker thread that batches queries for the encoder.

    Args:
        latency_budget: seconds within which an admitted call is expected to be answered (see
            the module's docstring); ``"auto"`` for :data:`AUTO_BUDGET_FACTOR` times one query's
            estimated time; None admits every call the queue bound allows.
        max_batch_tokens: token budget of one batch (see the module's docstring); 0 turns it
            off, and then no query's tokens are counted. A budget needs the encoder's
            ``query_token_counter``.
        on_batch: called by the worker after each answered batch (the server's metrics); it
            must be quick and must not raise.
    """

    def __init__(self, encoder: Encoder, max_batch: int = 32, wait_seconds: float = 0.002,
                 max_queued: int = 2048, on_batch: Callable[[BatchTimings], object] | None = None,
                 latency_budget: float | Literal["auto"] | None = None, max_batch_tokens: int = 0) -> None:
        if max_batch < 1 or max_queued < 1 or wait_seconds < 0 or max_batch_tokens < 0:
            raise ValueError("max_batch and max_queued must be >= 1, wait_seconds and max_batch_tokens >= 0")
        if latency_budget is not None and latency_budget != "auto" and not latency_budget > 0:
            raise ValueError(f"latency_budget must be 'auto', None or > 0 seconds, got {latency_budget!r}")
        self.encoder, self.max_batch, self.wait_seconds, self.max_queued = encoder, max_batch, wait_seconds, max_queued
        self.on_batch, self.latency_budget, self.max_batch_tokens = on_batch, latency_budget, max_batch_tokens
        self._count: Callable[[Sequence[str], Sequence[str | None]], list[int]] | None = (
            encoder.query_token_counter() if max_batch_tokens else None)
        self.stats = BatcherStats()
        self.cost = BatchCost()
        #: One query's seconds as calibrated on the idle machine at load (the "auto" budget's anchor).
        self.idle_one_query: float | None = None
        self._queue: deque[_Job] = deque()
        self._queued = 0
        self._reserved = 0  # queries of Reservations not yet queued
        self._busy_until: float | None = None  # expected end of the batch in progress (time.monotonic())
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="retriever-batcher", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Queries waiting for the worker (not yet taken into a batch)."""
        return self._queued

    def budget_seconds(self) -> float | None:
        """The latency budget in seconds (``"auto"``: from the calibrated one-query time, else the cost
        estimate until a calibration ran); None: no budget."""
        if self.latency_budget == "auto":
            if self.idle_one_query is not None:
                return AUTO_BUDGET_FACTOR * self.idle_one_query
            return AUTO_BUDGET_FACTOR * self.cost.seconds(1) if self.cost.known else None
        return self.latency_budget

    def expected_seconds(self, queries: int = 1) -> float:
        """When a call of ``queries`` queries submitted now is expected to be answered, in seconds."""
        with self._cond:
            return self._expected(queries)

    def _expected(self, queries: int) -> float:
        running = 0.0 if self._busy_until is None else max(0.0, self._busy_until - time.monotonic())
        return running + self.cost.work(self._queued + self._reserved + queries, self.max_batch)

    def _over_budget(self, queries: int) -> str | None:
        """Why a call of ``queries`` queries is refused now (None: admitted); call under the lock.

        An idle batcher admits any call. Otherwise the call is expected to end within the budget
        plus what its own queries cost beyond one, so a large batch call is judged by the wait
        it adds, not by its own size.
        """
        budget = self.budget_seconds()
        if budget is None or (self._busy_until is None and not self._queued and not self._reserved):
            return None
        expected = self._expected(queries)
        allowed = budget + self.cost.work(queries, self.max_batch) - self.cost.seconds(1)
        if expected <= allowed:
            return None
        return (f"the server is at capacity: this call would be answered in about {expected * 1000:.0f} ms, over "
                f"its {allowed * 1000:.0f} ms latency budget; retry with backoff")

    def reserve(self, queries: int = 1) -> Reservation | None:
        """Admit a call of ``queries`` queries now, counting them until they are queued; None (and a
        refusal counted) when the latency budget would be exceeded."""
        with self._cond:
            if self._over_budget(queries) is None:
                self._reserved += queries
                return Reservation(self, queries)
            self.stats.over_budget += 1
            return None

    def calibrate(self, texts: Sequence[str] = CALIBRATION_QUESTIONS) -> None:
        """Time batches of 1, 2, 4, ... queries (up to ``max_batch``, at most :data:`CALIBRATION_MAX`).

        Seeds the cost estimate that the latency budget needs before real batches refine it.
        Called before serving; it uses the encoder directly, so no call may be in flight.
        """
        sizes, size = [], 1
        while size < min(self.max_batch, CALIBRATION_MAX):
            sizes.append(size)
            size *= 2
        sizes.append(min(self.max_batch, CALIBRATION_MAX))
        self.encoder.encode_queries(list(texts[:2]))  # warm-up, not timed
        for size in dict.fromkeys(sizes):
            batch = [texts[i % len(texts)] for i in range(size)]
            started = time.perf_counter()
            self.encoder.encode_queries(batch)
            seconds = time.perf_counter() - started
            with self._cond:
                self.cost.observe(size, seconds)
                if size == 1:
                    self.idle_one_query = seconds

    def submit(self, queries: Sequence[BoundQuery], deadline: float | None = None,
               is_active: Callable[[], bool] = lambda: True, admitted: bool = False,
               reservation: Reservation | None = None, times: JobTimes | None = None) -> Future[list[SearchResult]]:
        """Queue queries for the worker; the future resolves to one result per query, in order.

        ``admitted``: the queries belong to a call already admitted (a RetrieveStream's window,
        :mod:`retriever.service.streaming`): the latency budget is not applied again, the queue
        bound is. ``reservation``: the call's admission (:meth:`reserve`), consumed here, before
        the budget judges the job, so that its queries are not counted twice. ``times``: filled in
        as the job passes the worker's stages (:class:`JobTimes`).

        Raises:
            OverloadedError: the queue bound or the latency budget would be exceeded (nothing
                is queued).
            NotReadyError: the batcher is stopping.
            DeadlineExceededError: ``deadline`` has already passed.
        """
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("the deadline passed before the query was queued")
        job = _Job(list(queries), deadline, is_active, times=times or JobTimes())
        if not job.queries:
            job.future.set_result([])
            return job.future
        job.vectors, job.longest = self._measure(job.queries)  # before the lock: the worker never waits for it
        with self._cond:
            if self._stopping:
                raise NotReadyError("the server is shutting down")
            if reservation is not None:
                reservation._drop()
            refusal = None if admitted else self._over_budget(len(job.queries))
            if refusal is not None:
                self.stats.over_budget += 1
                raise OverloadedError(refusal)
            if self._queued + len(job.queries) > self.max_queued:
                self.stats.rejected += 1
                raise OverloadedError(f"too many queries queued ({self._queued} waiting, limit {self.max_queued}); "
                                      "retry with backoff")
            job.times.submitted = time.perf_counter()
            self._queue.append(job)
            self._queued += len(job.queries)
            self.stats.in_flight += 1
            self._cond.notify()
        return job.future

    def _measure(self, queries: Sequence[BoundQuery]) -> tuple[int, int]:
        """(queries needing a vector, tokens of the longest of them); (0, 0) without a token budget."""
        if self._count is None:
            return 0, 0
        planned = [q.planned for q in queries if q.planned.query.mode.uses_vectors]
        if not planned:
            return 0, 0
        # the text and instruction retriever.searcher.encode hands to the encoder
        return len(planned), max(self._count([p.text for p in planned], [p.instruction for p in planned]))

    def _fits(self, tokens: int, more: int) -> bool:
        """Whether a batch of ``tokens`` padded tokens may grow to ``more``: within the token budget, or no
        growth at all (BM25 queries join even a batch that one long query already took over the budget)."""
        return not self.max_batch_tokens or more <= max(tokens, self.max_batch_tokens)

    def search(self, queries: Sequence[BoundQuery], timeout: float | None = None,
               is_active: Callable[[], bool] = lambda: True,
               on_end: Callable[[Callable[[], object]], object] | None = None,
               admitted: bool = False, reservation: Reservation | None = None,
               times: JobTimes | None = None) -> list[SearchResult]:
        """Submit and wait for one result per query, in order.

        A caller whose deadline passes, or who goes away, returns at once (freeing its handler
        thread and concurrency slot) and its job is cancelled: the worker skips it wherever it
        is, before encoding, between encoding and search, or before building hits.

        Args:
            queries: bound queries (see :func:`bind`).
            timeout: the caller's remaining time in seconds; None for no deadline.
            is_active: False once the caller went away (its queries are then skipped).
            on_end: registers a callback to run when the call ends for any reason (gRPC's
                ``context.add_callback``); the job is cancelled from it.
            admitted: skip the latency budget (the server's own canary queries, see :meth:`submit`).
            reservation: the call's admission, consumed when its queries are queued (:meth:`submit`).
            times: filled in with when the job was queued, taken into a batch and answered.

        Raises:
            DeadlineExceededError: the deadline passed before or while the queries were answered.
            CancelledError: the caller went away.
            OverloadedError, NotReadyError: see :meth:`submit`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.submit(queries, deadline, is_active, admitted=admitted, reservation=reservation, times=times)
        if on_end is not None:
            on_end(future.cancel)  # a no-op once answered
        return await_results(future, deadline)

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
            jobs = [self._queue.popleft()]  # the oldest job goes, whatever its size or tokens
            count, vectors, longest = len(jobs[0].queries), jobs[0].vectors, jobs[0].longest
            until = time.monotonic() + self.wait_seconds
            while count < self.max_batch:
                if self._queue:
                    head = self._queue[0]  # only ever the head: FIFO, and no job is passed over
                    more = padded_tokens(vectors + head.vectors, max(longest, head.longest))
                    if count + len(head.queries) > self.max_batch or \
                            not self._fits(padded_tokens(vectors, longest), more):
                        break
                    jobs.append(self._queue.popleft())
                    count, vectors = count + len(head.queries), vectors + head.vectors
                    longest = max(longest, head.longest)
                    continue
                if not self._fits(padded_tokens(vectors, longest), padded_tokens(vectors + 1, longest)):
                    break  # full: no query needing a vector could join now
                remaining = until - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self._queued -= count
            self._busy_until = time.monotonic() + self.cost.seconds(count)  # busy from now on, for admission
            taken = time.perf_counter()
            for job in jobs:
                job.times.taken = taken
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            try:
                self._answer(jobs)
            except Exception as exc:  # keep the worker alive; the callers get the error (mapped upstream)
                self.stats.failed += 1
                for job in jobs:
                    _fail(job, exc)
            finally:
                with self._cond:
                    self.stats.in_flight -= len(jobs)

    def _live(self, jobs: list[_Job], stage: str) -> list[_Job]:
        """The jobs still worth work at ``stage``; the others are answered with their error now."""
        now = time.monotonic()
        live = []
        for job in jobs:
            expired = job.deadline is not None and now >= job.deadline
            if job.future.done():  # cancelled by its caller, whose deadline passed or who went away
                if expired:
                    self.stats.expired += 1
                else:
                    self.stats.cancelled += 1
            elif expired:
                self.stats.expired += 1
                _fail(job, DeadlineExceededError(f"the deadline passed {stage}"))
            elif not job.is_active():
                self.stats.cancelled += 1
                _fail(job, CancelledError("the call was cancelled"))
            else:
                live.append(job)
                continue
            if stage != QUEUED:
                self.stats.dropped_after_encoding += 1
        return live

    def _answer(self, jobs: list[_Job]) -> None:
        """Encode, rank, build hits; jobs expired or cancelled meanwhile are dropped between the steps."""
        jobs = self._live(jobs, QUEUED)
        queries = [q for job in jobs for q in job.queries]
        if not queries:
            with self._cond:
                self._busy_until = None
            return
        started = time.perf_counter()
        try:
            self._search(jobs, queries, started)
        finally:
            seconds = time.perf_counter() - started
            with self._cond:
                self._busy_until = None
                self.cost.observe(len(queries), seconds)

    def _search(self, jobs: list[_Job], queries: list[BoundQuery], started: float) -> None:
        tokens = None if self._count is None else padded_tokens(sum(j.vectors for j in jobs),
                                                                max(j.longest for j in jobs))
        vectors = encode(self.encoder, [q.planned for q in queries])  # one encoder call for the whole batch
        encoded = time.perf_counter()
        rows_of: dict[int, range] = {}
        start = 0
        for job in jobs:
            rows_of[id(job)] = range(start, start + len(job.queries))
            start += len(job.queries)
        jobs = self._live(jobs, "while the query was encoded")
        rankings: dict[int, Ranking] = {}
        groups: dict[int, list[int]] = {}
        for job in jobs:
            for i in rows_of[id(job)]:
                groups.setdefault(id(queries[i].generation), []).append(i)
        for rows in groups.values():
            searcher = queries[rows[0]].generation.searcher
            ranked = searcher.rank([queries[i].planned for i in rows], vectors[rows])
            rankings.update(zip(rows, ranked, strict=True))
        jobs = self._live(jobs, "while the query was searched")
        answers = [(job, [queries[i].generation.searcher.hits([queries[i].planned], [rankings[i]])[0]
                          for i in rows_of[id(job)]]) for job in jobs]
        with self._cond:
            # the batch's work is done: what follows (metrics, the cost estimate) is not work a new
            # call waits for, so a caller that calls again as soon as it is answered finds us idle
            self._busy_until = None
        for job, results in answers:
            _resolve(job, results)
        if self.on_batch is not None:
            self.on_batch(BatchTimings(len(queries), encoded - started, time.perf_counter() - encoded, tokens))
        self.stats.batches += 1
        self.stats.queries += len(queries)
        self.stats.largest_batch = max(self.stats.largest_batch, len(queries))


def await_results(future: Future[list[SearchResult]], deadline: float | None) -> list[SearchResult]:
    """Wait for a submitted job's results until ``deadline`` (``time.monotonic()`` seconds; None: forever).

    At the deadline the job is cancelled (the worker skips it wherever it is) unless it was
    answered at that very moment.

    Raises:
        DeadlineExceededError: the deadline passed first.
        CancelledError: the future was cancelled (the caller went away) before its deadline.
        Exception: whatever the worker failed the job with.
    """
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
        return future.result(timeout=timeout)
    except TimeoutError as exc:
        if not future.cancel():  # answered in the meantime
            return future.result()
        raise DeadlineExceededError("the deadline passed while the query was being answered") from exc
    except FutureCancelled as exc:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceededError("the deadline passed while the query was being answered") from exc
        raise CancelledError("the call was cancelled") from exc


def _resolve(job: _Job, results: list[SearchResult]) -> None:
    job.times.answered = time.perf_counter()
    try:
        job.future.set_result(results)
    except InvalidStateError:  # cancelled by its caller at this very moment
        pass


def _fail(job: _Job, error: Exception) -> None:
    try:
        job.future.set_exception(error)
    except InvalidStateError:
        pass
