"""The Celery queue backend against a real Redis, real ``celery worker`` processes and the
test Prefect server: jobs run the same flows, report their state, can be cancelled, and
survive a worker killed mid-task.

Order between jobs is controlled, never assumed: a "gate" source is a named pipe, so a job
reading it blocks in its fetch step until the test writes the document's text into it.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from deployments.queue import JobInfo, JobRequest
from ingestflow.core.errors import BackendUnavailableError
from ingestflow.core.types import JobKind, JobState, Priority
from tests.support.celery_worker import run_celery_worker, worker_env
from tests.support.db import chunk_rows, consistency_problems, document_rows, statuses
from tests.support.processes import free_port

# Every test runs jobs on a real Celery worker process.
pytestmark = pytest.mark.slow

JOB_TIMEOUT = 240.0  # a guard against hanging, not an expectation


@pytest.fixture
def backend(celery_redis):
    from deployments.celery_backend import celery_backend

    return celery_backend()


@pytest.fixture
def worker(celery_redis, pipeline, tmp_path):
    with run_celery_worker(env=worker_env(), log_dir=tmp_path) as running:
        yield running


class Gate:
    """A named pipe used as a source: the job reading it waits until ``feed`` writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)

    def wait_reader(self, timeout: float = JOB_TIMEOUT) -> int:
        """Until a job has the pipe open for reading; returns a write end that keeps it
        waiting (closing it unwritten would hand the job an empty document)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nobody reads yet
                    raise
            time.sleep(0.05)
        pytest.fail(f"no job opened {self.path.name}")

    def feed(self, text: str, fd: int | None = None) -> None:
        """Write the document's text and close, letting the reading job go on."""
        fd = self.wait_reader() if fd is None else fd
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(text.encode())


def text_for(name: str, collection: str, paragraphs: int = 3) -> str:
    """Distinct text per file and collection (the vector cache is shared by the session)."""
    words = ["harbor", "lantern", "copper", "meadow", "signal", "orbit", "glacier", "falcon"]
    parts = []
    for i in range(paragraphs):
        body = " ".join(words[(i + j) % len(words)] for j in range(40))
        parts.append(f"{name} in {collection}, part {i}: {body}")
    return "\n\n".join(parts)


def write_docs(folder: Path, collection: str, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / name
        path.write_text(text_for(name, collection), encoding="utf-8")
        paths.append(path)
    return paths


def ingest_request(collection: str, paths: list[Path], **extra) -> JobRequest:
    return JobRequest.ingest(
        tenant="default", collection=collection, sources=[str(p) for p in paths], **extra
    )


def wait_for(backend, job_id: str, done, worker=None) -> JobInfo:
    """Poll the job until ``done(info)``; fail with the worker's log if it never gets there."""
    deadline = time.monotonic() + JOB_TIMEOUT
    info = None
    while time.monotonic() < deadline:
        info = backend.status([job_id]).get(job_id)
        if info is not None and done(info):
            return info
        time.sleep(0.1)
    log = worker.log() if worker is not None else ""
    pytest.fail(f"job {job_id} stopped at {info}\n{log}")


def wait_finished(backend, job_id: str, worker=None) -> JobInfo:
    return wait_for(backend, job_id, lambda info: info.state.terminal, worker)


def test_submitted_ingest_runs_the_flow_and_indexes(worker, backend, collection, tmp_path):
    paths = write_docs(tmp_path / "docs", collection, ["a.txt", "b.txt"])

    request = ingest_request(collection, paths, priority=Priority.HIGH, idempotency_key="k-1")
    job = backend.submit(request)
    assert backend.submit(request) == job  # the same key is the same job
    info = wait_finished(backend, job, worker)

    assert info.state is JobState.COMPLETED, info
    assert info.kind is JobKind.INGEST
    assert info.tags == {
        "tenant": "default",
        "collection": collection,
        "kind": "ingest",
        "priority": "high",
    }
    assert info.created_at and info.started_at and info.finished_at
    assert info.created_at <= info.started_at <= info.finished_at
    assert statuses(collection) == {"a.txt": "indexed", "b.txt": "indexed"}
    assert consistency_problems(collection) == []
    # The run is on the Prefect server, and the documents name it.
    assert {r["flow_run_id"] for r in document_rows(collection).values()} == {info.flow_run_id}
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(info.flow_run_id))
    assert run.state is not None and run.state.is_completed()
    # An id nobody submitted is left out; nothing waits in the queues.
    assert set(backend.status([job, str(uuid.uuid4())])) == {job}
    assert backend.queue_depth() == 0
    backend.ping()


