"""The operators' views, for operator keys only: the queue backend's workers and priority
queues (pause, resume) and job statistics over a time window, per tenant and overall."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from api.deps import Operator
from api.models import (
    JobStatsModel,
    QueueList,
    QueueModel,
    StateCountsModel,
    Worker,
    WorkerList,
)
from ingestflow.core.errors import InvalidRequestError
from ingestflow.service import operators

router = APIRouter(prefix="/ops", tags=["operators"])

QueueName = Annotated[Literal["high", "normal", "low"], Path(description="A priority queue.")]
DEFAULT_WINDOW = timedelta(hours=24)


@router.get("/workers", response_model=WorkerList)
def workers(_: Operator) -> WorkerList:
    """The processes that run jobs: a Prefect work pool's workers and the served runner, or
    the Celery workers that answer (with their active, reserved and registered tasks)."""
    found = operators.workers()
    return WorkerList(
        backend=operators.backend_name(),
        workers=[Worker.model_validate(asdict(w)) for w in found],
    )


@router.get("/queues", response_model=QueueList)
def queues(_: Operator) -> QueueList:
    """The priority queues, high to low: jobs waiting in each, and whether it is paused."""
    found = operators.queues()
    return QueueList(
        backend=operators.backend_name(),
        queues=[QueueModel.model_validate(asdict(q)) for q in found],
    )


@router.post("/queues/{queue}:pause", response_model=QueueModel)
def pause_queue(queue: QueueName, _: Operator) -> QueueModel:
    """Stop starting the queue's jobs (running ones go on); they wait, and are kept, until
    the queue is resumed."""
    return QueueModel.model_validate(asdict(operators.pause_queue(queue)))


@router.post("/queues/{queue}:resume", response_model=QueueModel)
def resume_queue(queue: QueueName, _: Operator) -> QueueModel:
    """Start the queue's jobs again."""
    return QueueModel.model_validate(asdict(operators.resume_queue(queue)))


@router.get("/jobs/stats", response_model=JobStatsModel)
def job_stats(
    _: Operator,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Jobs created from then on, ISO 8601 (default: 24 h ago).",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    until: Annotated[
        str | None,
        Query(
            max_length=64,
            description="... and before then (default: now).",
            json_schema_extra={"format": "date-time"},
        ),
    ] = None,
    tenant: Annotated[str | None, Query(max_length=200, description="Only this tenant.")] = None,
) -> JobStatsModel:
    """Jobs counted by state and kind, for each tenant and overall, over a time window."""
    end = _time(until, "until") if until is not None else datetime.now(UTC)
    start = _time(since, "since") if since is not None else end - DEFAULT_WINDOW
    stats = operators.job_stats(since=start, until=end, tenant=tenant)
    return JobStatsModel(
        since=stats.since,
        until=stats.until,
        overall=StateCountsModel.model_validate(asdict(stats.overall)),
        tenants={t: StateCountsModel.model_validate(asdict(c)) for t, c in stats.tenants.items()},
    )


def _time(text: str, name: str) -> datetime:
    """An ISO 8601 time (not a bare number, which a datetime field would take as epoch
    seconds); one without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
