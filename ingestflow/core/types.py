"""Shared value types: what flows between the ingest steps, and the words of jobs and search.

These are plain, picklable dataclasses and enums so they can cross process boundaries
(Prefect task results, Celery payloads) without surprises.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class DocumentStatus(enum.StrEnum):
    """Lifecycle of a document row."""

    QUEUED = "queued"
    PROCESSING = "processing"
    INDEXED = "indexed"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    DELETED = "deleted"


SearchMode = Literal["vector", "hybrid"]


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class JobKind(enum.StrEnum):
    INGEST = "ingest"
    DELETE = "delete"


class JobState(enum.StrEnum):
    """A job's state: what happened to its documents. ``cancelling`` and ``unknown`` are what
    a queue backend may say of its run; a job's record never holds them."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"  # some documents failed
    FAILED = "failed"  # the run failed, or every document did
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (
            JobState.COMPLETED,
            JobState.COMPLETED_WITH_ERRORS,
            JobState.FAILED,
            JobState.CANCELLED,
        )


@dataclass(frozen=True)
class FetchedSource:
    """A source copied to a local temp file, with the digest computed while streaming."""

    source_uri: str
    path: Path
    size: int
    sha256: str
    filename: str


@dataclass(frozen=True)
class Segment:
    """A piece of parsed text with where it came from (page, sheet, slide, heading ...)."""

    text: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedDocument:
    """The parser's output: detected media type plus ordered segments."""

    media_type: str
    segments: list[Segment]


@dataclass(frozen=True)
class Chunk:
    """A unit of retrieval: text, position, provenance and a content hash."""

    ordinal: int
    content: str
    content_hash: str
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentOutcome:
    """What happened to one document in an ingest run."""

    source_uri: str
    status: DocumentStatus
    document_id: str | None = None
    chunk_count: int = 0
    embedded_chunks: int = 0
    error: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class IngestResult:
    """The result of an ingest flow run: one outcome per source, in input order."""

    collection: str
    outcomes: list[DocumentOutcome]
    flow_run_id: str | None = None

    def count(self, status: DocumentStatus | str) -> int:
        """How many documents ended in ``status`` (an enum member or its value)."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[DocumentOutcome]:
        return [o for o in self.outcomes if o.status is DocumentStatus.FAILED]


@dataclass(frozen=True)
class SearchHit:
    """One ranked chunk returned by a similarity search."""

    score: float
    content: str
    source_uri: str
    document_id: str
    ordinal: int
    provenance: dict[str, Any]
    metadata: dict[str, Any]