def test_plain_celery_calls_return_an_async_result_with_the_summary(
    worker, backend, collection, tmp_path
):
    from deployments.celery_app import ingest

    good = write_docs(tmp_path / "docs", collection, ["good.txt"])[0]
    bad = tmp_path / "docs" / "bad.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + os.urandom(64))  # a PDF header over garbage

    result = ingest.delay(sources=[str(good), str(bad)], collection=collection)
    summary = result.get(timeout=JOB_TIMEOUT)

    assert json.loads(json.dumps(summary)) == summary
    assert summary["counts"] == {"indexed": 1, "failed": 1}
    assert summary["documents"] == 2 and summary["collection"] == collection
    [failure] = summary["failures"]
    assert failure["source"] == bad.resolve().as_uri() and failure["error"]
    assert summary["flow_run_id"]
    # The backend knows a task it did not submit, from its extended result.
    info = backend.status([result.id])[result.id]
    assert info.state is JobState.COMPLETED and info.kind is JobKind.INGEST
    assert info.flow_run_id == summary["flow_run_id"]
    assert info.tags == {
        "tenant": "default",
        "collection": collection,
        "kind": "ingest",
        "priority": "normal",
    }


def test_submitted_delete_deletes(worker, backend, collection, tmp_path):
    paths = write_docs(tmp_path / "docs", collection, ["keep.txt", "drop.txt"])
    ingested = backend.submit(ingest_request(collection, paths))
    assert wait_finished(backend, ingested, worker).state is JobState.COMPLETED
    drop = document_rows(collection)[paths[1].resolve().as_uri()]["id"]

    job = backend.submit(
        JobRequest.delete(tenant="default", collection=collection, document_ids=[str(drop)])
    )
    info = wait_finished(backend, job, worker)

    assert info.state is JobState.COMPLETED, info
    assert info.kind is JobKind.DELETE and info.flow_run_id
    assert statuses(collection) == {"keep.txt": "indexed", "drop.txt": "deleted"}
    assert {r["source_uri"].rsplit("/", 1)[-1] for r in chunk_rows(collection)} == {"keep.txt"}
    assert consistency_problems(collection) == []

    # A flow that raises fails the job, with the reason and without the traceback.
    nowhere = f"{collection}_missing"
    failing = backend.submit(
        JobRequest.delete(tenant="default", collection=nowhere, document_ids=[str(drop)])
    )
    failed = wait_finished(backend, failing, worker)
    assert failed.state is JobState.FAILED and failed.message, failed
    assert f"collection {nowhere!r} does not exist" in failed.message
    assert "Traceback" not in failed.message


def test_a_job_cancelled_while_queued_behind_a_long_one_never_runs(
    worker, backend, collection, tmp_path
):
    gate = Gate(tmp_path / "long.txt")
    queued_doc, later_doc = write_docs(tmp_path / "docs", collection, ["queued.txt", "later.txt"])
    long_job = backend.submit(ingest_request(collection, [gate.path]))
    held = gate.wait_reader()  # the long job is in its fetch step: the worker is busy

    queued = backend.submit(ingest_request(collection, [queued_doc]))
    assert backend.status([queued])[queued].state is JobState.QUEUED
    assert backend.queue_depth() == 1
    cancelled = backend.cancel(queued)
    assert cancelled.state is JobState.CANCELLED, cancelled

    gate.feed(text_for("long.txt", collection), held)
    assert wait_finished(backend, long_job, worker).state is JobState.COMPLETED
    # Queues are first in, first out: once a job submitted now has run, the worker has
    # been handed the cancelled one and dropped it.
    later = backend.submit(ingest_request(collection, [later_doc]))
    assert wait_finished(backend, later, worker).state is JobState.COMPLETED

    info = backend.status([queued])[queued]
    assert info.state is JobState.CANCELLED and info.started_at is None, info
    assert statuses(collection) == {"long.txt": "indexed", "later.txt": "indexed"}
    assert backend.queue_depth() == 0
    assert backend.cancel(queued).state is JobState.CANCELLED  # cancelling again: no change


def test_waiting_jobs_start_in_priority_order(worker, backend, collection, tmp_path):
    gate = Gate(tmp_path / "first.txt")
    docs = write_docs(tmp_path / "docs", collection, ["low.txt", "normal.txt", "high.txt"])
    first = backend.submit(ingest_request(collection, [gate.path]))
    held = gate.wait_reader()
    jobs = [
        backend.submit(ingest_request(collection, [doc], priority=Priority(doc.stem)))
        for doc in docs  # submitted low first, high last
    ]
    gate.feed(text_for("first.txt", collection), held)

    infos = [wait_finished(backend, job, worker) for job in [first, *jobs]]
    assert {i.state for i in infos} == {JobState.COMPLETED}
    low, normal, high = infos[1:]
    assert high.started_at < normal.started_at < low.started_at  # type: ignore[operator]


