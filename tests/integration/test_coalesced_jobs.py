"""Uploads sent together share runs (``INGESTFLOW_QUEUE_COALESCE_MS``) on both backends, while
each upload stays a job of its own: its state, progress, errors and documents."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.test_api import make_key
from tests.integration.test_api_celery import _finished
from tests.support.celery_worker import run_celery_worker, worker_env
from tests.support.db import consistency_problems, statuses

pytestmark = pytest.mark.slow
BURST = 12


def _burst(api: TestClient, key: dict[str, str], collection: str) -> list[dict[str, Any]]:
    """BURST uploads at once, one of them a PDF that cannot be read; their answers."""
    answers: list[dict[str, Any]] = [{} for _ in range(BURST)]
    start = threading.Barrier(BURST)

    def send(i: int) -> None:
        if i == 0:
            name, body, kind = "broken.pdf", b"%PDF-1.7\nnot really a pdf", "application/pdf"
        else:
            name, body, kind = f"note-{i}.txt", f"Note {i} of {collection}.".encode(), "text/plain"
        start.wait()
        reply = api.post(
            f"/v1/collections/{collection}/documents",
            headers=key,
            files={"file": (name, io.BytesIO(body), kind)},
        )
        assert reply.status_code == 202, reply.text
        answers[i] = reply.json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def _check(api: TestClient, key: dict[str, str], collection: str, answers: list[dict]) -> None:
    jobs = [_finished(api, key, a["job_id"]) for a in answers]
    assert len({j["id"] for j in jobs}) == BURST
    broken, good = jobs[0], jobs[1:]
    assert broken["state"] == "failed", broken
    assert broken["progress"]["documents_failed"] == 1
    assert broken["errors"] and "broken.pdf" not in str(good)
    for job in good:
        assert job["state"] == "completed", job
        progress = job["progress"]
        assert (progress["documents_total"], progress["documents_done"]) == (1, 1)
        assert progress["chunks_written"] == progress["chunks_total"] == 1
        assert job["document_ids"] and len(job["document_ids"]) == 1
    # Fewer runs than jobs: the burst was coalesced.
    assert len({j["flow_run_id"] for j in jobs}) < BURST
    found = statuses(collection)
    assert sorted(found.values()) == ["failed"] + ["indexed"] * (BURST - 1)
    assert consistency_problems(collection) == []


def test_a_burst_on_prefect_shares_runs_and_keeps_its_jobs(api, collection) -> None:
    key = make_key("coalesce-prefect")
    _check(api, key, collection, _burst(api, key, collection))


def test_a_burst_on_celery_shares_tasks_and_keeps_its_jobs(celery_api, collection, tmp_path):
    key = make_key("coalesce-celery")
    with run_celery_worker(env=worker_env(), log_dir=tmp_path):
        _check(celery_api, key, collection, _burst(celery_api, key, collection))


def test_cancelling_one_job_of_a_shared_run_leaves_the_others(api, collection) -> None:
    from deployments.queue import get_backend

    key = make_key("coalesce-cancel")
    backend = get_backend()
    backend.pause_queue("normal")  # the runs wait, so the cancel comes before they start
    try:
        answers = _burst(api, key, collection)
        victim = answers[1]
        cancelled = api.post(f"/v1/jobs/{victim['job_id']}/cancel", headers=key).json()
        assert cancelled["state"] == "cancelled"
    finally:
        backend.resume_queue("normal")
    others = [_finished(api, key, a["job_id"]) for a in answers[2:]]
    assert {j["state"] for j in others} == {"completed"}
    assert {j["flow_run_id"] for j in others} & {cancelled["flow_run_id"]}  # a shared run
    victim_doc = victim["document"]["id"]
    document = api.get(f"/v1/collections/{collection}/documents/{victim_doc}", headers=key)
    assert document.json()["status"] == "failed"
    assert document.json()["error_code"] == "cancelled"
    assert api.get(f"/v1/jobs/{victim['job_id']}", headers=key).json()["state"] == "cancelled"
