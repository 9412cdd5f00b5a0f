"""GET /metrics against real ingests: the Prometheus text parses and agrees with the database.

The database is shared by the whole session, so every assertion is either "the scrape equals
what SQL says now" or "the scrape moved by exactly what this test ingested". The queue
backend is the one stand-in: the metrics route only asks it for ``queue_depth()``, and the
adapters live elsewhere, so a small object answering that call plays the backend.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ingestflow.core.errors import BackendUnavailableError
from ingestflow.core.types import DocumentStatus
from storage.db import connection
from storage.metrics import STAGES
from tests.support.db import document_rows

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class _Backend:
    """Answers the one question /metrics asks a queue backend."""

    def __init__(self, depth: int | None) -> None:
        self.depth = depth
        self.answer = threading.Event()
        self.answer.set()

    def queue_depth(self) -> int:
        self.answer.wait(timeout=30)  # bounded, so a regression fails instead of hanging
        if self.depth is None:
            raise BackendUnavailableError("redis is not reachable")
        return self.depth


@pytest.fixture
def client(database_url) -> Iterator[TestClient]:
    from api.errors import install_error_handlers
    from api.routes import metrics

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(metrics.router)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def queue(monkeypatch) -> Iterator[_Backend]:
    """The stand-in, registered as a queue backend plugin and chosen by the setting."""
    from deployments.queue import BACKENDS
    from ingestflow.core.settings import get_settings

    backend = _Backend(depth=4)
    BACKENDS.register("metrics-stand-in", lambda: backend, replace=True)
    monkeypatch.setenv("INGESTFLOW_QUEUE_BACKEND", "metrics-stand-in")
    get_settings.cache_clear()
    yield backend
    BACKENDS.unregister("metrics-stand-in")
    get_settings.cache_clear()


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("ingestflow_"), family.name
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def sql(query: str, *params: object) -> list[dict]:
    with connection() as conn:
        return conn.execute(query, params).fetchall()


def assert_matches_the_database(samples: Samples) -> None:
    """Every number of the scrape, computed independently with plain SQL."""
    statuses = {
        r["status"]: r["n"] for r in sql("SELECT status, count(*) n FROM documents GROUP BY 1")
    }
    assert by_label(samples, "ingestflow_documents", "status") == {
        s.value: float(statuses.get(s.value, 0)) for s in DocumentStatus
    }
    failures = sql(
        "SELECT coalesce(error_code, 'unknown') c, count(*) n FROM documents"
        " WHERE status = 'failed' GROUP BY 1"
    )
    assert by_label(samples, "ingestflow_failures", "reason") == {
        r["c"]: float(r["n"]) for r in failures
    }
    [chunks] = sql("SELECT count(*) n FROM chunks")
    assert value(samples, "ingestflow_chunks") == chunks["n"]
    [tokens] = sql("SELECT coalesce(sum(embedding_tokens), 0) n FROM documents")
    assert value(samples, "ingestflow_embedding_tokens_total") == tokens["n"]
    for stage in STAGES:
        [timed] = sql(
            "SELECT count(*) n, coalesce(sum((timings->>%s)::float8), 0) s FROM documents"
            " WHERE timings ? %s",
            stage,
            stage,
        )
        assert value(samples, "ingestflow_stage_seconds_count", stage=stage) == timed["n"]
        assert value(samples, "ingestflow_stage_seconds_sum", stage=stage) == pytest.approx(
            timed["s"]
        )


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def corpus(tmp_path: Path, collection: str, eval_data: Path) -> Path:
    """Two documents that index and three that fail, each for a different reason."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    # The collection name makes the texts unique, so the shared vector cache starts cold.
    (folder / "otters.md").write_text(
        f"# Otters\n\nSea otters hold hands while they sleep. {collection}\n", encoding="utf-8"
    )
    (folder / "volcano.txt").write_text(
        " ".join(f"{collection} lava flow {i} cools into basalt." for i in range(120)),
        encoding="utf-8",
    )
    pdfs = eval_data / "pdfs"
    shutil.copy(pdfs / "sf-libreoffice-writer-password.pdf", folder / "locked.pdf")  # no password
    shutil.copy(pdfs / "sf-imagemagick-CCITTFaxDecode.pdf", folder / "scan.pdf")  # image only
    # The corpus's own "broken" PDFs are repaired and indexed; a truncated one cannot be.
    (folder / "truncated.pdf").write_bytes((pdfs / "pypdf-crazyones.pdf").read_bytes()[:400])
    return folder


EXPECTED_FAILURES = {
    "locked.pdf": "password_required",
    "scan.pdf": "empty_document",
    "truncated.pdf": "parse_error",
}


