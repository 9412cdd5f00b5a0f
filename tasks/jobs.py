"""What a running job writes to its record: that it started, how many chunks it has found,
embedded and written, and how it ended.

Chunk counts are buffered in this process and written at most once a second per job (and
when a stage ends), so a long document moves its job's progress every second or two without a
write per embedding batch. A run with no job (a notebook's ``ingest()``) writes nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from ingestflow.core.telemetry import mark_error, setup_telemetry, span
from ingestflow.core.types import DocumentOutcome, DocumentStatus
from storage.counters import STAGE_RUN_SECONDS, STAGE_RUNS, increment, observe
from storage.db import transaction
from storage.jobs import add_progress, finish_job, reset_progress, start_job

FLUSH_SECONDS = 1.0
_lock = threading.Lock()
_pending: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_flushed: dict[str, float] = {}


@contextmanager
def job_span(
    job_id: str | Sequence[str] | None, *, kind: str, tenant: str, collection: str
) -> Iterator[Any]:
    """The trace span of a job's run (a run with no job, a notebook's, has one too; a run of
    coalesced jobs names them all); sets the process's telemetry up on first use."""
    setup_telemetry()
    attributes = {
        "ingestflow.job.id": job_attribute(job_id),
        "ingestflow.job.kind": kind,
        "ingestflow.tenant": tenant,
        "ingestflow.collection": collection,
    }
    with span("ingestflow.job", **attributes) as current:
        yield current


def job_attribute(job_id: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """A span's ``ingestflow.job.id``: the job, or the jobs of a coalesced run."""
    if job_id is None or isinstance(job_id, str):
        return job_id
    ids = tuple(job_id)
    return ids[0] if len(ids) == 1 else (ids or None)


def span_outcome(current: Any, state: str, documents: tuple[int, int, int]) -> None:
    """How the job ended, on its span: a failed job's span is an error."""
    current.set_attribute("ingestflow.job.state", state)
    current.set_attribute("ingestflow.documents", documents[0])
    current.set_attribute("ingestflow.documents.failed", documents[2])
    if state == "failed":
        mark_error(current, "failed")


def job_started(job_id: str | None, *, flow_run_id: str | None) -> bool:
    """The run has started: ``running``, its chunk counts from zero (a retried run starts
    over). False when the job was cancelled before its run started: leave it alone."""
    if job_id is None:
        return True
    with transaction() as conn:
        if not start_job(conn, job_id=job_id, flow_run_id=flow_run_id):
            return False
        reset_progress(conn, job_id=job_id)
    return True


def chunks_progressed(
    job_id: str | None, *, total: int = 0, embedded: int = 0, written: int = 0, flush: bool = False
) -> None:
    """Count chunks found, embedded or written; written to the record at most once a second,
    or now with ``flush``."""
    if job_id is None:
        return
    with _lock:
        counts = _pending[job_id]
        counts["chunks_total"] += total
        counts["embedded"] += embedded
        counts["written"] += written
        due = flush or time.monotonic() - _flushed.get(job_id, 0.0) >= FLUSH_SECONDS
        if not due:
            return
        taken = dict(_pending.pop(job_id))
        _flushed[job_id] = time.monotonic()
    if any(taken.values()):
        with transaction() as conn:
            add_progress(conn, job_id=job_id, **taken)


def chunks_by_job(
    jobs: Mapping[str, str],
    counts: Iterable[tuple[str, int]],
    *,
    what: Literal["total", "embedded", "written"],
    flush: bool = False,
) -> None:
    """Count chunks for the jobs of their documents: ``counts`` pairs a document's source
    (as the run was given it; ``jobs`` maps it to its job) with a number of its chunks."""
    per_job: Counter[str] = Counter()
    for source, n in counts:
        if source in jobs:
            per_job[jobs[source]] += n
    for job in set(jobs.values()) if flush else per_job:
        chunks_progressed(job, flush=flush, **{what: per_job[job]})


def job_ended(
    job_id: str | None,
    state: str,
    message: str | None = None,
    documents: tuple[int, int, int] | None = None,
) -> None:
    """The job's end, and its documents (total, done, failed) when the run knows them."""
    if job_id is None:
        return
    chunks_progressed(job_id, flush=True)
    with transaction() as conn:
        finish_job(conn, job_id=job_id, state=state, message=message, documents=documents)
    with _lock:
        _flushed.pop(job_id, None)


def ingest_outcome(
    outcomes: Sequence[DocumentOutcome],
) -> tuple[str, str | None, tuple[int, int, int]]:
    """A finished ingest job's state, message and documents (total, done, failed):
    ``failed`` when every document failed, ``completed_with_errors`` when some did, else
    ``completed``."""
    failed = [o for o in outcomes if o.status is DocumentStatus.FAILED]
    counts = (len(outcomes), len(outcomes) - len(failed), len(failed))
    if not failed:
        return "completed", None, counts
    first = f"{failed[0].source_uri}: {failed[0].error or 'failed'}"
    if len(failed) == len(outcomes):
        return "failed", f"all {len(failed)} documents failed; the first: {first}", counts
    return "completed_with_errors", f"{len(failed)} of {len(outcomes)} documents failed", counts


def stage_started(tenant: str, stage: str) -> None:
    """A stage task has started on a micro-batch (the counters of ``/metrics``)."""
    with transaction() as conn:
        increment(conn, STAGE_RUNS, (tenant, stage, "started"))


def stage_ran(tenant: str, stage: str, outcome: str, seconds: float) -> None:
    """A stage task's run has ended: ``succeeded``, ``failed`` or ``retried`` (the counters
    and histograms of ``/metrics``)."""
    with transaction() as conn:
        increment(conn, STAGE_RUNS, (tenant, stage, outcome))
        observe(conn, STAGE_RUN_SECONDS, (stage,), seconds)
