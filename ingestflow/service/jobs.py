"""Jobs as callers see them: the backend's state joined with the documents that name the job.

A job id is the queue backend's id (a Prefect flow run, or a Celery task). Progress, errors and
chunk counts come from the documents table; state and timings from the backend. Nothing else
is stored, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from deployments.prefect_server import flow_run_url
from deployments.queue import JobInfo, get_backend
from deployments.submit import RequeueReport, submit_delete, submit_ingest
from deployments.submit import requeue_waiting as requeue_orphans
from ingestflow.core.errors import (
    BackendUnavailableError,
    JobConflictError,
    JobNotFoundError,
    TooManyJobsError,
)
from ingestflow.core.settings import get_settings
from ingestflow.core.types import JobKind, JobState, Priority
from storage.db import connection, transaction
from storage.documents import fail_unfinished, requeue_documents
from storage.job_documents import JobDocuments, count_active_jobs, job_documents, list_job_rows

_DONE = ("indexed", "unchanged", "deleted")
_UNFINISHED = ("queued", "processing")


@dataclass(frozen=True)
class JobError:
    document_id: str
    source_uri: str
    code: str | None
    message: str


@dataclass(frozen=True)
class JobView:
    id: str
    state: JobState
    kind: JobKind | None
    collection: str
    documents_total: int
    documents_done: int
    documents_failed: int
    chunks: int
    errors: list[JobError]
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    flow_run_id: str | None
    flow_run_url: str | None
    message: str | None
    document_ids: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """The backend is done with the job and every document has an outcome."""
        return self.state.terminal and self.documents_done + self.documents_failed >= (
            self.documents_total
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_job(job_id: str, *, tenant: str) -> JobView:
    """The job with its progress; another tenant's job is not found."""
    return _view(job_id, _documents(job_id, tenant), _backend_info([job_id]).get(job_id))


@dataclass(frozen=True)
class JobListing:
    items: list[JobView]
    next_before: datetime | None  # pass as ``before`` for the next page; None at the end


def list_jobs(
    *,
    tenant: str,
    collection: str | None = None,
    state: JobState | None = None,
    kind: JobKind | None = None,
    limit: int = 50,
    before: datetime | None = None,
) -> JobListing:
    """The tenant's jobs, most recently active first, filtered by collection, state, kind.

    Filters on state and kind apply to each page, so a page may hold fewer than ``limit``.
    """
    with connection() as conn:
        rows = list_job_rows(conn, tenant=tenant, collection=collection, limit=limit, before=before)
        docs = {r.job_id: job_documents(conn, job_id=r.job_id, tenant=tenant) for r in rows}
    infos = _backend_info([r.job_id for r in rows])
    views = [
        _view(r.job_id, found, infos.get(r.job_id))
        for r in rows
        if (found := docs[r.job_id]) is not None
    ]
    items = [
        v for v in views if (state is None or v.state is state) and (kind is None or v.kind is kind)
    ]
    return JobListing(items, rows[-1].last_update if len(rows) == limit else None)


def cancel_job(job_id: str, *, tenant: str) -> JobView:
    """Stop the job; its documents not yet done end ``failed`` with code ``cancelled`` (old
    chunks kept) so nothing re-queues them. ``retry`` runs them again."""
    _documents(job_id, tenant)  # 404 unless the job is this tenant's
    info = get_backend().cancel(job_id)
    with transaction() as conn:
        fail_unfinished(conn, job_id=job_id, reason="cancelled by request", code="cancelled")
    return _view(job_id, _documents(job_id, tenant), info)


