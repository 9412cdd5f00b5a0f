"""The re-queue flow, the service's housekeeping: documents that wait for nothing are
submitted again, and jobs older than the retention are expired.

A document can be left waiting when the queue backend was down at upload time (``queued``,
no job), or when the worker running its job died (``queued``/``processing`` under a job that
ended or that the backend no longer knows). The ``requeue-documents`` deployment runs this on
a schedule; ``ingestflow requeue`` and ``ingestflow expire-jobs`` run each part once.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from deployments.retention import expire_jobs
from deployments.submit import RequeueReport, requeue_waiting
from ingestflow.core.settings import get_settings
from storage.migrate import ensure_schema


@flow(name="requeue-documents", log_prints=False)
def requeue_documents(idle_seconds: float | None = None) -> RequeueReport:
    """Submit again the documents idle for ``idle_seconds`` (default
    ``INGESTFLOW_QUEUE_STUCK_AFTER_SECONDS``) whose job is gone or finished; then expire the
    jobs older than ``INGESTFLOW_JOBS_RETENTION_DAYS``."""
    ensure_schema()
    idle = idle_seconds if idle_seconds is not None else get_settings().queue.stuck_after_seconds
    report = requeue_waiting(idle_seconds=idle)
    logger = get_run_logger()
    logger.info(
        "re-queued %d of %d waiting document(s) in %d job(s)",
        report.resubmitted,
        report.examined,
        len(report.jobs),
    )
    expired = expire_jobs()
    logger.info(
        "expired %d job(s) and %s backend run(s)",
        expired.jobs,
        ", ".join(f"{n} {name}" for name, n in expired.runs.items()) or "no",
    )
    for name, why in expired.skipped.items():
        logger.warning("the %s backend's old runs were not pruned: %s", name, why)
    return report
