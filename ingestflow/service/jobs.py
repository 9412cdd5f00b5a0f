"""Jobs as callers see them: the job's record joined with the documents that name it.

A job's record (``storage.jobs``) is written when it is submitted and kept by its run: its
state, its chunks found, embedded and written, and how it ended. The documents table says
which documents it carries and how far each got. While a job has not ended its record, the
queue backend that runs it is asked too, so a run killed outright (which cannot write its
own end) still ends its job; once ended, a job no longer depends on its backend, which may
have forgotten the run (Celery results expire) or been switched for another.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from deployments.prefect_server import flow_run_url
from deployments.queue import JobInfo, get_backend
from deployments.retention import RetentionReport
from deployments.retention import expire_jobs as expire_old_jobs
from deployments.submit import RequeueReport, run_info, submit_delete, submit_ingest
from deployments.submit import requeue_waiting as requeue_orphans
from ingestflow.core.errors import (
    InvalidRequestError,
    JobConflictError,
    JobNotFoundError,
    TooManyJobsError,
)
from ingestflow.core.settings import get_settings
from ingestflow.core.types import JobKind, JobState, Priority
from storage import jobs as records
from storage.db import connection, transaction
from storage.documents import DocumentRecord, fail_unfinished, requeue_documents
from storage.job_documents import count_active_jobs, job_documents
from storage.jobs import JobRecord

# What counts as done for a document, by the kind of job.
_DONE = {
    JobKind.INGEST: ("indexed", "unchanged", "deleted"),
    JobKind.DELETE: ("deleted",),
}


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
    kind: JobKind
    collection: str
    backend: str
    priority: str
    documents_total: int
    documents_done: int
    documents_failed: int
    chunks: int  # chunks stored for the job's documents
    chunks_total: int  # chunks the run found in the documents it indexed
    chunks_embedded: int
    chunks_written: int
    errors: list[JobError]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    flow_run_id: str | None
    flow_run_url: str | None
    message: str | None
    document_ids: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state.terminal

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_job(job_id: str, *, tenant: str) -> JobView:
    """The job with its progress; another tenant's job is not found."""
    return _views([_record(job_id, tenant)], tenant)[0]


@dataclass(frozen=True)
class JobListing:
    items: list[JobView]
    next_cursor: str | None  # pass as ``cursor`` for the next page; None at the end


