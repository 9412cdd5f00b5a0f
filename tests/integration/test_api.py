"""The HTTP API in-process (TestClient) against the real database, Prefect and embedder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support.db import chunk_rows


@pytest.fixture
def client(database_url) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app()) as c:
        yield c


def make_key(tenant: str, *, revoked: bool = False) -> dict[str, str]:
    from storage.api_keys import create_key, revoke_key
    from storage.db import connection

    with connection() as conn:
        new = create_key(conn, tenant=tenant, name="test")
        if revoked:
            revoke_key(conn, key_id=new.record.id)
    return {"Authorization": f"Bearer {new.secret}"}


@pytest.fixture
def indexed(pipeline, collection, tmp_path: Path) -> dict[str, str]:
    """Two small documents ingested into ``collection`` (tenant "default"); source -> id."""
    from ingestflow import ingest

    (tmp_path / "otters.md").write_text(
        f"# Otters\n\nSea otters hold hands while they sleep. {collection}\n", encoding="utf-8"
    )
    (tmp_path / "volcano.txt").write_text(
        f"{collection} basalt lava flows from shield volcanoes. " * 40, encoding="utf-8"
    )
    result = ingest(tmp_path, collection=collection)
    assert not result.failed, result.outcomes
    return {Path(o.source_uri).name: o.document_id for o in result.outcomes}  # type: ignore[misc]


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


def test_v1_needs_a_valid_active_key(client):
    url = "/v1/collections/anything/documents"
    assert client.get("/healthz").status_code == 200
    missing = client.get(url)
    bad = client.get(url, headers={"Authorization": "Bearer ifk_not-a-real-key"})
    basic = client.get(url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    revoked = client.get(url, headers=make_key("default", revoked=True))

    assert [r.status_code for r in (missing, bad, basic, revoked)] == [401] * 4
    assert error_code(missing) == "missing_api_key"
    assert error_code(bad) == error_code(revoked) == "invalid_api_key"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert "ifk_not-a-real-key" not in bad.text


def test_bad_input_is_a_json_4xx_never_a_500(client):
    owner = make_key("default")
    search = "/v1/collections/nope/search"
    cases = [
        client.post(search, headers=owner, json={"query": "x", "k": 0}),
        client.post(search, headers=owner, json={"query": "x", "k": 1001}),
        client.post(search, headers=owner, json={"query": "", "k": 3}),
        client.post(search, headers=owner, json={"query": "x", "filter": [1]}),
        client.post(
            search,
            headers=owner,
            content=b"{not json",
        ),
        client.get("/v1/collections/nope/documents?limit=0", headers=owner),
        client.get("/v1/collections/nope/documents?status=bogus", headers=owner),
    ]
    for r in cases:
        assert r.status_code == 422, r.text
        assert error_code(r) == "invalid_request"
    assert "k" in cases[0].json()["error"]["message"]
    unknown = client.get("/v1/collections/nope/documents", headers=owner)
    assert unknown.status_code == 404 and error_code(unknown) == "collection_not_found"
    assert error_code(client.get("/no/such/route")) == "not_found"


def test_readyz_checks_database_upload_store_and_queue(client, prefect_server):
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "upload_store": "ok", "queue": "ok"}


def test_readyz_is_503_with_the_reason_when_the_queue_is_down(client, monkeypatch):
    from tests.conftest import reset_caches
    from tests.support.processes import free_port

    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    reset_caches()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
    assert r.json()["error"]["code"] == "not_ready"
    assert r.json()["error"]["message"].startswith("queue: ")


def test_documents_and_search_for_the_owner_only(client, indexed, collection):
    from ingestflow.service.search import search

    owner, intruder = make_key("default"), make_key(f"other-{collection}")
    base = f"/v1/collections/{collection}"
    otters = indexed["otters.md"]

    # The owner lists, pages, filters and reads.
    listed = client.get(f"{base}/documents", headers=owner).json()
    assert {d["id"] for d in listed["items"]} == set(indexed.values())
    assert listed["next_cursor"] is None
    first = client.get(f"{base}/documents?limit=1", headers=owner).json()
    second = client.get(
        f"{base}/documents?limit=1&cursor={first['next_cursor']}", headers=owner
    ).json()
    assert first["next_cursor"] and second["next_cursor"] is None
    assert {first["items"][0]["id"], second["items"][0]["id"]} == set(indexed.values())
    assert client.get(f"{base}/documents?status=failed", headers=owner).json()["items"] == []
    bad_cursor = client.get(f"{base}/documents?cursor=garbage", headers=owner)
    assert bad_cursor.status_code == 422 and error_code(bad_cursor) == "invalid_request"

    doc = client.get(f"{base}/documents/{otters}", headers=owner).json()
    assert doc["status"] == "indexed" and doc["chunk_count"] == 1 and doc["error"] is None
    assert doc["collection"] == collection and doc["timings"]
    assert doc["provenance"][0]["provenance"].get("heading") == "Otters"
    missing = client.get(f"{base}/documents/00000000-0000-0000-0000-000000000000", headers=owner)
    assert missing.status_code == 404 and error_code(missing) == "document_not_found"
    assert client.get(f"{base}/documents/not-a-uuid", headers=owner).status_code == 404

    # The route ranks exactly as the service does.
    body = {"query": "which animal holds hands while sleeping?", "k": 5}
    hits = client.post(f"{base}/search", headers=owner, json=body).json()["hits"]
    expected = search(body["query"], collection=collection, k=5)
    assert [(h["document_id"], h["ordinal"]) for h in hits] == [
        (e.document_id, e.ordinal) for e in expected
    ]
    assert [h["score"] for h in hits] == pytest.approx([e.score for e in expected])
    assert hits[0]["document_id"] == otters and hits[0]["source_uri"].endswith("otters.md")
    filtered = client.post(
        f"{base}/search", headers=owner, json={**body, "filter": {"team": "nobody"}}
    ).json()
    assert filtered["hits"] == []

    # Another tenant sees nothing, not even that the collection exists.
    for r in (
        client.get(f"{base}/documents", headers=intruder),
        client.get(f"{base}/documents/{otters}", headers=intruder),
        client.delete(f"{base}/documents/{otters}", headers=intruder),
        client.post(f"{base}/search", headers=intruder, json=body),
    ):
        assert r.status_code == 404 and error_code(r) == "collection_not_found", r.text
    assert client.get(f"{base}/documents/{otters}", headers=owner).json()["status"] == "indexed"


def test_delete_removes_chunks_and_search_hits(client, indexed, collection):
    owner = make_key("default")
    base = f"/v1/collections/{collection}"
    otters = indexed["otters.md"]
    body = {"query": "which animal holds hands while sleeping?", "k": 10}
    before = client.post(f"{base}/search", headers=owner, json=body).json()["hits"]
    assert otters in {h["document_id"] for h in before}

    r = client.delete(f"{base}/documents/{otters}", headers=owner)

    assert r.status_code == 204 and r.content == b""
    assert not [c for c in chunk_rows(collection) if c["source_uri"].endswith("otters.md")]
    after = client.post(f"{base}/search", headers=owner, json=body).json()["hits"]
    assert after and otters not in {h["document_id"] for h in after}
    doc = client.get(f"{base}/documents/{otters}", headers=owner).json()
    assert doc["status"] == "deleted" and doc["chunk_count"] == 0 and doc["provenance"] == []
    deleted = client.get(f"{base}/documents?status=deleted", headers=owner).json()["items"]
    assert [d["id"] for d in deleted] == [otters]
    assert client.delete(f"{base}/documents/{otters}", headers=owner).status_code == 204


def test_keys_cli_creates_lists_and_revokes_without_showing_secrets(client):
    from typer.testing import CliRunner

    from ingestflow.cli import app
    from storage.api_keys import hash_key

    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--tenant", "cli-tenant", "--name", "ci"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("ifk_")
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/collections/none/documents", headers=auth).status_code == 404

    listed = runner.invoke(app, ["keys", "list", "--tenant", "cli-tenant"])
    assert listed.exit_code == 0 and "cli-tenant" in listed.output
    assert key not in listed.output and hash_key(key) not in listed.output
    key_id = created.output.split("created key ")[1].split()[0]
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    assert client.get("/v1/collections/none/documents", headers=auth).status_code == 401
    assert runner.invoke(app, ["keys", "revoke", "999999"]).exit_code == 1

    ops = runner.invoke(app, ["keys", "create", "--tenant", "ops", "--role", "operator"])
    assert ops.exit_code == 0, ops.output
    ops_auth = {"Authorization": f"Bearer {ops.stdout.strip().splitlines()[-1]}"}
    assert client.get("/v1/ops/jobs/stats", headers=ops_auth).status_code == 200
    assert "operator" in runner.invoke(app, ["keys", "list", "--tenant", "ops"]).output
    wrong = runner.invoke(app, ["keys", "create", "--tenant", "ops", "--role", "admin"])
    assert wrong.exit_code == 1 and "unknown role" in wrong.output


def test_values_the_database_cannot_store_are_422_not_500(client, indexed, collection):
    key = make_key("default")
    nul_filter = client.post(
        f"/v1/collections/{collection}/search",
        headers=key,
        json={"query": "otters", "filter": {"team": "a\u0000b"}},
    )
    assert nul_filter.status_code == 422, nul_filter.text
    nul_name = client.get("/v1/collections/a%00b/documents", headers=key)
    assert nul_name.status_code in (404, 422), nul_name.text


def test_collection_status_counts_documents_chunks_and_failures(
    client, indexed, collection, tmp_path
):
    from ingestflow import ingest

    broken = tmp_path / "broken" / "report.pdf"
    broken.parent.mkdir()
    broken.write_bytes(b"%PDF-1.7\nthis is not a PDF body\n")
    assert ingest(broken, collection=collection).failed
    owner = make_key("default")

    resp = client.get(f"/v1/collections/{collection}/status", headers=owner)
    assert resp.status_code == 200, resp.text
    status = resp.json()
    assert status["name"] == collection and status["dimension"] > 0
    assert status["documents"]["indexed"] == 2 and status["documents"]["failed"] == 1
    assert set(status["documents"]) == {
        "queued", "processing", "indexed", "unchanged", "failed", "deleted"
    }  # fmt: skip
    assert status["chunks"] == sum(
        client.get(f"/v1/collections/{collection}/documents/{i}", headers=owner).json()[
            "chunk_count"
        ]
        for i in indexed.values()
    )
    assert status["chunks"] >= 2 and status["last_indexed_at"] is not None
    [failure] = status["failures"]
    assert failure["source_uri"].endswith("report.pdf") and failure["error_code"] == "parse_error"
    assert failure["error"]

    other = client.get(f"/v1/collections/{collection}/status", headers=make_key("other"))
    assert other.status_code == 404
