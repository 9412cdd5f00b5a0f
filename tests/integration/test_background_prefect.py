"""With no Prefect server configured or running, the notebook front door starts one in the
background and keeps it: later calls and processes reuse it, its runs are on it, and
``ingestflow prefect stop`` stops it. Real processes, a real ``prefect server start``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, SAMPLES
from tests.support.processes import free_port

pytestmark = pytest.mark.slow

NOTEBOOK = """
import json, sys
from ingestflow import ingest
result = ingest([sys.argv[1]], collection=sys.argv[2])
print(json.dumps([o.status.value for o in result.outcomes]))
"""


@pytest.fixture
def notebook_env(database_url, openai_server, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        XDG_DATA_HOME=str(tmp_path / "data"),  # the user's data dir: the server's home
        INGESTFLOW_QUEUE_PREFECT_SERVER="background",
        INGESTFLOW_QUEUE_PREFECT_PORT=str(port),
        INGESTFLOW_EMBED_PROVIDER="openai",
        INGESTFLOW_EMBED_OPENAI_BASE_URL=openai_server.base_url,
        INGESTFLOW_EMBED_OPENAI_API_KEY="test-key",
        INGESTFLOW_EMBED_MODEL="text-embedding-3-small",
    )
    yield env, f"http://127.0.0.1:{port}/api"
    subprocess.run(_cli("prefect", "stop"), env=env, capture_output=True, timeout=60)


def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("ingestflow")), *args]


def _notebook(env: dict[str, str], path: Path, collection: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NOTEBOOK, str(path), collection],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_first_ingest_starts_a_kept_server_that_later_calls_reuse_and_stop_ends(
    notebook_env, tmp_path
):
    env, api = notebook_env
    collection = f"bg-{uuid.uuid4().hex[:8]}"
    assert not _healthy(api)

    first = _notebook(env, SAMPLES / "sourdough.txt", collection)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout.splitlines()[-1]) == ["indexed"]
    assert first.stderr.count("started a Prefect server in the background") == 1
    assert "temporary server" not in first.stderr  # not Prefect's ephemeral mode
    assert "database is locked" not in first.stderr

    # The server outlived the process that started it, and the run is on it.
    assert _healthy(api)
    runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    home = tmp_path / "data" / "ingestflow" / "prefect"
    pid = (home / "server.pid").read_text().strip()

    second = _notebook(env, SAMPLES / "tides.csv", collection)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout.splitlines()[-1]) == ["indexed"]
    assert "started a Prefect server" not in second.stderr
    assert (home / "server.pid").read_text().strip() == pid
    assert len(httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()) == 2

    stopped = subprocess.run(_cli("prefect", "stop"), env=env, capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {pid}" in stopped.stdout
    assert not _healthy(api)
    assert not (home / "server.pid").exists()
    again = subprocess.run(_cli("prefect", "stop"), env=env, capture_output=True, text=True)
    assert "no background Prefect server" in again.stdout


def test_a_port_held_by_something_else_falls_back_to_ephemeral_mode_with_a_warning(tmp_path):
    check = (
        "import logging, os; logging.basicConfig();"
        " from deployments.prefect_server import use_running_server;"
        " print('CHOSE', use_running_server(), os.environ.get('PREFECT_API_URL'))"
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {
            "XDG_DATA_HOME": str(tmp_path),
            "INGESTFLOW_QUEUE_PREFECT_SERVER": "background",
            "INGESTFLOW_QUEUE_PREFECT_PORT": str(squatter.getsockname()[1]),
        }
        done = subprocess.run(
            [sys.executable, "-c", check],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CHOSE None None" in done.stdout
    assert "background Prefect server exited" in done.stderr
    assert "ephemeral mode" in done.stderr
