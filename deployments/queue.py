"""The queue-backend port: how ingest and delete jobs are submitted, watched and cancelled.

A job is one unit of submitted work (one Prefect flow run, or one Celery task). Its id is the
backend's own id. What a job did to documents is read from the documents table (each row
records the job that last took it), so there is no second job table to drift. Two adapters:
``prefect`` (run_deployment) and ``celery`` (Redis), chosen by ``INGESTFLOW_QUEUE_BACKEND``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class JobKind(enum.StrEnum):
    INGEST = "ingest"
    DELETE = "delete"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class IngestRequest:
    """Ingest ``sources`` (URIs) into a tenant's collection as one job."""

    tenant: str
    collection: str
    sources: list[str]
    force: bool = False
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None  # the same key returns the same job (where supported)


@dataclass(frozen=True)
class DeleteRequest:
    """Delete documents (chunks, row status, the stored upload) of a tenant's collection."""

    tenant: str
    collection: str
    document_ids: list[str]
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None


@dataclass(frozen=True)
class JobInfo:
    """What the backend knows about a job."""

    id: str
    backend: str
    state: JobState
    kind: JobKind | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    flow_run_id: str | None = None  # the Prefect flow run doing the work, once there is one
    message: str | None = None  # the backend's state message (never a traceback)
    tags: dict[str, str] = field(default_factory=dict)  # tenant, collection, priority


class QueueBackend(Protocol):
    """Submit ingest and delete jobs, report and cancel them.

    Every method raises ``BackendUnavailableError`` when the backend cannot be reached.
    """

    name: str

    def submit_ingest(self, request: IngestRequest) -> str:
        """Queue an ingest job and return its id at once."""
        ...

    def submit_delete(self, request: DeleteRequest) -> str:
        """Queue a delete job and return its id at once."""
        ...

    def status(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The jobs the backend knows, by id; unknown ids are left out."""
        ...

    def cancel(self, job_id: str) -> JobInfo:
        """Ask the backend to stop the job; returns its state after the request."""
        ...

    def ping(self) -> None:
        """Return if the backend is reachable, else raise ``BackendUnavailableError``."""
        ...

    def queue_depth(self) -> int:
        """Jobs submitted but not yet started."""
        ...


_BACKENDS: dict[str, Callable[[], QueueBackend]] = {}


def register_backend(
    name: str,
) -> Callable[[Callable[[], QueueBackend]], Callable[[], QueueBackend]]:
    """Register a backend factory under ``name`` (built-ins use this too)."""

    def decorate(factory: Callable[[], QueueBackend]) -> Callable[[], QueueBackend]:
        _BACKENDS[name] = factory
        return factory

    return decorate


_BUILTIN = {"prefect": "deployments.prefect_backend", "celery": "deployments.celery_backend"}


def get_backend(name: str | None = None) -> QueueBackend:
    """The backend named by ``name`` or ``INGESTFLOW_QUEUE_BACKEND`` (default ``prefect``).

    A built-in adapter's module is imported on first use, so Celery loads only when chosen.
    """
    import importlib

    from ingestflow.errors import ConfigError
    from ingestflow.settings import get_settings

    chosen = name or get_settings().queue.backend
    if chosen not in _BACKENDS and chosen in _BUILTIN:
        importlib.import_module(_BUILTIN[chosen])
    try:
        return _BACKENDS[chosen]()
    except KeyError:
        known = ", ".join(sorted(set(_BACKENDS) | set(_BUILTIN)))
        raise ConfigError(f"unknown queue backend {chosen!r} (known: {known})") from None
