"""Service configuration: limits, batching, transport and auth, from flags and ``RETRIEVER_*`` variables.

Precedence: a command-line flag, else the environment variable, else the default below.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from retriever.errors import InvalidInputError
from retriever.query import SourceResolution

#: Default token budget of one encoder batch (``--max-batch-tokens``): a full batch of 32 queries
#: of up to 64 tokens each, padded (the bundled model's instruction templates are ~17 tokens and
#: typical questions composed with them 23-33 with the special tokens), while a query of 256
#: tokens (the bundled model's longest input) shares its batch with at most 7 others.
DEFAULT_MAX_BATCH_TOKENS = 2048

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_INDEX_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(name: str) -> str:
    """A served index's name, checked (``InvalidInputError`` says which characters are allowed)."""
    if not _INDEX_NAME.match(name):
        raise InvalidInputError(f"index name {name!r} is invalid: use 1 to 64 characters from A-Z a-z 0-9 _ . -")
    return name


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Each limit names its environment variable.

    Attributes:
        max_message_bytes: largest request or response message (RETRIEVER_MAX_MESSAGE_BYTES).
        max_top_k: largest ``top_k`` (RETRIEVER_MAX_TOP_K).
        max_query_bytes: longest query, UTF-8 bytes (RETRIEVER_MAX_QUERY_BYTES).
        max_instruction_bytes: longest instruction, UTF-8 bytes (RETRIEVER_MAX_INSTRUCTION_BYTES).
        max_batch_queries: most requests in one RetrieveBatch call (RETRIEVER_MAX_BATCH_QUERIES), and
            the largest ``window`` of a RetrieveStream call.
        max_stream_queries: most requests in one RetrieveStream call (RETRIEVER_MAX_STREAM_QUERIES).
            Separate from ``max_batch_queries`` because a stream never queues more than its
            window: its requests cost the request message and their plans, not encoder work at once.
        max_concurrent_calls: calls handled at once; more are refused with RESOURCE_EXHAUSTED
            (RETRIEVER_MAX_CONCURRENT_CALLS).
        max_queued_queries: queries waiting for the encoder; more are refused with
            RESOURCE_EXHAUSTED (RETRIEVER_MAX_QUEUED_QUERIES).
        max_fusion_depth: largest hybrid ``fusion.depth``, the hits each ranking contributes
            (RETRIEVER_MAX_FUSION_DEPTH).
        max_history_turns: most conversation turns in a request's ``history``
            (RETRIEVER_MAX_HISTORY_TURNS).
        max_turn_chars: longest question or answer of one turn, in characters
            (RETRIEVER_MAX_TURN_CHARS).
        refusal_hold_ms: how long a refused query call is held before its RESOURCE_EXHAUSTED goes
            out (RETRIEVER_REFUSAL_HOLD_MS), so a client that re-sends at once re-sends at most
            1000 / refusal_hold_ms times a second; longer protects the accepted calls' latency from
            a re-send storm (each refusal costs the server CPU), shorter answers refusals sooner.
    """

    max_message_bytes: int = 16 * 1024 * 1024
    max_top_k: int = 100
    max_query_bytes: int = 4096
    max_instruction_bytes: int = 2048
    max_batch_queries: int = 256
    max_stream_queries: int = 4096
    max_concurrent_calls: int = 64
    max_queued_queries: int = 2048
    max_fusion_depth: int = 1000
    max_history_turns: int = 16
    max_turn_chars: int = 2048
    refusal_hold_ms: int = 25

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"limit {f.name} must be a positive integer, got {value!r}")
        if self.refusal_hold_ms > 1000:
            raise InvalidInputError(f"limit refusal_hold_ms must be at most 1000, got {self.refusal_hold_ms}")
        if self.max_queued_queries < self.max_batch_queries:
            raise InvalidInputError(
                f"max_queued_queries ({self.max_queued_queries}) must be >= max_batch_queries "
                f"({self.max_batch_queries}), or no full batch call could ever be queued")


@dataclass(frozen=True)
class ServiceConfig:
    """How the server runs.

    Attributes:
        host: address to bind; anything but loopback needs a token or ``insecure``.
        port: TCP port; 0 picks a free one.
        limits: request limits.
        max_batch: most queries encoded together by the dynamic batcher (1 disables batching).
        max_batch_tokens: token budget of one encoder batch: the batcher cuts a batch before a
            job that would take its padded tokens (queries needing a vector x the longest of
            them, in the model's tokens) over this; a job over it on its own still goes, alone. 0
            turns it off (only ``max_batch`` cuts).
        batch_wait_ms: how long the batcher waits for more queries once it has one.
        resolution: what an instruction naming source types does when ``sources`` is empty.
        router_threshold: the source router filters at confidence >= this instead of the
            threshold saved with it (None: the router's own); lower filters more instructions,
            right and wrong (docs/SERVICE.md, "Resolution").
        router_prior: below the threshold, the sources the router read gain this times its
            confidence in their units' dense scores (None: the default,
            :data:`retriever.router.ROUTER_PRIOR`; 0 turns the preference off).
        token: bearer token every call but health must carry; None disables auth.
        insecure: allow a non-loopback bind without a token.
        tls_cert, tls_key: PEM files; when both are set the port uses TLS.
        tls_client_ca: PEM roots; when set, clients must present a certificate they signed (mTLS).
        admin_token: bearer token of the PublishIndex admin RPC, which is off without one; separate
            from ``token`` (which it may not equal) and accepted by every other method too.
        publish_roots: directories PublishIndex may load from (anything below them); empty means
            the parent directories of the indexes served at start.
        grace_seconds: how long shutdown waits for calls in flight.
        use_gpu: move index shards to a GPU when FAISS sees one.
        metrics_port: serve Prometheus metrics over plain HTTP on this port of ``host`` (0 picks
            one); None turns metrics off.
        log_queries: put the query and instruction texts in the request log lines.
        latency_budget_ms: a call is admitted only when the batcher expects to answer it within
            this many milliseconds (others get RESOURCE_EXHAUSTED at once, before parsing);
            ``"auto"`` is 1.5 times one query's time calibrated at load; ``"off"`` (default) admits every
            call the concurrency and queue limits allow (throughput over latency).
        canary_units: units the data canary re-encodes and searches when an index is loaded or
            published (each shard's first and last always; None: the canary's default, 64; see
            :mod:`retriever.index.verify`). 0 skips the re-encoding (the norm check of exact shards
            still runs): only for indexes whose vectors are not the model's by construction, such as
            the synthetic 10M benchmark.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 32
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    batch_wait_ms: float = 2.0
    resolution: SourceResolution = SourceResolution.FILTER
    router_threshold: float | None = None
    router_prior: float | None = None
    token: str | None = None
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    admin_token: str | None = None
    publish_roots: tuple[Path, ...] = ()
    grace_seconds: float = 10.0
    use_gpu: bool = True
    metrics_port: int | None = None
    log_queries: bool = False
    latency_budget_ms: float | Literal["auto", "off"] = "off"
    canary_units: int | None = None

    def __post_init__(self) -> None:
        if self.canary_units is not None and (isinstance(self.canary_units, bool)
                                              or not isinstance(self.canary_units, int) or self.canary_units < 0):
            raise InvalidInputError(f"canary units (--canary-units, RETRIEVER_CANARY_UNITS) must be an integer >= 0, "
                                    f"got {self.canary_units!r}")
        if self.latency_budget_ms not in ("auto", "off") and not (
                isinstance(self.latency_budget_ms, (int, float)) and not isinstance(self.latency_budget_ms, bool)
                and self.latency_budget_ms > 0):
            raise InvalidInputError(f"the latency budget must be 'auto', 'off' or a number of milliseconds > 0, "
                                    f"got {self.latency_budget_ms!r}")
        for what, value in (("threshold", self.router_threshold), ("prior", self.router_prior)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= value <= 1.0):
                raise InvalidInputError(f"the router {what} (--router-{what}, RETRIEVER_ROUTER_{what.upper()}) must "
                                        f"be a number in [0, 1], got {value!r}")
        if not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise InvalidInputError(f"metrics port must be in 0..65535, got {self.metrics_port}")
        if self.metrics_port and self.metrics_port == self.port:
            raise InvalidInputError(f"the metrics port must differ from the gRPC port ({self.port})")
        if self.max_batch < 1:
            raise InvalidInputError(f"max_batch must be >= 1, got {self.max_batch}")
        if isinstance(self.max_batch_tokens, bool) or not isinstance(self.max_batch_tokens, int) \
                or self.max_batch_tokens < 0:
            raise InvalidInputError(f"the batch token budget (--max-batch-tokens, RETRIEVER_MAX_BATCH_TOKENS) must be "
                                    f"a positive integer, or 0 to turn it off; got {self.max_batch_tokens!r}")
        if self.batch_wait_ms < 0:
            raise InvalidInputError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.grace_seconds < 0:
            raise InvalidInputError(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.token is not None and len(self.token) < 16:
            raise InvalidInputError("the auth token must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise InvalidInputError("the admin token must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        if self.admin_token is not None and self.admin_token == self.token:
            raise InvalidInputError("the admin token must differ from the query token")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInputError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidInputError("client certificates (--tls-client-ca) need TLS: set --tls-cert and --tls-key")
        if not self.token and not self.insecure and not is_loopback(self.host):
            raise InvalidInputError(
                f"refusing to listen on non-loopback address {self.host!r} without authentication: set a token "
                "(--token-file or RETRIEVER_AUTH_TOKEN), or pass --insecure if a proxy in front handles auth")

    @property
    def latency_budget(self) -> float | Literal["auto"] | None:
        """The batcher's budget: seconds, ``"auto"``, or None when off."""
        budget = self.latency_budget_ms
        return None if budget == "off" else "auto" if budget == "auto" else float(budget) / 1000.0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_budget(raw: str) -> float | Literal["auto", "off"]:
    """A latency budget as written: ``auto``, ``off`` or milliseconds."""
    lowered = raw.strip().lower()
    if lowered == "auto" or lowered == "off":
        return "auto" if lowered == "auto" else "off"
    try:
        value = float(lowered)
    except ValueError:
        raise ValueError(f"expected auto, off or milliseconds > 0, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"expected auto, off or milliseconds > 0, got {raw!r}")
    return value


def parse_paths(raw: str) -> tuple[Path, ...]:
    """Directories separated by ``os.pathsep`` (``:`` on Linux), as in ``PATH``."""
    return tuple(Path(p) for p in raw.split(os.pathsep) if p)


#: ``RETRIEVER_*`` variable → (ServiceConfig or Limits field, type).
ENV_VARS: dict[str, tuple[str, Any]] = {
    "RETRIEVER_HOST": ("host", str),
    "RETRIEVER_PORT": ("port", int),
    "RETRIEVER_MAX_BATCH": ("max_batch", int),
    "RETRIEVER_MAX_BATCH_TOKENS": ("max_batch_tokens", int),
    "RETRIEVER_BATCH_WAIT_MS": ("batch_wait_ms", float),
    "RETRIEVER_RESOLUTION": ("resolution", SourceResolution),
    "RETRIEVER_ROUTER_THRESHOLD": ("router_threshold", float),
    "RETRIEVER_ROUTER_PRIOR": ("router_prior", float),
    "RETRIEVER_AUTH_TOKEN": ("token", str),
    "RETRIEVER_INSECURE": ("insecure", bool),
    "RETRIEVER_TLS_CERT": ("tls_cert", Path),
    "RETRIEVER_TLS_KEY": ("tls_key", Path),
    "RETRIEVER_TLS_CLIENT_CA": ("tls_client_ca", Path),
    "RETRIEVER_ADMIN_TOKEN": ("admin_token", str),
    "RETRIEVER_PUBLISH_ROOTS": ("publish_roots", parse_paths),
    "RETRIEVER_GRACE_SECONDS": ("grace_seconds", float),
    "RETRIEVER_METRICS_PORT": ("metrics_port", int),
    "RETRIEVER_LOG_QUERIES": ("log_queries", bool),
    "RETRIEVER_LATENCY_BUDGET_MS": ("latency_budget_ms", parse_budget),
    "RETRIEVER_CANARY_UNITS": ("canary_units", int),
    "RETRIEVER_MAX_MESSAGE_BYTES": ("max_message_bytes", int),
    "RETRIEVER_MAX_TOP_K": ("max_top_k", int),
    "RETRIEVER_MAX_QUERY_BYTES": ("max_query_bytes", int),
    "RETRIEVER_MAX_INSTRUCTION_BYTES": ("max_instruction_bytes", int),
    "RETRIEVER_MAX_BATCH_QUERIES": ("max_batch_queries", int),
    "RETRIEVER_MAX_STREAM_QUERIES": ("max_stream_queries", int),
    "RETRIEVER_MAX_CONCURRENT_CALLS": ("max_concurrent_calls", int),
    "RETRIEVER_MAX_QUEUED_QUERIES": ("max_queued_queries", int),
    "RETRIEVER_MAX_FUSION_DEPTH": ("max_fusion_depth", int),
    "RETRIEVER_MAX_HISTORY_TURNS": ("max_history_turns", int),
    "RETRIEVER_MAX_TURN_CHARS": ("max_turn_chars", int),
}
_LIMIT_FIELDS = frozenset(f.name for f in dataclasses.fields(Limits))
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError("expected 1/0, true/false, yes/no or on/off")
            return lowered in _TRUE
        return kind(raw.strip()) if kind is not str else raw
    except ValueError as exc:
        raise InvalidInputError(f"environment variable {name}={raw!r} is invalid: {exc}") from None


def build_config(overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """A validated config from flag values (None = not given) over ``RETRIEVER_*`` variables.

    Args:
        overrides: field name → value for ServiceConfig and Limits fields; None values are ignored.
        environ: the environment (default ``os.environ``).

    Raises:
        InvalidInputError: an unknown field, an unparsable variable or an invalid value.
    """
    environ = os.environ if environ is None else environ
    if environ.get("RETRIEVER_ALLOW_PUBLISH", "") != "":
        raise InvalidInputError("RETRIEVER_ALLOW_PUBLISH is no longer read: PublishIndex is off unless the server has "
                                "an admin token (RETRIEVER_ADMIN_TOKEN or --admin-token-file)")
    values: dict[str, Any] = {}
    for var, (name, kind) in ENV_VARS.items():
        if environ.get(var, "") != "":
            values[name] = _parse(var, environ[var], kind)
    known = _LIMIT_FIELDS | {f.name for f in dataclasses.fields(ServiceConfig)}
    for name, value in overrides.items():
        if name not in known:
            raise InvalidInputError(f"unknown service setting {name!r}")
        if value is not None:
            values[name] = value
    limits = Limits(**{k: values.pop(k) for k in list(values) if k in _LIMIT_FIELDS})
    return ServiceConfig(limits=limits, **values)
