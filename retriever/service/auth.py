"""Bearer-token authentication for every method except the standard health check."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc

logger = logging.getLogger(__name__)

#: Methods answered without a token: load balancers and orchestrators probe them unauthenticated.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (metadata 'authorization: "
                  "Bearer <token>')")


def _deny_stream(request_iterator: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (metadata 'authorization: "
                  "Bearer <token>')")


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls whose ``authorization`` metadata is not ``Bearer <token>`` (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def authorized(self, metadata: Any) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(presented, self._expected)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method or ""
        if method.startswith(PUBLIC_PREFIXES) or self.authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        logger.info("refused unauthenticated call to %s", method)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_deny_stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_deny_stream)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny)
        return grpc.unary_unary_rpc_method_handler(_deny)
