"""Job records: one row per submitted job, written when it is submitted and as it runs.

The record is the job's truth once it has ended; while it runs, the queue backend is asked
too (a run killed outright cannot write its own end). Which documents a job carries, and
how far each got, is in the documents table (``storage.job_documents``). Each change of a
job's state is counted (``storage.counters``) in the statement's transaction, once: a second
report of the same end counts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.counters import JOB_SECONDS, JOBS, increment, observe
from storage.db import Conn

TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")
STATES = ("queued", "running", *TERMINAL)  # what a record's state may be
_COLUMNS = (
    "id, tenant, collection, kind, backend, run_id, flow_run_id, priority, state, message,"
    " documents_total, documents_done, documents_failed, chunks_total, chunks_embedded,"
    " chunks_written, created_at, started_at, finished_at, updated_at"
)


@dataclass(frozen=True)
class JobRecord:
    id: str
    tenant: str
    collection: str
    kind: str
    backend: str
    run_id: str | None
    flow_run_id: str | None
    priority: str
    state: str
    message: str | None
    documents_total: int
    documents_done: int
    documents_failed: int
    chunks_total: int
    chunks_embedded: int
    chunks_written: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def create_job(
    conn: Conn,
    *,
    job_id: str,
    tenant: str,
    collection: str,
    kind: str,
    backend: str,
    priority: str = "normal",
    run_id: str | None = None,
    documents: int = 0,
) -> JobRecord:
    """The job's record, ``queued``; an existing record of this id is returned unchanged."""
    inserted = conn.execute(
        "INSERT INTO jobs (id, tenant, collection, kind, backend, priority, run_id,"
        " documents_total) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (job_id, tenant, collection, kind, backend, priority, run_id, documents),
    ).rowcount
    if inserted:
        increment(conn, JOBS, (tenant, kind, "submitted"))
    found = find_job(conn, job_id=job_id)
    assert found is not None  # inserted, or there already
    return found


def set_run(conn: Conn, *, job_id: str, run_id: str, flow_run_id: str | None = None) -> None:
    """The backend's run of the job (and the Prefect flow run, when that is what it is)."""
    conn.execute(
        "UPDATE jobs SET run_id = %s, flow_run_id = coalesce(%s, flow_run_id),"
        " updated_at = now() WHERE id = %s",
        (run_id, flow_run_id, job_id),
    )


def job_for_run(conn: Conn, *, run_id: str) -> JobRecord | None:
    """The job whose backend run is ``run_id`` (an idempotent resubmission finds it)."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE run_id = %s ORDER BY created_at LIMIT 1", (run_id,)
    ).fetchone()
    return JobRecord(**row) if row else None


def run_shared(conn: Conn, *, job_id: str, run_id: str) -> bool:
    """Whether another job that has not ended shares the run ``run_id`` (coalesced jobs)."""
    row = conn.execute(
        "SELECT 1 FROM jobs WHERE run_id = %s AND id <> %s AND state NOT IN"
        " ('completed', 'completed_with_errors', 'failed', 'cancelled') LIMIT 1",
        (run_id, job_id),
    ).fetchone()
    return row is not None


_START = """
WITH before AS (SELECT id, started_at FROM jobs WHERE id = %(id)s FOR UPDATE)
UPDATE jobs SET state = 'running', flow_run_id = coalesce(%(flow_run)s, jobs.flow_run_id),
    started_at = coalesce(jobs.started_at, now()), finished_at = NULL, message = NULL,
    updated_at = now()
FROM before WHERE jobs.id = before.id AND jobs.state <> 'cancelled'
RETURNING jobs.tenant, jobs.kind, before.started_at IS NOT NULL AS again
"""


def start_job(conn: Conn, *, job_id: str, flow_run_id: str | None) -> bool:
    """The run has started (again, after a retry: the first start is kept); False when the
    job was cancelled before, and stays so."""
    row = conn.execute(_START, {"id": job_id, "flow_run": flow_run_id}).fetchone()
    if row is not None:
        event = "retried" if row["again"] else "started"
        increment(conn, JOBS, (row["tenant"], row["kind"], event))
        return True
    found = find_job(conn, job_id=job_id)
    return found is None or found.state != "cancelled"


def add_progress(
    conn: Conn, *, job_id: str, chunks_total: int = 0, embedded: int = 0, written: int = 0
) -> None:
    conn.execute(
        "UPDATE jobs SET chunks_total = chunks_total + %s, chunks_embedded = chunks_embedded"
        " + %s, chunks_written = chunks_written + %s, updated_at = now() WHERE id = %s",
        (chunks_total, embedded, written, job_id),
    )


def reset_progress(conn: Conn, *, job_id: str) -> None:
    """A run starting over counts its chunks afresh."""
    conn.execute(
        "UPDATE jobs SET chunks_total = 0, chunks_embedded = 0, chunks_written = 0 WHERE id = %s",
        (job_id,),
    )


_FINISH = """
WITH before AS (SELECT id, state FROM jobs WHERE id = %(id)s FOR UPDATE)
UPDATE jobs SET state = %(state)s, message = %(message)s, finished_at = now(),
    updated_at = now(), documents_total = coalesce(%(total)s, documents_total),
    documents_done = coalesce(%(done)s, documents_done),
    documents_failed = coalesce(%(failed)s, documents_failed)
