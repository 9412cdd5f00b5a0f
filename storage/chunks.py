"""Chunk rows: atomic replacement of a document's chunks, and vector search."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql

from ingestflow.types import Chunk, SearchHit
from storage.db import Conn

_COPY = (
    "COPY chunks (document_id, collection_id, ordinal, content, content_hash, provenance,"
    " embedding) FROM STDIN WITH (FORMAT BINARY)"
)
_COPY_TYPES = ["uuid", "int4", "int4", "text", "text", "jsonb", "vector"]


@dataclass(frozen=True)
class DocumentChunks:
    """The full new chunk set of one document, with one vector per chunk.

    ``embedding_tokens`` is what this indexing sent to the embedder for the document; it is
    added to the row's running total, so the sum over documents only grows (the
    ``ingestflow_embedding_tokens_total`` counter is that sum).
    """

    document_id: str
    sha256: str
    media_type: str
    chunks: Sequence[Chunk]
    vectors: np.ndarray
    timings: dict[str, float]
    embedding_tokens: int = 0


def replace_chunks(
    conn: Conn, *, collection_id: int, documents: Sequence[DocumentChunks]
) -> list[str]:
    """Swap in each document's new chunks and mark it ``indexed``, in the caller's transaction.

    Rows are locked first; a document whose digest changed since it was claimed (a newer run
    took it over) is skipped and its id left out of the returned list. Readers see the old
    chunk set until commit and the new one after: never a mix, never a gap.
    """
    if not documents:
        return []
    started = time.perf_counter()
    ids = [d.document_id for d in documents]
    rows = conn.execute(
        "SELECT id, sha256 FROM documents WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE",
        (ids,),
    ).fetchall()
    current = {str(r["id"]): r["sha256"] for r in rows}
    live = [d for d in documents if current.get(d.document_id) == d.sha256]
    if not live:
        return []
    conn.execute(
        "DELETE FROM chunks WHERE document_id = ANY(%s::uuid[])", ([d.document_id for d in live],)
    )
    with conn.cursor() as cur, cur.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for doc in live:
            for chunk, vector in zip(doc.chunks, doc.vectors, strict=True):
                copy.write_row(
                    (
                        uuid.UUID(doc.document_id),
                        collection_id,
                        chunk.ordinal,
                        chunk.content,
                        chunk.content_hash,
                        chunk.provenance,
                        vector,
                    )
                )
    _mark_indexed(conn, live, write_seconds=time.perf_counter() - started)
    return [d.document_id for d in live]


def _mark_indexed(conn: Conn, docs: Sequence[DocumentChunks], *, write_seconds: float) -> None:
    """Record each document's outcome: status, chunk count, stage timings, tokens spent.

    The write's duration is shared out by chunk count as the ``upsert`` stage, so the stored
    timings cover all seven stages (the caller's own clock stops only after this row is
    written).
    """
    from psycopg.types.json import Jsonb

    total = sum(len(d.chunks) for d in docs) or 1
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE documents SET status = 'indexed', error = NULL, error_code = NULL,"
            " chunk_count = %s, media_type = %s, timings = %s,"
            " embedding_tokens = embedding_tokens + %s, indexed_at = now(), updated_at = now()"
            " WHERE id = %s",
            [
                (
                    len(d.chunks),
                    d.media_type,
                    Jsonb(_with_upsert(d, write_seconds * len(d.chunks) / total)),
                    d.embedding_tokens,
                    d.document_id,
                )
                for d in docs
            ],
        )


def _with_upsert(doc: DocumentChunks, seconds: float) -> dict[str, float]:
    return {**doc.timings, "upsert": round(doc.timings.get("upsert", 0.0) + seconds, 4)}


def search_chunks(
    conn: Conn,
    *,
    collection_id: int,
    dimension: int,
    query_vector: np.ndarray,
    k: int,
    metadata_filter: dict[str, Any] | None = None,
    ef_search: int = 100,
) -> list[SearchHit]:
    """The ``k`` chunks nearest to ``query_vector`` by cosine similarity.

    The collection id and dimension are inlined as literals so the planner can match the
    collection's partial HNSW index.
    """
    from psycopg.types.json import Jsonb

    query = sql.SQL(
        "SELECT c.content, c.ordinal, c.provenance, d.source_uri, d.id AS document_id,"
        " d.metadata, 1 - (c.embedding::vector({dim}) <=> %(q)s::vector({dim})) AS score"
        " FROM chunks c JOIN documents d ON d.id = c.document_id"
        " WHERE c.collection_id = {cid} AND d.status <> 'deleted'"
        " AND (%(filter)s::jsonb IS NULL OR d.metadata @> %(filter)s::jsonb)"
        " ORDER BY c.embedding::vector({dim}) <=> %(q)s::vector({dim}) LIMIT %(k)s"
    ).format(dim=sql.Literal(dimension), cid=sql.Literal(collection_id))
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef_search)))
        rows = conn.execute(
            query,
            {
                "q": query_vector,
                "k": k,
                "filter": Jsonb(metadata_filter) if metadata_filter else None,
            },
        ).fetchall()
    return [
        SearchHit(
            score=float(r["score"]),
            content=r["content"],
            source_uri=r["source_uri"],
            document_id=str(r["document_id"]),
            ordinal=r["ordinal"],
            provenance=r["provenance"],
            metadata=r["metadata"],
        )
        for r in rows
    ]


def chunk_stats(conn: Conn, *, collection_id: int) -> dict[str, int]:
    row = conn.execute(
        "SELECT count(*) AS chunks, count(DISTINCT document_id) AS documents FROM chunks"
        " WHERE collection_id = %s",
        (collection_id,),
    ).fetchone()
    return dict(row) if row else {"chunks": 0, "documents": 0}
