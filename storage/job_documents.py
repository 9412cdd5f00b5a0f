"""Documents seen through jobs: tying them to the job that takes them, and reading a job's
progress back. There is no job table; a job is the documents that name it. (Their status is
written by ``storage.documents``.)"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from storage.db import Conn
from storage.documents import _RECORD_COLUMNS, DocumentRecord, _record


def find_by_sha256(conn: Conn, *, collection_id: int, sha256: str) -> DocumentRecord | None:
    """A document of the collection with these bytes: indexed first, then in progress, then
    failed (a deleted one is not found)."""
    row = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM documents WHERE collection_id = %s AND sha256 = %s"
        " AND status IN ('indexed', 'unchanged', 'queued', 'processing', 'failed')"
        " ORDER BY status IN ('indexed', 'unchanged') DESC, status = 'failed', created_at"
        " LIMIT 1",
        (collection_id, sha256),
    ).fetchone()
    return _record(row) if row else None


def assign_job(conn: Conn, *, document_ids: list[str], job_id: str) -> None:
    """Record that ``job_id`` now carries these documents."""
    conn.execute(
        "UPDATE documents SET job_id = %s, updated_at = now() WHERE id = ANY(%s)",
        (job_id, [uuid.UUID(d) for d in document_ids]),
    )


@dataclass(frozen=True)
class JobDocuments:
    """The documents a job carries; a job never spans collections."""

    collection: str
    documents: list[DocumentRecord]


_QUALIFIED = ", ".join("d." + c.strip() for c in _RECORD_COLUMNS.split(","))


def job_documents(conn: Conn, *, job_id: str, tenant: str) -> JobDocuments | None:
    """The tenant's documents carried by ``job_id``; None if there are none (or the job is
    another tenant's)."""
    rows = conn.execute(
        f"SELECT c.name AS collection_name, {_QUALIFIED}"
        " FROM documents d JOIN collections c ON c.id = d.collection_id"
        " WHERE d.job_id = %s AND c.tenant = %s ORDER BY d.created_at, d.id",
        (job_id, tenant),
    ).fetchall()
    if not rows:
        return None
    collection = rows[0].pop("collection_name")
    for row in rows[1:]:
        row.pop("collection_name")
    return JobDocuments(collection, [_record(r) for r in rows])


@dataclass(frozen=True)
class JobRow:
    """A job as the documents table sees it."""

    job_id: str
    collection: str
    documents: int
    first_seen: datetime
    last_update: datetime


def list_job_rows(
    conn: Conn,
    *,
    tenant: str,
    collection: str | None = None,
    limit: int = 50,
    before: datetime | None = None,
) -> list[JobRow]:
    """The tenant's jobs, most recently active first, ``limit`` at a time."""
    rows = conn.execute(
        "SELECT d.job_id, c.name AS collection, count(*) AS documents,"
        " min(d.created_at) AS first_seen, max(d.updated_at) AS last_update"
        " FROM documents d JOIN collections c ON c.id = d.collection_id"
        " WHERE c.tenant = %(tenant)s AND d.job_id IS NOT NULL"
        " AND (%(coll)s::text IS NULL OR c.name = %(coll)s)"
        " GROUP BY d.job_id, c.name"
        " HAVING (%(before)s::timestamptz IS NULL OR max(d.updated_at) < %(before)s)"
        " ORDER BY max(d.updated_at) DESC LIMIT %(limit)s",
        {"tenant": tenant, "coll": collection, "before": before, "limit": limit},
    ).fetchall()
    return [JobRow(**r) for r in rows]


@dataclass(frozen=True)
class Waiting:
    """A document waiting for a job: never submitted, or its job may have died."""

    document_id: str
    tenant: str
    collection: str
    source_uri: str
    status: str
    job_id: str | None


def waiting_documents(conn: Conn, *, idle_seconds: float, limit: int = 1000) -> list[Waiting]:
    """Documents ``queued`` or ``processing`` with no change for ``idle_seconds``."""
    rows = conn.execute(
        "SELECT d.id::text AS document_id, c.tenant, c.name AS collection, d.source_uri,"
        " d.status, d.job_id FROM documents d JOIN collections c ON c.id = d.collection_id"
        " WHERE d.status IN ('queued', 'processing')"
        " AND d.updated_at < now() - make_interval(secs => %s)"
        " ORDER BY d.updated_at LIMIT %s",
        (idle_seconds, limit),
    ).fetchall()
    return [Waiting(**r) for r in rows]


def count_active_jobs(conn: Conn, *, tenant: str) -> int:
    """How many jobs carry documents of the tenant that are still ``queued`` or
    ``processing``: the tenant's active jobs, read from the documents table alone.

    Documents waiting without a job (the queue backend was down) count for none; a job
    whose run died counts until the re-queue pass moves its documents on.
    """
    row = conn.execute(
        "SELECT count(DISTINCT d.job_id) AS jobs FROM documents d"
        " JOIN collections c ON c.id = d.collection_id"
        " WHERE c.tenant = %s AND d.status IN ('queued', 'processing')"
        " AND d.job_id IS NOT NULL",
        (tenant,),
    ).fetchone()
    return int(row["jobs"]) if row else 0