def list_jobs(
    *,
    tenant: str,
    collection: str | None = None,
    state: JobState | None = None,
    kind: JobKind | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobListing:
    """The tenant's jobs, newest first, filtered by collection, state and kind; a full page
    has a cursor for the next one, the last page none."""
    after = _decode_cursor(cursor) if cursor else None
    _settle_unfinished(tenant)
    with connection() as conn:
        rows = records.list_jobs(
            conn,
            tenant=tenant,
            collection=collection,
            state=state.value if state else None,
            kind=kind.value if kind else None,
            limit=limit + 1,
            after=after,
        )
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return JobListing(_views(page, tenant), next_cursor)


def cancel_job(job_id: str, *, tenant: str) -> JobView:
    """Stop the job; its documents not yet done end ``failed`` with code ``cancelled`` (old
    chunks kept) so nothing re-queues them. ``retry`` runs them again. A job whose run it
    shares with other jobs still going (coalesced submissions) leaves the run to them."""
    record = _record(job_id, tenant)
    if not record.terminal:
        with connection() as conn:
            shared = bool(record.run_id) and records.run_shared(
                conn, job_id=job_id, run_id=record.run_id or ""
            )
        if record.run_id and not shared:
            get_backend(record.backend).cancel(record.run_id)
        reason = "cancelled by request"
        with transaction() as conn:
            fail_unfinished(conn, job_id=job_id, reason=reason, code="cancelled")
        counts = _counts(JobKind(record.kind), _documents(job_id, tenant))
        with transaction() as conn:
            records.finish_job(
                conn, job_id=job_id, state="cancelled", message=reason, documents=counts
            )
    return get_job(job_id, tenant=tenant)


def retry_job(job_id: str, *, tenant: str, priority: Priority = Priority.NORMAL) -> JobView:
    """A new job for the documents this job did not finish (failed, cancelled, or left
    behind by a crash). Returns the new job."""
    view = get_job(job_id, tenant=tenant)
    if not view.state.terminal:
        raise JobConflictError(f"job {job_id} is still {view.state.value}; cancel it first")
    docs = _documents(job_id, tenant)
    retry = [d for d in docs if d.status not in _DONE[view.kind]]
    if not retry:
        raise JobConflictError(f"job {job_id} has nothing to retry")
    ids = [d.id for d in retry]
    if view.kind is JobKind.DELETE:
        new_id = submit_delete(
            tenant=tenant, collection=view.collection, document_ids=ids, priority=priority
        )
    else:
        with transaction() as conn:
            requeue_documents(conn, document_ids=ids)
        new_id = submit_ingest(
            tenant=tenant, collection=view.collection, documents=retry, priority=priority
        )
    return get_job(new_id, tenant=tenant)


def delete_job(job_id: str, *, tenant: str) -> None:
    """Forget a job that has ended (its record; its documents stay as they are)."""
    view = get_job(job_id, tenant=tenant)
    if not view.state.terminal:
        raise JobConflictError(f"job {job_id} is still {view.state.value}; cancel it first")
    with transaction() as conn:
        records.delete_job(conn, job_id=job_id)


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


def expire_jobs(*, retention_days: float | None = None) -> RetentionReport:
    """Delete the jobs that ended before the retention (default
    ``INGESTFLOW_JOBS_RETENTION_DAYS``; 0 keeps them all), with the backends' old runs."""
    return expire_old_jobs(retention_days=retention_days)


# ---------------------------------------------------------------------------- internals


def _record(job_id: str, tenant: str) -> JobRecord:
    with connection() as conn:
        record = records.find_job(conn, job_id=job_id, tenant=tenant)
    if record is None:
        raise JobNotFoundError(f"job {job_id!r} does not exist")
    return record


def _documents(job_id: str, tenant: str) -> list[DocumentRecord]:
    with connection() as conn:
        found = job_documents(conn, job_id=job_id, tenant=tenant)
    return found.documents if found else []


def _views(rows: list[JobRecord], tenant: str) -> list[JobView]:
    settled = _settle([r for r in rows if not r.terminal], tenant)
    return [_view(settled.get(r.id, r), _documents(r.id, tenant)) for r in rows]


def _settle_unfinished(tenant: str) -> None:
    """Settle the tenant's jobs that have not ended, so a filter on state sees their truth."""
    with connection() as conn:
        unfinished = [
            r
            for state in ("queued", "running")
            for r in records.list_jobs(conn, tenant=tenant, state=state, limit=200)
        ]
    _settle(unfinished, tenant)


def _settle(rows: list[JobRecord], tenant: str) -> dict[str, JobRecord]:
    """Jobs that have not ended, as they stand: a run the backend reports ended (killed, or
    lost) ends its job, which the record then keeps; the others show their run's state."""
    if not rows:
        return {}
    infos = run_info(rows)
    out: dict[str, JobRecord] = {}
    for row in rows:
        if row.id not in infos:  # its backend cannot be asked now: the record stands
            out[row.id] = row
            continue
        info, docs = infos[row.id], _documents(row.id, tenant)
        ended = _ended(row, info, docs)
        if ended is not None:
            state, message = ended
            counts = _counts(JobKind(row.kind), docs)
            with transaction() as conn:
                records.finish_job(
                    conn, job_id=row.id, state=state, message=message, documents=counts
                )
                row = records.find_job(conn, job_id=row.id) or row
        elif info is not None and info.state is JobState.RUNNING and row.state == "queued":
            row = replace(row, state="running")
        out[row.id] = row
    return out


def _ended(
    row: JobRecord, info: JobInfo | None, docs: list[DocumentRecord]
) -> tuple[str, str | None] | None:
    """The end of a job whose run could not write it, or None while it may still run.
    ``info`` is the backend's view of the run; None: the backend does not know it."""
    unfinished = [d for d in docs if d.status in ("queued", "processing")]
    if info is not None and info.state is JobState.CANCELLED:
        return "cancelled", info.message or "cancelled"
    if info is not None and info.state is JobState.FAILED:
        return "failed", info.message or "the run failed"
    if info is not None and not info.state.terminal:
        return None
    if not unfinished and docs:  # ended (or forgotten) with every document settled
        failed = sum(d.status == "failed" for d in docs)
        if failed == len(docs):
            return "failed", f"all {failed} documents failed"
        return ("completed_with_errors" if failed else "completed"), None
    lost_after = timedelta(seconds=get_settings().queue.stuck_after_seconds)
    if info is None and datetime.now(UTC) - row.updated_at > lost_after:
        return "failed", "the queue backend no longer knows this job's run"
    return None


def _counts(kind: JobKind, docs: list[DocumentRecord]) -> tuple[int, int, int]:
    """Documents: total, done, failed."""
    done = sum(d.status in _DONE[kind] for d in docs)
    return len(docs), done, sum(d.status == "failed" for d in docs)


def _view(row: JobRecord, docs: list[DocumentRecord]) -> JobView:
    """The job from its record, and, until it has ended, its progress from its documents
    (after the end, from the record: a retry may have taken its documents since)."""
    kind = JobKind(row.kind)
    failed = [d for d in docs if d.status == "failed"]
    if row.terminal:
        total, done, failed_count = row.documents_total, row.documents_done, row.documents_failed
    else:
        total, done, failed_count = _counts(kind, docs)
        total = max(total, row.documents_total)
    return JobView(
        id=row.id,
        state=JobState(row.state),
        kind=kind,
        collection=row.collection,
        backend=row.backend,
        priority=row.priority,
        documents_total=total,
        documents_done=done,
        documents_failed=failed_count,
        chunks=sum(d.chunk_count for d in docs),
        chunks_total=row.chunks_total,
        chunks_embedded=row.chunks_embedded,
        chunks_written=row.chunks_written,
        errors=[
            JobError(d.id, d.source_uri, d.error_code, d.error or "failed") for d in failed[:100]
        ],
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        updated_at=row.updated_at,
        flow_run_id=row.flow_run_id,
        # Celery jobs run Prefect flows too, so both backends link to the Prefect UI.
        flow_run_url=flow_run_url(row.flow_run_id),
        message=row.message,
        document_ids=[d.id for d in docs],
    )


def _encode_cursor(row: JobRecord) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, job_id = raw.partition("|")
        when = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError("the page cursor is malformed") from None
    if when.tzinfo is None or not job_id:
        raise InvalidRequestError("the page cursor is malformed")
    return when, job_id
