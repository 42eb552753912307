"""One error hierarchy for the whole project.

The service maps these classes to gRPC status codes in one table
(``retriever.service.errors``); the CLI prints their message and exits non-zero.
"""

from __future__ import annotations


class RetrieverError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidInputError(RetrieverError):
    """A request or argument is malformed (maps to INVALID_ARGUMENT)."""


class CorpusError(InvalidInputError):
    """A corpus file is malformed; the message names file, line and field."""

    def __init__(self, path: str, line: int | None, message: str, field: str | None = None) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.detail = message
        where = path if line is None else f"{path}:{line}"
        if field:
            where = f"{where}: field '{field}'"
        super().__init__(f"{where}: {message}")


class NotFoundError(RetrieverError):
    """A named thing (index, file) does not exist (maps to NOT_FOUND)."""


class IncompatibleIndexError(RetrieverError):
    """An index was built with another model, prompts or linearizer (FAILED_PRECONDITION)."""


class CorruptIndexError(RetrieverError):
    """An index directory fails its integrity checks (FAILED_PRECONDITION)."""


class ModelError(RetrieverError):
    """A model directory is missing, unsafe or unreadable (FAILED_PRECONDITION)."""


class DependencyError(RetrieverError):
    """A package the requested work needs is not installed (the message says which to install)."""


class OverloadedError(RetrieverError):
    """Too many requests in flight or queued (maps to RESOURCE_EXHAUSTED)."""


class InsufficientMemoryError(RetrieverError):
    """Loading something would need more memory than the machine has available (RESOURCE_EXHAUSTED)."""


class NotReadyError(RetrieverError):
    """The service is not ready to answer yet (maps to UNAVAILABLE)."""


class CancelledError(RetrieverError):
    """The caller went away before its work was done (CANCELLED; logged at debug, not as an error)."""


class DeadlineExceededError(RetrieverError):
    """The caller's deadline passed before work could start (DEADLINE_EXCEEDED)."""
