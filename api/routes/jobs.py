"""Jobs: state and progress, listing, cancel, retry, and live progress as Server-Sent Events."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import JobId, Principal, PriorityParam, SubmitsJob
from api.models import Job, JobAccepted, JobErrorModel, JobPage, JobProgress
from ingestflow.core.errors import InvalidRequestError
from ingestflow.core.types import JobKind, JobState, Priority
from ingestflow.service import jobs

router = APIRouter(tags=["jobs"])

EVENT_POLL_SECONDS = 1.0
EVENT_HEARTBEAT_SECONDS = 15.0
EVENT_MAX_SECONDS = 3600.0


def job_model(view: jobs.JobView) -> Job:
    return Job(
        id=view.id,
        state=view.state.value,
        kind=view.kind.value if view.kind else None,
        collection=view.collection,
        progress=JobProgress(
            documents_total=view.documents_total,
            documents_done=view.documents_done,
            documents_failed=view.documents_failed,
            chunks=view.chunks,
        ),
        errors=[JobErrorModel.model_validate(e) for e in view.errors],
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        flow_run_id=view.flow_run_id,
        flow_run_url=view.flow_run_url,
        message=view.message,
        document_ids=view.document_ids,
    )


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    key: Principal,
    state: JobState | None = None,
    collection: Annotated[str | None, Query(max_length=200)] = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobPage:
    """The tenant's jobs, most recently active first."""
    before = _decode_cursor(cursor) if cursor else None
    listing = jobs.list_jobs(
        tenant=key.tenant,
        collection=collection,
        state=state,
        kind=kind,
        limit=limit,
        before=before,
    )
    after = listing.next_before
    return JobPage(
        items=[job_model(v) for v in listing.items],
        next_cursor=_encode_cursor(after) if after else None,
    )


@router.get("/jobs/{job_id}", response_model=Job)
def get_job(job_id: JobId, key: Principal) -> Job:
    """State, progress (documents and chunks), errors, timings and the Prefect run's URL."""
    return job_model(jobs.get_job(job_id, tenant=key.tenant))


@router.post("/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: JobId, key: Principal) -> Job:
    """Stop the job. Documents it had not finished end ``failed`` with code ``cancelled``."""
    return job_model(jobs.cancel_job(job_id, tenant=key.tenant))


@router.post(
    "/jobs/{job_id}/retry", status_code=202, response_model=JobAccepted, dependencies=[SubmitsJob]
)
def retry_job(
    job_id: JobId, key: Principal, priority: PriorityParam = Priority.NORMAL
) -> JobAccepted:
    """Run again only what the job did not finish, as a new job; 409 if nothing is left."""
    view = jobs.retry_job(job_id, tenant=key.tenant, priority=priority)
    return JobAccepted(job_id=view.id, status_url=f"/v1/jobs/{view.id}")


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Job snapshots."}},
)
async def job_events(job_id: JobId, key: Principal) -> StreamingResponse:
    """Server-Sent Events: a ``progress`` event with the job (as GET /v1/jobs/{id}) whenever
    it changes, then ``end`` once the job is finished."""
    first = await run_in_threadpool(jobs.get_job, job_id, tenant=key.tenant)  # 404 up front
    return StreamingResponse(
        _events(job_id, key.tenant, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(job_id: str, tenant: str, view: jobs.JobView) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    started = last_sent = loop.time()
    previous = None
    while True:
        payload = job_model(view).model_dump_json()
        if payload != previous:
            yield f"event: progress\ndata: {payload}\n\n"
            previous, last_sent = payload, loop.time()
        if view.finished:
            yield f"event: end\ndata: {json.dumps({'state': view.state.value})}\n\n"
            return
        if loop.time() - started > EVENT_MAX_SECONDS:
            yield "event: timeout\ndata: {}\n\n"  # reconnect to keep watching
            return
        if loop.time() - last_sent > EVENT_HEARTBEAT_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = loop.time()
        await asyncio.sleep(EVENT_POLL_SECONDS)
        view = await run_in_threadpool(jobs.get_job, job_id, tenant=tenant)


def _encode_cursor(when: datetime) -> str:
    return base64.urlsafe_b64encode(when.isoformat().encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> datetime:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when = datetime.fromisoformat(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError("the page cursor is malformed") from None
    if when.tzinfo is None:
        raise InvalidRequestError("the page cursor is malformed")
    return when
