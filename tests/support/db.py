"""Read-back helpers for tests: what the database holds for a collection."""

from __future__ import annotations

from typing import Any

from storage.db import connection


def document_rows(collection: str) -> dict[str, dict[str, Any]]:
    """Document rows of ``collection`` by source URI."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT d.* FROM documents d JOIN collections c ON c.id = d.collection_id"
            " WHERE c.name = %s",
            (collection,),
        ).fetchall()
    return {r["source_uri"]: r for r in rows}


def chunk_rows(collection: str) -> list[dict[str, Any]]:
    """Chunks of ``collection`` with their document's source, in a stable order."""
    with connection() as conn:
        return conn.execute(
            "SELECT k.id, d.source_uri, k.ordinal, k.content, k.content_hash, k.provenance"
            " FROM chunks k JOIN documents d ON d.id = k.document_id"
            " JOIN collections c ON c.id = k.collection_id WHERE c.name = %s"
            " ORDER BY d.source_uri, k.ordinal",
            (collection,),
        ).fetchall()


def consistency_problems(collection: str) -> list[str]:
    """Everything wrong between documents and chunks; empty when the state is exact."""
    checks = {
        "chunk count differs from documents.chunk_count": (
            "SELECT d.id FROM documents d LEFT JOIN chunks k ON k.document_id = d.id"
            " WHERE d.collection_id = %(cid)s GROUP BY d.id, d.chunk_count"
            " HAVING count(k.id) <> d.chunk_count"
        ),
        "duplicate (document, ordinal)": (
            "SELECT document_id FROM chunks WHERE collection_id = %(cid)s"
            " GROUP BY document_id, ordinal HAVING count(*) > 1"
        ),
        "ordinals not 0..n-1": (
            "SELECT document_id FROM chunks WHERE collection_id = %(cid)s"
            " GROUP BY document_id HAVING max(ordinal) <> count(*) - 1"
        ),
        "chunk without a live document": (
            "SELECT k.id FROM chunks k LEFT JOIN documents d ON d.id = k.document_id"
            " WHERE k.collection_id = %(cid)s AND (d.id IS NULL OR d.status = 'deleted')"
        ),
        "document left processing": (
            "SELECT id FROM documents WHERE collection_id = %(cid)s AND status = 'processing'"
        ),
    }
    problems = []
    with connection() as conn:
        cid = conn.execute("SELECT id FROM collections WHERE name = %s", (collection,)).fetchone()
        if cid is None:
            return ["collection does not exist"]
        for name, query in checks.items():
            rows = conn.execute(query, {"cid": cid["id"]}).fetchall()
            if rows:
                problems.append(f"{name}: {len(rows)}")
    return problems


def statuses(collection: str) -> dict[str, str]:
    """Document statuses of ``collection`` by file name (the last part of the source URI)."""
    return {u.rsplit("/", 1)[-1]: r["status"] for u, r in document_rows(collection).items()}
