"""Security evidence on the real service: tenants, SSRF, secrets and limits.

The whole module runs the API in-process and the deployments served by a subprocess (the
``api`` fixture) in an environment full of secrets: a database URL with a password, an
OpenAI key that the local embeddings server requires, an S3 secret key that moto rejects.
Each test checks that what a caller (or an operator reading logs and the Prefect UI) can see
holds none of them, and that nothing of one tenant shows to another.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from tests.conftest import reset_caches
from tests.integration.test_api_service import _finished_job, _matrix_requests
from tests.support.db import document_rows
from tests.support.emulators import BUCKET, MOTO_REGION

# Jobs run end to end on served deployments; each check drives the whole service.
pytestmark = pytest.mark.slow

# Distinctive secrets (none shaped like "sk-...", so only exact redaction can hide them).
OPENAI_KEY = "oaikey" + uuid.uuid4().hex + uuid.uuid4().hex
AWS_SECRET = "awssecret" + uuid.uuid4().hex + "Zq9"
DB_PASSWORD = "dbpass" + uuid.uuid4().hex
METRICS_TOKEN = "metricstoken" + uuid.uuid4().hex
REJECT_MARKER = "provider-rejects-this-text"


# the environment: secrets everywhere ------------------------------------------------------


def _with_password(url: str, password: str) -> tuple[str, str]:
    """``url`` with a password in it (the one it has, if any) and that password."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or 'postgres'}:{password}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc)), password


@pytest.fixture(scope="module")
def secret_openai() -> Iterator[Any]:
    """An embeddings server that wants ``OPENAI_KEY``. A text holding ``REJECT_MARKER`` is
    refused with 401 and the whole presented key echoed back (real providers echo a masked
    key; the worst case is that one does not mask it)."""
    from tests.support.openai_server import run_openai_server

    with run_openai_server(dimension=64, api_key=OPENAI_KEY) as server:
        original = server._handle

        async def handle(body: Any, authorization: str) -> JSONResponse:
            texts = [body.input] if isinstance(body.input, str) else body.input
            if any(REJECT_MARKER in t for t in texts):
                key = authorization.removeprefix("Bearer ")
                message = f"Incorrect API key provided: {key}. Find your key in the console."
                error = {"message": message, "type": "invalid_request_error", "code": "bad_key"}
                return JSONResponse({"error": error}, status_code=401)
            return await original(body, authorization)

        server._handle = handle  # type: ignore[method-assign]
        yield server


@pytest.fixture(scope="module")
def db_secret(database_url) -> tuple[str, str]:
    return _with_password(database_url, DB_PASSWORD)


