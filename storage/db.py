"""Database connections: the embedded Postgres (pgserver) or ``DATABASE_URL``.

Connections are pooled by a SQLAlchemy engine; repository functions work on the underlying
psycopg 3 connection so they can use COPY and pgvector's binary adapters.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import psycopg
from psycopg.rows import DictRow, dict_row

from ingestflow.core.errors import ConfigError, StoreError
from ingestflow.core.settings import get_settings

log = logging.getLogger(__name__)
Conn = psycopg.Connection[DictRow]  # every pooled connection returns rows as dicts
_embedded_lock = threading.Lock()


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded Postgres 16 + pgvector under ``data_dir``; return its URL.

    The server outlives this process so the next CLI call connects in milliseconds.
    """
    try:
        import pgserver
    except ImportError as e:  # pragma: no cover - pgserver is a hard dependency
        raise ConfigError("pgserver is not installed; set DATABASE_URL or install it") from e
    with _embedded_lock:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = pgserver.get_server(data_dir, cleanup_mode=None)
        except Exception as e:
            raise StoreError(f"could not start the embedded Postgres in {data_dir}: {e}") from e
        return server.get_uri()


def _libpq_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (postgresql+psycopg://) as well as plain libpq ones."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith(("postgresql", "postgres")):
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    return "postgresql://" + rest


@lru_cache(maxsize=1)
def database_url() -> str:
    """The libpq URL of the database, starting the embedded server when none is configured."""
    settings = get_settings().database
    if settings.url is not None:
        return _libpq_url(settings.url.get_secret_value())
    return start_embedded_postgres(settings.data_dir)


def _configure(dbapi_conn: psycopg.Connection, _record: object) -> None:
    from pgvector.psycopg import register_vector

    dbapi_conn.autocommit = True
    dbapi_conn.row_factory = dict_row  # type: ignore[assignment]
    # The vector type does not exist until the first migration has run.
    with contextlib.suppress(psycopg.ProgrammingError):
        register_vector(dbapi_conn)


@lru_cache(maxsize=1)
def get_engine():  # -> sqlalchemy.Engine (imported lazily to keep start-up fast)
    """The process-wide SQLAlchemy engine (a connection pool over psycopg 3)."""
    from sqlalchemy import create_engine, event

    url = "postgresql+psycopg://" + database_url().partition("://")[2]
    engine = create_engine(
        url, pool_size=get_settings().database.pool_size, pool_pre_ping=True, future=True
    )
    event.listen(engine, "connect", _configure)
    return engine


@contextmanager
def connection() -> Iterator[Conn]:
    """A pooled psycopg connection in autocommit mode; use ``conn.transaction()`` for atomicity."""
    try:
        raw = get_engine().raw_connection()
    except Exception as e:
        raise StoreError(f"cannot connect to the database: {_describe(e)}") from e
    conn = raw.driver_connection
    try:
        yield conn  # type: ignore[misc]
    finally:
        if conn is not None and (conn.broken or conn.closed):
            # The server went away under us (a restart, a failover): drop the connection
            # instead of rolling it back into the pool, which fails and logs a traceback.
            # pool_pre_ping catches the idle connections the same event cut.
            raw.invalidate()
        else:
            raw.close()


@contextmanager
def transaction() -> Iterator[Conn]:
    """A pooled connection inside one transaction, committed on success."""
    with connection() as conn, conn.transaction():
        yield conn


def reset_engine() -> None:
    """Drop the pool and the cached URL (tests switch databases with this)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    database_url.cache_clear()


def _describe(exc: BaseException) -> str:
    """A one-line cause without the connection string (it may hold a password)."""
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__
