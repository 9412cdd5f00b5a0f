"""Versioned schema migrations: numbered SQL files in storage/migrations, applied in order.

Each file runs in its own transaction; an advisory lock makes concurrent starters (API,
workers, CLI) wait for one another instead of racing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from storage.db import connection, get_engine

_ADVISORY_KEY = 7_263_541_001  # any constant unique to ingestflow
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """All migrations shipped with the package, oldest first."""
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    return sorted(found, key=lambda mig: mig.version)


def upgrade() -> list[Migration]:
    """Apply every pending migration; return the ones applied (empty when up to date)."""
    applied: list[Migration] = []
    with connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
        for mig in available_migrations():
            if mig.version in done:
                continue
            with conn.transaction():
                conn.execute(mig.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (mig.version, mig.name),
                )
            applied.append(mig)
    if applied:
        # Pooled connections were opened before the vector type existed; open fresh ones.
        get_engine().dispose()
    return applied


def current_version() -> int:
    with connection() as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()
        if not exists or exists["t"] is None:
            return 0
        row = conn.execute("SELECT max(version) AS v FROM schema_migrations").fetchone()
        return int(row["v"] or 0) if row else 0


_schema_ready = False


def ensure_schema() -> None:
    """Bring the schema up to date once per process (every entry point calls this on start)."""
    global _schema_ready
    if not _schema_ready:
        upgrade()
        _schema_ready = True
