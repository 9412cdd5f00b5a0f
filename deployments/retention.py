"""Retention: jobs that ended longer ago than ``INGESTFLOW_JOBS_RETENTION_DAYS`` are deleted
(their records; their documents stay), and so are the queue backends' own runs of that age:
Prefect flow runs of our deployments, Celery results. The ``requeue-documents`` deployment
does this on its schedule; ``ingestflow expire-jobs`` does it once.

Each backend that ran an expired job is pruned, and the configured one always; a backend that
cannot be reached now is skipped (and pruned on a later run), never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from deployments.queue import get_backend
from ingestflow.core.errors import BackendUnavailableError, ConfigError
from ingestflow.core.settings import get_settings
from storage import jobs as records
from storage.db import transaction


@dataclass(frozen=True)
class RetentionReport:
    jobs: int  # job records deleted
    runs: dict[str, int] = field(default_factory=dict)  # backend -> its runs deleted
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it was not pruned


def expire_jobs(*, retention_days: float | None = None) -> RetentionReport:
    """Delete what is older than the retention (the setting unless given); 0 keeps all."""
    days = get_settings().jobs.retention_days if retention_days is None else retention_days
    if days <= 0:
        return RetentionReport(jobs=0)
    seconds = days * 86400
    cutoff = datetime.now(UTC) - timedelta(seconds=seconds)
    with transaction() as conn:
        expired = records.expire_jobs(conn, older_than_seconds=seconds)
    runs: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name in sorted({r.backend for r in expired} | {get_settings().queue.backend}):
        try:
            runs[name] = get_backend(name).prune_runs(before=cutoff)
        except (BackendUnavailableError, ConfigError) as exc:
            skipped[name] = exc.reason
    return RetentionReport(jobs=len(expired), runs=runs, skipped=skipped)
