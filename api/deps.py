"""Request dependencies: the caller's API key and the tenant it is bound to."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from storage.api_keys import ApiKey

_bearer = HTTPBearer(auto_error=False, description="An API key: `ingestflow keys create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def authenticate(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The active key presented as ``Authorization: Bearer <key>``; 401 otherwise.

    The key is never logged or echoed, not even in the error message.
    """
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
    return key


Principal = Annotated[ApiKey, Depends(authenticate)]
