"""Document rows: the one repository that writes a document's status.

Queueing a source, claiming it for (re)indexing, recording it indexed or failed, deleting or
retiring it, and reading rows back for reports. A source is stored in its canonical spelling
(``storage.objectstore.canonical_uri``: a local path as an absolute ``file://`` URI), so
``/data/a.pdf`` and ``file:///data/a.pdf`` are one document.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ingestflow.core.errors import DocumentNotFoundError
from ingestflow.core.types import DocumentStatus
from storage.db import Conn
from storage.objectstore import canonical_uri


@dataclass(frozen=True)
class Claim:
    """The dedupe decision for one source: index it now, or it is already up to date."""

    document_id: str
    unchanged: bool
    chunk_count: int


def claim_document(
    conn: Conn,
    *,
    collection_id: int,
    source_uri: str,
    sha256: str,
    pipeline: str,
    size: int,
    metadata: dict[str, Any],
    force: bool,
    flow_run_id: str | None,
) -> Claim:
    """Decide whether ``source_uri`` with these bytes needs indexing, and record the decision.

    The same bytes already indexed with the same ``pipeline`` (parser and chunking settings),
    and not ``force`` -> ``unchanged``. The same bytes indexed under another source in the
    collection -> ``unchanged`` too, with that document's chunks copied (no parsing, no
    embedding). Otherwise the row moves to ``processing`` with the new digest; its old chunks
    stay searchable until the upsert replaces them. Runs in the caller's transaction.
    """
    source_uri = canonical_uri(source_uri)  # one document per source, however spelled
    row = conn.execute(
        "SELECT id, sha256, pipeline, status, chunk_count FROM documents"
        " WHERE collection_id = %s AND source_uri = %s FOR UPDATE",
        (collection_id, source_uri),
    ).fetchone()
    done = (DocumentStatus.INDEXED.value, DocumentStatus.UNCHANGED.value)
    same = row is not None and (row["sha256"], row["pipeline"]) == (sha256, pipeline)
    if row and same and row["status"] in done and not force:
        conn.execute(
            "UPDATE documents SET status = 'unchanged', updated_at = now(), flow_run_id = %s,"
            " metadata = metadata || %s WHERE id = %s",
            (flow_run_id, Jsonb(metadata), row["id"]),
        )
        return Claim(str(row["id"]), True, row["chunk_count"])
    new = conn.execute(
        "INSERT INTO documents (collection_id, source_uri, sha256, pipeline, size_bytes, status,"
        " attempts, flow_run_id, metadata) VALUES (%s, %s, %s, %s, %s, 'processing', 1, %s, %s)"
        " ON CONFLICT (collection_id, source_uri) DO UPDATE SET sha256 = excluded.sha256,"
        " pipeline = excluded.pipeline,"
        " size_bytes = excluded.size_bytes, status = 'processing', error = NULL,"
        " attempts = documents.attempts + 1, flow_run_id = excluded.flow_run_id,"
        " metadata = CASE WHEN documents.status = 'queued'"
        " THEN documents.metadata || excluded.metadata ELSE excluded.metadata END,"
        " error_code = NULL, updated_at = now()"
        " RETURNING id, chunk_count",
        (collection_id, source_uri, sha256, pipeline, size, flow_run_id, Jsonb(metadata)),
    ).fetchone()
    assert new is not None  # an upsert with RETURNING always returns its row
    twin = None if force else _indexed_twin(conn, collection_id, sha256, pipeline, new["id"])
    if twin is not None:
        count = _copy_chunks(conn, source=twin["id"], target=new["id"])
        conn.execute(
            "UPDATE documents SET status = 'unchanged', chunk_count = %s, media_type = %s,"
            " indexed_at = now() WHERE id = %s",
            (count, twin["media_type"], new["id"]),
        )
        return Claim(str(new["id"]), True, count)
    return Claim(str(new["id"]), False, new["chunk_count"])


def _indexed_twin(
    conn: Conn, collection_id: int, sha256: str, pipeline: str, exclude: Any
) -> dict[str, Any] | None:
    """Another document of the collection already indexed from identical bytes, locked so
    its chunks cannot change while they are copied."""
    return conn.execute(
        "SELECT id, media_type FROM documents WHERE collection_id = %s AND sha256 = %s"
        " AND pipeline = %s AND status IN ('indexed', 'unchanged') AND id <> %s"
        " ORDER BY created_at LIMIT 1 FOR SHARE",
        (collection_id, sha256, pipeline, exclude),
    ).fetchone()


def _copy_chunks(conn: Conn, *, source: Any, target: Any) -> int:
    conn.execute("DELETE FROM chunks WHERE document_id = %s", (target,))
    cur = conn.execute(
        "INSERT INTO chunks (document_id, collection_id, ordinal, content, content_hash,"
        " provenance, embedding) SELECT %s, collection_id, ordinal, content, content_hash,"
        " provenance, embedding FROM chunks WHERE document_id = %s",
        (target, source),
    )
    return cur.rowcount


def record_failure(
    conn: Conn,
    *,
    collection_id: int,
    source_uri: str,
    error: str,
    flow_run_id: str | None,
    metadata: dict[str, Any] | None = None,
    error_code: str | None = None,
) -> str:
    """Mark a source ``failed`` with a human-readable reason; its existing chunks are kept."""
    source_uri = canonical_uri(source_uri)  # one document per source, however spelled
    row = conn.execute(
        "INSERT INTO documents (collection_id, source_uri, status, error, error_code, attempts,"
        " flow_run_id, metadata) VALUES (%s, %s, 'failed', %s, %s, 1, %s, %s)"
        " ON CONFLICT (collection_id, source_uri) DO UPDATE SET status = 'failed',"
        " error = excluded.error, error_code = excluded.error_code,"
        " flow_run_id = excluded.flow_run_id, updated_at = now(),"
        " attempts = CASE WHEN documents.status = 'processing' THEN documents.attempts"
        " ELSE documents.attempts + 1 END"
        " RETURNING id",
        (collection_id, source_uri, error, error_code, flow_run_id, Jsonb(metadata or {})),
    ).fetchone()
    assert row is not None  # an upsert with RETURNING always returns its row
    return str(row["id"])


def status_counts(conn: Conn, *, collection_id: int | None = None) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) AS n FROM documents"
        " WHERE %(cid)s::int IS NULL OR collection_id = %(cid)s GROUP BY status",
        {"cid": collection_id},
    ).fetchall()
    return {r["status"]: r["n"] for r in rows}


def collection_totals(conn: Conn, *, collection_id: int) -> dict[str, Any]:
    """A collection's chunks (counted from the index itself), its last document indexed and
    its last change of any document."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM chunks WHERE collection_id = %(cid)s) AS chunks,"
        " max(indexed_at) AS last_indexed_at, max(updated_at) AS last_activity_at"
        " FROM documents WHERE collection_id = %(cid)s",
        {"cid": collection_id},
    ).fetchone()
    assert row is not None  # an aggregate always returns its row
    return dict(row)


