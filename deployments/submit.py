"""Handing queued documents to the queue backend, and picking up documents left behind.

Every front door that queues work (the API, the re-queue pass) goes through here, so a
document always records the job that carries it.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deployments.coalesce import Coalescer
from deployments.queue import JobInfo, JobRequest, QueueBackend, get_backend
from ingestflow.core.errors import BackendUnavailableError, ConfigError
from ingestflow.core.settings import get_settings
from ingestflow.core.types import JobState, Priority
from storage.db import connection, transaction
from storage.documents import DocumentRecord
from storage.job_documents import Waiting, assign_job, waiting_documents
from storage.jobs import JobRecord, create_job, delete_job, find_job, job_for_run, set_run


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

    Jobs submitted within ``INGESTFLOW_QUEUE_COALESCE_MS`` of each other for the same
    collection, priority and ``force`` share one run (``deployments.coalesce``); each stays
    a job of its own. Raises ``BackendUnavailableError`` when the backend is down; the rows
    then stay ``queued`` with no job, and ``requeue_waiting`` (or a client's retry) submits
    them later.
    """
    request = JobRequest.ingest(
        tenant=tenant,
        collection=collection,
        sources=[d.source_uri for d in documents],
        force=force,
        priority=priority,
        idempotency_key=idempotency_key,
    )
    ids = [d.id for d in documents]
    backend = backend or get_backend()
    window = get_settings().queue.coalesce_ms / 1000
    if window <= 0:
        return submit(request, ids, backend)
    member = _Member(request, ids, backend)
    key = (backend.name, tenant, collection, priority, force)
    _coalescer(window).add(key, member, len(ids))
    return member.job_id


@dataclass
class _Member:
    """One job waiting for its group's run; ``job_id`` is its id once submitted."""

    request: JobRequest
    document_ids: list[str]
    backend: QueueBackend
    job_id: str = ""


def _submit_group(members: list[_Member]) -> None:
    """One run for the group's jobs (just ``submit`` for a group of one)."""
    first = members[0]
    if len(members) == 1:
        first.job_id = submit(first.request, first.document_ids, first.backend)
        return
    jobs = tuple((m.request.job_id, m.request.sources) for m in members)
    combined = JobRequest.ingest(
        tenant=first.request.tenant,
        collection=first.request.collection,
        sources=[source for m in members for source in m.request.sources],
        force=first.request.force,
        priority=first.request.priority,
        job_id=first.request.job_id,
        jobs=jobs,
    )
    submit_jobs(combined, {m.request.job_id: m.document_ids for m in members}, first.backend)
    for member in members:
        member.job_id = member.request.job_id


_coalescers: dict[float, Coalescer[_Member]] = {}
_coalescers_lock = threading.Lock()


def _coalescer(window: float) -> Coalescer[_Member]:
    with _coalescers_lock:
        if window not in _coalescers:
            _coalescers[window] = Coalescer(window, _submit_group)
        return _coalescers[window]


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
    """Record the job, submit it, and record that it now carries ``document_ids``; returns
    the job's id.

    The record is written first, so a run that starts (and even ends) at once finds it. A
    submission the backend refuses leaves no record; one it answers with an earlier run (the
    same idempotency key) is that run's job.
    """
    backend = backend or get_backend()
    job_id = request.job_id
    run_id = submit_jobs(request, {job_id: document_ids}, backend)
    with transaction() as conn:
        earlier = job_for_run(conn, run_id=run_id)
        if earlier is not None and earlier.id != job_id:
            delete_job(conn, job_id=job_id)
            job_id = earlier.id
        else:
            flow_run = run_id if getattr(backend, "runs_are_flow_runs", False) else None
            set_run(conn, job_id=job_id, run_id=run_id, flow_run_id=flow_run)
        assign_job(conn, document_ids=document_ids, job_id=job_id)
    return job_id


def submit_jobs(request: JobRequest, documents: dict[str, list[str]], backend: QueueBackend) -> str:
    """Record each of the request's jobs (with the ids of its documents), submit the run,
    and, for a run of several jobs, record the run on each; returns the run's id. A refused
    submission leaves no record."""
    record_jobs(request, {job: len(ids) for job, ids in documents.items()}, backend.name)
    try:
        run_id = backend.submit(request)
    except BaseException:
        with transaction() as conn:
            for job_id in documents:
                delete_job(conn, job_id=job_id)
        raise
    if len(documents) > 1:
        flow_run = run_id if getattr(backend, "runs_are_flow_runs", False) else None
        with transaction() as conn:
            for job_id, ids in documents.items():
                set_run(conn, job_id=job_id, run_id=run_id, flow_run_id=flow_run)
                assign_job(conn, document_ids=ids, job_id=job_id)
    return run_id


def record_jobs(
    request: JobRequest, sizes: Mapping[str, int], backend: str, run_id: str | None = None
) -> None:
    """A ``queued`` record for each job of the request (``sizes``: its documents), in one
    transaction; a record that exists already is left as it is."""
    with transaction() as conn:
        for job_id, documents in sizes.items():
            create_job(
                conn,
                job_id=job_id,
                tenant=request.tenant,
                collection=request.collection,
                kind=request.kind.value,
                backend=backend,
                priority=request.priority.value,
                run_id=run_id,
                documents=documents,
            )


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
    live = _live_jobs({w.job_id for w in waiting if w.job_id})
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


def _live_jobs(job_ids: set[str]) -> set[str]:
    """The jobs among ``job_ids`` whose runs are queued or running, by their own backends."""
    if not job_ids:
        return set()
    with connection() as conn:
        records = [r for j in sorted(job_ids) if (r := find_job(conn, job_id=j)) is not None]
    active = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING)
    return {job_id for job_id, info in run_info(records).items() if info and info.state in active}


def run_info(records: Sequence[JobRecord]) -> dict[str, JobInfo | None]:
    """What each job's own backend knows of its run, by job id: None when the backend does
    not know the run (expired, or never submitted). Jobs whose backend cannot be reached (or
    is no longer configured) are left out: nothing is known of them now."""
    by_backend: dict[str, list[JobRecord]] = defaultdict(list)
    for record in records:
        by_backend[record.backend].append(record)
    found: dict[str, JobInfo | None] = {}
    for name, group in by_backend.items():
        try:
            infos = get_backend(name).status([r.run_id for r in group if r.run_id])
        except (BackendUnavailableError, ConfigError):
            continue
        found.update({r.id: infos.get(r.run_id) if r.run_id else None for r in group})
    return found
