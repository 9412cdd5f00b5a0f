"""Stuck documents: the process running a job is killed while its documents are
``processing``; the ``requeue-documents`` deployment (scheduled every five minutes) finds
them, submits them again, and they end indexed, exactly as a clean ingest leaves them.

Everything is the real service: uploads through the API (in-process TestClient), jobs as
flow runs of the served deployments, the flow run's own process SIGKILLed (its runner marks
the run crashed), and the re-queue run as a run of the served deployment.
"""

from __future__ import annotations

import io
import os
import signal
import time
import uuid

import psutil
import pytest

from tests.integration.test_api import make_key
from tests.support.db import document_rows
from tests.support.faults import clean_ingest, exact_state_problems, make_corpus, wait_for

pytestmark = pytest.mark.slow

DOCUMENTS = 12
STUCK_AFTER = 2.0  # the re-queue pass's idle threshold here (900 s by default)
TIMEOUT = 180.0  # a guard against hanging, not an expectation


def embedding_process(parent: int, port: int) -> psutil.Process | None:
    """The process among ``parent``'s descendants with a request open to the embeddings
    server on ``port``: the run's process, stalled in its embed step (the runner's idle warm
    processes have not called it)."""
    for child in psutil.Process(parent).children(recursive=True):
        try:
            if any(c.raddr and c.raddr.port == port for c in child.net_connections("tcp")):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def status_counts(collection: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in document_rows(collection).values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def test_documents_of_a_killed_run_are_requeued_by_the_deployment_and_end_exact(
    api, served, pipeline, collection, tmp_path
):
    from prefect.deployments import run_deployment

    from deployments.definitions import REQUEUE_INTERVAL_SECONDS

    key = make_key(f"tenant-{uuid.uuid4().hex[:8]}")
    paths = make_corpus(tmp_path / "docs", collection, count=DOCUMENTS)
    files = [("files", (p.name, io.BytesIO(p.read_bytes()), "text/plain")) for p in paths]
    pipeline.configure(latency=1.5)  # embedding stalls: the run sits in its embed step
    body = api.post(f"/v1/collections/{collection}/documents:bulk", headers=key, files=files)
    assert body.status_code == 202, body.text
    job = body.json()["operation_id"]

    wait_for(
        lambda: status_counts(collection).get("processing") == DOCUMENTS,
        timeout=TIMEOUT,
        what="the job's documents claimed",
        interval=0.2,
    )
    wait_for(lambda: pipeline.stats().requests > 0, timeout=TIMEOUT, what="an embedding request")
    process = wait_for(
        lambda: embedding_process(served.pid, pipeline.port),
        timeout=TIMEOUT,
        what="the run's process",
    )
    os.kill(process.pid, signal.SIGKILL)
    killed = time.monotonic()
    pipeline.configure(latency=0.0)
    state = wait_for(
        lambda: (s := api.get(f"/v1/jobs/{job}", headers=key).json()["state"]) != "running" and s,
        timeout=TIMEOUT,
        what="the runner to notice the dead run",
        interval=0.5,
    )
    assert state == "failed"  # crashed
    assert status_counts(collection) == {"processing": DOCUMENTS}  # stuck

    time.sleep(max(0.0, STUCK_AFTER - (time.monotonic() - killed)))
    requeue = run_deployment(
        "requeue-documents/requeue-documents",
        parameters={"idle_seconds": STUCK_AFTER},
        timeout=TIMEOUT,
    )
    assert requeue.state is not None and requeue.state.is_completed(), requeue.state
    rows = document_rows(collection)
    [new_job] = {r["job_id"] for r in rows.values()}
    assert new_job != job

    done = wait_for(
        lambda: (
            (j := api.get(f"/v1/jobs/{new_job}", headers=key).json())["state"]
            in ("completed", "failed")
            and j
        ),
        timeout=TIMEOUT,
        what="the re-queued job",
        interval=0.5,
    )
    recovered = time.monotonic() - killed
    print(
        f"killed the run with {DOCUMENTS} documents processing; re-queued as one job, all"
        f" indexed {recovered:.1f} s after the kill"
    )
    assert done["state"] == "completed", done
    assert status_counts(collection) == {"indexed": DOCUMENTS}

    clean = f"{collection}_clean"  # the same stored uploads, ingested cleanly
    clean_ingest(sorted(rows), collection=clean, batch_size=DOCUMENTS)
    assert exact_state_problems(collection, reference=clean) == []

    # The pass that did this runs on its own: the deployment is scheduled.
    from prefect import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("requeue-documents/requeue-documents")
    intervals = [s.schedule.interval.total_seconds() for s in deployment.schedules]
    assert intervals == [REQUEUE_INTERVAL_SECONDS]
