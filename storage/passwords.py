"""Documents' passwords in passing: held from the request that brought them until the run
that parses the document reads them, then gone (``document_passwords``, migration 0008)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from storage.db import Conn


def hold_password(
    conn: Conn, *, document_ids: Sequence[str], password: str, ttl_seconds: float
) -> None:
    """Keep ``password`` for these documents until it is taken, or for ``ttl_seconds``."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO document_passwords (document_id, password, expires_at)"
            " VALUES (%s, %s, now() + make_interval(secs => %s)) ON CONFLICT (document_id)"
            " DO UPDATE SET password = excluded.password, expires_at = excluded.expires_at",
            [(uuid.UUID(d), password, ttl_seconds) for d in document_ids],
        )


def take_passwords(conn: Conn, *, document_ids: Sequence[str]) -> dict[str, str]:
    """The passwords held for these documents, removed as they are read; expired ones are
    dropped unread."""
    if not document_ids:
        return {}
    conn.execute("DELETE FROM document_passwords WHERE expires_at < now()")
    rows = conn.execute(
        "DELETE FROM document_passwords WHERE document_id = ANY(%s)"
        " RETURNING document_id, password",
        ([uuid.UUID(d) for d in document_ids],),
    ).fetchall()
    return {str(r["document_id"]): r["password"] for r in rows}
