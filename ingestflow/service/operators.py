"""What operators see and steer: the queue backend's workers and priority queues (pause and
resume), and job statistics over a time window, per tenant and overall.

The API serves these only to operator keys (``ingestflow keys create --role operator``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from deployments.queue import QueueInfo, WorkerInfo, get_backend
from ingestflow.core.errors import InvalidRequestError
from ingestflow.core.types import JobKind
from storage import jobs as records
from storage.db import connection

__all__ = [
    "JobStats",
    "QueueInfo",
    "WorkerInfo",
    "backend_name",
    "job_stats",
    "pause_queue",
    "queues",
    "resume_queue",
    "workers",
]

MAX_WINDOW = timedelta(days=366)  # the longest window job statistics may span


def backend_name() -> str:
    return get_backend().name


def workers() -> list[WorkerInfo]:
    return get_backend().workers()


def queues() -> list[QueueInfo]:
    return get_backend().queues()


def pause_queue(name: str) -> QueueInfo:
    return get_backend().pause_queue(name)


def resume_queue(name: str) -> QueueInfo:
    return get_backend().resume_queue(name)


@dataclass(frozen=True)
class StateCounts:
    """Jobs by state, and by kind then state; every state and kind is present."""

    jobs: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class JobStats:
    since: datetime
    until: datetime
    overall: StateCounts
    tenants: dict[str, StateCounts]


def job_stats(*, since: datetime, until: datetime, tenant: str | None = None) -> JobStats:
    """Jobs created in [``since``, ``until``) counted by state and kind, for each tenant (or
    only ``tenant``) and over all of them."""
    if since >= until:
        raise InvalidRequestError("since must be before until")
    if until - since > MAX_WINDOW:
        raise InvalidRequestError(f"the window may span at most {MAX_WINDOW.days} days")
    with connection() as conn:
        rows = records.job_counts(conn, since=since, until=until, tenant=tenant)
    overall: Counter[tuple[str, str]] = Counter()
    per_tenant: dict[str, Counter[tuple[str, str]]] = {}
    for row in rows:
        key = (row["kind"], row["state"])
        overall[key] += row["jobs"]
        per_tenant.setdefault(row["tenant"], Counter())[key] += row["jobs"]
    return JobStats(
        since=since,
        until=until,
        overall=_state_counts(overall),
        tenants={name: _state_counts(counts) for name, counts in sorted(per_tenant.items())},
    )


def _state_counts(counts: Counter[tuple[str, str]]) -> StateCounts:
    by_kind = {
        kind.value: {state: counts[(kind.value, state)] for state in records.STATES}
        for kind in JobKind
    }
    by_state = {state: sum(k[state] for k in by_kind.values()) for state in records.STATES}
    return StateCounts(jobs=sum(by_state.values()), by_state=by_state, by_kind=by_kind)
