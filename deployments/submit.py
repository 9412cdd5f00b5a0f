"""Handing queued documents to the queue backend, and picking up documents left behind.

Every front door that queues work (the API, the re-queue pass) goes through here, so a
document always records the job that carries it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from deployments.queue import JobRequest, QueueBackend, get_backend
from ingestflow.core.types import JobState, Priority
from storage.db import connection, transaction
from storage.documents import DocumentRecord
from storage.job_documents import Waiting, assign_job, waiting_documents


def submit_ingest(
    *,
    tenant: str,
    collection: str,
    documents: list[DocumentRecord],
    priority: Priority = Priority.NORMAL,
    force: bool = False,
    idempotency_key: str | None = None,
    backend: QueueBackend | None = None,
) -> str:
    """Queue one ingest job for ``documents`` (rows already ``queued``); returns the job id.

    Raises ``BackendUnavailableError`` when the backend is down; the rows then stay ``queued``
    with no job, and ``requeue_waiting`` (or a client's retry) submits them later.
    """
    request = JobRequest.ingest(
        tenant=tenant,
        collection=collection,
        sources=[d.source_uri for d in documents],
        force=force,
        priority=priority,
        idempotency_key=idempotency_key,
    )
    return submit(request, [d.id for d in documents], backend)


def submit_delete(
    *,
    tenant: str,
    collection: str,
    document_ids: list[str],
    priority: Priority = Priority.NORMAL,
    backend: QueueBackend | None = None,
) -> str:
    """Queue one delete job for documents of the collection; returns the job id."""
    request = JobRequest.delete(
        tenant=tenant, collection=collection, document_ids=document_ids, priority=priority
    )
    return submit(request, document_ids, backend)


def submit(
    request: JobRequest, document_ids: list[str], backend: QueueBackend | None = None
) -> str:
    """Submit ``request`` and record that its job now carries ``document_ids``."""
    job_id = (backend or get_backend()).submit(request)
    with transaction() as conn:
        assign_job(conn, document_ids=document_ids, job_id=job_id)
    return job_id


@dataclass(frozen=True)
class RequeueReport:
    examined: int
    resubmitted: int
    jobs: list[str]


def requeue_waiting(
    *, idle_seconds: float, backend: QueueBackend | None = None, limit: int = 1000
) -> RequeueReport:
    """Submit again the documents that wait for nothing: ``queued`` with no job (the backend
    was down), or ``queued``/``processing`` whose job ended or is unknown to the backend (a
    worker died). Documents whose job is still queued or running are left alone."""
    backend = backend or get_backend()
    with connection() as conn:
        waiting = waiting_documents(conn, idle_seconds=idle_seconds, limit=limit)
    live = _live_jobs(backend, {w.job_id for w in waiting if w.job_id})
    orphans: dict[tuple[str, str], list[Waiting]] = defaultdict(list)
    for doc in waiting:
        if doc.job_id not in live:
            orphans[(doc.tenant, doc.collection)].append(doc)
    jobs = []
    for (tenant, collection), docs in orphans.items():
        request = JobRequest.ingest(
            tenant=tenant, collection=collection, sources=[d.source_uri for d in docs]
        )
        jobs.append(submit(request, [d.document_id for d in docs], backend))
    resubmitted = sum(len(d) for d in orphans.values())
    return RequeueReport(examined=len(waiting), resubmitted=resubmitted, jobs=jobs)


def _live_jobs(backend: QueueBackend, job_ids: set[str]) -> set[str]:
    if not job_ids:
        return set()
    known = backend.status(sorted(job_ids))
    active = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)
    return {job_id for job_id, info in known.items() if info.state in active}
