"""The one table from the error hierarchy to gRPC status codes, and safe error messages.

Every servicer method ends in :func:`status_for`: a :class:`~retriever.errors.RetrieverError`
becomes the code in :data:`STATUS_CODES` with its message scrubbed of file paths; anything else
is logged with its traceback under a fresh error id and answered as INTERNAL with that id only.
"""

from __future__ import annotations

import logging
import re
import uuid

import grpc

from retriever.errors import (
    CancelledError,
    CorruptIndexError,
    DeadlineExceededError,
    IncompatibleIndexError,
    InsufficientMemoryError,
    InvalidInputError,
    ModelError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    RetrieverError,
)

logger = logging.getLogger(__name__)


class UnauthenticatedError(RetrieverError):
    """A call without a valid bearer token (UNAUTHENTICATED)."""


class PermissionDeniedError(RetrieverError):
    """A call the server is configured to refuse, e.g. publishing when it is disabled."""


#: Most specific class first: the first ``isinstance`` match wins.
STATUS_CODES: tuple[tuple[type[RetrieverError], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (IncompatibleIndexError, grpc.StatusCode.FAILED_PRECONDITION),
    (CorruptIndexError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InsufficientMemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CancelledError, grpc.StatusCode.CANCELLED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)

#: Longest message sent to a client; library messages are short, this bounds echoed input.
MAX_MESSAGE_CHARS = 500

# An absolute POSIX path (or ~/...) after start, whitespace, quote, bracket or '='.
_PATH = re.compile(r"""(?:(?<=^)|(?<=[\s'"(\[=]))~?/[^\s'"()\[\]:,;]+""")


def scrub(message: str) -> str:
    """Remove absolute file paths from a message and bound its length."""
    cleaned = _PATH.sub("<path>", message)
    if len(cleaned) > MAX_MESSAGE_CHARS:
        cleaned = cleaned[: MAX_MESSAGE_CHARS - 1] + "…"
    return cleaned


def status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for an exception raised while serving ``method``."""
    if isinstance(exc, RetrieverError):
        for cls, code in STATUS_CODES:
            if isinstance(exc, cls):
                if code is grpc.StatusCode.FAILED_PRECONDITION:
                    logger.warning("%s: %s", method, exc)
                elif code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                    logger.debug("%s: %s", method, exc)
                return code, scrub(str(exc)) or cls.__name__
    error_id = uuid.uuid4().hex[:12]
    logger.error("%s: internal error %s", method, error_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (error id {error_id}; the server log has the details)"