def test_metrics_follow_the_ingested_documents(pipeline, collection, corpus, client, queue):
    from ingestflow import ingest
    from tasks.embedders import get_embedder

    before = scrape(client)
    assert_matches_the_database(before)

    result = ingest(corpus, collection=collection)

    rows = {Path(uri).name: row for uri, row in document_rows(collection).items()}
    assert {n: r["status"] for n, r in rows.items()} == {
        "otters.md": "indexed",
        "volcano.txt": "indexed",
        **{n: "failed" for n in EXPECTED_FAILURES},
    }, [(o.source_uri, o.error) for o in result.outcomes]
    assert {n: rows[n]["error_code"] for n in EXPECTED_FAILURES} == EXPECTED_FAILURES
    assert all(rows[n]["error"] for n in EXPECTED_FAILURES)

    # Each indexed document was charged the tokens of its distinct chunk texts (all new).
    count_tokens = get_embedder().count_tokens
    for name in ("otters.md", "volcano.txt"):
        texts = {
            r["content"]
            for r in sql("SELECT content FROM chunks WHERE document_id = %s", rows[name]["id"])
        }
        assert rows[name]["embedding_tokens"] == sum(count_tokens(t) for t in texts) > 0
        assert set(rows[name]["timings"]) == set(STAGES)

    after = scrape(client)
    assert_matches_the_database(after)
    assert delta(after, before, "ingestflow_documents", status="indexed") == 2
    assert delta(after, before, "ingestflow_documents", status="failed") == 3
    for code in EXPECTED_FAILURES.values():
        assert delta(after, before, "ingestflow_failures", reason=code) == 1
    [mine] = sql(
        "SELECT count(*) n FROM chunks k JOIN collections c ON c.id = k.collection_id"
        " WHERE c.name = %s",
        collection,
    )
    assert delta(after, before, "ingestflow_chunks") == mine["n"] > 0
    assert delta(after, before, "ingestflow_embedding_tokens_total") == (
        rows["otters.md"]["embedding_tokens"] + rows["volcano.txt"]["embedding_tokens"]
    )
    for stage in STAGES:  # timings are stored for indexed documents only
        assert delta(after, before, "ingestflow_stage_seconds_count", stage=stage) == 2
        assert delta(after, before, "ingestflow_stage_seconds_sum", stage=stage) >= 0
    # One micro-batch: each stage ran once, and succeeded (a document's failure is its own).
    runs = "ingestflow_stage_runs_total"
    for stage in STAGES:
        for outcome, n in (("started", 1), ("succeeded", 1), ("failed", 0), ("retried", 0)):
            moved = delta(after, before, runs, tenant="default", stage=stage, outcome=outcome)
            assert moved == n, (stage, outcome)
        assert delta(after, before, "ingestflow_stage_run_seconds_count", stage=stage) == 1
        count = value(after, "ingestflow_stage_run_seconds_count", stage=stage)
        assert value(after, "ingestflow_stage_run_seconds_bucket", stage=stage, le="+Inf") == count
        fastest = value(after, "ingestflow_stage_run_seconds_bucket", stage=stage, le="0.01")
        assert 0 <= fastest <= count
    assert value(after, "ingestflow_up") == 1
    assert value(after, "ingestflow_queue_up") == 1
    assert value(after, "ingestflow_queue_depth") == 4


def test_reindexing_from_the_cache_costs_no_tokens(pipeline, collection, corpus, client, queue):
    from ingestflow import ingest

    ingest(corpus, collection=collection)
    before = scrape(client)
    sent_before = pipeline.stats().texts_embedded

    forced = ingest(corpus, collection=collection, force=True)

    assert forced.count(DocumentStatus.INDEXED) == 2
    assert pipeline.stats().texts_embedded == sent_before  # every vector came from the cache
    after = scrape(client)
    assert_matches_the_database(after)
    # A counter never goes down: the documents keep the tokens their first indexing cost.
    assert delta(after, before, "ingestflow_embedding_tokens_total") == 0
    assert delta(after, before, "ingestflow_documents", status="indexed") == 0
    for stage in STAGES:  # the same two documents, re-timed: no new series, no new count
        assert delta(after, before, "ingestflow_stage_seconds_count", stage=stage) == 0


def test_queue_outage_drops_only_the_queue_depth(database_url, client, queue):
    queue.depth = None

    samples = scrape(client)

    assert value(samples, "ingestflow_up") == 1
    assert value(samples, "ingestflow_queue_up") == 0
    assert not [k for k in samples if k[0] == "ingestflow_queue_depth"]
    assert_matches_the_database(samples)


def test_a_hung_queue_backend_drops_only_the_queue_depth(database_url, client, queue, monkeypatch):
    from api.routes import metrics

    monkeypatch.setattr(metrics, "QUEUE_TIMEOUT_SECONDS", 0.2)
    queue.answer.clear()  # the backend blocks until the scrape has given up on it
    try:
        samples = scrape(client)
    finally:
        queue.answer.set()

    assert value(samples, "ingestflow_queue_up") == 0
    assert not [k for k in samples if k[0] == "ingestflow_queue_depth"]
    assert_matches_the_database(samples)


@contextmanager
def database_down() -> Iterator[None]:
    """Point the process at a port where no Postgres listens, then back."""
    from tests.conftest import reset_caches

    saved = os.environ["DATABASE_URL"]
    os.environ["DATABASE_URL"] = "postgresql://postgres:s3cret-pw@127.0.0.1:9/ingestflow"
    reset_caches()
    try:
        yield
    finally:
        os.environ["DATABASE_URL"] = saved
        reset_caches()


def test_database_outage_answers_503_with_the_json_error(database_url, client, queue):
    with database_down():
        response = client.get("/metrics")

    assert response.status_code == 503
    assert response.headers["retry-after"]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "service_unavailable"
    assert "s3cret-pw" not in response.text and "database" in body["error"]["message"]
    assert scrape(client)  # and it recovers once the database is back
