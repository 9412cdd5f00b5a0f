"""``ingestflow up`` as a user runs it: the whole stack comes up, runs a job, and Ctrl-C stops
every process it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.prefect_server import asyncpg_url
from tests.support.processes import free_port

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("ingestflow"))


@pytest.fixture
def prefect_database() -> Iterator[str | None]:
    """A scratch database on the machine's Postgres for the Prefect server ``up`` starts
    (as the README recommends over SQLite); None when that server is not there."""
    import psycopg

    admin = os.environ.get(
        "PREFECT_TEST_SERVER_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"ingestflow_up_{os.getpid()}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        yield None
        return
    with conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield asyncpg_url(admin, name)
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def up_env(pipeline, database_url, prefect_database) -> dict[str, str]:
    """The test database and the ``pipeline`` embedder; no PREFECT_API_URL, so ``up``
    starts its own Prefect server."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["DATABASE_URL"] = database_url
    if prefect_database:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database
    return env


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (local test URL)
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _wait_ready(proc: subprocess.Popen[str], url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, errs = proc.communicate()
            pytest.fail(f"`ingestflow up` exited with {proc.returncode}:\n{out}\n{errs}")
        if _get(url)[0] == 200:
            return
        time.sleep(1)
    pytest.fail(f"{url} did not answer 200 within {timeout:.0f} s")


def _upload_watch_search(api: str, collection: str) -> None:
    """The README's path through the stack's own API: upload, watch the job, search."""
    import httpx

    from tests.integration.test_api import make_key

    key = make_key("up-tenant")
    text = f"A note for {collection}, ingested by the stack that `ingestflow up` runs."
    with httpx.Client(base_url=api, headers=key, timeout=30) as client:
        resp = client.post(
            f"/v1/collections/{collection}/documents",
            files={"file": ("up-note.txt", text.encode(), "text/plain")},
        )
        assert resp.status_code == 202, resp.text
        status_url = resp.json()["status_url"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = client.get(status_url).json()
            if job["state"] in ("completed", "completed_with_errors", "failed", "cancelled"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the job did not finish")
        assert job["state"] == "completed", job
        assert job["flow_run_url"].startswith(f"{os.environ['PREFECT_API_URL'][:-4]}/runs/")
        hits = client.post(
            f"/v1/collections/{collection}/search", json={"query": "ingested by the stack"}
        ).json()["hits"]
        assert hits and collection in hits[0]["content"]


def test_up_starts_the_stack_and_ctrl_c_stops_all_of_it(up_env, collection, tmp_path, monkeypatch):
    import psutil

    from tests.support.db import statuses

    api_port, prefect_port = free_port(), free_port()  # not the defaults: both must follow
    # A plain folder, as the settings table shows the default: uploads there must be ingested.
    up_env["INGESTFLOW_API_UPLOAD_URI"] = str(tmp_path / "uploads")
    proc = subprocess.Popen(
        [CLI, "up", "--port", str(api_port), "--prefect-port", str(prefect_port)]
        + ["--data-dir", str(tmp_path / "data")],
        env=up_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(proc, f"http://127.0.0.1:{api_port}/readyz")
        status, page = _get(f"http://127.0.0.1:{prefect_port}/")
        assert status == 200 and "<html" in page.lower()  # the Prefect UI
        # ... which talks to this server's API, not to one on port 4200.
        status, settings = _get(f"http://127.0.0.1:{prefect_port}/ui-settings")
        assert status == 200, settings
        assert json.loads(settings)["api_url"] == f"http://127.0.0.1:{prefect_port}/api"
        assert _get(f"http://127.0.0.1:{api_port}/docs")[0] == 200

        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{prefect_port}/api")
        _upload_watch_search(f"http://127.0.0.1:{api_port}", collection)
        assert set(statuses(collection).values()) == {"indexed"}

        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) >= 3  # Prefect server, runner, API
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 0, errs
    assert "ingestflow is up" in out
    assert f"http://127.0.0.1:{api_port}/docs" in out
    assert f"http://127.0.0.1:{prefect_port}" in out
    assert "ingestflow keys create --tenant" in out
    left = [p for p in started if _alive(p)]
    assert not left, [(p.pid, p.cmdline()) for p in left]


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_part_that_dies_stops_the_stack_with_its_reason(up_env, tmp_path):
    import psutil

    with socket_bound() as taken:  # the API cannot bind its port
        proc = subprocess.Popen(
            [CLI, "up", "--port", str(taken), "--prefect-port", str(free_port())]
            + ["--data-dir", str(tmp_path / "data")],
            env=up_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: set[psutil.Process] = set()
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                seen.update(psutil.Process(proc.pid).children(recursive=True))
            time.sleep(0.5)
        out, errs = proc.communicate()

    assert proc.returncode == 1
    assert "api exited with code" in errs
    assert "ingestflow is up" not in out
    assert seen, "up started nothing"
    left = [p for p in seen if _alive(p)]
    assert not left, [(p.pid, p.cmdline()) for p in left]


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
