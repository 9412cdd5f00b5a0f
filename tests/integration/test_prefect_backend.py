"""The Prefect queue backend against a real Prefect server: jobs are flow runs of the served
deployments; idempotency, cancellation, unknown ids and an unreachable server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from deployments.prefect_backend import PrefectBackend
from deployments.prefect_server import flow_run_url
from deployments.queue import JobInfo, JobRequest
from ingestflow.core.errors import BackendUnavailableError
from ingestflow.core.types import JobKind, JobState, Priority
from tests.conftest import REPO
from tests.support.db import document_rows, statuses
from tests.support.processes import free_port

# Jobs run end to end on served deployments (one flow-run process per job).
pytestmark = pytest.mark.slow


@pytest.fixture
def registered(prefect_server):
    """The deployments exist on the server but nothing serves them: runs stay scheduled."""
    from deployments.definitions import build_deployments

    for deployment in build_deployments():
        deployment.apply()
    return PrefectBackend()


@pytest.fixture
def served(pipeline, prefect_server):
    """The deployments served by ``serve_deployments()`` in a subprocess, as ``up`` does."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(REPO),
    }
    code = "from deployments.definitions import serve_deployments; serve_deployments(limit=2)"
    runner = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_deployments(prefect_server, runner)
        yield PrefectBackend()
    finally:
        runner.terminate()
        runner.wait(timeout=30)


def _wait_deployments(api_url: str, runner: subprocess.Popen, timeout: float = 120) -> None:
    """Until the runner has registered the deployments (jobs before that are refused)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api_url) as client:
        while time.monotonic() < deadline:
            assert runner.poll() is None, "the runner exited"
            try:
                client.read_deployment_by_name("ingest-batch/ingest-batch")
                client.read_deployment_by_name("delete-documents/delete-documents")
                return
            except ObjectNotFound:
                time.sleep(0.5)
    pytest.fail("the runner did not register the deployments")


def _wait_final(backend: PrefectBackend, job_id: str, timeout: float = 180) -> JobInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = backend.status([job_id]).get(job_id)
        if info is not None and info.state.terminal:
            return info
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish in {timeout:.0f} s")


def _ingest(collection: str, sources: list[str], **kw) -> JobRequest:
    return JobRequest.ingest(tenant="default", collection=collection, sources=sources, **kw)


def test_ingest_and_delete_jobs_run_to_completion(served, collection, tmp_path):
    backend = served
    files = []
    for i in range(2):
        path = tmp_path / f"note-{i}.txt"
        path.write_text(f"Note {i} for {collection}: submitted through the Prefect backend.")
        files.append(str(path))

    job_id = backend.submit(_ingest(collection, files, priority=Priority.HIGH))
    info = _wait_final(backend, job_id)

    assert info.state is JobState.COMPLETED, info.message
    assert info.kind is JobKind.INGEST and info.flow_run_id == job_id
    assert info.tags == {
        "tenant": "default",
        "collection": collection,
        "kind": "ingest",
        "priority": "high",
    }
    assert info.created_at and info.started_at and info.finished_at
    assert statuses(collection) == {"note-0.txt": "indexed", "note-1.txt": "indexed"}

    rows = document_rows(collection)
    doomed = next(r["id"] for uri, r in rows.items() if uri.endswith("/note-0.txt"))
    delete = JobRequest.delete(tenant="default", collection=collection, document_ids=[str(doomed)])
    delete_info = _wait_final(backend, backend.submit(delete))
    assert delete_info.state is JobState.COMPLETED and delete_info.kind is JobKind.DELETE
    assert statuses(collection) == {"note-0.txt": "deleted", "note-1.txt": "indexed"}


def test_cancel_of_a_running_job_stops_its_process(served, pipeline, collection, tmp_path):
    backend = served
    pipeline.configure(latency=30)  # every embedding request stalls: the run stays running
    note = tmp_path / "slow.txt"
    note.write_text(f"A slow note for {collection}: its embedding request stalls.")
    job_id = backend.submit(_ingest(collection, [str(note)]))
    deadline = time.monotonic() + 180
    while backend.status([job_id])[job_id].state is not JobState.RUNNING:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)

    requested = backend.cancel(job_id)

    assert requested.state in (JobState.CANCELLING, JobState.CANCELLED)
    assert _wait_final(backend, job_id).state is JobState.CANCELLED


def test_idempotency_key_returns_the_same_job(registered, collection):
    backend = registered
    key = f"upload-{uuid.uuid4()}"
    first = backend.submit(_ingest(collection, ["/nowhere/a.txt"], idempotency_key=key))
    again = backend.submit(_ingest(collection, ["/nowhere/a.txt"], idempotency_key=key))
    other = backend.submit(_ingest(collection, ["/nowhere/a.txt"]))
    try:
        assert first == again
        assert other != first
    finally:
        for job_id in {first, other}:
            backend.cancel(job_id)


def test_cancel_of_a_scheduled_job_cancels_it_at_once(registered, collection):
    backend = registered
    before = backend.queue_depth()
    job_id = backend.submit(_ingest(collection, ["/nowhere/b.txt"]))
    queued = backend.status([job_id])[job_id]
    assert queued.state is JobState.QUEUED
    assert backend.queue_depth() == before + 1

    cancelled = backend.cancel(job_id)

    assert cancelled.state is JobState.CANCELLED
    assert backend.status([job_id])[job_id].state is JobState.CANCELLED
    assert backend.queue_depth() == before
    assert backend.cancel(job_id).state is JobState.CANCELLED  # final: left as it is


def test_unknown_ids_are_left_out(registered):
    backend = registered
    assert backend.status(["not-a-flow-run", str(uuid.uuid4())]) == {}
    many = [str(uuid.uuid4()) for _ in range(250)]  # more than the server's page of 200
    assert backend.status(many) == {}
    assert backend.cancel(str(uuid.uuid4())).state is JobState.UNKNOWN


def test_flow_run_url_points_at_the_ui(prefect_server, monkeypatch):
    from ingestflow.core.settings import get_settings

    ui = prefect_server.removesuffix("/api")
    assert flow_run_url("abc") == f"{ui}/runs/flow-run/abc"
    monkeypatch.setenv("INGESTFLOW_QUEUE_PREFECT_UI_URL", "https://prefect.example.com/")
    get_settings.cache_clear()
    try:
        assert flow_run_url("abc") == "https://prefect.example.com/runs/flow-run/abc"
    finally:
        monkeypatch.delenv("INGESTFLOW_QUEUE_PREFECT_UI_URL")
        get_settings.cache_clear()
    assert flow_run_url(None) is None


def test_unreachable_server_is_backend_unavailable(monkeypatch, collection):
    monkeypatch.setenv("PREFECT_API_URL", f"http://ops:hunter2@127.0.0.1:{free_port()}/api")
    backend = PrefectBackend()

    with pytest.raises(BackendUnavailableError) as caught:
        backend.submit(_ingest(collection, ["/nowhere/c.txt"]))
    assert "unreachable" in caught.value.reason
    assert "hunter2" not in caught.value.reason and "ops" not in caught.value.reason
    with pytest.raises(BackendUnavailableError):
        backend.ping()
    with pytest.raises(BackendUnavailableError):
        backend.status([str(uuid.uuid4())])
