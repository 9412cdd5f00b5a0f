"""The error hierarchy.

Every error is an ``IngestError``. ``permanent`` errors (bad input) fail at once and are never
retried; the others are transient and retried with backoff. Errors keep only plain string
state so they pickle across process boundaries, and their messages never carry secrets.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class. ``reason`` is a short, human-readable sentence stored on the document."""

    permanent: bool = False
    # A stable snake_case name for the reason, stored next to it (documents.error_code) and
    # used as a metrics label; subclasses override it, unknown subclasses inherit a parent's.
    # A plain attribute, not a ClassVar, so an error may refine it per instance.
    code: str = "ingest_error"

    def __init_subclass__(
        cls, *, code: str | None = None, permanent: bool | None = None, **kwargs: object
    ) -> None:
        """``class TooLargeError(FetchError, code="too_large", permanent=True)``."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if permanent is not None:
            cls.permanent = permanent

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self):  # keep subclasses picklable with their single argument
        return (type(self), (self.reason,))


class ConfigError(IngestError, code="config_error", permanent=True):
    """Settings are missing or inconsistent (a missing credential, a bad URL)."""


class FetchError(IngestError, code="fetch_error"):
    """The source could not be read (network blips, temporary I/O problems)."""


class SourceNotFoundError(FetchError, code="source_not_found", permanent=True): ...


class TooLargeError(FetchError, code="too_large", permanent=True): ...


class ParseError(IngestError, code="parse_error", permanent=True):
    """The bytes could not be turned into text."""


class UnsupportedTypeError(ParseError, code="unsupported_type"): ...


class EncryptedDocumentError(ParseError, code="encrypted"): ...


class PasswordRequiredError(EncryptedDocumentError, code="password_required"):
    """An encrypted document came without a password; each front door says how to give one."""


class EmptyDocumentError(ParseError, code="empty_document"):
    """Parsed fine but holds no text (for example a scan without a text layer)."""


class ParseLimitError(ParseError, code="parse_limit"):
    """Parsing went past a resource limit (memory, time, extracted text); the reason names it.

    The same bytes hit the same limit again, so this is permanent like any parse failure.
    """


class ParseMemoryLimitError(ParseLimitError, code="parse_memory_limit"): ...


class ParseTimeLimitError(ParseLimitError, code="parse_time_limit"): ...


class ParseOutputLimitError(ParseLimitError, code="parse_output_limit"): ...


class ParserCrashedError(ParseError, code="parser_crashed"):
    """The parser process died on this file (a signal, an abrupt exit): a parser bug that
    the file triggers every time, so permanent too."""


class EmbedError(IngestError, code="embed_error"):
    """The embedding provider failed; transient unless a subclass says otherwise."""


class EmbedRequestRejected(EmbedError, code="embed_rejected", permanent=True):
    """The provider rejected the request itself (bad key, bad model): retrying cannot help."""


class StoreError(IngestError, code="store_error"):
    """The database or an object store could not be reached, or a write failed transiently."""


class InvalidKeyError(IngestError, code="invalid_key", permanent=True):
    """An object key or path is malformed or would escape its store's root folder."""


class CollectionMismatchError(IngestError, code="collection_mismatch", permanent=True):
    """A collection is fixed to one embedding model and dimension."""


class InvalidRequestError(IngestError, ValueError, code="invalid_request", permanent=True):
    """A caller's input is invalid (an empty query, a malformed page cursor)."""


class CollectionNotFoundError(IngestError, code="collection_not_found", permanent=True): ...


class DocumentNotFoundError(IngestError, code="document_not_found", permanent=True): ...


class JobNotFoundError(IngestError, code="job_not_found", permanent=True): ...


class QueueNotFoundError(IngestError, code="queue_not_found", permanent=True): ...


class JobConflictError(IngestError, code="job_conflict", permanent=True):
    """The job is in a state where the request makes no sense (retrying a running job)."""


class DocumentsFailedError(IngestError, code="documents_failed", permanent=True):
    """Every document of a job failed: the run ends ``Failed`` (each document's reason is on
    its row)."""


class LimitExceededError(IngestError, code="limit_exceeded", permanent=True):
    """A caller went over one of its limits; it may try again in ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.retry_after = retry_after

    def __reduce__(self):  # keep the wait across process boundaries too
        return (type(self), (self.reason, self.retry_after))


class RateLimitedError(LimitExceededError, code="rate_limited"):
    """An API key spent its request rate."""


class TooManyJobsError(LimitExceededError, code="too_many_jobs"):
    """A tenant has as many ingest jobs queued or running as it may."""


class BackendUnavailableError(IngestError, code="backend_unavailable"):
    """The queue backend (Prefect server, Redis) cannot take or report work right now.

    Nothing is lost: the documents stay ``queued`` and are submitted again later.
    """


def is_permanent(exc: BaseException) -> bool:
    """True for errors that a retry cannot fix."""
    return isinstance(exc, IngestError) and exc.permanent