def recent_failures(
    conn: Conn, *, collection_id: int | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """The latest failed documents: id, source, reason and its code, when, collection."""
    return conn.execute(
        "SELECT d.id::text AS id, d.source_uri, d.error, d.error_code, d.updated_at,"
        " c.name AS collection"
        " FROM documents d JOIN collections c ON c.id = d.collection_id"
        " WHERE d.status = 'failed' AND (%(cid)s::int IS NULL OR d.collection_id = %(cid)s)"
        " ORDER BY d.updated_at DESC LIMIT %(limit)s",
        {"cid": collection_id, "limit": limit},
    ).fetchall()


@dataclass(frozen=True)
class DocumentRecord:
    """A document row as readers see it (the API, the CLI)."""

    id: str
    source_uri: str
    status: str
    error: str | None
    attempts: int
    chunk_count: int
    media_type: str | None
    size_bytes: int | None
    sha256: str | None
    metadata: dict[str, Any]
    timings: dict[str, Any]
    flow_run_id: str | None
    created_at: datetime
    updated_at: datetime
    indexed_at: datetime | None
    job_id: str | None = None
    error_code: str | None = None
    embedding_tokens: int = 0


_RECORD_COLUMNS = (
    "id, source_uri, status, error, attempts, chunk_count, media_type, size_bytes, sha256,"
    " metadata, timings, flow_run_id, created_at, updated_at, indexed_at, job_id, error_code,"
    " embedding_tokens"
)


def _record(row: dict[str, Any]) -> DocumentRecord:
    return DocumentRecord(**{**row, "id": str(row["id"])})


def list_documents(
    conn: Conn,
    *,
    collection_id: int,
    status: str | None = None,
    limit: int = 50,
    after: tuple[datetime, str] | None = None,
) -> list[DocumentRecord]:
    """Documents of a collection in (created_at, id) order, starting after the keyset ``after``.

    Keyset pagination: pages stay consistent while documents are added or change status.
    """
    after_ts, after_id = after if after else (None, None)
    rows = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM documents WHERE collection_id = %(cid)s"
        " AND (%(status)s::text IS NULL OR status = %(status)s)"
        " AND (%(ts)s::timestamptz IS NULL OR (created_at, id) > (%(ts)s, %(id)s::uuid))"
        " ORDER BY created_at, id LIMIT %(limit)s",
        {"cid": collection_id, "status": status, "ts": after_ts, "id": after_id, "limit": limit},
    ).fetchall()
    return [_record(r) for r in rows]


