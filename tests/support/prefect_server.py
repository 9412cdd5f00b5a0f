"""A real ``prefect server start`` on a free port, with its scheduler, for deployment tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.support.processes import free_port, stop_process


def asyncpg_url(libpq_url: str, database: str) -> str:
    """A SQLAlchemy asyncpg URL for ``database`` on the server of a libpq URL."""
    parts = urlsplit(libpq_url)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{database}", parts.query, ""))


@contextmanager
def scratch_postgres_database(admin_url: str) -> Iterator[str | None]:
    """A new, uniquely named database on ``admin_url``'s server for one Prefect server, as an
    asyncpg URL, dropped afterwards; None when that server cannot be reached."""
    import psycopg

    name = f"ingestflow_prefect_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        yield None
        return
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield asyncpg_url(admin_url, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def run_prefect_server(
    database_url: str | None = None, startup_timeout: float = 120.0
) -> Iterator[str]:
    """Start a local Prefect server with its services; yield its API URL.

    ``database_url`` (SQLAlchemy, e.g. from ``asyncpg_url``) puts it on Postgres, as in
    production: on SQLite, concurrent writes answer 503 "database is locked" and clients
    back off for about 2 s, which would dominate any test that runs flows.
    """
    home = Path(tempfile.mkdtemp(prefix="ingestflow-prefect-server-"))
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
            database_url or f"sqlite+aiosqlite:///{home}/prefect.db"
        ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    # The UI reads its API address from the server settings, which default to port 4200.
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, proc, startup_timeout, home / "server.log")
        yield url
    finally:
        stop_process(proc, timeout=20)
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout:.0f} s")
