"""The service end to end on the Prefect backend: the API in-process, real Postgres, a real
Prefect server and served deployments doing the work, the local OpenAI-compatible embedder."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import reset_caches
from tests.integration.test_api import make_key
from tests.support.db import chunk_rows, document_rows, statuses
from tests.support.service import wait_until

# Every test runs jobs end to end on served deployments (one flow-run process per job).
pytestmark = pytest.mark.slow


@pytest.fixture
def tenant_key() -> dict[str, str]:
    return make_key(f"tenant-{uuid.uuid4().hex[:8]}")


def _file(name: str, text: str) -> tuple[str, io.BytesIO, str]:
    return (name, io.BytesIO(text.encode()), "text/plain")


def _finished_job(api: TestClient, key: dict[str, str], job_id: str, timeout: float = 90):
    def done():
        job = api.get(f"/v1/jobs/{job_id}", headers=key).json()
        finished = job["state"] in ("completed", "completed_with_errors", "failed", "cancelled")
        progress = job["progress"]
        settled = (
            progress["documents_done"] + progress["documents_failed"] == progress["documents_total"]
        )
        return job if finished and settled else None

    return wait_until(done, timeout=timeout, what=f"job {job_id} to finish")


def test_upload_is_ingested_by_a_deployment_run_and_found(api, tenant_key, collection):
    text = f"Narwhal tusks are teeth that sense salinity. {collection}"
    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers=tenant_key,
        files={"file": _file("narwhal.txt", text)},
        data={"metadata": json.dumps({"team": "marine"})},
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["duplicate"] is False and body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert body["document"]["status"] == "queued"

    job = _finished_job(api, tenant_key, body["job_id"])
    assert job["state"] == "completed" and job["kind"] == "ingest"
    assert job["progress"]["documents_done"] == 1 and job["progress"]["chunks"] >= 1
    assert job["flow_run_url"].endswith(f"/runs/flow-run/{job['flow_run_id']}")
    assert job["document_ids"] == [body["document"]["id"]]

    doc = api.get(
        f"/v1/collections/{collection}/documents/{body['document']['id']}", headers=tenant_key
    ).json()
    assert doc["status"] == "indexed"
    assert doc["metadata"] == {"team": "marine", "filename": "narwhal.txt"}

    hits = api.post(
        f"/v1/collections/{collection}/search",
        headers=tenant_key,
        json={"query": "narwhal tusk salinity", "k": 3, "filter": {"team": "marine"}},
    ).json()["hits"]
    assert hits and hits[0]["document_id"] == body["document"]["id"]

    again = api.post(
        f"/v1/collections/{collection}/documents",
        headers=tenant_key,
        files={"file": _file("copy-of-narwhal.txt", text)},
    )
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["document"]["id"] == body["document"]["id"]
    assert again.json()["job_id"] == body["job_id"]  # no new job ran
    assert len(document_rows(collection)) == 1


def test_force_reindexes_the_same_document(api, tenant_key, collection):
    text = f"Reindexed on request: basalt columns. {collection}"
    first = api.post(
        f"/v1/collections/{collection}/documents",
        headers=tenant_key,
        files={"file": _file("basalt.txt", text)},
    ).json()
    _finished_job(api, tenant_key, first["job_id"])
    doc_id = first["document"]["id"]

    forced = api.post(
        f"/v1/collections/{collection}/documents?force=true",
        headers=tenant_key,
        files={"file": _file("basalt-again.txt", text)},
    )
    assert forced.status_code == 202, forced.text
    assert forced.json()["document"]["id"] == doc_id and forced.json()["job_id"] != first["job_id"]
    _finished_job(api, tenant_key, forced.json()["job_id"])

    again = api.post(
        f"/v1/collections/{collection}/documents/{doc_id}:reingest", headers=tenant_key
    )
    assert again.status_code == 202, again.text
    job = _finished_job(api, tenant_key, again.json()["job_id"])
    assert job["state"] == "completed" and job["progress"]["documents_done"] == 1
    [row] = document_rows(collection).values()
    assert row["status"] == "indexed" and row["attempts"] == 3
    missing = api.post(
        f"/v1/collections/{collection}/documents/{uuid.uuid4()}:reingest", headers=tenant_key
    )
    assert missing.status_code == 404


def test_oversized_upload_is_413_and_leaves_nothing(api, tenant_key, collection, monkeypatch):
    monkeypatch.setenv("INGESTFLOW_API_MAX_UPLOAD_BYTES", "1000")
    reset_caches()
    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers=tenant_key,
        files={"file": ("big.txt", io.BytesIO(b"x" * 5000), "text/plain")},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "too_large"
    assert document_rows(collection) == {}


def test_bulk_upload_one_job_and_bad_files_do_not_sink_the_rest(
    api, tenant_key, collection, monkeypatch
):
    monkeypatch.setenv("INGESTFLOW_API_MAX_UPLOAD_BYTES", "200000")
    reset_caches()
    files = [
        ("files", _file("a.txt", f"Alpha document about glaciers. {collection}")),
        ("files", _file("b.md", f"# Beta\n\nBeta document about volcanoes. {collection}")),
        ("files", ("huge.bin", io.BytesIO(b"y" * 300_000), "application/octet-stream")),
        ("files", ("fake.pdf", io.BytesIO(b"%PDF-1.7\nnot really a pdf"), "application/pdf")),
    ]
    resp = api.post(f"/v1/collections/{collection}/documents:bulk", headers=tenant_key, files=files)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert [r["filename"] for r in body["rejected"]] == ["huge.bin"]
    assert body["rejected"][0]["code"] == "too_large"
    assert len(body["documents"]) == 3
    assert {d["job_id"] for d in body["documents"]} == {body["operation_id"]}

    job = _finished_job(api, tenant_key, body["operation_id"])
    assert job["state"] == "completed_with_errors", job
    progress = job["progress"]
    assert (progress["documents_total"], progress["documents_done"]) == (3, 2)
    assert progress["documents_failed"] == 1
    assert progress["chunks_total"] == progress["chunks_embedded"] == progress["chunks_written"]
    assert progress["chunks_written"] == progress["chunks"] >= 2
    [error] = job["errors"]
    assert error["source_uri"].endswith("/fake.pdf") and error["message"]
    assert statuses(collection) == {"a.txt": "indexed", "b.md": "indexed", "fake.pdf": "failed"}


def test_ingest_by_uri_only_under_allowed_roots(api, tenant_key, collection, tmp_path, monkeypatch):
    source = tmp_path / "allowed" / "note.txt"
    source.parent.mkdir()
    source.write_text(f"Ingested by URI: the heron waits. {collection}")
    refused = api.post(
        f"/v1/collections/{collection}/documents:ingest",
        headers=tenant_key,
        json={"uri": str(source)},
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "uri_not_allowed"
    unknown = api.post(
        f"/v1/collections/{collection}/documents:ingest",
        headers=tenant_key,
        json={"uri": "ftp://example.org/x.txt"},
    )
    assert unknown.status_code == 422

    monkeypatch.setenv("INGESTFLOW_API_FILE_ROOTS", json.dumps([str(source.parent)]))
    reset_caches()
    resp = api.post(
        f"/v1/collections/{collection}/documents:ingest",
        headers=tenant_key,
        json={"uri": str(source), "priority": "high"},
    )
    assert resp.status_code == 202, resp.text
    job = _finished_job(api, tenant_key, resp.json()["job_id"])
    assert job["state"] == "completed" and job["progress"]["documents_done"] == 1


def _pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` (hand-written objects; pypdf extracts it)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def test_merge_pdfs_in_order_into_one_document(api, tenant_key, collection):
    files = [
        (
            "files",
            (
                "one.pdf",
                io.BytesIO(_pdf(f"First page about comets {collection}")),
                "application/pdf",
            ),
        ),  # noqa: E501
        (
            "files",
            (
                "two.pdf",
                io.BytesIO(_pdf(f"Second page about asteroids {collection}")),
                "application/pdf",
            ),
        ),  # noqa: E501
    ]
    resp = api.post(
        f"/v1/collections/{collection}/documents:merge?filename=space.pdf",
        headers=tenant_key,
        files=files,
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    _finished_job(api, tenant_key, body["job_id"])
    chunks = chunk_rows(collection)
    text = " ".join(c["content"] for c in chunks)
    assert text.index("comets") < text.index("asteroids")
    pages = sorted({c["provenance"].get("page") for c in chunks} - {None})
    assert pages == [1, 2] or len(chunks) == 1

    bad = api.post(
        f"/v1/collections/{collection}/documents:merge",
        headers=tenant_key,
        files=[("files", ("x.pdf", io.BytesIO(b"not a pdf"), "application/pdf"))],
    )
    assert bad.status_code == 422
    assert "file 1" in bad.json()["error"]["message"]


def test_cancel_then_retry_runs_only_what_was_left(api, tenant_key, collection, served):
    import os
    import signal

    files = [
        ("files", _file(f"doc-{i}.txt", f"Document {i} about tides. {collection}"))
        for i in range(3)
    ]  # noqa: E501
    # Pause the runner so the job stays scheduled while it is cancelled.
    os.kill(served.pid, signal.SIGSTOP)
    try:
        resp = api.post(
            f"/v1/collections/{collection}/documents:bulk", headers=tenant_key, files=files
        )
        job_id = resp.json()["operation_id"]
        cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant_key)
    finally:
        os.kill(served.pid, signal.SIGCONT)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["progress"]["documents_failed"] == 3, str(cancelled.json())
    assert {e["code"] for e in cancelled.json()["errors"]} == {"cancelled"}

    retried = api.post(f"/v1/jobs/{job_id}/retry", headers=tenant_key)
    assert retried.status_code == 202, retried.text
    new_id = retried.json()["job_id"]
    assert new_id != job_id
    job = _finished_job(api, tenant_key, new_id)
    assert job["state"] == "completed" and job["progress"]["documents_done"] == 3
    again = api.post(f"/v1/jobs/{new_id}/retry", headers=tenant_key)
    assert again.status_code == 409  # nothing left to retry


def test_backend_outage_is_503_and_nothing_is_lost(api, tenant_key, collection, monkeypatch):
    from deployments.submit import requeue_waiting
    from tests.support.processes import free_port

    working = api_url = __import__("os").environ["PREFECT_API_URL"]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    reset_caches()
    text = f"Written while the queue was down: kelp forests. {collection}"
    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers=tenant_key,
        files={"file": _file("kelp.txt", text)},
    )
    assert resp.status_code == 503
    assert resp.headers["Retry-After"].isdigit()
    assert resp.json()["error"]["code"] == "backend_unavailable"
    [row] = document_rows(collection).values()
    assert row["status"] == "queued" and row["job_id"] is None

    monkeypatch.setenv("PREFECT_API_URL", working)
    reset_caches()
    report = requeue_waiting(idle_seconds=0)
    assert report.resubmitted >= 1
    [row] = document_rows(collection).values()
    job = _finished_job(api, tenant_key, row["job_id"])
    assert job["progress"]["documents_done"] == 1
    assert api_url == working


def test_job_events_stream_progress_until_the_end(api, tenant_key, collection):
    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers=tenant_key,
        files={"file": _file("events.txt", f"Streaming progress of a job. {collection}")},
    )
    job_id = resp.json()["job_id"]
    events = []
    with api.stream("GET", f"/v1/jobs/{job_id}/events", headers=tenant_key) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert events[-1] == ("end", {"state": "completed"})
    progress = [data for name, data in events if name == "progress"]
    assert progress[-1]["progress"]["documents_done"] == 1


def test_bulk_delete_as_a_job_removes_chunks_and_uploads(api, tenant_key, collection):
    resp = api.post(
        f"/v1/collections/{collection}/documents:bulk",
        headers=tenant_key,
        files=[("files", _file(f"d{i}.txt", f"Delete me {i}. {collection}")) for i in range(2)],
    )
    body = resp.json()
    _finished_job(api, tenant_key, body["operation_id"])
    ids = [d["document"]["id"] for d in body["documents"]]
    uploads = [Path(d["document"]["source_uri"].removeprefix("file://")) for d in body["documents"]]
    assert all(p.exists() for p in uploads)

    deleting = api.post(
        f"/v1/collections/{collection}/documents:delete", headers=tenant_key, json={"ids": ids}
    )
    assert deleting.status_code == 202, deleting.text
    job = _finished_job(api, tenant_key, deleting.json()["job_id"])
    assert job["kind"] == "delete" and job["state"] == "completed"
    assert chunk_rows(collection) == []
    assert {r["status"] for r in document_rows(collection).values()} == {"deleted"}
    assert not any(p.exists() for p in uploads)

    listed = api.get(f"/v1/jobs?collection={collection}&kind=delete", headers=tenant_key).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]


def _pdf_part(name: str, text: str):
    return ("files", (name, io.BytesIO(_pdf(text)), "application/pdf"))


def _matrix_requests(collection: str, document_id: str, job_id: str):
    """One request per /v1 route, in an order where the owner's requests all apply: jobs
    first, the deletes last."""
    docs = f"/v1/collections/{collection}/documents"
    return {
        ("GET", "/v1/jobs"): ("GET", "/v1/jobs", {}),
        ("GET", "/v1/jobs/{job_id}"): ("GET", f"/v1/jobs/{job_id}", {}),
        ("GET", "/v1/jobs/{job_id}/events"): ("GET", f"/v1/jobs/{job_id}/events", {}),
        ("POST", "/v1/jobs/{job_id}/cancel"): ("POST", f"/v1/jobs/{job_id}/cancel", {}),
        ("POST", "/v1/jobs/{job_id}/retry"): ("POST", f"/v1/jobs/{job_id}/retry", {}),
        ("POST", "/v1/collections/{collection}/documents"): (
            "POST",
            docs,
            {"files": {"file": _file("m.txt", f"matrix upload {collection}")}},
        ),
        ("GET", "/v1/collections/{collection}/documents"): ("GET", docs, {}),
        ("POST", "/v1/collections/{collection}/documents:bulk"): (
            "POST",
            f"{docs}:bulk",
            {"files": [("files", _file("mb.txt", f"matrix bulk {collection}"))]},
        ),
        ("POST", "/v1/collections/{collection}/documents:ingest"): (
            "POST",
            f"{docs}:ingest",
            {"json": {"uri": "s3://matrix-bucket/none.txt"}},
        ),
        ("POST", "/v1/collections/{collection}/documents:merge"): (
            "POST",
            f"{docs}:merge",
            {"files": [_pdf_part("m.pdf", f"matrix merge {collection}")]},
        ),
        ("GET", "/v1/collections/{collection}/documents/{document_id}"): (
            "GET",
            f"{docs}/{document_id}",
            {},
        ),
        ("POST", "/v1/collections/{collection}/search"): (
            "POST",
            f"/v1/collections/{collection}/search",
            {"json": {"query": "matrix"}},
        ),
        ("POST", "/v1/collections/{collection}/documents/{document_id}:reingest"): (
            "POST",
            f"{docs}/{document_id}:reingest",
            {},
        ),
        ("POST", "/v1/collections/{collection}/documents:delete"): (
            "POST",
            f"{docs}:delete",
            {"json": {"ids": [document_id]}},
        ),
        ("DELETE", "/v1/collections/{collection}/documents/{document_id}"): (
            "DELETE",
            f"{docs}/{document_id}",
            {},
        ),
        ("GET", "/v1/collections/{collection}/status"): (
            "GET",
            f"/v1/collections/{collection}/status",
            {},
        ),
        # The operators' views: a tenant's key, the owner's too, is 403 there.
        ("GET", "/v1/ops/workers"): ("GET", "/v1/ops/workers", {}),
        ("GET", "/v1/ops/queues"): ("GET", "/v1/ops/queues", {}),
        ("POST", "/v1/ops/queues/{queue}:pause"): ("POST", "/v1/ops/queues/low:pause", {}),
        ("POST", "/v1/ops/queues/{queue}:resume"): ("POST", "/v1/ops/queues/low:resume", {}),
        ("GET", "/v1/ops/jobs/stats"): ("GET", "/v1/ops/jobs/stats", {}),
        ("DELETE", "/v1/jobs/{job_id}"): ("DELETE", f"/v1/jobs/{job_id}", {}),
    }


def _snapshot(collection: str, tenant: str) -> list[tuple]:
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT d.source_uri, d.status, d.chunk_count, d.job_id FROM documents d"
            " JOIN collections c ON c.id = d.collection_id WHERE c.name = %s AND c.tenant = %s"
            " ORDER BY d.source_uri",
            (collection, tenant),
        ).fetchall()
    return [tuple(r.values()) for r in rows]


def test_auth_matrix_every_route_no_key_revoked_key_other_tenant(api, collection):
    owner_tenant = f"owner-{uuid.uuid4().hex[:8]}"
    owner = make_key(owner_tenant)
    revoked = make_key(owner_tenant, revoked=True)
    intruder = make_key(f"intruder-{uuid.uuid4().hex[:8]}")
    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers=owner,
        files={"file": _file("secret.txt", f"The owner's secret recipe. {collection}")},
    )
    document_id, job_id = resp.json()["document"]["id"], resp.json()["job_id"]
    _finished_job(api, owner, job_id)
    requests = _matrix_requests(collection, document_id, job_id)
    routes = {
        (method.upper(), path)
        for path, ops in api.app.openapi()["paths"].items()
        if path.startswith("/v1/")
        for method in ops
    }
    assert routes == set(requests), "every /v1 route needs a row in the auth matrix"

    before = _snapshot(collection, owner_tenant)
    for method, path, kwargs in requests.values():
        for headers, code in (({}, "missing_api_key"), (revoked, "invalid_api_key")):
            resp = api.request(method, path, headers=headers, **kwargs)
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.json()["error"]["code"] == code
        resp = api.request(method, path, headers=intruder, **kwargs)
        assert resp.status_code != 401 and resp.status_code < 500, (method, path, resp.text)
        if resp.status_code != 404:  # a 404 may echo the id the caller sent, nothing more
            assert document_id not in resp.text and job_id not in resp.text, (method, path)
        assert "secret recipe" not in resp.text, (method, path)
    assert _snapshot(collection, owner_tenant) == before, "another tenant changed them"

    for (method, template), (_, path, kwargs) in requests.items():
        resp = api.request(method, path, headers=owner, **kwargs)
        if template.startswith("/v1/ops/"):
            assert resp.status_code == 403, (method, path, resp.text)
            continue
        assert resp.status_code in (200, 202, 204, 409), (method, path, resp.text)
        if template == "/v1/jobs":
            assert job_id in {j["id"] for j in resp.json()["items"]}