def _as_uuid(document_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(document_id))
    except ValueError:
        raise DocumentNotFoundError(f"document {document_id!r} does not exist") from None


def find_document(conn: Conn, *, collection_id: int, document_id: str) -> DocumentRecord:
    """The document ``document_id`` of this collection; one of another collection is not found."""
    row = conn.execute(
        f"SELECT {_RECORD_COLUMNS} FROM documents WHERE collection_id = %s AND id = %s",
        (collection_id, _as_uuid(document_id)),
    ).fetchone()
    if row is None:
        raise DocumentNotFoundError(f"document {document_id!r} does not exist")
    return _record(row)


def chunk_provenance(conn: Conn, *, document_id: str, limit: int = 5) -> list[dict[str, Any]]:
    """The first chunks' ordinal and provenance (page, heading ...), a summary for readers."""
    return conn.execute(
        "SELECT ordinal, provenance FROM chunks WHERE document_id = %s ORDER BY ordinal LIMIT %s",
        (_as_uuid(document_id), limit),
    ).fetchall()


def delete_document(conn: Conn, *, collection_id: int, document_id: str) -> DocumentRecord:
    """Drop a document's chunks and mark it ``deleted``, in one transaction.

    Deleting twice is harmless. The digest is cleared, so an ingest run that
    claimed the document earlier cannot bring its chunks back (``replace_chunks`` skips a
    document whose digest changed), and ingesting the source again indexes it afresh.
    """
    doc_id = _as_uuid(document_id)
    with conn.transaction():
        row = conn.execute(
            "SELECT id FROM documents WHERE collection_id = %s AND id = %s FOR UPDATE",
            (collection_id, doc_id),
        ).fetchone()
        if row is None:
            raise DocumentNotFoundError(f"document {document_id!r} does not exist")
        conn.execute("DELETE FROM chunks WHERE document_id = %s", (doc_id,))
        updated = conn.execute(
            "UPDATE documents SET status = 'deleted', chunk_count = 0, error = NULL,"
            " sha256 = NULL, pipeline = NULL, updated_at = now() WHERE id = %s"
            f" RETURNING {_RECORD_COLUMNS}",
            (doc_id,),
        ).fetchone()
    assert updated is not None  # the row is locked above
    return _record(updated)


