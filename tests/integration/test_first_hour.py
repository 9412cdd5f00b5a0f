"""Every finding of a first hour with the service, each reproduced through the API as a user
met it: the API in-process, real Postgres, a real Prefect server and served deployments."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from fastapi.testclient import TestClient

from tests.conftest import reset_caches
from tests.integration.test_api import make_key
from tests.integration.test_api_service import _file, _finished_job
from tests.integration.test_eval_data_ingest import pdf_passwords
from tests.support.db import document_rows

pytestmark = pytest.mark.slow
DEEP = '{"a":' * 3000 + "1" + "}" * 3000


@pytest.fixture
def key() -> dict[str, str]:
    return make_key(f"tenant-{uuid.uuid4().hex[:8]}")


def _upload(api: TestClient, key, collection: str, name: str, data: bytes, **form):
    files = {"file": (name, io.BytesIO(data), "application/octet-stream")}
    return api.post(f"/v1/collections/{collection}/documents", headers=key, files=files, data=form)


def test_an_upload_to_a_plain_folder_store_is_indexed_and_its_stream_ends(
    api, key, collection, tmp_path, monkeypatch
):
    monkeypatch.setenv("INGESTFLOW_API_UPLOAD_URI", str(tmp_path / "plain-uploads"))
    reset_caches()
    resp = _upload(api, key, collection, "heron.txt", f"The heron waits. {collection}".encode())
    assert resp.status_code == 202, resp.text
    job = _finished_job(api, key, resp.json()["job_id"])
    assert job["state"] == "completed"
    assert job["progress"]["documents_done"] == 1
    [row] = document_rows(collection).values()  # one document, not a stranded twin
    assert row["status"] == "indexed" and row["source_uri"].startswith("file:///")
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=key) as events:
        body = "".join(events.iter_text())
    assert "event: end" in body


@pytest.mark.parametrize("route", ["documents", "documents:bulk", "documents:merge"])
def test_deeply_nested_metadata_is_a_4xx_on_every_upload_route(api, key, collection, route):
    field = "file" if route == "documents" else "files"
    files = {field: ("a.txt", io.BytesIO(b"some text"), "text/plain")}
    resp = api.post(
        f"/v1/collections/{collection}/{route}", headers=key, files=files, data={"metadata": DEEP}
    )
    assert resp.status_code == 422, resp.text
    assert "nested" in resp.json()["error"]["message"]
    body = json.dumps({"uri": "s3://bucket/a.txt", "metadata": json.loads('{"a": 1}')})
    shallow_but_deep = body.replace('{"a": 1}', '{"a":' * 40 + "1" + "}" * 40)
    resp = api.post(
        f"/v1/collections/{collection}/documents:ingest",
        headers={**key, "Content-Type": "application/json"},
        content=shallow_but_deep,
    )
    assert resp.status_code == 422, resp.text
    assert document_rows(collection) == {}


def test_a_password_in_metadata_is_refused_on_every_route(api, key, collection, tmp_path):
    for metadata in ({"password": "hunter2"}, {"pdf": {"Password": "hunter2"}}):
        resp = api.post(
            f"/v1/collections/{collection}/documents:ingest",
            headers=key,
            json={"uri": "s3://bucket/report.pdf", "metadata": metadata},
        )
        assert resp.status_code == 422, resp.text
        assert "hunter2" not in resp.text
        resp = _upload(api, key, collection, "a.txt", b"text", metadata=json.dumps(metadata))
        assert resp.status_code == 422, resp.text
    assert document_rows(collection) == {}


def test_an_encrypted_pdf_over_http_takes_a_password_that_is_never_stored(
    api, key, collection, eval_data
):
    name, password = next(iter(sorted(pdf_passwords(eval_data).items())))
    data = (eval_data / "pdfs" / name).read_bytes()

    first = _upload(api, key, collection, name, data)
    job = _finished_job(api, key, first.json()["job_id"])
    assert job["state"] == "failed"  # its only document failed
    [error] = job["errors"]
    assert error["code"] == "password_required"
    assert error["message"].endswith("send its password in the `password` field")

    again = _upload(api, key, collection, name, data, password=password)
    assert again.status_code == 202, again.text
    assert again.json()["document"]["id"] == first.json()["document"]["id"]  # tried again
    job = _finished_job(api, key, again.json()["job_id"])
    assert job["state"] == "completed", job
    doc = api.get(
        f"/v1/collections/{collection}/documents/{first.json()['document']['id']}", headers=key
    ).json()
    assert doc["status"] == "indexed" and doc["error_code"] is None
    seen = json.dumps([document_rows(collection), job, doc, _held_passwords()], default=str)
    assert password not in seen


def test_a_413_names_the_file_never_the_store_path(api, key, collection, monkeypatch):
    monkeypatch.setenv("INGESTFLOW_API_MAX_UPLOAD_BYTES", "1000")
    reset_caches()

    def chunked():  # no Content-Length: the limit is found while streaming
        boundary = "b0undary"
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big2.pdf"'
        yield "\r\nContent-Type: application/pdf\r\n\r\n"
        yield "x" * 5000
        yield f"\r\n--{boundary}--\r\n"

    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers={**key, "Content-Type": "multipart/form-data; boundary=b0undary"},
        content=(part.encode() for part in chunked()),
    )
    assert resp.status_code == 413, resp.text
    message = resp.json()["error"]["message"]
    assert "big2.pdf" in message and "file://" not in message and "/c" not in message
    bulk = api.post(
        f"/v1/collections/{collection}/documents:bulk",
        headers=key,
        files=[("files", ("big3.pdf", io.BytesIO(b"y" * 5000), "application/pdf"))],
    )
    assert bulk.status_code == 200, bulk.text  # nothing was taken: no job
    [rejected] = bulk.json()["rejected"]
    assert rejected["code"] == "too_large" and "file://" not in rejected["message"]


def test_job_states_tell_what_happened_to_the_documents(api, key, collection):
    failing = _upload(api, key, collection, "empty.txt", b"   \n ")
    failed = _finished_job(api, key, failing.json()["job_id"])
    assert failed["state"] == "failed" and failed["progress"]["documents_failed"] == 1

    bulk = api.post(
        f"/v1/collections/{collection}/documents:bulk",
        headers=key,
        files=[
            ("files", _file("good.txt", f"A good one about kelp. {collection}")),
            ("files", ("blank.txt", io.BytesIO(b" "), "text/plain")),
        ],
    )
    mixed = _finished_job(api, key, bulk.json()["operation_id"])
    assert mixed["state"] == "completed_with_errors"
    progress = mixed["progress"]
    assert (progress["documents_done"], progress["documents_failed"]) == (1, 1)
    assert progress["chunks_written"] == progress["chunks_embedded"] == progress["chunks_total"]

    page = api.get("/v1/jobs?state=failed", headers=key).json()
    assert [j["id"] for j in page["items"]] == [failed["id"]]
    assert page["next_cursor"] is None
    one = api.get("/v1/jobs?limit=1", headers=key).json()
    assert [j["id"] for j in one["items"]] == [mixed["id"]] and one["next_cursor"]
    rest = api.get(f"/v1/jobs?limit=1&cursor={one['next_cursor']}", headers=key).json()
    assert [j["id"] for j in rest["items"]] == [failed["id"]]

    duplicate = api.post(
        f"/v1/collections/{collection}/documents:bulk",
        headers=key,
        files=[("files", _file("again.txt", f"A good one about kelp. {collection}"))],
    )
    assert duplicate.status_code == 200 and duplicate.json()["operation_id"] is None

    assert api.delete(f"/v1/jobs/{failed['id']}", headers=key).status_code == 204
    assert api.get(f"/v1/jobs/{failed['id']}", headers=key).status_code == 404
    assert document_rows(collection)  # the documents stay


def test_a_delete_job_counts_only_deleted_documents_as_done(api, key, collection):
    resp = _upload(api, key, collection, "a.txt", f"To be deleted. {collection}".encode())
    _finished_job(api, key, resp.json()["job_id"])
    doc_id = resp.json()["document"]["id"]
    queued = api.post(
        f"/v1/collections/{collection}/documents:delete", headers=key, json={"ids": [doc_id]}
    ).json()
    early = api.get(f"/v1/jobs/{queued['job_id']}", headers=key).json()
    assert early["progress"]["documents_done"] == (1 if early["state"] == "completed" else 0)
    done = _finished_job(api, key, queued["job_id"])
    assert done["kind"] == "delete" and done["state"] == "completed"
    assert done["progress"]["documents_done"] == 1


def test_smaller_mismatches(api, key, collection):
    resp = _upload(api, key, collection, "blank.txt", b"   ")
    _finished_job(api, key, resp.json()["job_id"])
    doc = api.get(
        f"/v1/collections/{collection}/documents/{resp.json()['document']['id']}", headers=key
    ).json()
    assert doc["status"] == "failed" and doc["error_code"] == "empty_document"

    search = api.post(
        f"/v1/collections/{collection}/search", headers=key, json={"query": "x", "k": 500}
    )
    assert search.status_code == 200, search.text

    slashed = api.get("/v1/collections/a/b/documents", headers=key)
    assert slashed.status_code == 404
    assert "cannot contain '/'" in slashed.json()["error"]["message"]


def test_a_collection_name_with_a_slash_is_refused_when_created(pipeline, tmp_path):
    from ingestflow import ingest
    from ingestflow.core.errors import InvalidRequestError

    note = tmp_path / "n.txt"
    note.write_text("a note")
    with pytest.raises(InvalidRequestError, match="without '/'"):
        ingest(note, collection="team/docs")


def test_jobs_outlive_their_backend(api, key, collection, celery_redis, monkeypatch):
    """Jobs run on Prefect, then the API switches to Celery (no worker at all): the old jobs
    still read their state, list and filter."""
    resp = _upload(api, key, collection, "a.txt", f"Before the switch. {collection}".encode())
    before = _finished_job(api, key, resp.json()["job_id"])
    monkeypatch.setenv("INGESTFLOW_QUEUE_BACKEND", "celery")
    reset_caches()
    after = api.get(f"/v1/jobs/{before['id']}", headers=key).json()
    assert after["state"] == "completed" and after["backend"] == "prefect"
    listed = api.get("/v1/jobs?state=completed", headers=key).json()["items"]
    assert before["id"] in {j["id"] for j in listed}
    with api.stream("GET", f"/v1/jobs/{before['id']}/events", headers=key) as events:
        body = "".join(events.iter_text())  # ends at once: the job has ended
    assert body.rstrip().endswith('data: {"state": "completed"}')


def _held_passwords() -> list[dict]:
    from storage.db import connection

    with connection() as conn:
        return conn.execute("SELECT * FROM document_passwords").fetchall()