@pytest.fixture(scope="module")
def service_env(
    database_url, db_secret, prefect_server, secret_openai, moto_server, tmp_path_factory
):
    """The service's environment (see tests/support/service.py), with secrets in it; it
    replaces conftest's for this module, so the served deployments get it too."""
    from tests.support.service import service_environment

    folder = tmp_path_factory.mktemp("security")
    env = service_environment(
        database_url=db_secret[0],
        prefect_api_url=prefect_server,
        openai_base_url=secret_openai.base_url,
        upload_dir=folder / "uploads",
    )
    env.update(
        {
            "OPENAI_API_KEY": OPENAI_KEY,
            # A real key id with the wrong secret: moto answers SignatureDoesNotMatch.
            "AWS_ACCESS_KEY_ID": moto_server.extra["key_id"],
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "INGESTFLOW_STORE_S3_ENDPOINT_URL": moto_server.endpoint,
            "INGESTFLOW_STORE_S3_REGION": MOTO_REGION,
            "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        }
    )
    return env


@pytest.fixture(scope="module")
def served_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve") / "serve.log"


@pytest.fixture(scope="module")
def served(service_env, served_log):
    """The deployments served with this module's environment, logging to ``served_log``."""
    from tests.support.service import served_deployments

    with served_deployments(service_env, served_log) as proc:
        yield proc


# helpers ----------------------------------------------------------------------------------


def new_key(tenant: str, *, revoked: bool = False) -> tuple[dict[str, str], str, int]:
    """(headers, the plain key, its id) of a fresh key of ``tenant``."""
    from storage.api_keys import create_key, revoke_key
    from storage.db import connection

    with connection() as conn:
        made = create_key(conn, tenant=tenant, name="security")
        if revoked:
            revoke_key(conn, key_id=made.record.id)
    return {"Authorization": f"Bearer {made.secret}"}, made.secret, made.record.id


def _tenant() -> str:
    return f"sec-{uuid.uuid4().hex[:10]}"


def _text_file(name: str, text: str) -> dict[str, tuple[str, io.BytesIO, str]]:
    return {"file": (name, io.BytesIO(text.encode()), "text/plain")}


def _upload(api: TestClient, headers: dict[str, str], collection: str, name: str, text: str):
    resp = api.post(
        f"/v1/collections/{collection}/documents", headers=headers, files=_text_file(name, text)
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def _upload_dir(service_env: dict[str, str]) -> Path:
    from storage.objectstore import local_path

    return local_path(service_env["INGESTFLOW_API_UPLOAD_URI"])


def _stored_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _tenant_state(tenant: str) -> tuple[list[str], list[tuple]]:
    """The tenant's collections and documents, for "nothing was stored" checks."""
    from storage.db import connection

    with connection() as conn:
        colls = conn.execute(
            "SELECT name FROM collections WHERE tenant = %s ORDER BY name", (tenant,)
        ).fetchall()
        docs = conn.execute(
            "SELECT d.id, d.status, d.job_id FROM documents d"
            " JOIN collections c ON c.id = d.collection_id WHERE c.tenant = %s ORDER BY d.id",
            (tenant,),
        ).fetchall()
    return [c["name"] for c in colls], [tuple(d.values()) for d in docs]


def _set_api_env(monkeypatch: pytest.MonkeyPatch, **values: object) -> None:
    """Change API settings for this test (the app reads them per request)."""
    from ingestflow.core.settings import get_settings

    for name, value in values.items():
        monkeypatch.setenv(f"INGESTFLOW_API_{name.upper()}", str(value))
    get_settings.cache_clear()


# tenants ----------------------------------------------------------------------------------


def test_every_route_refuses_forged_malformed_and_misplaced_keys(api, collection):
    """Extends test_api_service's auth matrix (no key, revoked, other tenant) with the keys
    an attacker would try next, on every /v1 route: the stored hash of a real key, a real
    key with a character added, a well-formed unknown key, another scheme, a key in the query
    string. Each is 401 and no answer echoes what was sent."""
    from storage.api_keys import hash_key

    owner, plain, _ = new_key(_tenant())
    requests = _matrix_requests(collection, str(uuid.uuid4()), str(uuid.uuid4()))
    routes = {
        (method.upper(), path)
        for path, ops in api.app.openapi()["paths"].items()
        if path.startswith("/v1/")
        for method in ops
    }
    assert routes == set(requests), "every /v1 route needs a row here"
    forged = {
        "stored hash": f"Bearer {hash_key(plain)}",
        "key plus a character": f"Bearer {plain}x",
        "unknown well-formed key": f"Bearer ifk_{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}",
        "basic scheme": f"Basic {plain}",
        "empty bearer": "Bearer ",
    }
    for method, path, kwargs in requests.values():
        for what, value in forged.items():
            resp = api.request(method, path, headers={"Authorization": value}, **kwargs)
            assert resp.status_code == 401, (what, method, path, resp.text)
            assert resp.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
            sent = value.split(" ")[-1]
            assert plain not in resp.text and (not sent or sent not in resp.text)
        resp = api.request(method, path, params={"api_key": plain}, **kwargs)
        assert resp.status_code == 401, (method, path, resp.text)
    assert api.get("/v1/jobs", headers=owner).status_code == 200  # the real key works


def test_another_tenant_sees_no_documents_chunks_jobs_hits_or_counts(api, collection, monkeypatch):
    """Two tenants with a collection of the same name: the intruder's lists, search (with
    the owner's exact text), job progress and counts hold only its own; /metrics, which
    counts every tenant, takes its own token and never an API key."""
    owner, _, _ = new_key(_tenant())
    intruder, _, _ = new_key(_tenant())
    secret_text = f"The owner's secret recipe: saffron, quince and rye. {collection}"
    mine = _upload(api, owner, collection, "secret.txt", secret_text)
    theirs = _upload(api, intruder, collection, "plain.txt", f"Plain notes on rye. {collection}")
    _finished_job(api, owner, mine["job_id"])
    intruder_job = _finished_job(api, intruder, theirs["job_id"])
    owner_doc, intruder_doc = mine["document"]["id"], theirs["document"]["id"]
    leaks = [owner_doc, mine["job_id"], "secret recipe", "secret.txt", "saffron"]

    answers = {
        "jobs": api.get("/v1/jobs?limit=100", headers=intruder),
        "jobs of the collection": api.get(f"/v1/jobs?collection={collection}", headers=intruder),
        "documents": api.get(f"/v1/collections/{collection}/documents", headers=intruder),
        "indexed documents": api.get(
            f"/v1/collections/{collection}/documents?status=indexed", headers=intruder
        ),
        "search with the owner's text": api.post(
            f"/v1/collections/{collection}/search",
            headers=intruder,
            json={"query": secret_text, "k": 100},
        ),
        "search by the owner's metadata": api.post(
            f"/v1/collections/{collection}/search",
            headers=intruder,
            json={"query": "recipe", "k": 100, "filter": {"filename": "secret.txt"}},
        ),
        "its own job": api.get(f"/v1/jobs/{theirs['job_id']}", headers=intruder),
    }
    for what, resp in answers.items():
        assert resp.status_code == 200, (what, resp.text)
        for leak in leaks:
            assert leak not in resp.text, (what, leak)
    assert [j["id"] for j in answers["jobs"].json()["items"]] == [theirs["job_id"]]
    assert [d["id"] for d in answers["documents"].json()["items"]] == [intruder_doc]
    hits = answers["search with the owner's text"].json()["hits"]
    assert hits and {h["document_id"] for h in hits} == {intruder_doc}
    assert answers["search by the owner's metadata"].json()["hits"] == []
    progress = answers["its own job"].json()["progress"]
    assert progress["documents_total"] == 1 == intruder_job["progress"]["documents_total"]
    assert progress["chunks"] == document_rows_for(collection, intruder_doc)["chunk_count"]

    # The owner's ids in the intruder's requests: not found, or reported missing.
    resp = api.post(
        f"/v1/collections/{collection}/documents:delete",
        headers=intruder,
        json={"ids": [owner_doc], "mode": "now"},
    )
    assert resp.status_code == 200 and resp.json() == {"deleted": [], "missing": [owner_doc]}
    resp = api.get(f"/v1/collections/{collection}/documents/{owner_doc}", headers=intruder)
    assert resp.status_code == 404
    owner_view = api.get(f"/v1/collections/{collection}/documents", headers=owner).json()
    assert [(d["id"], d["status"]) for d in owner_view["items"]] == [(owner_doc, "indexed")]

    _set_api_env(monkeypatch, metrics_token=METRICS_TOKEN)
    for headers in ({}, intruder, owner):
        resp = api.get("/metrics", headers=headers)
        assert resp.status_code == 401 and "ingestflow_documents" not in resp.text
    resp = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert resp.status_code == 200 and "ingestflow_documents" in resp.text


def document_rows_for(collection: str, document_id: str) -> dict[str, Any]:
    rows = [r for r in document_rows(collection).values() if str(r["id"]) == document_id]
    assert len(rows) == 1
    return rows[0]


# SSRF ---------------------------------------------------------------------------------------


class Listener:
    """A TCP port that counts the connections made to it (none may come)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


def test_ingest_by_uri_fetches_no_url_a_request_names(
    api, collection, tmp_path, monkeypatch, listener, service_env
):
    """documents:ingest takes object-store URIs and local paths under
    INGESTFLOW_API_FILE_ROOTS only: http(s) and other schemes, paths outside the roots
    (absolute, ``..``, a symlink out, a file:// URI with a host) and the upload store (even
    under a root) are 422 and store nothing, not even the collection. S3 endpoints come from
    the server's settings only: an endpoint in the body is refused, one in the metadata or
    the URI is never contacted, by the API or by the job. INGESTFLOW_API_SOURCE_PREFIXES
    narrows the object-store URIs to the prefixes it lists."""
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "ok.txt").write_text(f"allowed {collection}")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the roots")
    (root / "link.txt").symlink_to(outside)
    upload_dir = _upload_dir(service_env)
    _set_api_env(monkeypatch, file_roots=json.dumps([str(root), str(upload_dir.parent)]))
    tenant = _tenant()
    headers, _, _ = new_key(tenant)
    url = f"/v1/collections/{collection}/documents:ingest"
    target = f"127.0.0.1:{listener.port}"
    refused = [
        f"http://{target}/doc.txt",
        f"https://{target}/doc.txt",
        "http://169.254.169.254/latest/meta-data/",
        "https://[::1]/x",
        f"ftp://{target}/x",
        f"gopher://{target}/_x",
        f"//{target}/doc.txt",
        str(outside),
        outside.as_uri(),
        f"file://{target}{outside}",
        f"{root}/../outside.txt",
        str(root / "link.txt"),
        "/etc/passwd",
        "~/.aws/credentials",
        str(upload_dir / "c1" / "0123" / "someone-elses.txt"),
        f"{service_env['INGESTFLOW_API_UPLOAD_URI']}/c1/0123/someone-elses.txt",
    ]
    for uri in refused:
        resp = api.post(url, headers=headers, json={"uri": uri})
        assert resp.status_code == 422, (uri, resp.text)
        assert resp.json()["error"]["code"] == "uri_not_allowed", uri
    resp = api.post(
        url, headers=headers, json={"uri": f"s3://{BUCKET}/x", "endpoint_url": f"http://{target}"}
    )
    assert resp.status_code == 422, resp.text
    assert _tenant_state(tenant) == ([], []), "a refused URI stored something"

    allowed = api.post(url, headers=headers, json={"uri": str(root / "ok.txt")})
    assert allowed.status_code == 202, allowed.text
    sneaky = [
        (
            f"s3://{BUCKET}/{collection}/a.txt?endpoint_url=http://{target}",
            {"endpoint_url": f"http://{target}"},
        ),
        (f"s3://{target}/c.txt", {}),
        (f"gs://{target}/d.txt", {"endpoint": f"http://{target}"}),
        (f"az://{target}/e.txt", {"account_url": f"http://{target}"}),
    ]
    jobs = [allowed.json()["job_id"]]
    for uri, metadata in sneaky:
        resp = api.post(url, headers=headers, json={"uri": uri, "metadata": metadata})
        assert resp.status_code == 202, (uri, resp.text)
        jobs.append(resp.json()["job_id"])
    for job_id in jobs:
        _finished_job(api, headers, job_id, timeout=180)
    statuses = {r["source_uri"]: r["status"] for r in document_rows(collection).values()}
    assert statuses[(root / "ok.txt").resolve().as_uri()] == "indexed"
    assert sorted(s for u, s in statuses.items() if not u.startswith("file:")) == ["failed"] * 4
    assert listener.connections == 0, "a request made the service connect where it named"

    _set_api_env(monkeypatch, source_prefixes=json.dumps([f"s3://{BUCKET}/{collection}/"]))
    outside_prefix = [f"s3://{BUCKET}/other/x.txt", f"s3://{BUCKET}-evil/{collection}/x.txt"]
    outside_prefix += [uri for uri, _ in sneaky[1:]]
    for uri in outside_prefix:
        resp = api.post(url, headers=headers, json={"uri": uri})
        assert resp.status_code == 422, (uri, resp.text)
        assert resp.json()["error"]["code"] == "uri_not_allowed", uri


# secrets ------------------------------------------------------------------------------------


class ResponseLog:
    """Every response the test client receives: status, headers and body."""

    def __init__(self, client: TestClient) -> None:
        self.texts: list[str] = []
        client.event_hooks["response"].append(self._record)

    def _record(self, response: Any) -> None:
        response.read()
        self.texts.append(f"{response.status_code} {dict(response.headers)} {response.text}")


def _prefect_records(flow_run_ids: list[str]) -> list[str]:
    """What the Prefect server holds about the runs: parameters, job variables, states,
    task runs, logs, artifacts, and the deployments they came from. Task runs and artifacts
    reach the server as events, a little after a run ends, so this waits for them."""
    from tests.support.faults import wait_for

    found = wait_for(
        lambda: _read_prefect_records(flow_run_ids),
        timeout=60,
        what="the runs' task runs and artifacts on the Prefect server",
        interval=0.5,
    )
    assert len([r for r in found if '"parameters"' in r]) >= len(flow_run_ids)
    return found


def _read_prefect_records(flow_run_ids: list[str]) -> list[str] | None:
    """The records, or None while the runs' task runs or artifacts are not all there yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    ids = [uuid.UUID(j) for j in flow_run_ids]
    runs = FlowRunFilter(id=FlowRunFilterId(any_=ids))
    found: list[str] = []
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            flow_run_filter=runs, sort=FlowRunSort.ID_DESC, limit=len(ids)
        ):
            found.append(run.model_dump_json())
            if run.deployment_id:
                found.append(client.read_deployment(run.deployment_id).model_dump_json())
        task_runs = client.read_task_runs(
            flow_run_filter=runs, sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200
        )
        found += [t.model_dump_json() for t in task_runs]
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
        found += [
            log.model_dump_json() for log in client.read_logs(log_filter, limit=200, offset=0)
        ]
        # Raw, because the client's read_artifacts sends filters that drop artifacts of flow
        # runs (no task run) or that this server rejects.
        body = {
            "flow_runs": {"id": {"any_": [str(i) for i in ids]}},
            "limit": 200,
            "offset": 0,
            "sort": "ID_DESC",
        }
        artifacts = client.request("POST", "/artifacts/filter", json=body).json()
        found += [json.dumps(a) for a in artifacts]
    return found if artifacts and task_runs else None


def _database_rows(tenant: str) -> list[str]:
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT d.* FROM documents d JOIN collections c ON c.id = d.collection_id"
            " WHERE c.tenant = %s",
            (tenant,),
        ).fetchall()
    assert rows
    return [json.dumps(r, default=str) for r in rows]


