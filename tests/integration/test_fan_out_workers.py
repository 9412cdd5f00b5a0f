"""A large job split across real workers (``flows.fan_out``): two Celery workers, a Celery
worker killed in the middle of a part, and two served Prefect runners.

Each job is a few hundred small documents in parts of 20, embedded by the test server with a
per-request latency, so a part takes about a second and both workers are busy at once.
"""

from __future__ import annotations

import contextvars
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from deployments.queue import JobRequest
from ingestflow.core.types import JobState
from tests.conftest import REPO, reset_caches
from tests.support.celery_worker import CeleryWorker, run_celery_worker, worker_env
from tests.support.db import chunk_rows
from tests.support.faults import clean_ingest, exact_state_problems, make_corpus, wait_for

pytestmark = pytest.mark.slow

DOCUMENTS = 240
PART = 20
BATCH = 10
LATENCY = 0.25  # seconds per embedding request: two requests a part
STALE = 3.0
JOB_TIMEOUT = 240.0  # a guard against hanging, not an expectation
SPLIT_ENV = {
    "INGESTFLOW_FAN_OUT_PART_DOCUMENTS": str(PART),
    "INGESTFLOW_FAN_OUT_HELPERS": "3",
    "INGESTFLOW_FAN_OUT_STALE_SECONDS": str(STALE),
    "INGESTFLOW_BATCH_SIZE": str(BATCH),
}


@pytest.fixture
def split(pipeline, monkeypatch, tmp_path) -> Iterator[list[Path]]:
    """The split settings for this process and the workers; the documents of one job."""
    for name, value in SPLIT_ENV.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    pipeline.configure(latency=LATENCY)
    yield make_corpus(tmp_path / "docs", uuid.uuid4().hex[:12], count=DOCUMENTS)
    reset_caches()


def _submit(backend, collection: str, paths: list[Path]) -> str:
    """One ingest job through the front door every caller uses: recorded, then submitted."""
    from deployments.submit import submit

    request = JobRequest.ingest(
        tenant="default", collection=collection, sources=[str(p) for p in paths]
    )
    return submit(request, [], backend)


def _job(job_id: str):
    """The job as callers see it; None until its run has written its record."""
    from ingestflow.core.errors import JobNotFoundError
    from ingestflow.service.jobs import get_job

    try:
        return get_job(job_id, tenant="default")
    except JobNotFoundError:
        return None


def _wait_job(job_id: str, logs: list[CeleryWorker] = ()) -> object:
    try:
        return wait_for(
            lambda: (v := _job(job_id)) is not None and v.finished and v,
            timeout=JOB_TIMEOUT,
            what=f"job {job_id} to finish",
            interval=0.5,
        )
    except AssertionError as exc:
        tails = "\n".join(w.log()[-3000:] for w in logs)
        raise AssertionError(f"{exc}\n{tails}") from None


def _flow_runs(collection: str) -> dict[str, int]:
    """Documents of ``collection`` by the flow run that last claimed them."""
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT d.flow_run_id, count(*) AS n FROM documents d JOIN collections c"
            " ON c.id = d.collection_id WHERE c.name = %s GROUP BY d.flow_run_id",
            (collection,),
        ).fetchall()
    return {str(r["flow_run_id"]): r["n"] for r in rows}


def _parts_done(worker: CeleryWorker) -> list[int]:
    """What each ``ingest_parts`` task of this worker returned (the parts it did)."""
    found = re.findall(r"Task ingestflow\.ingest_parts\[[^\]]+\] succeeded in [\d.]+s: (\d+)",
                       worker.log())  # fmt: skip
    return [int(n) for n in found]


def _check_job(view, collection: str, reference: str | None = None) -> None:
    assert view.state is JobState.COMPLETED, view
    assert (view.documents_total, view.documents_done, view.documents_failed) == (
        DOCUMENTS, DOCUMENTS, 0,
    )  # fmt: skip
    # The chunk counters of every part reached the job (a part done twice counts twice).
    stored = len(chunk_rows(collection))
    if reference is None:
        assert view.chunks_total == view.chunks_embedded == view.chunks_written == stored
    else:
        assert view.chunks_written >= stored >= DOCUMENTS
        assert exact_state_problems(collection, reference=reference) == []


def test_a_celery_job_is_shared_by_two_workers(split, celery_redis, collection, tmp_path):
    from deployments.celery_backend import celery_backend

    env = worker_env(**SPLIT_ENV)
    with ExitStack() as stack:
        workers = [
            stack.enter_context(run_celery_worker(env=env, log_dir=tmp_path)) for _ in range(2)
        ]
        job = _submit(celery_backend(), collection, split)
        view = _wait_job(job, workers)
        _check_job(view, collection)
        # The job's own task ran on one worker; the other did parts as a helper.
        ran_job = [w for w in workers if "Task ingestflow.ingest[" in w.log()]
        assert len(ran_job) == 1
        (other,) = [w for w in workers if w is not ran_job[0]]
        wait_for(lambda: _parts_done(other), timeout=30, what="the helper's result in its log")
        assert sum(_parts_done(other)) >= 1, other.log()[-3000:]
    runs = _flow_runs(collection)
    assert view.flow_run_id in runs and len(runs) >= 2, runs
    print(f"documents by flow run: {runs}")


