"""The gRPC server: transport, limits, health, reflection, auth, loading and graceful shutdown.

Lifecycle: :meth:`RetrieverServer.start` binds the port and answers health checks with
NOT_SERVING (and every other call with UNAVAILABLE); :meth:`~RetrieverServer.load` loads the
model and each index, runs a canary query per index and then turns health to SERVING;
:meth:`~RetrieverServer.stop` turns health to NOT_SERVING, refuses new calls and lets calls in
flight finish within the grace period.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import InvalidInputError
from retriever.query import Query, SearchResult
from retriever.router import SourceResolver
from retriever.service.auth import BearerTokenInterceptor
from retriever.service.batching import AUTO_BUDGET_FACTOR, Batcher, BoundQuery
from retriever.service.config import ServiceConfig
from retriever.service.metrics import ServiceMetrics
from retriever.service.registry import Generation, IndexRegistry
from retriever.service.servicer import SERVICE_NAME, RetrieverServicer, generic_handler

logger = logging.getLogger(__name__)

#: An index to serve: a directory, or a function of the loaded encoder returning one (the sample index).
IndexSource = Path | Callable[[Encoder], Path]

CANARY_TIMEOUT_SECONDS = 120.0
#: How long shutdown keeps answering health (NOT_SERVING) before closing the port.
ANNOUNCE_SECONDS = 1.0
#: Handler threads beyond the call and hold slots (health probes while every slot is busy).
SPARE_THREADS = 4


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once with a plain socket and let go, before gRPC binds it.

    A port in use (or below 1024 without the privilege) then fails with one line that says so;
    gRPC's own bind failure prints a C-core log line first and a message that does not name the
    cause. Other errors are left to gRPC (e.g. ``localhost`` resolving to an IPv6 address on a
    host without IPv6, which gRPC skips). Port 0 picks a free port and needs no check.

    Raises:
        InvalidInputError: the address is in use or access to it is denied.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # gRPC reports an unresolvable host itself
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise InvalidInputError(
                        f"cannot listen on {host}:{port}: the address is already in use (another server is "
                        "running there: stop it, or choose another --port / RETRIEVER_PORT; 0 picks a free one)"
                    ) from exc
                if exc.errno == errno.EACCES:
                    raise InvalidInputError(f"cannot listen on {host}:{port}: permission denied (ports below 1024 "
                                            "need privileges; choose another --port)") from exc


class RetrieverServer:
    """One gRPC server over one encoder and any number of named indexes."""

    def __init__(self, config: ServiceConfig, indexes: Sequence[tuple[str, IndexSource]],
                 encoder: Encoder | None = None, encoder_config: EncoderConfig | None = None) -> None:
        """
        Args:
            config: transport, limits, batching and auth settings.
            indexes: ``(name, directory or directory factory)`` pairs; the first is the default.
            encoder: an already loaded encoder (tests share one), else one is loaded from
                ``encoder_config`` during :meth:`load`.
        """
        if not indexes:
            raise InvalidInputError("nothing to serve: give at least one index")
        names = [name for name, _ in indexes]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"index names must be unique, got {names}")
        self.config, self.indexes = config, list(indexes)
        self._encoder, self._encoder_config = encoder, encoder_config or EncoderConfig(show_progress=False)
        #: Prometheus metrics on their own registry (None unless ``config.metrics_port`` is set).
        self.metrics = ServiceMetrics() if config.metrics_port is not None else None
        self.metrics_port: int | None = None
        self.servicer = RetrieverServicer(config.limits, allow_publish=config.admin_token is not None,
                                          metrics=self.metrics, log_queries=config.log_queries)
        self.health = health.HealthServicer()
        self.registry: IndexRegistry | None = None
        self.batcher: Batcher | None = None
        self.port: int | None = None
        self._server: grpc.Server | None = None
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def _count_unauthenticated(self, method: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_refused(method.rsplit("/", 1)[-1], "UNAUTHENTICATED")

    def start(self) -> int:
        """Bind and start answering (health NOT_SERVING until :meth:`load`); returns the bound port.

        Raises:
            InvalidInputError: the port is in use or not allowed, or a TLS file cannot be read.
        """
        check_port_free(self.config.host, self.config.port)
        limits = self.config.limits
        options = [
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port already in use is an error, not a silent second listener
        ]
        tokens = (self.config.token, self.config.admin_token)
        interceptors = [BearerTokenInterceptor(*tokens, on_refused=self._count_unauthenticated)] if any(tokens) else []
        server = grpc.server(
            # the servicer admits max_concurrent_calls query calls and holds as many refusals
            # (RetrieverServicer._admit); grpcio refuses at once beyond both
            ThreadPoolExecutor(max_workers=2 * limits.max_concurrent_calls + SPARE_THREADS,
                               thread_name_prefix="retriever-rpc"),
            handlers=[generic_handler(self.servicer)], interceptors=interceptors, options=options,
            maximum_concurrent_rpcs=2 * limits.max_concurrent_calls + SPARE_THREADS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        address = self.config.address
        try:
            if self.config.tls_cert is not None and self.config.tls_key is not None:
                client_ca = self.config.tls_client_ca
                credentials = grpc.ssl_server_credentials(
                    [(self.config.tls_key.read_bytes(), self.config.tls_cert.read_bytes())],
                    root_certificates=client_ca.read_bytes() if client_ca else None,
                    require_client_auth=client_ca is not None)
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise InvalidInputError(f"cannot listen on {address}: {exc} (is the port in use?)") from exc
        except OSError as exc:
            raise InvalidInputError(f"cannot read a TLS file: {exc}") from exc
        if port == 0:
            raise InvalidInputError(f"cannot listen on {address} (is the port in use?)")
        if self.metrics is not None and self.config.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port)
            except OSError as exc:
                server.stop(0)
                raise InvalidInputError(f"cannot serve metrics on {self.config.host}:{self.config.metrics_port}: "
                                        f"{exc.strerror or exc} (is the port in use?)") from exc
        server.start()
        self._server, self.port = server, port
        transport = "mTLS" if self.config.tls_client_ca else "TLS" if self.config.tls_cert else "plaintext"
        logger.info("listening on %s:%d (%s, auth %s, publishing %s)", self.config.host, port, transport,
                    "on" if self.config.token else "off", "on (admin token)" if self.config.admin_token else "off")
        return port

    def load(self) -> None:
        """Load the model and every index, run their canaries, then report SERVING.

        Raises:
            RetrieverError: a model or index that cannot be loaded (health stays NOT_SERVING).
        """
        started = time.perf_counter()
        encoder = self._encoder or Encoder(self._encoder_config)
        batcher = Batcher(encoder, self.config.max_batch, self.config.batch_wait_ms / 1000.0,
                          self.config.limits.max_queued_queries,
                          on_batch=self.metrics.observe_batch if self.metrics is not None else None,
                          latency_budget=self.config.latency_budget, max_batch_tokens=self.config.max_batch_tokens)
        logger.info("batches: at most %d queries and %s", self.config.max_batch,
                    f"{self.config.max_batch_tokens} padded tokens (model input up to {encoder.max_seq_length})"
                    if self.config.max_batch_tokens else "no token budget")
        if batcher.latency_budget is not None:
            batcher.calibrate()
            budget = batcher.budget_seconds() or 0.0
            logger.info("latency budget %.0f ms (%s): one query ~%.0f ms, %d queries ~%.0f ms (calibrated)",
                        budget * 1000,
                        f"auto: {AUTO_BUDGET_FACTOR:g}x one query" if batcher.latency_budget == "auto" else "set",
                        batcher.cost.seconds(1) * 1000, self.config.max_batch,
                        batcher.cost.seconds(self.config.max_batch) * 1000)
        # --resolve model needs a router; --router-threshold one that reads the instructions
        resolver = SourceResolver.for_encoder(self.config.resolution, encoder, self.config.router_threshold,
                                              self.config.router_prior)
        resolver.warm()
        logger.info("source resolution: %s", resolver.describe())
        registry = IndexRegistry(encoder, self.config.resolution, use_gpu=self.config.use_gpu,
                                 canary_units=self.config.canary_units, router_threshold=self.config.router_threshold,
                                 router_prior=self.config.router_prior)
        if self.metrics is not None:
            self.metrics.attach(batcher, registry)

        def canary(generation: Generation, text: str) -> SearchResult:
            query = BoundQuery(generation, generation.searcher.plan(Query(text, instruction="", k=10)))
            # the canary of a publish is the server's own work: never refused by the latency budget
            return batcher.search([query], timeout=CANARY_TIMEOUT_SECONDS, admitted=True)[0]

        registry.set_canary(canary)
        self.registry, self.batcher = registry, batcher
        self.servicer.attach(registry, batcher, encoder.name)
        paths = []
        for name, source in self.indexes:
            path = source if isinstance(source, Path) else source(encoder)
            registry.publish(name, path)
            paths.append(path)
        roots = self.config.publish_roots or tuple(p.resolve().parent for p in paths)
        self.servicer.publish_roots = tuple(dict.fromkeys(r.resolve() for r in roots))
        self.servicer.ready.set()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logger.info("ready: %d index(es) (%s), model %s, in %.1fs", len(self.indexes),
                    ", ".join(registry.names()), encoder.name, time.perf_counter() - started)

    def stop(self, grace: float | None = None) -> None:
        """Shut down in order, within ``grace`` seconds plus the batcher's last batch.

        1. Health turns NOT_SERVING (and stays: later updates are ignored) and new calls get
           UNAVAILABLE while health keeps answering for :data:`ANNOUNCE_SECONDS` (capped by the
           grace), so load balancers polling health see NOT_SERVING before the port closes.
        2. The port closes; calls in flight finish within what is left of the grace, then are
           cancelled.
        3. The batcher stops: queued queries fail at once and its worker ends.
        """
        grace = self.config.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        self.servicer.draining.set()
        if self._server is not None:
            logger.info("shutting down: health NOT_SERVING, draining calls in flight for up to %.1fs", grace)
            time.sleep(min(ANNOUNCE_SECONDS, grace))
            self._server.stop(max(0.0, deadline - time.monotonic())).wait(grace + 1.0)
        self.servicer.ready.clear()
        if self.batcher is not None:
            self.batcher.stop()
        self.stop_metrics()
        logger.info("server stopped")

    def stop_metrics(self) -> None:
        """Close the metrics endpoint (:meth:`stop` does, last, so the final calls are still counted)."""
        if self.metrics is not None:
            self.metrics.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server terminates (or ``timeout``); True when it did."""
        return self._server.wait_for_termination(timeout) if self._server is not None else True