def test_no_secret_in_logs_answers_runs_artifacts_or_rows(
    api, collection, caplog, monkeypatch, served_log, db_secret, moto_server
):
    """A real ingest, and failing ones: the embedding provider refusing the key (and echoing
    it), S3 refusing the secret key, wrong and revoked API keys, the database unreachable at
    a URL with a password. Then every log line (this process and the served deployments'),
    every HTTP answer, every Prefect run, task run, log and artifact, and every document row
    is searched for the API key, the OpenAI key, the S3 secret and the database password."""
    caplog.set_level(logging.DEBUG)
    responses = ResponseLog(api)
    tenant = _tenant()
    headers, api_key, _ = new_key(tenant)
    _, revoked_key, _ = new_key(tenant, revoked=True)
    docs = f"/v1/collections/{collection}/documents"

    good = _upload(api, headers, collection, "good.txt", f"Quartz keeps time. {collection}")
    refused = _upload(api, headers, collection, "refused.txt", f"{REJECT_MARKER} {collection}")
    s3 = api.post(f"{docs}:ingest", headers=headers, json={"uri": f"s3://{BUCKET}/k.txt"})
    assert s3.status_code == 202, s3.text
    job_ids = [good["job_id"], refused["job_id"], s3.json()["job_id"]]
    finished = [_finished_job(api, headers, job_id, timeout=180) for job_id in job_ids]
    flow_run_ids = [job["flow_run_id"] for job in finished]
    by_id = {str(r["id"]): r for r in document_rows(collection).values()}
    assert by_id[good["document"]["id"]]["status"] == "indexed"
    assert by_id[refused["document"]["id"]]["status"] == "failed"
    refused_error = by_id[refused["document"]["id"]]["error"] or ""
    # The provider echoed the key; the stored reason keeps its message, not the key.
    assert "401" in refused_error and "Incorrect API key provided" in refused_error
    failed_s3 = by_id[s3.json()["document"]["id"]]
    assert failed_s3["status"] == "failed" and "rejected" in failed_s3["error"], failed_s3
    api.post(f"/v1/collections/{collection}/search", headers=headers, json={"query": "quartz"})
    api.get(f"/v1/jobs/{good['job_id']}/events", headers=headers)
    for bad in (revoked_key, api_key[:-1] + ("A" if api_key[-1] != "A" else "B")):
        resp = api.get("/v1/jobs", headers={"Authorization": f"Bearer {bad}"})
        assert resp.status_code == 401

    url, password = db_secret
    unreachable, _ = _with_password("postgresql://ingestflow@127.0.0.1:1/ingestflow", password)
    monkeypatch.setenv("DATABASE_URL", unreachable)
    reset_caches()
    try:
        for path in ("/readyz", "/v1/jobs", "/metrics"):
            resp = api.get(path, headers=headers)
            assert resp.status_code == 503, (path, resp.text)
    finally:
        monkeypatch.setenv("DATABASE_URL", url)
        reset_caches()

    places = {
        "this process's logs": [caplog.text] + [str(r.__dict__) for r in caplog.records],
        "the served deployments' log": [served_log.read_text(errors="replace")],
        "HTTP answers": responses.texts,
        "Prefect": _prefect_records(flow_run_ids),
        "document rows": _database_rows(tenant),
    }
    secrets = {
        "API key": api_key,
        "revoked API key": revoked_key,
        "OpenAI key": OPENAI_KEY,
        "S3 secret key": AWS_SECRET,
        "database password": password,
    }
    # A secret's middle also counts: a masked echo ("oaik****************a1b2") shows
    # no middle, a truncated one does. A short password of a TEST_DATABASE_URL is only
    # looked for whole.
    needles = {
        name: [value, value[4:24]] if len(value) >= 28 else [value]
        for name, value in secrets.items()
    }
    found = [
        (name, place)
        for name, values in needles.items()
        for place, texts in places.items()
        for text in texts
        if any(v in text for v in values)
    ]
    assert all(texts for texts in places.values()), "a place to search is empty"
    assert not found, f"secrets leaked: {sorted(set(found))}"


