"""The queue-backend port: how ingest and delete jobs are submitted, watched and cancelled,
and what operators see of the backend's workers and queues.

A job's run is one unit of submitted work (one Prefect flow run, or one Celery task), named by
the backend's own id; the job itself is a record in Postgres (``storage.jobs``) that outlives
the run. A backend is a factory named in the ``ingestflow.queue_backends`` entry points; two
are built in, ``prefect`` and ``celery`` (Redis), chosen by ``INGESTFLOW_QUEUE_BACKEND``.

Both run three queues, one per priority (``high``, ``normal``, ``low``), which an operator may
pause and resume.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ingestflow.core import registry
from ingestflow.core.registry import Registry
from ingestflow.core.settings import get_settings
from ingestflow.core.types import JobKind, JobState, Priority

# The parameters of each kind's flow (``flows.ingest_batch``, ``flows.delete_documents``), in
# the order of their signatures: what a backend passes, on any backend.
FLOW_PARAMETERS: dict[JobKind, tuple[str, ...]] = {
    JobKind.INGEST: ("sources", "collection", "tenant", "force", "jobs"),
    JobKind.DELETE: ("document_ids", "collection", "tenant", "job_id"),
}


@dataclass(frozen=True)
class JobRequest:
    """One job to submit: ingest ``sources`` or delete ``document_ids`` of a tenant's
    collection. ``job_id`` names its record (a new one is made up); ``idempotency_key``: the
    same key returns the same job (where supported). An ingest run may do several jobs at
    once (``deployments.coalesce``): ``jobs`` then names each with its sources, and
    ``job_id`` is the first."""

    kind: JobKind
    tenant: str
    collection: str
    sources: tuple[str, ...] = ()
    document_ids: tuple[str, ...] = ()
    force: bool = False
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    jobs: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def job_ids(self) -> list[str]:
        """Every job this run does."""
        return [job for job, _ in self.jobs] if self.jobs else [self.job_id]

    @classmethod
    def ingest(cls, *, sources: Sequence[str], **fields: Any) -> JobRequest:
        return cls(kind=JobKind.INGEST, sources=tuple(sources), **fields)

    @classmethod
    def delete(cls, *, document_ids: Sequence[str], **fields: Any) -> JobRequest:
        return cls(kind=JobKind.DELETE, document_ids=tuple(document_ids), **fields)

    def flow_parameters(self) -> dict[str, Any]:
        """The keyword arguments of the flow that does this job."""
        values = {
            "sources": list(self.sources),
            "document_ids": list(self.document_ids),
            "collection": self.collection,
            "tenant": self.tenant,
            "force": self.force,
            "job_id": self.job_id,
            "jobs": {job: list(sources) for job, sources in self.jobs}
            or {self.job_id: list(self.sources)},
        }
        return {name: values[name] for name in FLOW_PARAMETERS[self.kind]}


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


@dataclass(frozen=True)
class WorkerInfo:
    """One process that runs jobs, as its backend reports it."""

    name: str
    status: str  # online or offline
    last_heartbeat: datetime | None = None
    queues: tuple[str, ...] = ()  # the queues it takes jobs from
    active: tuple[str, ...] = ()  # run ids it is running (where the backend says)
    reserved: tuple[str, ...] = ()  # run ids it has taken but not started
    registered: tuple[str, ...] = ()  # the task or deployment names it can run


@dataclass(frozen=True)
class QueueInfo:
    """One priority queue: the jobs waiting in it and whether it is paused."""

    name: str
    depth: int
    paused: bool


class QueueBackend(Protocol):
    """Submit jobs, report and cancel them.

    Every method raises ``BackendUnavailableError`` when the backend cannot be reached.
    """

    name: str

    def submit(self, request: JobRequest) -> str:
        """Queue the job; return the backend's id of its run at once."""
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

    def workers(self) -> list[WorkerInfo]:
        """The processes that run jobs, as far as the backend knows them."""
        ...

    def queues(self) -> list[QueueInfo]:
        """The priority queues, high to low."""
        ...

    def pause_queue(self, name: str) -> QueueInfo:
        """Stop starting the queue's jobs (running ones go on); they wait until resumed."""
        ...

    def resume_queue(self, name: str) -> QueueInfo:
        """Start the queue's jobs again."""
        ...

    def prune_runs(self, *, before: datetime, limit: int = 1000) -> int:
        """Delete the backend's own records of runs that ended before ``before`` (at most
        ``limit`` of them); returns how many. Job records are not touched."""
        ...


BACKENDS: Registry[Callable[[], QueueBackend]] = Registry(registry.QUEUE_BACKENDS, "queue backend")


def get_backend(name: str | None = None) -> QueueBackend:
    """The backend named by ``name`` or ``INGESTFLOW_QUEUE_BACKEND`` (default ``prefect``).

    A backend's module is imported on first use, so Celery loads only when chosen.
    """
    return BACKENDS.get(name or get_settings().queue.backend)()
