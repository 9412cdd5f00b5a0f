"""The warm engine under ``ingestflow up`` with the local model: one model server for the
machine, runs started in warm processes, bursts of uploads coalesced into shared runs, the
model server's death reported and survived, and a killed run retried as the Prefect UI does."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_up import _wait_ready
from tests.support.processes import free_port

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("ingestflow"))
ENDED = ("completed", "completed_with_errors", "failed", "cancelled")


@pytest.fixture(scope="module")
def prefect_database_url() -> Iterator[str | None]:
    """A scratch database on the machine's Postgres for the Prefect server of each stack."""
    from tests.support.prefect_server import scratch_postgres_database

    admin = os.environ.get(
        "PREFECT_TEST_SERVER_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with scratch_postgres_database(admin) as url:
        yield url


@pytest.fixture(scope="module", params=["prefect", "celery"])
def stack(
    request, database_url, prefect_database_url, celery_redis, tmp_path_factory
) -> Iterator[dict]:
    """``ingestflow up`` with the local embedder on free ports, on each backend (one stack
    per backend for the module); yields its URLs and process."""
    tmp_path = tmp_path_factory.mktemp(f"stack-{request.param}")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INGESTFLOW_EMBED_", "OPENAI_")) and k != "PREFECT_API_URL"
    }
    env |= {
        "DATABASE_URL": database_url,
        "INGESTFLOW_EMBED_PROVIDER": "local",
        "INGESTFLOW_API_UPLOAD_URI": str(tmp_path / "uploads"),
        "REDIS_URL": celery_redis,
        "HF_HUB_OFFLINE": "1",
        "INGESTFLOW_API_RATE_LIMIT": "0",  # the tests poll 20 jobs at a time
    }
    if prefect_database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database_url
    ports = {"api": free_port(), "prefect": free_port(), "model": free_port()}
    argv = [CLI, "up", "--backend", request.param, "--port", str(ports["api"])]
    argv += ["--prefect-port", str(ports["prefect"]), "--model-port", str(ports["model"])]
    argv += ["--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        _wait_ready(proc, f"{api}/readyz")
        yield {
            "api": api,
            "prefect": f"http://127.0.0.1:{ports['prefect']}/api",
            "model": f"http://127.0.0.1:{ports['model']}",
            "proc": proc,
            "backend": request.param,
        }
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def client(stack, monkeypatch) -> Iterator[httpx.Client]:
    from tests.integration.test_api import make_key

    monkeypatch.setenv("PREFECT_API_URL", stack["prefect"])
    with httpx.Client(base_url=stack["api"], headers=make_key("warm"), timeout=60) as c:
        yield c


def _upload(client: httpx.Client, collection: str, name: str, text: str) -> dict[str, Any]:
    reply = client.post(
        f"/v1/collections/{collection}/documents",
        files={"file": (name, text.encode(), "text/plain")},
    )
    assert reply.status_code == 202, reply.text
    return reply.json()


def _wait_jobs(client: httpx.Client, job_ids: list[str], timeout: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [client.get(f"/v1/jobs/{j}").json() for j in job_ids]
        if all(j["state"] in ENDED for j in jobs):
            return jobs
        time.sleep(0.5)
    pytest.fail(f"jobs did not end: {[j['state'] for j in jobs]}")


def _cmdline(process: Any) -> str:
    """A process's command line; "" for one that has exited (a zombie not yet reaped)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _processes_with_torch(root_pid: int) -> list[str]:
    """The stack's processes that have torch's library mapped (a copy of the model's
    runtime), by command line."""
    import psutil

    found = []
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            if "libtorch_cpu" in maps:
                found.append(" ".join(process.cmdline())[:120])
        except (OSError, psutil.Error):
            continue
    return found


def test_a_burst_of_uploads_is_coalesced_each_job_its_own(stack, client, collection) -> None:
    checks = client.get("/readyz").json()["checks"]
    assert checks["model_server"] == "ok"

    answers: list[dict[str, Any]] = [{} for _ in range(20)]
    start = threading.Barrier(20)

    def send(i: int) -> None:
        start.wait()
        answers[i] = _upload(client, collection, f"burst-{i}.txt", f"Burst note {i}: tides {i}.")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    job_ids = [a["job_id"] for a in answers]
    assert len(set(job_ids)) == 20  # every upload is a job of its own ...
    jobs = _wait_jobs(client, job_ids)
    for job in jobs:
        assert job["state"] == "completed", job
        assert job["progress"]["documents_total"] == 1
        assert job["progress"]["documents_done"] == 1
        assert job["progress"]["chunks_written"] == job["progress"]["chunks_total"] == 1
    # ... and the burst took fewer runs than jobs.
    runs = {j["flow_run_id"] for j in jobs}
    assert len(runs) < 20, runs
    listed = client.get(f"/v1/collections/{collection}/documents", params={"limit": 50}).json()
    assert {d["status"] for d in listed["items"]} == {"indexed"}
    assert len(listed["items"]) == 20
    hits = client.post(
        f"/v1/collections/{collection}/search", json={"query": "Burst note 7", "k": 3}
    ).json()["hits"]
    assert any("Burst note 7" in h["content"] for h in hits)
    # One copy of the model for the whole stack: only the model server loaded torch.
    with_torch = _processes_with_torch(stack["proc"].pid)
    assert len(with_torch) == 1 and "model-server" in with_torch[0], with_torch


def test_the_model_servers_death_is_reported_and_survived(stack, client, collection) -> None:
    import psutil

    server = next(
        p
        for p in psutil.Process(stack["proc"].pid).children(recursive=True)
        if "model-server" in _cmdline(p)
    )
    server.kill()
    seen = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = client.get("/readyz")
        if reply.status_code == 503:
            seen = reply.json()
            break
        time.sleep(0.1)
    assert seen is not None, "/readyz never reported the model server down"
    assert "model_server" in seen["error"]["message"]
    # A document sent while the model is down waits for it and is indexed, not lost.
    job = _upload(client, collection, "while-down.txt", "Sent while the model server was down.")
    (ended,) = _wait_jobs(client, [job["job_id"]])
    assert ended["state"] == "completed", ended
    _wait_ready(stack["proc"], f"{stack['api']}/readyz", timeout=120)
    restarted = [
        p
        for p in psutil.Process(stack["proc"].pid).children(recursive=True)
        if "model-server" in _cmdline(p)
    ]
    assert restarted and restarted[0].pid != server.pid


def _long_text(eval_data: Path, abstracts: int) -> str:
    lines = (eval_data / "scifact" / "corpus.jsonl").read_text().splitlines()[:abstracts]
    return "\n\n".join(
        f"{doc['title']}\n{doc['text']}" for doc in (json.loads(line) for line in lines)
    )


@pytest.mark.parametrize("stack", ["prefect"], indirect=True)  # the UI retries Prefect runs
def test_a_run_killed_while_embedding_is_retried_from_the_ui_and_ends_exact(
    stack, client, collection, eval_data
) -> None:
    import psutil
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import AwaitingRetry

    from tests.support.db import chunk_rows, consistency_problems

    job = _upload(client, collection, "long.txt", _long_text(eval_data, 250))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until the model server is embedding it
        progress = client.get(f"/v1/jobs/{job['job_id']}").json()["progress"]
        if 0 < progress["chunks_embedded"] < progress["chunks_total"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"never caught the run embedding: {progress}")
    runner = next(
        p
        for p in psutil.Process(stack["proc"].pid).children()
        if "serve_deployments" in _cmdline(p)
    )
    # The runner's warm processes are the children of its fork server: the run's among them.
    fork_server = next(p for p in runner.children() if "forkserver" in _cmdline(p))
    for process in fork_server.children():
        with contextlib.suppress(psutil.Error):
            process.kill()
    record = _wait_jobs(client, [job["job_id"]])[0]
    assert record["state"] == "failed", record  # the run crashed

    with SyncPrefectClient(stack["prefect"]) as prefect:
        run_id = record["flow_run_id"]
        assert prefect.read_flow_run(run_id).state_type.value == "CRASHED"
        # What the UI's Retry button sends.
        prefect.set_flow_run_state(run_id, AwaitingRetry(), force=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        record = client.get(f"/v1/jobs/{job['job_id']}").json()
        if record["state"] == "completed":
            break
        time.sleep(0.5)
    assert record["state"] == "completed", record
    document = client.get(f"/v1/collections/{collection}/documents/{job['document']['id']}").json()
    assert document["status"] == "indexed"
    rows = chunk_rows(collection)
    assert len(rows) == document["chunk_count"] == record["progress"]["chunks_total"]
    assert [r["ordinal"] for r in rows] == list(range(len(rows)))  # each chunk once
    assert consistency_problems(collection) == []
