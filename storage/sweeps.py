"""What a bucket sweep reads and writes: listed versions and last-seen marks. (Retiring the
documents it did not see is ``storage.documents.retire_unseen``.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from storage.db import Conn


@dataclass(frozen=True)
class KnownVersion:
    status: str
    etag: str | None
    size: int | None
    modified: datetime | None


def known_versions(
    conn: Conn, *, collection_id: int, uris: Sequence[str]
) -> dict[str, KnownVersion]:
    """The stored version of each of ``uris`` that the collection already has a row for."""
    rows = conn.execute(
        "SELECT source_uri, status, source_etag, size_bytes, source_modified FROM documents"
        " WHERE collection_id = %s AND source_uri = ANY(%s)",
        (collection_id, list(uris)),
    ).fetchall()
    return {
        r["source_uri"]: KnownVersion(
            r["status"], r["source_etag"], r["size_bytes"], r["source_modified"]
        )
        for r in rows
    }


def mark_seen(conn: Conn, *, collection_id: int, uris: Sequence[str], seen_at: datetime) -> None:
    conn.execute(
        "UPDATE documents SET last_seen_at = %s WHERE collection_id = %s AND source_uri = ANY(%s)",
        (seen_at, collection_id, list(uris)),
    )


def record_versions(
    conn: Conn,
    *,
    collection_id: int,
    versions: Sequence[tuple[str, str | None, datetime | None]],
    seen_at: datetime,
) -> None:
    """Store (uri, etag, modified) after ingesting; a None etag means "look again next time"."""
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE documents SET source_etag = %s, source_modified = %s, last_seen_at = %s"
            " WHERE collection_id = %s AND source_uri = %s",
            [(etag, modified, seen_at, collection_id, uri) for uri, etag, modified in versions],
        )


def live_under_prefix(conn: Conn, *, collection_id: int, prefix: str) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM documents WHERE collection_id = %s"
        " AND starts_with(source_uri, %s) AND status <> 'deleted'",
        (collection_id, prefix),
    ).fetchone()
    return int(row["n"]) if row else 0


def unseen_under_prefix(conn: Conn, *, collection_id: int, prefix: str, since: datetime) -> int:
    """Live documents under ``prefix`` that the listing started at ``since`` did not show."""
    row = conn.execute(
        "SELECT count(*) AS n FROM documents WHERE collection_id = %s"
        " AND starts_with(source_uri, %s) AND status <> 'deleted'"
        " AND (last_seen_at IS NULL OR last_seen_at < %s)",
        (collection_id, prefix, since),
    ).fetchone()
    return int(row["n"]) if row else 0
