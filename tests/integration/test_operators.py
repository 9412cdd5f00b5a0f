"""The operators' views through the API, on both backends with real runners: who may see
them, workers and queues, pausing and resuming a queue (jobs wait, nothing is lost), job
priorities on the default runner (``serve``), and job statistics per tenant."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tests.integration.test_api import make_key
from tests.integration.test_api_service import _finished_job
from tests.support.celery_worker import run_celery_worker, worker_env
from tests.support.service import served_deployments, wait_until

pytestmark = pytest.mark.slow
QUEUES = ("high", "normal", "low")
# How long a paused queue's job is watched not starting: the runners poll every second.
PAUSE_WATCH_SECONDS = 6


def operator_key(tenant: str = "ops") -> dict[str, str]:
    from storage.api_keys import create_key
    from storage.db import connection

    with connection() as conn:
        new = create_key(conn, tenant=tenant, name="operator", role="operator")
    return {"Authorization": f"Bearer {new.secret}"}


@pytest.fixture(scope="module")
def served(service_env, tmp_path_factory):
    """This module's own served runner, one run at a time, so the order runs start in shows."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with served_deployments(service_env, log, limit=1) as proc:
        yield proc


@pytest.fixture
def ops() -> dict[str, str]:
    return operator_key()


@pytest.fixture
def tenant() -> dict[str, str]:
    return make_key(f"tenant-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def resumed(api, ops) -> Iterator[None]:
    """Every queue runs again after the test, whatever it paused."""
    yield
    for name in QUEUES:
        api.post(f"/v1/ops/queues/{name}:resume", headers=ops)


def _upload(api: TestClient, key, collection: str, text: str, priority: str = "normal") -> str:
    files = {"file": (f"{uuid.uuid4().hex[:6]}.txt", io.BytesIO(text.encode()), "text/plain")}
    resp = api.post(
        f"/v1/collections/{collection}/documents?priority={priority}", headers=key, files=files
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["job_id"]


def _queue(api: TestClient, ops, name: str) -> dict:
    queues = api.get("/v1/ops/queues", headers=ops).json()["queues"]
    return next(q for q in queues if q["name"] == name)


def _stays_queued(api: TestClient, key, job_id: str) -> None:
    deadline = time.monotonic() + PAUSE_WATCH_SECONDS
    while time.monotonic() < deadline:
        assert api.get(f"/v1/jobs/{job_id}", headers=key).json()["state"] == "queued"
        time.sleep(0.5)


ROUTES = [
    ("GET", "/v1/ops/workers"),
    ("GET", "/v1/ops/queues"),
    ("POST", "/v1/ops/queues/low:pause"),
    ("POST", "/v1/ops/queues/low:resume"),
    ("GET", "/v1/ops/jobs/stats"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_operator_routes_refuse_a_tenant_key(api, tenant, method, path):
    resp = api.request(method, path, headers=tenant)
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "operator_key_required"
    assert api.request(method, path).status_code == 401


def test_the_served_runner_is_listed_as_a_worker(api, ops):
    body = api.get("/v1/ops/workers", headers=ops).json()
    assert body["backend"] == "prefect"
    [runner] = [w for w in body["workers"] if w["name"] == "serve"]
    assert runner["status"] == "online"
    assert datetime.now(UTC) - datetime.fromisoformat(runner["last_heartbeat"]) < timedelta(
        seconds=90
    )
    assert {"ingest-batch", "delete-documents"} <= set(runner["registered"])


def test_a_paused_queue_holds_its_jobs_until_resumed(api, ops, tenant, collection, resumed):
    paused = api.post("/v1/ops/queues/low:pause", headers=ops)
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"name": "low", "depth": 0, "paused": True}
    waiting = _upload(api, tenant, collection, f"Low and waiting. {collection}", "low")
    normal = _upload(api, tenant, collection, f"Normal goes on. {collection}", "normal")
    assert _finished_job(api, tenant, normal)["state"] == "completed"
    _stays_queued(api, tenant, waiting)
    assert _queue(api, ops, "low") == {"name": "low", "depth": 1, "paused": True}

    resumed_queue = api.post("/v1/ops/queues/low:resume", headers=ops).json()
    assert resumed_queue["paused"] is False
    assert _finished_job(api, tenant, waiting)["state"] == "completed"
    assert _queue(api, ops, "low")["depth"] == 0


def test_the_default_runner_starts_high_priority_jobs_first(api, tenant, collection, openai_server):
    # The runner's one slot is taken by a first job, held there by a slow embedder; meanwhile
    # two low jobs are submitted, then a high one.
    openai_server.configure(latency=6.0)
    try:
        first = _upload(api, tenant, collection, f"First. {collection}", "normal")
        wait_until(
            lambda: api.get(f"/v1/jobs/{first}", headers=tenant).json()["state"] != "queued",
            timeout=120,
            what="the first job to take the runner's slot",
        )
        lows = [_upload(api, tenant, collection, f"Low {i}. {collection}", "low") for i in range(2)]
        time.sleep(1.5)  # the high job is the newest by a clear margin
        high = _upload(api, tenant, collection, f"High. {collection}", "high")
    finally:
        openai_server.reset()  # the first job's request keeps its delay; the next have none
    jobs = {j: _finished_job(api, tenant, j, timeout=180) for j in [first, *lows, high]}
    # Started by start time alone, the low jobs would go before the high one.
    started = sorted(jobs, key=lambda j: jobs[j]["started_at"])
    assert started[:2] == [first, high], [jobs[j]["priority"] for j in started]


def test_an_unknown_queue_is_a_4xx(api, ops):
    resp = api.post("/v1/ops/queues/urgent:pause", headers=ops)
    assert resp.status_code == 422, resp.text


def test_job_stats_count_by_state_and_kind_per_tenant(api, ops, collection):
    from storage.db import connection
    from storage.jobs import create_job, finish_job

    tenants = [f"stats-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    ends = {tenants[0]: ["completed", "completed", "failed"], tenants[1]: ["cancelled"]}
    with connection() as conn:
        for tenant_name, states in ends.items():
            for state in states:
                job_id = str(uuid.uuid4())
                create_job(
                    conn, job_id=job_id, tenant=tenant_name, collection=collection,
                    kind="ingest", backend="prefect",
                )  # fmt: skip
                finish_job(conn, job_id=job_id, state=state)
        create_job(
            conn, job_id=str(uuid.uuid4()), tenant=tenants[1], collection=collection,
            kind="delete", backend="celery",
        )  # fmt: skip

    body = api.get("/v1/ops/jobs/stats", headers=ops).json()
    first, second = body["tenants"][tenants[0]], body["tenants"][tenants[1]]
    assert first["jobs"] == 3
    assert first["by_state"]["completed"] == 2 and first["by_state"]["failed"] == 1
    assert first["by_kind"]["ingest"]["completed"] == 2
    assert first["by_kind"]["delete"]["queued"] == 0
    assert second["by_kind"]["delete"]["queued"] == 1 and second["by_state"]["cancelled"] == 1
    assert body["overall"]["jobs"] >= 5
    assert body["overall"]["jobs"] == sum(t["jobs"] for t in body["tenants"].values())

    only = api.get(f"/v1/ops/jobs/stats?tenant={tenants[1]}", headers=ops).json()
    assert list(only["tenants"]) == [tenants[1]] and only["overall"]["jobs"] == 2
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    empty = api.get("/v1/ops/jobs/stats", params={"since": later}, headers=ops)
    assert empty.status_code == 422, empty.text  # since after until (now)
    past = api.get(
        "/v1/ops/jobs/stats",
        params={"until": (datetime.now(UTC) - timedelta(days=1)).isoformat(), "tenant": tenants[0]},
        headers=ops,
    ).json()
    assert past["overall"]["jobs"] == 0


# -------------------------------------------------------------------------------- Celery


@pytest.fixture
def resumed_on_celery(celery_api) -> Iterator[TestClient]:
    """The Celery backend's API; every queue runs again after the test."""
    yield celery_api
    for name in QUEUES:
        celery_api.post(f"/v1/ops/queues/{name}:resume", headers=operator_key())


def test_celery_workers_queues_and_a_pause_that_outlives_a_worker_restart(
    resumed_on_celery, tenant, collection, tmp_path
):
    celery_api, ops = resumed_on_celery, operator_key()
    with run_celery_worker(env=worker_env(), log_dir=tmp_path) as worker:
        body = celery_api.get("/v1/ops/workers", headers=ops).json()
        assert body["backend"] == "celery"
        [found] = [w for w in body["workers"] if w["name"] == worker.hostname]
        assert found["status"] == "online"
        assert set(found["queues"]) == {"ingestflow.high", "ingestflow.normal", "ingestflow.low"}
        assert {"ingestflow.ingest", "ingestflow.delete"} <= set(found["registered"])

        assert celery_api.post("/v1/ops/queues/low:pause", headers=ops).json()["paused"] is True
        consuming = celery_api.get("/v1/ops/workers", headers=ops).json()["workers"]
        assert (
            "ingestflow.low"
            not in next(w for w in consuming if w["name"] == worker.hostname)["queues"]
        )
        waiting = _upload(celery_api, tenant, collection, f"Low on Celery. {collection}", "low")
        normal = _upload(celery_api, tenant, collection, f"Normal on Celery. {collection}")
        assert _finished_job(celery_api, tenant, normal)["state"] == "completed"
        _stays_queued(celery_api, tenant, waiting)
        assert _queue(celery_api, ops, "low") == {"name": "low", "depth": 1, "paused": True}

    # A worker started while the queue is paused leaves it alone too, until it is resumed.
    with run_celery_worker(env=worker_env(), log_dir=tmp_path) as worker:
        _stays_queued(celery_api, tenant, waiting)
        assert celery_api.post("/v1/ops/queues/low:resume", headers=ops).json()["paused"] is False
        assert _finished_job(celery_api, tenant, waiting)["state"] == "completed"
        listed = celery_api.get("/v1/ops/workers", headers=ops).json()["workers"]
        mine = next(w for w in listed if w["name"] == worker.hostname)
        assert "ingestflow.low" in mine["queues"]