def test_a_celery_worker_killed_mid_part_leaves_an_exact_end(
    split, celery_redis, collection, tmp_path
):
    """The helper's worker is SIGKILLed (as a lost machine) while its part is half done; the
    part goes stale and the job's own task does it again; the end is a clean ingest's."""
    from deployments.celery_backend import celery_backend
    from storage.db import database_url

    env = worker_env(**SPLIT_ENV)
    reference = f"{collection}_clean"
    with ExitStack() as stack:
        workers = [
            stack.enter_context(run_celery_worker(env=env, log_dir=tmp_path)) for _ in range(2)
        ]
        job = _submit(celery_backend(), collection, split)
        parent = wait_for(
            lambda: (v := _job(job)) is not None and v.flow_run_id, timeout=60, what="its run"
        )
        with psycopg.connect(database_url(), autocommit=True) as conn:

            def helper_mid_part() -> bool:
                row = conn.execute(
                    "SELECT count(*) FROM documents d JOIN collections c"
                    " ON c.id = d.collection_id WHERE c.name = %s AND d.status = 'processing'"
                    " AND d.flow_run_id IS DISTINCT FROM %s",
                    (collection, parent),
                ).fetchone()
                return bool(row and row[0])

            wait_for(helper_mid_part, timeout=JOB_TIMEOUT, what="a helper in the middle of a part")
        (helper,) = [w for w in workers if "Task ingestflow.ingest[" not in w.log()]
        helper.kill()
        with ThreadPoolExecutor(1) as pool:  # the reference, while the job recovers
            clean = pool.submit(
                contextvars.copy_context().run,
                clean_ingest,
                split,
                collection=reference,
                batch_size=BATCH,
            )
            view = _wait_job(job, workers)
            clean.result(timeout=JOB_TIMEOUT)
    _check_job(view, collection, reference)


@pytest.fixture
def two_runners(split, prefect_server, tmp_path) -> Iterator[None]:
    """Two processes serving the deployments, one flow run at a time each: two workers."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(REPO),
    }
    code = "from deployments.definitions import serve_deployments; serve_deployments(limit=1)"
    logs = [tmp_path / f"runner-{n}.log" for n in range(2)]
    runners = []
    for log in logs:
        with log.open("wb") as out:
            runners.append(
                subprocess.Popen(
                    [sys.executable, "-c", code],
                    env=env,
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        _wait_served(prefect_server, runners, logs)
        yield
    finally:
        for runner in runners:
            runner.terminate()
        for runner in runners:
            try:
                runner.wait(timeout=30)
            except subprocess.TimeoutExpired:  # busy starting a run: stopped outright
                runner.kill()
                runner.wait(timeout=30)


def _wait_served(
    api_url: str, runners: list[subprocess.Popen], logs: list[Path], timeout: float = 120
) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api_url) as client:
        while time.monotonic() < deadline:
            for runner, log in zip(runners, logs, strict=True):
                assert runner.poll() is None, f"a runner exited:\n{log.read_text()[-3000:]}"
            try:
                client.read_deployment_by_name("ingest-batch/ingest-batch")
                client.read_deployment_by_name("ingest-parts/ingest-parts")
                return
            except ObjectNotFound:
                time.sleep(0.5)
    pytest.fail("the runners did not register the deployments")


def test_a_prefect_job_is_shared_by_two_served_runners(two_runners, split, collection):
    """The job's run takes one runner's only slot, so the parts done by its helper runs
    (child flow runs of ``ingest-parts``, shown under the job's run) ran on the other."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    from deployments.prefect_backend import PrefectBackend

    job = _submit(PrefectBackend(), collection, split)
    view = _wait_job(job)
    _check_job(view, collection)
    runs = _flow_runs(collection)
    helpers = {run: n for run, n in runs.items() if run != view.flow_run_id}
    assert view.flow_run_id in runs and helpers, runs
    with get_client(sync_client=True) as client:
        # Prefect 3.8's sync client sends nulls the server rejects unless sort and limit are set.
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(view.flow_run_id)])
            ),
            sort=FlowRunSort.ID_DESC,
            limit=50,
        )
    assert set(helpers) <= {str(c.id) for c in children}  # the helpers are the job's children
    # Helpers no runner had started when the job ended were withdrawn, not left to run.
    assert not [c for c in children if c.state is not None and c.state.is_scheduled()]
    print(f"documents by flow run: {runs}")
