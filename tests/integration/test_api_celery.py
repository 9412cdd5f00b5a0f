"""The service end to end on the Celery backend: the same API and flows, with a real Redis and
a real ``celery worker`` process doing the work instead of Prefect deployments."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from tests.integration.test_api import make_key
from tests.support.celery_worker import run_celery_worker, worker_env
from tests.support.db import document_rows, statuses
from tests.support.service import wait_until

# Jobs run end to end on a real Celery worker.
pytestmark = pytest.mark.slow


@pytest.fixture
def key() -> dict[str, str]:
    return make_key("celery-tenant")


def _file(name: str, text: str):
    return (name, io.BytesIO(text.encode()), "text/plain")


def _finished(api: TestClient, key: dict[str, str], job_id: str, timeout: float = 180):
    def done():
        job = api.get(f"/v1/jobs/{job_id}", headers=key).json()
        p = job["progress"]
        settled = p["documents_done"] + p["documents_failed"] == p["documents_total"]
        ended = job["state"] in ("completed", "completed_with_errors", "failed", "cancelled")
        return job if ended and settled else None

    return wait_until(done, timeout=timeout, what=f"job {job_id} to finish")


def test_upload_runs_on_a_celery_worker_and_is_found(celery_api, key, collection, tmp_path):
    with run_celery_worker(env=worker_env(), log_dir=tmp_path):
        text = f"Axolotls regrow their limbs and hearts. {collection}"
        resp = celery_api.post(
            f"/v1/collections/{collection}/documents",
            headers=key,
            files={"file": _file("axolotl.txt", text)},
            data={"metadata": json.dumps({"kind": "biology"})},
        )
        assert resp.status_code == 202, resp.text
        body = resp.json()
        job = _finished(celery_api, key, body["job_id"])
    assert job["state"] == "completed" and job["kind"] == "ingest"
    assert job["progress"]["documents_done"] == 1
    assert job["flow_run_url"] and job["flow_run_id"]  # the worker ran the Prefect flow
    hits = celery_api.post(
        f"/v1/collections/{collection}/search",
        headers=key,
        json={"query": "axolotl regrow limbs", "k": 1, "filter": {"kind": "biology"}},
    ).json()["hits"]
    assert hits[0]["document_id"] == body["document"]["id"]
    again = celery_api.post(
        f"/v1/collections/{collection}/documents",
        headers=key,
        files={"file": _file("axolotl-again.txt", text)},
    )
    assert again.status_code == 200 and again.json()["duplicate"] is True


def test_cancel_and_retry_on_celery(celery_api, key, collection, tmp_path):
    files = [
        ("files", _file(f"c{i}.txt", f"Cancelled then retried {i}. {collection}")) for i in range(2)
    ]  # noqa: E501
    # No worker yet: the job waits in Redis while it is cancelled.
    resp = celery_api.post(f"/v1/collections/{collection}/documents:bulk", headers=key, files=files)
    job_id = resp.json()["operation_id"]
    cancelled = celery_api.post(f"/v1/jobs/{job_id}/cancel", headers=key).json()
    assert cancelled["state"] == "cancelled"
    assert {e["code"] for e in cancelled["errors"]} == {"cancelled"}

    retried = celery_api.post(f"/v1/jobs/{job_id}/retry", headers=key)
    assert retried.status_code == 202, retried.text
    with run_celery_worker(env=worker_env(), log_dir=tmp_path):
        job = _finished(celery_api, key, retried.json()["job_id"])
    assert job["state"] == "completed" and job["progress"]["documents_done"] == 2
    assert statuses(collection) == {"c0.txt": "indexed", "c1.txt": "indexed"}


def test_redis_outage_answers_503_and_the_document_waits(
    celery_api, key, collection, tmp_path, redis_server
):
    from deployments.submit import requeue_waiting

    redis_server.stop()
    try:
        ready = celery_api.get("/readyz")
        assert ready.status_code == 503 and "queue" in ready.json()["error"]["message"]
        resp = celery_api.post(
            f"/v1/collections/{collection}/documents",
            headers=key,
            files={"file": _file("waiting.txt", f"Uploaded while Redis was down. {collection}")},
        )
    finally:
        redis_server.start()
    assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
    assert resp.json()["error"]["code"] == "backend_unavailable"
    [row] = document_rows(collection).values()
    assert row["status"] == "queued" and row["job_id"] is None

    assert celery_api.get("/readyz").status_code == 200
    assert requeue_waiting(idle_seconds=0).resubmitted >= 1
    [row] = document_rows(collection).values()
    with run_celery_worker(env=worker_env(), log_dir=tmp_path):
        job = _finished(celery_api, key, row["job_id"])
    assert job["progress"]["documents_done"] == 1
