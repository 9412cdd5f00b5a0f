"""Request dependencies: the caller's API key and the tenant it is bound to."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from storage.api_keys import ApiKey

_bearer = HTTPBearer(auto_error=False, description="An API key: `ingestflow keys create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def authenticate(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The active key presented as ``Authorization: Bearer <key>``; 401 otherwise, and 429
    when the key has spent its request rate (``api.limits``).

    The key is never logged or echoed, not even in the error message.
    """
    from api.limits import enforce_rate
    from storage.api_keys import verify_key
    from storage.db import connection
    from storage.migrate import ensure_schema

    if credentials is None or not credentials.credentials:
        raise ApiError(401, "missing_api_key", "an API key is required (Bearer)", _CHALLENGE)
    ensure_schema()
    with connection() as conn:
        key = verify_key(conn, key=credentials.credentials)
        if key is None:
            raise ApiError(401, "invalid_api_key", "the API key is invalid or revoked", _CHALLENGE)
        enforce_rate(conn, key)  # on the connection that found the key: no second checkout
    return key


Principal = Annotated[ApiKey, Depends(authenticate)]


def metrics_access(request: Request) -> None:
    """``/metrics`` counts every tenant's documents. When ``INGESTFLOW_API_METRICS_TOKEN`` is
    set, only that token (never an API key) may read them; unset, the route is open like
    ``/healthz`` and belongs on a network only the operators reach.

    The header is read by hand rather than through ``HTTPBearer``, which would declare the
    route as always needing a token in the OpenAPI schema.
    """
    import hmac

    from ingestflow.settings import get_settings

    token = get_settings().api.metrics_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise ApiError(401, "invalid_metrics_token", "GET /metrics wants its token", _CHALLENGE)
