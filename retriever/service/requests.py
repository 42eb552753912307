"""One record per call: the request log line (logger ``retriever.requests``) and the call metrics.

The servicer opens a :class:`CallRecord` when a call starts, fills in what it learns (the parsed
queries, the generations that answer them, the results) and closes it with the status code. The
record then writes one structured line at INFO and updates the metrics. Calls refused for
overload before any work (RESOURCE_EXHAUSTED from admission) are the exception: a re-send storm
brings hundreds a second, which would flood the log, so each is logged at DEBUG and an INFO line
sums them up at most every :data:`REFUSAL_SUMMARY_SECONDS` (the metrics still count every one).
The query and instruction texts are logged only when the server runs with ``--log-queries``: they
may carry personal data, and request logs are usually kept longer and read more widely than the data.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from retriever.query import Query, SearchResult

if TYPE_CHECKING:
    from retriever.service.batching import JobTimes, Reservation
    from retriever.service.metrics import ServiceMetrics
    from retriever.service.registry import Generation

request_log = logging.getLogger("retriever.requests")

#: The metadata key a client may set to correlate its call with the server's log line; the
#: server sends the id it used back in the trailing metadata under the same key.
REQUEST_ID_KEY = "x-request-id"
#: Client ids outside this pattern are replaced by a generated one (no control characters or
#: unbounded strings in the log).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/@+=-]{1,128}$")
#: Calls refused by admission are summed up in one INFO line at most this often.
REFUSAL_SUMMARY_SECONDS = 5.0


class RefusalSummary:
    """Counts admission refusals and logs them as one INFO line per period instead of one per call.

    The first refusal after a quiet period is logged at once; those that follow within the period
    are counted and reported by the first refusal after it.
    """

    def __init__(self, period: float = REFUSAL_SUMMARY_SECONDS) -> None:
        self.period = period
        self._lock = threading.Lock()
        self._count = 0
        self._logged = float("-inf")

    def add(self, method: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._count += 1
            if now - self._logged < self.period:
                return
            count, since, self._count, self._logged = self._count, self._logged, 0, now
        window = "" if since == float("-inf") else f" in the last {now - since:.1f}s"
        request_log.info("refused %d call(s) over capacity (RESOURCE_EXHAUSTED)%s, the last a %s; each is logged "
                         "at DEBUG", count, window, method)


refusals = RefusalSummary()


def request_id(context: grpc.ServicerContext) -> str:
    """The client's ``x-request-id`` when it sent a well-formed one, else a new random id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _CLIENT_ID.match(value):
            return value
    return uuid.uuid4().hex


class CallRecord:
    """What one call asked for and got; :meth:`finish` logs it and counts it."""

    def __init__(self, method: str, context: grpc.ServicerContext, metrics: ServiceMetrics | None,
                 log_queries: bool) -> None:
        self.method, self.metrics, self.log_queries = method, metrics, log_queries
        self.started = time.perf_counter()
        self.request_id = request_id(context)
        self.queries: Sequence[Query] = ()
        self.indexes: Sequence[str] = ()
        self.generations: Sequence[Generation] = ()
        #: The answers sent: all or none for Retrieve and RetrieveBatch, those written so far for RetrieveStream.
        self.results: Sequence[SearchResult] = ()
        #: A query call's admission by the latency budget, until its queries are queued.
        self.reservation: Reservation | None = None
        #: When a Retrieve or RetrieveBatch call's job passed the batcher's stages (the log's ``stages_ms``).
        self.times: JobTimes | None = None
        self._lock = threading.Lock()
        self._finished = False
        try:
            context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        except ValueError:  # the call already ended; nothing to send it with
            pass

    def finish(self, code: grpc.StatusCode, refused: bool = False) -> None:
        """Log and count the call; only the first call does anything (a stream may end on two threads).

        ``refused``: admission refused the call before any work; its line goes to DEBUG and into the
        periodic INFO summary (:class:`RefusalSummary`).
        """
        with self._lock:
            if self._finished:
                return
            self._finished = True
        seconds = time.perf_counter() - self.started
        name = code.name
        stages = self.stages(seconds)
        if self.metrics is not None:
            self.metrics.observe_call(self.method, name, seconds)
            self.metrics.observe_results(self.method, self.results)
            self.metrics.observe_stages({stage: ms / 1000 for stage, ms in stages.items()})
        if refused:
            refusals.add(self.method)
        level = logging.DEBUG if refused else logging.INFO
        if request_log.isEnabledFor(level):
            fields = self.fields(name, seconds, stages)
            request_log.log(level, "%s", json.dumps(fields, ensure_ascii=False), extra={"request": fields})

    def stages(self, seconds: float) -> dict[str, float]:
        """Where a batched call's ``server_ms`` went, in milliseconds, for the stages it reached:
        ``admit`` (handler start to queued: admission, parsing, planning, token count), ``queue`` (queued
        to taken into a batch: the batch in progress and those before it), ``batch`` (taken to answered:
        its batch's encoding, search and hits, the other queries of the batch included) and ``reply``
        (answered to the call's end: the handler waking, the response built)."""
        times = self.times
        if times is None or times.submitted is None:
            return {}
        marks = [("admit", self.started, times.submitted), ("queue", times.submitted, times.taken),
                 ("batch", times.taken, times.answered), ("reply", times.answered, self.started + seconds)]
        out = {}
        for name, start, end in marks:
            if start is None or end is None:
                break
            out[name] = round((end - start) * 1000, 3)
        return out

    def fields(self, code: str, seconds: float, stages: dict[str, float]) -> dict[str, Any]:
        """The log line's fields: per-query values are scalars for Retrieve, lists for RetrieveBatch and
        RetrieveStream (whose ``sources``, ``sources_resolved`` and ``hits`` cover the answers sent,
        counted in ``answered`` out of ``queries``)."""
        out: dict[str, Any] = {"method": self.method, "request_id": self.request_id, "code": code,
                               "server_ms": round(seconds * 1000, 3)}
        if stages:
            out["stages_ms"] = stages
        if not self.queries:
            return out
        if self.method == "RetrieveStream":
            out["queries"], out["answered"] = len(self.queries), len(self.results)
        per_query: dict[str, list[Any]] = {
            "index": [g.name for g in self.generations] or list(self.indexes),
            "generation": [g.number for g in self.generations],
            "k": [q.k for q in self.queries],
            "mode": [q.mode.value for q in self.queries],
            "sources": [[s.value for s in r.sources] for r in self.results],
            "sources_resolved": [r.resolved for r in self.results],
            "hits": [len(r.hits) for r in self.results],
        }
        if self.log_queries:
            per_query["query"] = [q.text for q in self.queries]
            per_query["instruction"] = [q.instruction for q in self.queries]
        single = self.method == "Retrieve"
        for key, values in per_query.items():
            if values:
                out[key] = values[0] if single else values
        return out