@dataclass(frozen=True)
class Indexed:
    """A document's new chunk set is written: what its row records."""

    document_id: str
    chunk_count: int
    media_type: str
    timings: dict[str, float]
    embedding_tokens: int


def mark_indexed(conn: Conn, docs: Sequence[Indexed]) -> None:
    """Record each document indexed: status, chunk count, stage timings, tokens spent."""
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE documents SET status = 'indexed', error = NULL, error_code = NULL,"
            " chunk_count = %s, media_type = %s, timings = %s,"
            " embedding_tokens = embedding_tokens + %s, indexed_at = now(), updated_at = now()"
            " WHERE id = %s",
            [
                (d.chunk_count, d.media_type, Jsonb(d.timings), d.embedding_tokens, d.document_id)
                for d in docs
            ],
        )


def enqueue_document(
    conn: Conn,
    *,
    collection_id: int,
    source_uri: str,
    metadata: dict[str, Any],
    sha256: str | None = None,
    size: int | None = None,
) -> DocumentRecord:
    """Create or reset the row of ``source_uri`` as ``queued``, before any job takes it.

    Existing chunks stay searchable until a run replaces them.
    """
    source_uri = canonical_uri(source_uri)  # one document per source, however spelled
    row = conn.execute(
        "INSERT INTO documents (collection_id, source_uri, sha256, size_bytes, status, metadata)"
        " VALUES (%s, %s, %s, %s, 'queued', %s)"
        " ON CONFLICT (collection_id, source_uri) DO UPDATE SET status = 'queued',"
        " error = NULL, error_code = NULL, job_id = NULL, metadata = excluded.metadata,"
        " sha256 = COALESCE(excluded.sha256, documents.sha256),"
        " size_bytes = COALESCE(excluded.size_bytes, documents.size_bytes), updated_at = now()"
        f" RETURNING {_RECORD_COLUMNS}",
        (collection_id, source_uri, sha256, size, Jsonb(metadata)),
    ).fetchone()
    assert row is not None  # an upsert with RETURNING always returns its row
    return _record(row)


def requeue_documents(conn: Conn, *, document_ids: list[str]) -> None:
    """Put documents back to ``queued`` for another job (a retry)."""
    conn.execute(
        "UPDATE documents SET status = 'queued', error = NULL, error_code = NULL,"
        " updated_at = now() WHERE id = ANY(%s)",
        ([uuid.UUID(d) for d in document_ids],),
    )


def fail_unfinished(conn: Conn, *, job_id: str, reason: str, code: str) -> int:
    """Mark the job's documents that are still queued or processing ``failed``; their old
    chunks are kept. Returns how many."""
    cur = conn.execute(
        "UPDATE documents SET status = 'failed', error = %s, error_code = %s, updated_at = now()"
        " WHERE job_id = %s AND status IN ('queued', 'processing')",
        (reason, code, job_id),
    )
    return cur.rowcount


def retire_unseen(
    conn: Conn, *, collection_id: int, prefix: str, since: datetime
) -> list[dict[str, Any]]:
    """Mark unseen documents ``deleted`` and drop their chunks; returns the retired rows."""
    retired = conn.execute(
        "UPDATE documents SET status = 'deleted', chunk_count = 0, error = NULL,"
        " updated_at = now() WHERE collection_id = %s AND starts_with(source_uri, %s)"
        " AND status <> 'deleted' AND (last_seen_at IS NULL OR last_seen_at < %s)"
        " RETURNING id, source_uri",
        (collection_id, prefix, since),
    ).fetchall()
    if retired:
        conn.execute(
            "DELETE FROM chunks WHERE document_id = ANY(%s::uuid[])",
            ([str(r["id"]) for r in retired],),
        )
    return retired
