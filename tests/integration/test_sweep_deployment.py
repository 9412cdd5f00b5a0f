"""The sweep-bucket deployment on a real local Prefect server: scheduled, triggered, done."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.support.db import document_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def served(pipeline, prefect_server, collection, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(3):
        (folder / f"memo-{i}.txt").write_text(f"Memo {i} for {collection}: the sweep found me.")
    api_url = prefect_server  # the session's server runs the scheduler every 2 s
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "INGESTFLOW_SWEEP_URI": str(folder),
        "INGESTFLOW_SWEEP_COLLECTION": collection,
        "INGESTFLOW_SWEEP_CRON": "* * * * *",
        "PYTHONPATH": str(REPO),
    }
    serve = "from deployments.definitions import serve_deployments; serve_deployments()"
    runner = subprocess.Popen(
        [sys.executable, "-c", serve],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield api_url, folder
    finally:
        runner.terminate()
        runner.wait(timeout=30)


def _client(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def test_schedule_creates_runs_and_a_triggered_run_completes(served, collection):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    api_url, _folder = served
    with _client(api_url) as client:
        deployment = _wait_for(
            lambda: _read_deployment(client, "sweep-bucket/sweep-bucket"), 60, "the deployment"
        )
        assert [s.schedule.cron for s in deployment.schedules] == ["* * * * *"]
        scheduled = _wait_for(
            lambda: [
                r
                for r in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=20,
                )
                if r.auto_scheduled
            ],
            60,
            "the scheduler to create runs",
        )
        assert scheduled[0].parameters["uri"].endswith("inbox")

        run = client.create_flow_run_from_deployment(deployment.id)
        final = _wait_for(
            lambda: (r := client.read_flow_run(run.id)).state.is_final() and r,
            120,
            "the triggered run to finish",
        )
    assert final.state.is_completed(), final.state
    rows = document_rows(collection)
    assert len(rows) == 3 and {r["status"] for r in rows.values()} <= {"indexed", "unchanged"}


def _read_deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None
