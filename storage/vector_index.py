"""Each collection's HNSW index: creating it, deferring it during a bulk load, healing it.

Inserting a row into an HNSW index costs several times more than building the index over the
same rows afterwards. So a run that loads at least as many documents as the collection holds
(and at least ``bulk_index_min_documents``) drops the collection's index, loads, and builds
it again at the end, ``CONCURRENTLY``, so no other collection's writes wait for it.

Search stays correct throughout: without the index the planner filters the collection by its
btree index and sorts by exact distance, so every committed chunk is found (exactly, and
more slowly) while the index is away.

A session advisory lock per collection marks a deferral in progress. A run killed while it
held the lock leaves the index missing (or ``INVALID`` from a failed build); the next run to
open the collection finds no lock and no valid index and builds it again.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from typing import Literal

import psycopg
from psycopg import sql

from storage.db import Conn, connection

log = logging.getLogger(__name__)

IndexState = Literal["valid", "invalid", "missing"]
_LOCK_CLASS = 0x1F_5EC7  # advisory lock namespace: (class, collection id)


def index_name(collection_id: int) -> str:
    return f"chunks_embedding_c{collection_id}"


def create_vector_index(
    conn: Conn, *, collection_id: int, dimension: int, concurrently: bool = False
) -> None:
    """A partial HNSW index over a typed cast: one chunks table holds collections of different
    dimensions, and each still gets its own index (pgvector's documented way).

    ``concurrently`` needs an autocommit connection outside any transaction."""
    conn.execute(
        sql.SQL(
            "CREATE INDEX {how} IF NOT EXISTS {index} ON chunks USING hnsw"
            " ((embedding::vector({dim})) vector_cosine_ops) WHERE collection_id = {cid}"
        ).format(
            how=sql.SQL("CONCURRENTLY" if concurrently else ""),
            index=sql.Identifier(index_name(collection_id)),
            dim=sql.Literal(dimension),
            cid=sql.Literal(collection_id),
        )
    )


def index_state(conn: Conn, *, collection_id: int) -> IndexState:
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid"
        " WHERE c.relname = %s AND c.relkind = 'i'",
        (index_name(collection_id),),
    ).fetchone()
    if row is None:
        return "missing"
    return "valid" if row["indisvalid"] else "invalid"


def _try_lock(conn: Conn, collection_id: int) -> bool:
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, %s) AS held", (_LOCK_CLASS, collection_id)
    ).fetchone()
    return bool(row and row["held"])


def _unlock(conn: Conn, collection_id: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_CLASS, collection_id))


def _rebuild(conn: Conn, *, collection_id: int, dimension: int, build_memory: str) -> float:
    """Drop an invalid leftover, build the index concurrently; returns the build's seconds."""
    started = time.perf_counter()
    if index_state(conn, collection_id=collection_id) == "invalid":
        _drop(conn, collection_id)
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(build_memory)))
    try:
        create_vector_index(
            conn, collection_id=collection_id, dimension=dimension, concurrently=True
        )
    finally:
        conn.execute("RESET maintenance_work_mem")
    return time.perf_counter() - started


def _drop(conn: Conn, collection_id: int) -> None:
    conn.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
            sql.Identifier(index_name(collection_id))
        )
    )


def heal_vector_index(*, collection_id: int, dimension: int, build_memory: str) -> bool:
    """Build the collection's index if it is missing or invalid and no bulk load is running.

    Returns True when it built one."""
    with connection() as conn:
        if index_state(conn, collection_id=collection_id) == "valid":
            return False
        if not _try_lock(conn, collection_id):
            return False  # a bulk load holds it and builds the index when it ends
        try:
            if index_state(conn, collection_id=collection_id) == "valid":
                return False
            seconds = _rebuild(
                conn, collection_id=collection_id, dimension=dimension, build_memory=build_memory
            )
            log.warning(
                "collection %d had no valid vector index (a bulk load was interrupted);"
                " rebuilt it in %.1f s",
                collection_id,
                seconds,
            )
            return True
        finally:
            _unlock(conn, collection_id)


class DeferredVectorIndex:
    """Defers one collection's index maintenance for the rest of a run, once the run is big.

    Call ``before_batch(incoming)`` before each micro-batch with the run's document count as
    far as it is known (the total, or the documents seen so far); ``close()`` (or leaving the
    ``with`` block, also on an error) builds the index again if it was dropped.
    """

    def __init__(
        self, *, collection_id: int, dimension: int, min_documents: int, build_memory: str
    ) -> None:
        self.collection_id = collection_id
        self.dimension = dimension
        self.min_documents = min_documents
        self.build_memory = build_memory
        self.deferred = False
        self._existing: int | None = None
        self._declined = min_documents <= 0
        self._stack = ExitStack()
        self._conn: Conn | None = None

    def __enter__(self) -> DeferredVectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def before_batch(self, incoming: int) -> None:
        if self.deferred or self._declined:
            return
        if self._existing is None:
            with connection() as conn:
                self._existing = _live_documents(conn, self.collection_id)
        if incoming >= max(self.min_documents, self._existing):
            self._defer()

    def _defer(self) -> None:
        conn = self._stack.enter_context(connection())
        if not _try_lock(conn, self.collection_id):
            # Another run defers this index already; it builds it when it ends, over our
            # rows too. Keep maintaining whatever index exists.
            self._stack.close()
            self._declined = True
            return
        self._conn = conn
        self._stack.callback(_unlock, conn, self.collection_id)
        _drop(conn, self.collection_id)
        self.deferred = True
        log.info(
            "bulk load into collection %d: vector index dropped; it is rebuilt when the run"
            " ends (search is exact meanwhile)",
            self.collection_id,
        )

    def close(self) -> None:
        try:
            if self.deferred and self._conn is not None:
                self._rebuild_on(self._conn)
        finally:
            self.deferred = False
            self._conn = None
            self._stack.close()

    def _rebuild_on(self, conn: Conn) -> None:
        try:
            seconds = _rebuild(
                conn,
                collection_id=self.collection_id,
                dimension=self.dimension,
                build_memory=self.build_memory,
            )
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            # The server restarted under the load: the session, and its lock, are gone.
            heal_vector_index(
                collection_id=self.collection_id,
                dimension=self.dimension,
                build_memory=self.build_memory,
            )
            return
        log.info("collection %d: vector index rebuilt in %.1f s", self.collection_id, seconds)


def _live_documents(conn: Conn, collection_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM documents WHERE collection_id = %s AND status <> 'deleted'",
        (collection_id,),
    ).fetchone()
    return int(row["n"]) if row else 0
