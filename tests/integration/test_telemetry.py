"""Traces and error reports from the processes that do the work: a real Celery worker runs
real jobs with ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``SENTRY_DSN``) pointing at a receiver this
test starts, speaking OTLP/HTTP (or Sentry's envelope protocol)."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter

import pytest

from deployments.queue import JobRequest
from tests.support.celery_worker import run_celery_worker, worker_env
from tests.support.db import document_rows
from tests.support.service import wait_until
from tests.support.telemetry_receivers import run_otlp_receiver, run_sentry_receiver

pytestmark = pytest.mark.slow
STAGES = ("fetch", "hash", "dedupe", "parse", "chunk", "embed", "upsert")
EMBED_BATCH = 64  # INGESTFLOW_EMBED_BATCH_SIZE's default
WORDS = [
    "kelp",
    "otter",
    "tide",
    "basalt",
    "heron",
    "lichen",
    "fjord",
    "moraine",
    "estuary",
    "plankton",
]


@pytest.fixture
def backend(celery_redis, pipeline):
    from deployments.celery_backend import celery_backend

    return celery_backend()


def _varied_text(paragraphs: int, seed: int) -> str:
    """Text whose chunks all differ, so none is served from the embedding cache."""
    rng = random.Random(seed)
    return "\n\n".join(
        " ".join(f"{rng.choice(WORDS)}{rng.randrange(10**6)}" for _ in range(120))
        for _ in range(paragraphs)
    )


def _finished(backend, job_id: str) -> None:
    wait_until(
        lambda: (info := backend.status([job_id]).get(job_id)) and info.state.terminal,
        timeout=240,
        what=f"job {job_id} to end",
    )


def _traced_worker(otlp, tmp_path):
    env = worker_env(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint, OTEL_BSP_SCHEDULE_DELAY="200")
    return run_celery_worker(env=env, log_dir=tmp_path)


def _ancestors(span, spans) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    found = []
    while span.parent_id in by_id:
        found.append(span.parent_id)
        span = by_id[span.parent_id]
    return found


def _job_span(otlp, job_id: str):
    found = [s for s in otlp.named("ingestflow.job") if s.attributes["ingestflow.job.id"] == job_id]
    return found[0] if found else None


def test_a_job_exports_a_span_per_job_stage_and_embedding_request(backend, collection, tmp_path):
    docs = []
    for i in range(2):
        path = tmp_path / f"notes-{i}.txt"
        path.write_text(_varied_text(paragraphs=60, seed=i), encoding="utf-8")
        docs.append(path)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\nnot a PDF\n")
    with run_otlp_receiver() as otlp, _traced_worker(otlp, tmp_path):
        job_id = backend.submit(
            JobRequest.ingest(
                sources=[str(p) for p in docs], collection=collection, tenant="default"
            )
        )
        _finished(backend, job_id)
        failing_id = backend.submit(
            JobRequest.ingest(sources=[str(broken)], collection=collection, tenant="default")
        )
        _finished(backend, failing_id)
        wait_until(
            lambda: _job_span(otlp, job_id) and _job_span(otlp, failing_id),
            timeout=60,
            what="the jobs' spans",
        )
    job = _job_span(otlp, job_id)
    assert job.attributes["ingestflow.job.state"] == "completed" and job.service == "ingestflow"
    in_trace = [s for s in otlp.spans if s.trace_id == job.trace_id]
    stages = [s for s in in_trace if s.name.startswith("ingestflow.stage.")]
    # One micro-batch: one run of each stage, each within the job's span.
    assert Counter(s.attributes["ingestflow.stage.name"] for s in stages) == Counter(STAGES)
    # (Prefect's own span of each task run sits in between.)
    assert all(job.span_id in _ancestors(s, in_trace) for s in stages)
    assert all(s.attributes["ingestflow.stage.outcome"] == "succeeded" for s in stages)
    # Each embedding request a child of the embed stage, together embedding every chunk.
    chunks = sum(row["chunk_count"] for row in document_rows(collection).values())
    [embed] = [s for s in stages if s.attributes["ingestflow.stage.name"] == "embed"]
    requests = [s for s in in_trace if s.name == "ingestflow.embed.request"]
    assert {s.parent_id for s in requests} == {embed.span_id}
    assert sum(s.attributes["ingestflow.embed.texts"] for s in requests) == chunks
    assert len(requests) == math.ceil(chunks / EMBED_BATCH) > 1

    failing = _job_span(otlp, failing_id)
    assert failing.attributes["ingestflow.job.state"] == "failed"
    assert failing.status_code == 2  # the run failed: every document did
    # Nothing in a span names a source or carries a secret.
    values = " ".join(str(v) for s in otlp.spans for v in s.attributes.values())
    assert str(tmp_path) not in values and "test-key-not-secret" not in values


def test_errors_go_to_sentry_without_secrets(backend, collection, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n", encoding="utf-8")
    token = f"metrics-{uuid.uuid4().hex}"
    env = worker_env(INGESTFLOW_API_METRICS_TOKEN=token)
    with run_sentry_receiver() as sentry:
        env["SENTRY_DSN"] = sentry.dsn
        with run_celery_worker(env=env, log_dir=tmp_path):
            job_id = backend.submit(
                JobRequest.ingest(sources=[str(empty)], collection=collection, tenant="default")
            )
            _finished(backend, job_id)
            wait_until(
                lambda: any("DocumentsFailedError" in e for e in sentry.envelopes),
                timeout=60,
                what="the failed job's error report",
            )
    reported = "\n".join(sentry.envelopes)
    assert token not in reported and "test-key-not-secret" not in reported
    assert env["DATABASE_URL"] not in reported
