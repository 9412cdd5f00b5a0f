"""The service's moving parts for tests: one environment shared by the in-process API and
the worker processes (served Prefect deployments or a Celery worker), and a served-deployments
process on the session's Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def service_environment(
    *, database_url: str, prefect_api_url: str, openai_base_url: str, upload_dir: Path
) -> dict[str, str]:
    """What the API and its workers must agree on: the database, the Prefect server, the
    embedder (the local OpenAI-compatible server) and the upload store."""
    return {
        "DATABASE_URL": database_url,
        "PREFECT_API_URL": prefect_api_url,
        "INGESTFLOW_EMBED_PROVIDER": "openai",
        "INGESTFLOW_EMBED_MODEL": "hash-64",
        "OPENAI_BASE_URL": openai_base_url,
        "OPENAI_API_KEY": "test-key-not-secret",
        "INGESTFLOW_EMBED_MAX_RETRY_WAIT": "2",
        "INGESTFLOW_API_UPLOAD_URI": upload_dir.as_uri(),
    }


@contextmanager
def served_deployments(
    env: dict[str, str], log: Path, *, limit: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``serve_deployments(limit)`` in a subprocess (warm run processes, polling every
    0.25 s); waits until the ingest and delete deployments exist on the server."""
    full_env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(REPO),
    }
    serve = f"from deployments.definitions import serve_deployments; serve_deployments({limit})"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", serve], env=full_env, cwd=REPO, stdout=out, stderr=out
        )
    try:
        _wait_for_deployments(env["PREFECT_API_URL"], proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_deployments(api_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    wanted = ["ingest-batch/ingest-batch", "delete-documents/delete-documents"]
    deadline = time.monotonic() + 120
    with SyncPrefectClient(api_url) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{log.read_text()[-3000:]}")
            try:
                for name in wanted:
                    client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                time.sleep(0.5)
    raise RuntimeError("the deployments did not appear within 120 s")


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
