"""schemathesis against the API's own OpenAPI schema: every /v1 route and the ops routes,
called in-process (ASGI) with a valid key, must answer no 5xx and nothing the schema does
not describe (status, content type, body).

The environment is the ``api`` fixture's (real Postgres, the upload store), with the Celery
backend on the session's Redis and no worker: a submission is then one Redis write, so
hundreds of generated uploads cost no flow runs. The queues are purged at the end. The
request rate and the active-jobs limit are off here; test_security.py tests them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from api.app import create_app
from storage.api_keys import generate_key
from tests.conftest import reset_caches

# Examples per operation: 18 operations, about a minute in all on the 2-core box.
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def purged_queues(celery_redis) -> Iterator[None]:
    """Nothing this module submits is left for a later test's Celery worker, and no queue
    it paused stays paused."""
    yield
    from deployments.celery_app import app
    from deployments.celery_backend import celery_backend

    app.control.purge()
    for queue in ("high", "normal", "low"):
        celery_backend().resume_queue(queue)


@pytest.fixture
def service(service_env, openai_server, celery_redis, purged_queues, monkeypatch) -> Iterator[None]:
    """The API's environment; the app reads its settings per request."""
    openai_server.reset()  # a well-behaved embedder: this test checks answers, not faults
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INGESTFLOW_QUEUE_BACKEND", "celery")
    monkeypatch.setenv("INGESTFLOW_API_RATE_LIMIT", "0")
    monkeypatch.setenv("INGESTFLOW_API_MAX_ACTIVE_JOBS_PER_TENANT", "0")
    reset_caches()
    yield
    reset_caches()


# Known before collection (schemathesis builds some cases then); stored by ``fuzz_key``.
FUZZ_KEY = generate_key()


@pytest.fixture(scope="module")
def fuzz_key(database_url) -> None:
    """Store ``FUZZ_KEY`` (only its hash, as ``create_key`` would), for a tenant of its own,
    as an operator's key, so the operators' routes are exercised too."""
    from storage.api_keys import hash_key
    from storage.db import connection
    from storage.migrate import ensure_schema

    ensure_schema()
    with connection() as conn:
        conn.execute(
            "INSERT INTO api_keys (tenant, name, role, key_hash)"
            " VALUES (%s, 'schemathesis', 'operator', %s)",
            (f"fuzz-{uuid.uuid4().hex[:10]}", hash_key(FUZZ_KEY)),
        )


# The schema is read from the app at import; nothing in create_app() touches the database.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.auth()
class ApiKeyAuth:
    """The valid key, through schemathesis's auth hook rather than fixed headers, so the
    cases that leave the key out on purpose (expecting 401) go out without it."""

    def get(self, case: Any, context: Any) -> str:
        return FUZZ_KEY

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    # The same examples on every run, so CI repeats what was checked here; new inputs come
    # from changing the schema or MAX_EXAMPLES, not from chance.
    derandomize=True,
    # The environment is set once per operation and shared by its examples.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_route_answers_within_its_schema(case, service, fuzz_key):
    # All checks but one. positive_data_acceptance wants every schema-valid request taken,
    # but the schema cannot state the rules a request must also follow: a page cursor the
    # API issued, a URI under the allowed roots, a PDF to merge, a collection that exists.
    # Those are 4xx by design; a 5xx or an answer the schema does not describe still fails.
    # The timeout is generous on purpose: this checks answers, not latency, and on a loaded
    # 2-core CI machine a first upload to a new collection (its HNSW index is built then)
    # has taken longer than schemathesis's default 10 s.
    case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=120)