FROM before
WHERE jobs.id = before.id AND (jobs.state <> 'cancelled' OR %(state)s = 'cancelled')
RETURNING jobs.tenant, jobs.kind, before.state = ANY(%(terminal)s) AS was_terminal,
    extract(epoch FROM now() - jobs.started_at) AS seconds
"""


def finish_job(
    conn: Conn,
    *,
    job_id: str,
    state: str,
    message: str | None = None,
    documents: tuple[int, int, int] | None = None,
) -> None:
    """The job's end, with its documents (total, done, failed) when known; a cancelled job
    stays cancelled whatever its run reports after."""
    assert state in TERMINAL
    total, done, failed = documents if documents else (None, None, None)
    row = conn.execute(
        _FINISH,
        {
            "state": state,
            "message": message,
            "total": total,
            "done": done,
            "failed": failed,
            "id": job_id,
            "terminal": list(TERMINAL),
        },
    ).fetchone()
    if row is not None and not row["was_terminal"]:
        increment(conn, JOBS, (row["tenant"], row["kind"], state))
        if row["seconds"] is not None:
            observe(conn, JOB_SECONDS, (row["kind"],), float(row["seconds"]))


def find_job(conn: Conn, *, job_id: str, tenant: str | None = None) -> JobRecord | None:
    """The job ``job_id``; of ``tenant`` only, when one is named."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE id = %(id)s"
        " AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)",
        {"id": job_id, "tenant": tenant},
    ).fetchone()
    return JobRecord(**row) if row else None


def list_jobs(
    conn: Conn,
    *,
    tenant: str,
    collection: str | None = None,
    state: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    after: tuple[datetime, str] | None = None,
) -> list[JobRecord]:
    """The tenant's jobs, newest first, filtered, starting after the keyset ``after``."""
    after_ts, after_id = after if after else (None, None)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE tenant = %(tenant)s"
        " AND (%(coll)s::text IS NULL OR collection = %(coll)s)"
        " AND (%(state)s::text IS NULL OR state = %(state)s)"
        " AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
        " AND (%(ts)s::timestamptz IS NULL OR (created_at, id) < (%(ts)s, %(id)s))"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
        {
            "tenant": tenant,
            "coll": collection,
            "state": state,
            "kind": kind,
            "ts": after_ts,
            "id": after_id,
            "limit": limit,
        },
    ).fetchall()
    return [JobRecord(**r) for r in rows]


def delete_job(conn: Conn, *, job_id: str) -> None:
    conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))


def expire_jobs(conn: Conn, *, older_than_seconds: float) -> list[JobRecord]:
    """Delete the records of jobs that ended before the retention; returns them."""
    rows = conn.execute(
        f"DELETE FROM jobs WHERE state = ANY(%s) AND finished_at < now()"
        f" - make_interval(secs => %s) RETURNING {_COLUMNS}",
        (list(TERMINAL), older_than_seconds),
    ).fetchall()
    return [JobRecord(**r) for r in rows]


def job_counts(
    conn: Conn, *, since: datetime, until: datetime, tenant: str | None = None
) -> list[dict[str, Any]]:
    """Jobs created in [``since``, ``until``), counted by tenant, kind and state."""
    return conn.execute(
        "SELECT tenant, kind, state, count(*) AS jobs FROM jobs"
        " WHERE created_at >= %(since)s AND created_at < %(until)s"
        " AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
        " GROUP BY tenant, kind, state ORDER BY tenant, kind, state",
        {"since": since, "until": until, "tenant": tenant},
    ).fetchall()
