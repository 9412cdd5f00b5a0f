"""Retention: jobs that ended before the retention are deleted with their Prefect flow runs;
younger jobs, and every job's documents, stay; old Celery results are deleted from Redis."""

from __future__ import annotations

import io
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_api import make_key
from tests.integration.test_api_service import _finished_job

pytestmark = pytest.mark.slow


def _upload(api, key, collection: str, text: str) -> dict:
    files = {"file": (f"{uuid.uuid4().hex[:6]}.txt", io.BytesIO(text.encode()), "text/plain")}
    resp = api.post(f"/v1/collections/{collection}/documents", headers=key, files=files)
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_jobs_older_than_the_retention_go_with_their_flow_runs(api, collection):
    from deployments.prefect_backend import PrefectBackend
    from ingestflow.service.jobs import expire_jobs

    key = make_key(f"retention-{uuid.uuid4().hex[:6]}")
    old_upload = _upload(api, key, collection, f"An old note about moss. {collection}")
    old = _finished_job(api, key, old_upload["job_id"])
    time.sleep(3)
    young = _finished_job(
        api, key, _upload(api, key, collection, f"A new note about ferns. {collection}")["job_id"]
    )
    ended = [datetime.fromisoformat(j["finished_at"]) for j in (old, young)]
    cutoff = ended[0] + (ended[1] - ended[0]) / 2
    retention = datetime.now(UTC) - cutoff

    report = expire_jobs(retention_days=retention / timedelta(days=1))

    assert report.jobs >= 1 and report.runs.get("prefect", 0) >= 1 and not report.skipped
    assert api.get(f"/v1/jobs/{old['id']}", headers=key).status_code == 404
    assert api.get(f"/v1/jobs/{young['id']}", headers=key).status_code == 200
    runs = PrefectBackend().status([old["flow_run_id"], young["flow_run_id"]])
    assert set(runs) == {young["flow_run_id"]}
    document = old_upload["document"]["id"]
    kept = api.get(f"/v1/collections/{collection}/documents/{document}", headers=key)
    assert kept.status_code == 200 and kept.json()["status"] == "indexed"
    assert expire_jobs(retention_days=0).jobs == 0  # 0 keeps everything


def test_old_celery_results_are_pruned_from_redis(celery_redis):
    from deployments.celery_app import app, job_key
    from deployments.celery_backend import celery_backend

    backend = app.backend
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    for task_id in (old, new):
        backend.store_result(task_id, {"counts": {}}, "SUCCESS")
        backend.client.hset(job_key(task_id), mapping={"kind": "ingest"})
    key = backend.get_key_for_task(old)
    meta = backend.decode_result(backend.client.get(key))
    meta["date_done"] = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    backend.client.set(key, backend.encode(meta))

    pruned = celery_backend().prune_runs(before=datetime.now(UTC) - timedelta(days=1))

    assert pruned == 1
    assert backend.client.get(key) is None and not backend.client.exists(job_key(old))
    assert backend.client.get(backend.get_key_for_task(new)) is not None
    assert backend.client.exists(job_key(new))


def test_expire_jobs_command(pipeline):
    from typer.testing import CliRunner

    from ingestflow.cli import app

    done = CliRunner().invoke(app, ["expire-jobs", "--days", "0"])
    assert done.exit_code == 0, done.output
    assert "expired 0 job(s)" in done.output