def retry_job(job_id: str, *, tenant: str, priority: Priority = Priority.NORMAL) -> JobView:
    """A new job for the documents this job did not finish (failed, cancelled, or left
    behind by a crash). Returns the new job."""
    job = _documents(job_id, tenant)
    info = _backend_info([job_id]).get(job_id)
    if info is not None and not info.state.terminal:
        raise JobConflictError(f"job {job_id} is still {info.state.value}; cancel it first")
    deleting = info is not None and info.kind is JobKind.DELETE
    if deleting:
        retry = [d for d in job.documents if d.status != "deleted"]
    else:
        retry = [d for d in job.documents if d.status not in _DONE]
    if not retry:
        raise JobConflictError(f"job {job_id} has nothing to retry")
    if deleting:
        new_id = submit_delete(
            tenant=tenant,
            collection=job.collection,
            document_ids=[d.id for d in retry],
            priority=priority,
        )
    else:
        with transaction() as conn:
            requeue_documents(conn, document_ids=[d.id for d in retry])
        new_id = submit_ingest(
            tenant=tenant, collection=job.collection, documents=retry, priority=priority
        )
    return get_job(new_id, tenant=tenant)


# When a tenant at its job limit may look again; jobs take seconds to minutes.
JOBS_RETRY_AFTER_SECONDS = 10


def check_job_limit(tenant: str) -> None:
    """``TooManyJobsError`` when the tenant already has ``max_active_jobs_per_tenant`` ingest
    jobs queued or running (a job with documents still ``queued`` or ``processing``).

    Called before a submission reads anything, so a refused one stores nothing. It is a
    soft bound: submissions racing at the limit may each see room and pass. Delete jobs are
    not counted: their documents are not queued, and a tenant at the limit must still be
    able to delete.
    """
    limit = get_settings().api.max_active_jobs_per_tenant
    if limit <= 0:
        return
    with connection() as conn:
        active = count_active_jobs(conn, tenant=tenant)
    if active >= limit:
        raise TooManyJobsError(
            f"the tenant has {active} jobs queued or running, the most allowed is {limit};"
            " wait for some to finish",
            JOBS_RETRY_AFTER_SECONDS,
        )


def requeue_waiting(*, idle_seconds: float | None = None) -> RequeueReport:
    """Submit again the documents idle for ``idle_seconds`` (default
    ``INGESTFLOW_QUEUE_STUCK_AFTER_SECONDS``) that wait for nothing: queued while the queue
    backend was down, or left behind by a job that died."""
    if idle_seconds is None:
        idle_seconds = get_settings().queue.stuck_after_seconds
    return requeue_orphans(idle_seconds=idle_seconds)


def _documents(job_id: str, tenant: str) -> JobDocuments:
    with connection() as conn:
        job = job_documents(conn, job_id=job_id, tenant=tenant)
    if job is None:
        raise JobNotFoundError(f"job {job_id!r} does not exist")
    return job


def _backend_info(job_ids: list[str]) -> dict[str, JobInfo]:
    if not job_ids:
        return {}
    try:
        return get_backend().status(job_ids)
    except BackendUnavailableError:
        return {}  # reported as state "unknown"; the documents still tell the progress


def _view(job_id: str, job: JobDocuments, info: JobInfo | None) -> JobView:
    docs = job.documents
    failed = [d for d in docs if d.status == "failed"]
    flow_run_id = (info.flow_run_id if info else None) or next(
        (d.flow_run_id for d in docs if d.flow_run_id), None
    )
    return JobView(
        id=job_id,
        state=info.state if info else JobState.UNKNOWN,
        kind=info.kind if info else None,
        collection=job.collection,
        documents_total=len(docs),
        documents_done=sum(d.status in _DONE for d in docs),
        documents_failed=len(failed),
        chunks=sum(d.chunk_count for d in docs),
        errors=[
            JobError(d.id, d.source_uri, d.error_code, d.error or "failed") for d in failed[:100]
        ],
        created_at=info.created_at if info else min(d.created_at for d in docs),
        started_at=info.started_at if info else None,
        finished_at=info.finished_at if info else None,
        flow_run_id=flow_run_id,
        # Celery jobs run Prefect flows too, so both backends link to the Prefect UI.
        flow_run_url=flow_run_url(flow_run_id),
        message=info.message if info else "the queue backend did not report this job",
        document_ids=[d.id for d in docs],
    )
