"""Bearer-token authentication: a query token for every method but health, an admin token for publishing."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc

logger = logging.getLogger(__name__)

#: Methods answered without a token: load balancers and orchestrators probe them unauthenticated.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (metadata 'authorization: "
                  "Bearer <token>')")


#: The admin method: it needs the admin token, whatever the query token is.
ADMIN_METHODS = ("/retriever.v1.Retriever/PublishIndex",)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls whose ``authorization`` metadata is not exactly one ``Bearer <token>`` header.

    Query methods accept the query token (any call passes when there is none) or the admin token;
    admin methods accept only the admin token (without one they are judged like query methods,
    then refused as disabled by the servicer).
    Tokens are compared in constant time; a call carrying two ``authorization`` headers is refused.
    """

    def __init__(self, token: str | None, admin_token: str | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        """``on_refused(method)`` is called for each refused call (the server counts it in its metrics)."""
        self._query = f"Bearer {token}".encode() if token else None
        self._admin = f"Bearer {admin_token}".encode() if admin_token else None
        self._on_refused = on_refused

    @staticmethod
    def presented(metadata: Any) -> bytes | None:
        """The one ``authorization`` value of a call; None when it has none or more than one."""
        values = [value for key, value in metadata or () if key == "authorization"]
        if len(values) != 1:
            return None
        value = values[0]
        return value.encode() if isinstance(value, str) else bytes(value)

    def authorized(self, method: str, metadata: Any) -> bool:
        if method.startswith(PUBLIC_PREFIXES):
            return True
        if method in ADMIN_METHODS and self._admin is not None:
            accepted = [self._admin]
        elif self._query is None:
            return True  # queries need no token (an admin method without an admin token is refused later)
        else:
            accepted = [t for t in (self._query, self._admin) if t is not None]
        presented = self.presented(metadata)
        # compare against every accepted token, so timing does not tell which one was close
        matches = [hmac.compare_digest(presented or b"", t) for t in accepted]
        return presented is not None and any(matches)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method or ""
        if self.authorized(method, handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        logger.info("refused unauthenticated call to %s", method)
        if self._on_refused is not None:
            self._on_refused(method)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny)
        return grpc.unary_unary_rpc_method_handler(_deny)
