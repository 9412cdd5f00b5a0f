"""Shared fixtures: a real Postgres + pgvector, a Prefect test server, an embeddings server.

Nothing here is faked: the database is pgserver's Postgres 16 with pgvector (or
TEST_DATABASE_URL), flows run against Prefect's test harness, and the ``openai`` embedder
talks to a local OpenAI-compatible HTTP server through the real client.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulators import (  # noqa: F401 (fixtures for the object-store tests)
    azurite,
    gcs_emulator,
    moto_server,
    store_target,
)

# Isolate Prefect's home (settings, local result storage) before Prefect is imported.
_PREFECT_HOME = tempfile.mkdtemp(prefix="ingestflow-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
# No test leaves a background Prefect server behind: those that need one start their own.
os.environ["INGESTFLOW_QUEUE_PREFECT_SERVER"] = "ephemeral"

REPO = Path(__file__).resolve().parents[1]
EVAL_DATA = REPO.parent / "shared" / "eval-data"
SAMPLES = REPO / "samples"


def reset_caches() -> None:
    """Make settings, the engine and embedders pick up a changed environment."""
    from ingestflow.core.settings import get_settings
    from storage import migrate
    from storage.db import reset_engine
    from tasks.embedders import clear_embedders

    get_settings.cache_clear()
    reset_engine()
    clear_embedders()
    migrate._schema_ready = False


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated Postgres + pgvector database for the whole session."""
    url = os.environ.get("TEST_DATABASE_URL")
    server = None
    if not url:
        import pgserver

        # Not under pytest's 0700 temp dir: as root, pgserver runs Postgres as its own user,
        # which must be able to reach the data directory to stop the server cleanly.
        parent = Path(tempfile.mkdtemp(prefix="ingestflow-test-pg-"))
        parent.chmod(0o755)
        server = pgserver.get_server(parent / "data", cleanup_mode="delete")
        url = server.get_uri()
    os.environ["DATABASE_URL"] = url
    reset_caches()
    from storage.migrate import upgrade

    upgrade()
    yield url
    from storage.db import reset_engine

    reset_engine()
    if server is not None:
        server.cleanup()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server (``prefect server start``) with its services, once a session;
    this process's Prefect client points at it. Yields the API URL.

    Its database is a fresh one on the machine's Postgres (PREFECT_TEST_SERVER_PG, default
    127.0.0.1:5432): Prefect's schema needs pg_trgm, which pgserver lacks. Without that
    server it falls back to SQLite, where task runs wait ~2 s on "database is locked".
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.support.prefect_server import run_prefect_server, scratch_postgres_database

    admin = os.environ.get(
        "PREFECT_TEST_SERVER_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with scratch_postgres_database(admin) as db_url, run_prefect_server(db_url) as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield api_url
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def openai_server():
    """A local OpenAI-compatible embeddings server (64-dimensional hashed vectors)."""
    from tests.support.openai_server import run_openai_server

    with run_openai_server(dimension=64) as server:
        yield server


@pytest.fixture
def pipeline(database_url, prefect_server, openai_server, monkeypatch) -> Iterator[object]:
    """Environment for running the ingest flows with the ``openai`` embedder on the local
    server. Yields the server so tests can inject faults or read its request counts."""
    monkeypatch.setenv("INGESTFLOW_EMBED_PROVIDER", "openai")
    monkeypatch.setenv("INGESTFLOW_EMBED_MODEL", "hash-64")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    monkeypatch.setenv("INGESTFLOW_EMBED_MAX_RETRY_WAIT", "2")
    reset_caches()
    openai_server.reset()
    yield openai_server
    openai_server.reset()  # no fault (a 30 s latency, say) outlives the test that set it
    reset_caches()


@pytest.fixture
def collection() -> str:
    """A collection name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def eval_data() -> Path:
    if not EVAL_DATA.is_dir():
        pytest.fail(f"eval data not found at {EVAL_DATA}; clone the repository beside shared/")
    return EVAL_DATA


@pytest.fixture(scope="module")
def service_env(database_url, prefect_server, openai_server, tmp_path_factory):
    """What the in-process API and its worker processes share (module-wide)."""
    uploads = tmp_path_factory.mktemp("uploads")
    from tests.support.service import service_environment

    return service_environment(
        database_url=database_url,
        prefect_api_url=prefect_server,
        openai_base_url=openai_server.base_url,
        upload_dir=uploads,
    )


@pytest.fixture(scope="module")
def served(service_env, tmp_path_factory):
    """The ingest and delete deployments served by a subprocess (module-wide)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    from tests.support.service import served_deployments

    with served_deployments(service_env, log) as proc:
        yield proc


@pytest.fixture
def api(service_env, served, monkeypatch):
    """The API in-process (TestClient) on the Prefect backend, with the served deployments."""
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INGESTFLOW_QUEUE_BACKEND", "prefect")
    reset_caches()
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app()) as client:
        yield client
    reset_caches()


@pytest.fixture
def celery_api(service_env, celery_redis, monkeypatch):
    """The API in-process (TestClient) on the Celery backend (the session's Redis); start a
    worker with ``tests.support.celery_worker.run_celery_worker`` for its jobs to run."""
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INGESTFLOW_QUEUE_BACKEND", "celery")
    reset_caches()
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app()) as client:
        yield client
    reset_caches()


@pytest.fixture(scope="session")
def redis_server():
    """A ``redis-server`` of this session's own, which tests may stop and restart."""
    from tests.support.redis_server import run_redis_server

    with run_redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def celery_redis(redis_server) -> Iterator[str]:
    """``REDIS_URL`` for this process's Celery app (configured once, on first use) and for
    the workers: the session's own Redis."""
    from ingestflow.core.settings import get_settings

    url = redis_server.url
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", url)
        get_settings.cache_clear()
        from deployments.celery_app import app

        if app.conf.broker_url != url:
            pytest.fail("the Celery app was configured before REDIS_URL was set")
        yield url
    get_settings.cache_clear()