def test_cancel_stops_a_running_job_and_one_queued_while_no_worker_listened(
    celery_redis, pipeline, backend, collection, tmp_path
):
    gate = Gate(tmp_path / "running.txt")
    unheard_doc, later_doc = write_docs(tmp_path / "docs", collection, ["unheard.txt", "later.txt"])
    running = backend.submit(ingest_request(collection, [gate.path]))
    unheard = backend.submit(ingest_request(collection, [unheard_doc]))
    # No worker is running: the revoke broadcast reaches nobody; the job's record must do.
    assert backend.cancel(unheard).state is JobState.CANCELLED

    with run_celery_worker(env=worker_env(), log_dir=tmp_path) as worker:
        held = gate.wait_reader()
        stopping = backend.cancel(running)
        assert stopping.state in (JobState.CANCELLING, JobState.CANCELLED), stopping
        assert wait_finished(backend, running, worker).state is JobState.CANCELLED
        os.close(held)
        later = backend.submit(ingest_request(collection, [later_doc]))
        assert wait_finished(backend, later, worker).state is JobState.COMPLETED  # after both

    assert backend.status([unheard])[unheard].state is JobState.CANCELLED
    assert statuses(collection) == {"later.txt": "indexed"}
    assert backend.queue_depth() == 0


def chunk_snapshot(collection: str) -> list[tuple[str, int, str]]:
    return sorted(
        (r["source_uri"].rsplit("/", 1)[-1], r["ordinal"], r["content_hash"])
        for r in chunk_rows(collection)
    )


def test_a_task_of_a_killed_worker_is_redelivered_and_ends_exact(
    celery_redis, pipeline, backend, collection, tmp_path
):
    from deployments.celery_app import app
    from flows import ingest_batch

    names = ["d0.txt", "d1.txt", "d2.txt", "d3.txt"]
    regular = write_docs(tmp_path / "docs", collection, [n for n in names if n != "d2.txt"])
    gate = Gate(tmp_path / "docs" / "d2.txt")
    sources = sorted([*regular, gate.path])
    job = backend.submit(ingest_request(collection, sources))

    # One document per micro-batch: d0 and d1 are committed when d2's fetch waits.
    with run_celery_worker(env=worker_env(INGESTFLOW_BATCH_SIZE="1"), log_dir=tmp_path) as first:
        held = gate.wait_reader()
        assert statuses(collection) == {"d0.txt": "indexed", "d1.txt": "indexed"}
        first.kill()
        os.close(held)
    assert backend.status([job])[job].state is JobState.RUNNING  # as the dead worker left it

    # A worker with a short visibility timeout re-queues the unacknowledged task at start.
    again = worker_env(INGESTFLOW_CELERY_VISIBILITY_TIMEOUT="1")
    with run_celery_worker(env=again, log_dir=tmp_path) as second:
        gate.feed(text_for("d2.txt", collection))
        info = wait_finished(backend, job, second)

    assert info.state is JobState.COMPLETED, info
    summary = app.AsyncResult(job).result
    assert summary["counts"] == {"unchanged": 2, "indexed": 2}
    final = statuses(collection)
    assert set(final) == set(names) and set(final.values()) <= {"indexed", "unchanged"}
    assert consistency_problems(collection) == []
    clean = f"{collection}_clean"
    write_docs(tmp_path / "clean", collection, names)
    ingest_batch([str(tmp_path / "clean" / n) for n in names], collection=clean)
    recovered = chunk_snapshot(collection)
    assert len(set(recovered)) == len(recovered)
    assert recovered == chunk_snapshot(clean)


@pytest.mark.timeout(60)
def test_unreachable_redis_is_backend_unavailable_at_once(monkeypatch):
    from deployments.celery_app import create_app
    from deployments.celery_backend import UNREACHABLE, CeleryBackend
    from ingestflow.core.settings import get_settings

    port = free_port()  # nothing listens there
    monkeypatch.setenv("REDIS_URL", f"redis://:not-a-real-password@127.0.0.1:{port}/0")
    get_settings.cache_clear()
    try:
        backend = CeleryBackend(create_app(set_as_current=False))
        calls = {
            "submit an ingest job": lambda: backend.submit(
                JobRequest.ingest(tenant="default", collection="c", sources=["a.txt"])
            ),
            "submit a delete job": lambda: backend.submit(
                JobRequest.delete(tenant="default", collection="c", document_ids=["x"])
            ),
            "status": lambda: backend.status(["x"]),
            "cancel": lambda: backend.cancel("x"),
            "ping": backend.ping,
            "queue_depth": backend.queue_depth,
        }
        for name, call in calls.items():
            with pytest.raises(BackendUnavailableError) as caught:
                call()
            assert str(caught.value) == UNREACHABLE, name
            assert "not-a-real-password" not in str(caught.value)
    finally:
        get_settings.cache_clear()