# limits -------------------------------------------------------------------------------------


def test_rate_limit_per_key_429_with_retry_after_and_other_keys_unaffected(
    api, collection, monkeypatch
):
    """A burst of 3, then one request a minute: the 4th request is 429 ``rate_limited``
    with Retry-After, before anything is read or stored; a second key of the same tenant and
    the ops routes are unaffected; once the wait has passed (the bucket's clock moved back
    by Retry-After seconds) the key works again."""
    _set_api_env(monkeypatch, rate_limit=1, rate_burst=3)
    tenant = _tenant()
    first, _, first_id = new_key(tenant)
    second, _, _ = new_key(tenant)
    for _ in range(3):
        assert api.get("/v1/jobs", headers=first).status_code == 200
    for method, path, kwargs in (
        ("GET", "/v1/jobs", {}),
        ("POST", f"/v1/collections/{collection}/documents", {"files": _text_file("a", "x")}),
    ):
        resp = api.request(method, path, headers=first, **kwargs)
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "rate_limited"
        wait = int(resp.headers["Retry-After"])
        assert 1 <= wait <= 60
    assert _tenant_state(tenant) == ([], []), "a limited request stored something"
    assert api.get("/v1/jobs", headers=second).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert api.get(path, headers=first).status_code == 200, path

    from storage.db import connection

    with connection() as conn:
        conn.execute(
            "UPDATE api_rate_buckets SET updated_at = updated_at - make_interval(secs => %s)"
            " WHERE key_id = %s",
            (wait, first_id),
        )
    assert api.get("/v1/jobs", headers=first).status_code == 200
    assert api.get("/v1/jobs", headers=first).status_code == 429


