"""Jobs: state and progress, listing, cancel, retry, delete, and live progress as Server-Sent
Events and over a WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import JobId, Principal, PriorityParam, SubmitsJob
from api.models import Job, JobAccepted, JobErrorModel, JobPage, JobProgress, JobStateName
from ingestflow.core.types import JobKind, JobState, Priority
from ingestflow.service import jobs

router = APIRouter(tags=["jobs"])

EVENT_POLL_SECONDS = 1.0
EVENT_HEARTBEAT_SECONDS = 15.0
EVENT_MAX_SECONDS = 3600.0


def job_model(view: jobs.JobView) -> Job:
    return Job(
        id=view.id,
        state=view.state.value,  # type: ignore[arg-type]  # a record's state is one of these
        kind=view.kind.value,  # type: ignore[arg-type]
        collection=view.collection,
        backend=view.backend,
        priority=view.priority,
        progress=JobProgress(
            documents_total=view.documents_total,
            documents_done=view.documents_done,
            documents_failed=view.documents_failed,
            chunks=view.chunks,
            chunks_total=view.chunks_total,
            chunks_embedded=view.chunks_embedded,
            chunks_written=view.chunks_written,
        ),
        errors=[JobErrorModel.model_validate(e) for e in view.errors],
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        updated_at=view.updated_at,
        flow_run_id=view.flow_run_id,
        flow_run_url=view.flow_run_url,
        message=view.message,
        document_ids=view.document_ids,
    )


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    key: Principal,
    state: JobStateName | None = None,
    collection: Annotated[str | None, Query(max_length=200)] = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> JobPage:
    """The tenant's jobs, newest first; ``next_cursor`` fetches the next page (null at the
    end)."""
    listing = jobs.list_jobs(
        tenant=key.tenant,
        collection=collection,
        state=JobState(state) if state else None,
        kind=kind,
        limit=limit,
        cursor=cursor,
    )
    return JobPage(items=[job_model(v) for v in listing.items], next_cursor=listing.next_cursor)


@router.get("/jobs/{job_id}", response_model=Job)
def get_job(job_id: JobId, key: Principal) -> Job:
    """State, progress (documents and chunks), errors, timings and the Prefect run's URL."""
    return job_model(jobs.get_job(job_id, tenant=key.tenant))


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(job_id: JobId, key: Principal) -> Response:
    """Forget a job that has ended: its record, not its documents; 409 while it runs."""
    jobs.delete_job(job_id, tenant=key.tenant)
    return Response(status_code=204)


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


async def _events(job_id: str, tenant: str, first: jobs.JobView) -> AsyncIterator[str]:
    async for kind, payload in job_snapshots(job_id, tenant, first):
        if kind == "heartbeat":
            yield ": keep-alive\n\n"
        else:
            yield f"event: {kind}\ndata: {payload}\n\n"


async def job_snapshots(
    job_id: str, tenant: str, view: jobs.JobView
) -> AsyncIterator[tuple[str, str]]:
    """The job as it moves: ``progress`` (the job as GET returns it) whenever it changes,
    ``heartbeat`` when nothing has for a while, then ``end`` once the job has ended, or
    ``timeout`` after ``EVENT_MAX_SECONDS`` (reconnect to keep watching)."""
    loop = asyncio.get_running_loop()
    started = last_sent = loop.time()
    previous = None
    while True:
        payload = job_model(view).model_dump_json()
        if payload != previous:
            yield "progress", payload
            previous, last_sent = payload, loop.time()
        if view.finished:
            yield "end", json.dumps({"state": view.state.value})
            return
        if loop.time() - started > EVENT_MAX_SECONDS:
            yield "timeout", "{}"
            return
        if loop.time() - last_sent > EVENT_HEARTBEAT_SECONDS:
            yield "heartbeat", "{}"
            last_sent = loop.time()
        await asyncio.sleep(EVENT_POLL_SECONDS)
        view = await run_in_threadpool(jobs.get_job, job_id, tenant=tenant)
