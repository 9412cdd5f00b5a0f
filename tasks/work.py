"""The unit of work that moves through the stages: one document and what is known about it,
and the context every stage of a run shares.

Stages take and return lists of ``DocWork`` so that one Prefect task run handles a whole
micro-batch, while every document keeps its own outcome, error and timings.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ingestflow.core.errors import IngestError, is_permanent
from ingestflow.core.settings import IngestSettings
from ingestflow.core.types import Chunk, DocumentOutcome, DocumentStatus, FetchedSource, Segment
from tasks.config import PipelineConfig

INTERNAL_ERROR = "internal_error"  # the error_code of anything that is not an IngestError


def split_password(
    metadata: dict[str, Any] | None, password: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """Metadata without its ``password`` key, and the password (an explicit one wins).

    Callers split before a flow is called, so the password never becomes a stored flow-run
    parameter, a document's metadata, a log line or an artifact.
    """
    public = dict(metadata or {})
    from_metadata = public.pop("password", None)
    return public, password if password is not None else from_metadata


@dataclass(frozen=True)
class StageContext:
    """What every stage of one run shares: the collection, the stage configuration, a
    scratch folder for fetched files, the run's limits (``INGESTFLOW_*``), whether to
    re-index known bytes, the flow run, the job of each source (as the run was given it; none
    for a run with no job, such as a notebook's) and the tenant."""

    collection_id: int
    config: PipelineConfig
    workdir: Path
    limits: IngestSettings = field(default_factory=IngestSettings)
    force: bool = False
    flow_run_id: str | None = None
    jobs: Mapping[str, str] = field(default_factory=dict)
    tenant: str = "default"

    @property
    def job_ids(self) -> list[str]:
        return sorted(set(self.jobs.values()))


@dataclass(frozen=True)
class DocWork:
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)
    fetched: FetchedSource | None = None
    sha256: str | None = None
    document_id: str | None = None
    status: DocumentStatus = DocumentStatus.PROCESSING
    media_type: str | None = None
    segments: list[Segment] | None = None
    chunks: list[Chunk] | None = None
    vectors: np.ndarray | None = None
    embedded: int = 0
    chunk_count: int = 0
    error: str | None = None
    error_code: str | None = None  # stable snake_case name of the failure, next to ``error``
    embedding_tokens: int = 0  # tokens this run sent to the embedder (cache hits cost none)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Still moving through the pipeline (not failed, not skipped as unchanged)."""
        return self.status is DocumentStatus.PROCESSING

    def failed(self, reason: str, code: str = INTERNAL_ERROR) -> DocWork:
        """This document, failed with a human ``reason`` and its stable ``code``."""
        return replace(
            self,
            status=DocumentStatus.FAILED,
            error=reason,
            error_code=code,
            segments=None,
            chunks=None,
            vectors=None,
        )

    def timed(self, stage: str, seconds: float) -> dict[str, float]:
        return {**self.timings, stage: round(self.timings.get(stage, 0.0) + seconds, 4)}

    def outcome(self) -> DocumentOutcome:
        count = len(self.chunks) if self.chunks is not None else self.chunk_count
        return DocumentOutcome(
            source_uri=self.fetched.source_uri if self.fetched else self.source,
            status=self.status,
            document_id=self.document_id,
            chunk_count=count,
            embedded_chunks=self.embedded,
            error=self.error,
            error_code=self.error_code,
        )


def error_code(exc: BaseException) -> str:
    """The stable snake_case code stored next to the reason (``documents.error_code``).

    Every ``IngestError`` class names its own ``code`` (a subclass without one inherits its
    parent's); anything else is a bug or an unclassified failure, so ``internal_error``.
    """
    if isinstance(exc, IngestError):
        return exc.code
    return INTERNAL_ERROR


def describe_error(exc: BaseException) -> str:
    """A one-line, human-readable reason for storing on a document."""
    if isinstance(exc, IngestError):
        return exc.reason
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {where[0].name})" if where else ""
    message = " ".join(str(exc).split())  # one line, even for multi-line messages
    return f"unexpected {type(exc).__name__}: {message}{at}".strip()


def per_document(
    works: Sequence[DocWork],
    step: Callable[[DocWork], DocWork],
    *,
    stage: str,
    final_attempt: bool,
) -> list[DocWork]:
    """Apply ``step`` to each active document, isolating failures to that document.

    Permanent errors fail the document at once. A transient error is raised after the other
    documents have been processed, so the stage task retries; on its final attempt the
    document fails instead, and the rest of the batch carries on.
    """
    out: list[DocWork] = []
    transient: BaseException | None = None
    for work in works:
        if not work.active:
            out.append(work)
            continue
        started = time.perf_counter()
        try:
            done = step(work)
        except Exception as exc:  # noqa: BLE001 - classified right here
            if is_permanent(exc) or final_attempt:
                out.append(work.failed(describe_error(exc), error_code(exc)))
            else:
                transient = transient or exc
                out.append(work)
            continue
        out.append(replace(done, timings=done.timed(stage, time.perf_counter() - started)))
    if transient is not None:
        raise transient
    return out


class Stopwatch:
    """Times a ``with`` block; ``seconds`` holds the duration once the block has ended."""

    def __enter__(self) -> Stopwatch:
        self.seconds = 0.0
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._started