def _seed_active_jobs(tenant: str, collection: str, n: int) -> tuple[list[str], list[str]]:
    """``n`` jobs of the tenant with a document still queued each, as a job in flight
    leaves them in the documents table. Returns (job ids, document ids)."""
    from ingestflow.service.collections import open_collection_for_ingest
    from storage.db import transaction
    from storage.documents import enqueue_document
    from storage.job_documents import assign_job

    coll = open_collection_for_ingest(collection, tenant=tenant)
    jobs, docs = [], []
    with transaction() as conn:
        for i in range(n):
            doc = enqueue_document(
                conn, collection_id=coll.id, source_uri=f"s3://{BUCKET}/seed-{i}", metadata={}
            )
            job_id = f"seed-{uuid.uuid4().hex}"
            assign_job(conn, document_ids=[doc.id], job_id=job_id)
            jobs.append(job_id)
            docs.append(doc.id)
    return jobs, docs


def test_too_many_active_jobs_is_429_before_anything_is_stored(
    api, collection, monkeypatch, service_env
):
    """At INGESTFLOW_API_MAX_ACTIVE_JOBS_PER_TENANT jobs queued or running, every route that
    starts an ingest job answers 429 ``too_many_jobs`` with Retry-After, and no upload, row
    or collection is stored; reads, deletes and other tenants go on; a finished job frees a
    slot."""
    _set_api_env(monkeypatch, max_active_jobs_per_tenant=2)
    tenant = _tenant()
    headers, _, _ = new_key(tenant)
    jobs, docs = _seed_active_jobs(tenant, collection, 2)
    before, files_before = _tenant_state(tenant), _stored_files(_upload_dir(service_env))
    base = f"/v1/collections/{collection}/documents"
    fresh = f"/v1/collections/{collection}-new/documents"
    pdf = ("files", ("a.pdf", io.BytesIO(b"%PDF-1.4 not really"), "application/pdf"))
    submissions = [
        ("POST", base, {"files": _text_file("a.txt", f"one {collection}")}),
        ("POST", fresh, {"files": _text_file("a.txt", f"one {collection}")}),
        ("POST", f"{base}:bulk", {"files": [("files", ("b.txt", io.BytesIO(b"b"), "text/plain"))]}),
        ("POST", f"{base}:ingest", {"json": {"uri": f"s3://{BUCKET}/x.txt"}}),
        ("POST", f"{base}:merge", {"files": [pdf]}),
        ("POST", f"{base}/{docs[0]}:reingest", {}),
        ("POST", f"/v1/jobs/{jobs[0]}/retry", {}),
    ]
    from api import routes
    from api.deps import limit_active_jobs

    limited = [
        route
        for module in (routes.documents, routes.jobs, routes.search, routes.uploads)
        for route in module.router.routes
        if any(d.dependency is limit_active_jobs for d in getattr(route, "dependencies", ()))
    ]
    assert len(limited) == len(submissions) - 1
    for method, path, kwargs in submissions:
        resp = api.request(method, path, headers=headers, **kwargs)
        assert resp.status_code == 429, (path, resp.text)
        assert resp.json()["error"]["code"] == "too_many_jobs"
        assert int(resp.headers["Retry-After"]) > 0
    assert _tenant_state(tenant) == before
    assert _stored_files(_upload_dir(service_env)) == files_before

    assert api.get(f"{base}?status=queued", headers=headers).status_code == 200
    other, _, _ = new_key(_tenant())
    other_job = _upload(api, other, collection, "other.txt", f"other tenant {collection}")["job_id"]

    from storage.db import connection

    with connection() as conn:  # the first job ends: one slot frees up
        conn.execute(
            "UPDATE documents SET status = 'failed', error = 'seeded' WHERE job_id = %s",
            (jobs[0],),
        )
    accepted = _upload(api, headers, collection, "a.txt", f"one {collection}")
    with connection() as conn:
        conn.execute(
            "UPDATE documents SET status = 'failed', error = 'seeded' WHERE job_id = %s",
            (jobs[1],),
        )
    _finished_job(api, headers, accepted["job_id"])
    _finished_job(api, other, other_job)


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: text/plain\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_bulk_upload_bounds_each_file_and_the_whole_request(api, collection, monkeypatch):
    """documents:bulk: a file over INGESTFLOW_API_MAX_UPLOAD_BYTES is rejected (too_large)
    and the others are taken; a request over INGESTFLOW_API_MAX_REQUEST_BYTES is 413,
    declared or streamed without a length, and leaves no file and no row."""
    _set_api_env(monkeypatch, max_upload_bytes=2000, max_request_bytes=10_000)
    tenant = _tenant()
    headers, _, _ = new_key(tenant)
    url = f"/v1/collections/{collection}/documents:bulk"
    from ingestflow.core.settings import get_settings
    from storage.objectstore import local_path

    uploads = local_path(get_settings().api.upload_uri)
    body, content_type = _multipart(
        [("small.txt", f"small {collection}".encode()), ("big.txt", b"x" * 5000)]
    )
    resp = api.post(url, headers={**headers, "Content-Type": content_type}, content=body)
    assert resp.status_code == 202, resp.text
    assert [r["code"] for r in resp.json()["rejected"]] == ["too_large"]
    assert [d["document"]["source_uri"].rsplit("/", 1)[-1] for d in resp.json()["documents"]] == [
        "small.txt"
    ]
    job_id = resp.json()["operation_id"]
    before, files_before = _tenant_state(tenant), _stored_files(uploads)

    # The request limit is never below one upload's limit plus 64 KiB of framing.
    parts = [(f"f{i}.txt", f"{i} {collection} ".encode() * 60) for i in range(60)]
    body, content_type = _multipart(parts)
    assert len(body) > 2000 + 64 * 1024 and all(len(data) < 2000 for _, data in parts)
    declared = api.post(url, headers={**headers, "Content-Type": content_type}, content=body)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    streamed = api.post(url, headers={**headers, "Content-Type": content_type}, content=chunks())
    for resp in (declared, streamed):
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"]["code"] == "request_too_large"
    assert _tenant_state(tenant) == before
    assert _stored_files(uploads) == files_before
    _finished_job(api, headers, job_id)
