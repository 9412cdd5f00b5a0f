"""Request dependencies: the caller's API key and its tenant, the limits checked before a
route reads its body, and the path and query parameters the routes share."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from ingestflow.core.settings import get_settings
from ingestflow.core.types import Priority
from ingestflow.service import jobs, keys

_bearer = HTTPBearer(auto_error=False, description="An API key: `ingestflow keys create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

CollectionName = Annotated[str, Path(min_length=1, max_length=200)]
DocumentId = Annotated[str, Path(min_length=1, max_length=100)]
JobId = Annotated[str, Path(min_length=1, max_length=200)]
PriorityParam = Annotated[Priority, Query(description="high, normal or low.")]
ForceParam = Annotated[bool, Query(description="Re-ingest even if the bytes are known.")]


def authenticate(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> keys.ApiKey:
    """The active key presented as ``Authorization: Bearer <key>``; 401 otherwise, and 429
    when the key has spent its request rate.

    The key is never logged or echoed, not even in the error message.
    """
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "missing_api_key", "an API key is required (Bearer)", _CHALLENGE)
    key = keys.authenticate(credentials.credentials)
    if key is None:
        raise ApiError(401, "invalid_api_key", "the API key is invalid or revoked", _CHALLENGE)
    return key


Principal = Annotated[keys.ApiKey, Depends(authenticate)]


def require_operator(key: Principal) -> keys.ApiKey:
    """An operator key; 403 for a tenant's key."""
    if not key.operator:
        raise ApiError(
            403,
            "operator_key_required",
            "this route is for operators: use a key made with"
            " `ingestflow keys create --role operator`",
        )
    return key


Operator = Annotated[keys.ApiKey, Depends(require_operator)]


def limit_active_jobs(key: Principal) -> None:
    """On a route that starts an ingest job, before it reads anything: 429 ``too_many_jobs``
    when the tenant already has as many jobs queued or running as it may."""
    jobs.check_job_limit(key.tenant)


SubmitsJob = Depends(limit_active_jobs)


def metrics_access(request: Request) -> None:
    """``/metrics`` counts every tenant's documents. When ``INGESTFLOW_API_METRICS_TOKEN`` is
    set, only that token (never an API key) may read them; unset, the route is open like
    ``/healthz`` and belongs on a network only the operators reach.

    The header is read by hand rather than through ``HTTPBearer``, which would declare the
    route as always needing a token in the OpenAPI schema.
    """
    token = get_settings().api.metrics_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise ApiError(401, "invalid_metrics_token", "GET /metrics wants its token", _CHALLENGE)
