"""Limits on what one caller may ask of the API: a request rate per API key, a number of
active jobs per tenant, and a size per request body.

Where the rate state lives: **Postgres**, one UNLOGGED row per key (``api_rate_buckets``).
The API must stay stateless across replicas, so the bucket cannot be in process memory.
Postgres is always there, whichever queue backend runs the jobs, while Redis exists only
with the Celery backend; one store keeps the limit the same under both. It is cheap: the
key is already looked up in Postgres on every request, and the bucket is one more
statement, an ``INSERT ... ON CONFLICT DO UPDATE`` on the same pooled connection, that
refills and takes a token in one step (measured here: 0.24 ms a call over TCP, as much as
the key lookup). The row lock of the upsert serialises concurrent
requests of one key across replicas, and the refill uses the database's clock, so replicas
with skewed clocks still agree. UNLOGGED skips the WAL; a database crash merely refills
every bucket.

Active jobs per tenant are counted from the documents table (``count_active_jobs``), as
everything about jobs is: a job with documents still ``queued`` or ``processing`` is
active. The check runs before the route reads the body, so a refused submission stores
nothing. It is a soft bound: submissions racing at the limit may each see room and pass.

Ops routes (``/healthz``, ``/readyz``, ``/metrics``) are outside ``/v1`` and never limited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Principal
from api.errors import ApiError, RequestTooLargeError, error_response
from api.routes import jobs, uploads
from ingestflow.settings import get_settings

if TYPE_CHECKING:
    from storage.api_keys import ApiKey
    from storage.db import Conn

JOBS_RETRY_AFTER_SECONDS = 10
_FRAMING_BYTES = 64 * 1024
# The routes that start an ingest job, by endpoint. Delete jobs are not counted: their
# documents are not queued, and a tenant at the limit must still be able to delete.
SUBMITTING_ENDPOINTS = frozenset(
    {
        uploads.upload_document,
        uploads.upload_documents,
        uploads.ingest_by_uri,
        uploads.merge_documents,
        uploads.reingest_document,
        jobs.retry_job,
    }
)


@dataclass(frozen=True)
class RateDecision:
    """One request against a key's bucket: let through or not, and when to come back."""

    allowed: bool
    tokens: float  # left in the bucket after this request
    retry_after: int  # whole seconds until a token is there again; 0 when allowed


_TAKE_TOKEN = """
INSERT INTO api_rate_buckets AS b (key_id, tokens, allowed, updated_at)
VALUES (%(key)s, %(burst)s - 1, true, now())
ON CONFLICT (key_id) DO UPDATE SET
    tokens = CASE WHEN {level} >= 1 THEN {level} - 1 ELSE {level} END,
    allowed = {level} >= 1,
    updated_at = now()
RETURNING tokens, allowed
""".format(
    # The bucket refilled for the time since the last request, capped at the burst.
    level="least(%(burst)s::float8, b.tokens"
    " + extract(epoch FROM now() - b.updated_at)::float8 * %(per_second)s)"
)


def take_token(conn: Conn, *, key_id: int, per_minute: int, burst: int) -> RateDecision:
    """Refill the key's bucket for the time passed and take one token from it, in one
    statement. A refused request takes nothing, so retrying after ``retry_after`` works."""
    per_second = per_minute / 60.0
    row = conn.execute(
        _TAKE_TOKEN, {"key": key_id, "burst": burst, "per_second": per_second}
    ).fetchone()
    assert row is not None  # an upsert with RETURNING always returns its row
    tokens, allowed = float(row["tokens"]), bool(row["allowed"])
    wait = 0 if allowed else max(1, math.ceil((1.0 - tokens) / per_second))
    return RateDecision(allowed, tokens, wait)


def enforce_rate(conn: Conn, key: ApiKey) -> None:
    """429 ``rate_limited`` with Retry-After when the key has spent its bucket."""
    settings = get_settings().api
    if settings.rate_limit <= 0:
        return
    decision = take_token(
        conn, key_id=key.id, per_minute=settings.rate_limit, burst=settings.rate_burst
    )
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"this API key may make {settings.rate_limit} requests a minute"
            f" (bursts of {settings.rate_burst}); retry in {decision.retry_after} s",
            {"Retry-After": str(decision.retry_after)},
        )


def limit_active_jobs(request: Request, key: Principal) -> None:
    """Before a route that starts an ingest job reads anything: 429 ``too_many_jobs`` when
    the tenant already has ``max_active_jobs_per_tenant`` jobs queued or running."""
    limit = get_settings().api.max_active_jobs_per_tenant
    route = request.scope.get("route")
    endpoint = getattr(route, "endpoint", None) or request.scope.get("endpoint")
    if limit <= 0 or endpoint not in SUBMITTING_ENDPOINTS:
        return
    from storage.db import connection
    from storage.job_documents import count_active_jobs

    with connection() as conn:
        active = count_active_jobs(conn, tenant=key.tenant)
    if active >= limit:
        raise ApiError(
            429,
            "too_many_jobs",
            f"the tenant has {active} jobs queued or running, the most allowed is {limit};"
            " wait for some to finish",
            {"Retry-After": str(JOBS_RETRY_AFTER_SECONDS)},
        )


class RequestSizeLimit:
    """ASGI middleware bounding every request body at ``INGESTFLOW_API_MAX_REQUEST_BYTES``
    (or one upload's limit, if that is larger).

    A declared Content-Length over the limit is refused (413) before anything is read; a
    streamed body raises ``RequestTooLargeError`` from ``receive`` as soon as it passes the
    limit, which the route's own clean-up sees like any failed read (stored parts removed).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings().api
        # Never below what one upload may be, with room for its multipart framing.
        limit = max(settings.max_request_bytes, settings.max_upload_bytes + _FRAMING_BYTES)
        if _declared_length(scope) > limit:
            response = error_response(
                413, "request_too_large", _too_large(limit), {"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise RequestTooLargeError(_too_large(limit))
            return message

        await self.app(scope, bounded, send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _too_large(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes"
