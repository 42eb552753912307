"""Prometheus metrics of one server, on their own registry and HTTP port (``--metrics-port``).

Each :class:`ServiceMetrics` has its own :class:`~prometheus_client.CollectorRegistry`, so
several servers in one process (the tests) never share or collide on a metric. Call counts and
latencies are recorded by the servicer's call recorder (:mod:`retriever.service.requests`),
batch sizes and tokens and the encode / search split by the batcher's worker (:class:`BatchTimings`), and
the batcher's drop counters, queue depth and index generations are read from the batcher and
registry at scrape time (:class:`_StateCollector`), so they cost nothing between scrapes.
Every metric is listed in docs/SERVICE.md ("Metrics").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from retriever.query import SearchResult

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from retriever.service.batching import Batcher, BatchTimings
    from retriever.service.registry import IndexRegistry

logger = logging.getLogger(__name__)

#: Call latency buckets in seconds: a cached dense query takes a few ms, a big batch on a busy
#: 2-core machine up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Queries per encoder batch (``--max-batch`` defaults to 32; a RetrieveBatch can be larger).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Padded tokens per encoder batch: 16 up to 131072 (a RetrieveBatch of 256 queries of 512 tokens);
#: ``--max-batch-tokens`` defaults to 2048.
BATCH_TOKEN_BUCKETS = tuple(2 ** i for i in range(4, 18))


class ServiceMetrics:
    """The metrics of one server and the HTTP endpoint that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("retriever_requests", "Calls answered, by method and gRPC status code",
                                ["method", "code"], registry=r)
        self.errors = Counter("retriever_errors", "Calls answered with a status other than OK, by status code",
                              ["code"], registry=r)
        self.latency = Histogram("retriever_request_seconds", "Time in the handler per call, by method",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("retriever_batch_size", "Queries answered per encoder batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("retriever_batch_tokens",
                                      "Padded tokens per encoder batch (queries needing a vector x the longest), "
                                      "as --max-batch-tokens counts them; not observed when the budget is off",
                                      buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.encode_seconds = Histogram("retriever_encode_seconds", "Encoder time per batch",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.search_seconds = Histogram("retriever_search_seconds",
                                        "Ranking and hit building time per batch (all its index generations)",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("retriever_call_stage_seconds",
                                "Where a batched call's time in the handler went, by stage: admit, queue, batch, "
                                "reply (the request log's stages_ms)", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.queries = Counter("retriever_queries", "Queries answered (answers sent), by method", ["method"],
                               registry=r)
        self.hits = Counter("retriever_hits", "Hits returned, by source type", ["source"], registry=r)
        self.resolved = Counter("retriever_resolved_sources",
                                "Source types resolved from an instruction (queries without `sources`), by source",
                                ["source"], registry=r)
        self._state = _StateCollector()
        r.register(self._state)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def attach(self, batcher: Batcher, registry: IndexRegistry) -> None:
        """Read the batcher's counters and queue depth and the served generations at each scrape."""
        self._state.batcher, self._state.indexes = batcher, registry

    # -- recording ---------------------------------------------------------------------------------
    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        if code != "OK":
            self.errors.labels(code).inc()
        self.latency.labels(method).observe(seconds)

    def observe_stages(self, stages: dict[str, float]) -> None:
        """A batched call's stages, in seconds (:meth:`~retriever.service.requests.CallRecord.stages`)."""
        for stage, seconds in stages.items():
            self.stages.labels(stage).observe(seconds)

    def observe_refused(self, method: str, code: str) -> None:
        """A call refused before the servicer saw it (UNAUTHENTICATED by the auth interceptor): counted, not timed."""
        self.requests.labels(method, code).inc()
        self.errors.labels(code).inc()

    def observe_results(self, method: str, results: Sequence[SearchResult]) -> None:
        """Count the answers a call sent: its queries, their hits and resolved sources."""
        if results:
            self.queries.labels(method).inc(len(results))
        for result in results:
            for hit in result.hits:
                self.hits.labels(hit.source.value).inc()
            if result.resolved:
                for source in result.sources:
                    self.resolved.labels(source.value).inc()

    def observe_batch(self, timings: BatchTimings) -> None:
        """The batcher worker's hook: one call per batch it answered."""
        self.batch_size.observe(timings.queries)
        if timings.tokens is not None:
            self.batch_tokens.observe(timings.tokens)
        self.encode_seconds.observe(timings.encode_seconds)
        self.search_seconds.observe(timings.search_seconds)

    # -- the endpoint ------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Expose ``/metrics`` over plain HTTP on ``host:port`` (0 picks a port); returns the bound port.

        Raises:
            OSError: the address cannot be bound.
        """
        self._http, self._thread = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        bound = int(self._http.server_address[1])
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Stop the HTTP endpoint (a no-op when it is not running)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


#: BatcherStats field → (metric name, help).
BATCHER_COUNTERS = {
    "expired": ("retriever_batcher_expired", "Jobs dropped because their deadline passed"),
    "cancelled": ("retriever_batcher_cancelled", "Jobs dropped because their caller went away"),
    "rejected": ("retriever_batcher_rejected", "Calls refused because the queue was full"),
    "over_budget": ("retriever_batcher_over_budget",
                    "Calls refused because they would have been answered later than the latency budget"),
    "dropped_after_encoding": ("retriever_batcher_dropped_after_encoding",
                               "Expired or cancelled jobs dropped after their encoding began"),
}


class _StateCollector(Collector):
    """Gauges and counters read at scrape time from the batcher and the index registry."""

    def __init__(self) -> None:
        self.batcher: Batcher | None = None
        self.indexes: IndexRegistry | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(self._build(read=False))

    def collect(self) -> Iterator[Metric]:
        return iter(self._build(read=True))

    def _build(self, read: bool) -> list[Metric]:
        batcher, indexes = (self.batcher, self.indexes) if read else (None, None)
        queue = GaugeMetricFamily("retriever_queue_depth", "Queries waiting for the encoder")
        if batcher is not None:
            queue.add_metric([], batcher.queued)
        families: list[Metric] = [queue]
        for key, (name, text) in BATCHER_COUNTERS.items():
            counter = CounterMetricFamily(name, text)
            if batcher is not None:
                counter.add_metric([], getattr(batcher.stats, key))
            families.append(counter)
        generation = GaugeMetricFamily("retriever_index_generation", "Generation serving each index name",
                                       labels=["index"])
        for g in indexes.all() if indexes is not None else []:
            generation.add_metric([g.name], g.number)
        families.append(generation)
        return families
