"""Every 4xx/5xx answer is JSON ``{"error": {"code": "<stable_snake_code>", "message": "..."}}``.

An ``IngestError`` carries its own ``code``; ``ANSWERS`` maps that code to the HTTP answer, so
one handler serves them all. An error whose code has no row is answered by its nearest
parent's row (a new ``InvalidRequestError`` subclass is a 422 like its parent), and an error
with none at all is a 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingestflow.core.errors import IngestError, LimitExceededError

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5
_COLLECTIONS = "/v1/collections/"


@dataclass(frozen=True)
class Answer:
    """How the API answers an error code: the status, the code it shows (when it differs),
    and whether the client should come back later or the connection is to be closed."""

    status: int
    shown_as: str | None = None
    retry: bool = False
    close: bool = False
    note: str = ""  # appended to the error's reason


ANSWERS: dict[str, Answer] = {
    "invalid_request": Answer(422),
    "uri_not_allowed": Answer(422),
    "malformed_multipart": Answer(400),
    "not_multipart": Answer(415),
    "too_many_parts": Answer(413),
    "field_too_large": Answer(413),
    "header_too_large": Answer(431),
    "too_large": Answer(413, close=True),
    "request_too_large": Answer(413, close=True),
    "collection_not_found": Answer(404),
    "document_not_found": Answer(404),
    "job_not_found": Answer(404),
    "queue_not_found": Answer(404),
    "job_conflict": Answer(409),
    "collection_mismatch": Answer(409),
    "rate_limited": Answer(429),
    "too_many_jobs": Answer(429),
    "backend_unavailable": Answer(
        503, retry=True, note="; queued documents are kept and submitted when it is back"
    ),
    "store_error": Answer(503, shown_as="service_unavailable", retry=True),
}


class ApiError(Exception):
    """Raise from a route or dependency to answer ``status`` with a stable ``code``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_PARAM = re.compile(r"\{[^}/]+\}")


def allowed_methods(request: Request) -> list[str]:
    """The methods of the resource at the request's path, for a 405's ``Allow`` (RFC 9110).

    Starlette's own 405 names the methods of the first route whose path matched, which
    leaves out other routes at the same path (GET and POST on .../documents). The resource
    is the most specific path of the OpenAPI schema that matches: ``.../{id}:reingest``
    rather than ``.../{id}`` (document ids never hold a colon).
    """
    path = request.scope.get("path", "")
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    matching = [t for t in paths if _template(t).fullmatch(path)]
    if not matching:
        return []
    best = max(matching, key=lambda t: len(_PARAM.sub("", t)))
    return [m.upper() for m in paths[best] if m in _METHODS]


@lru_cache(maxsize=256)
def _template(path: str) -> re.Pattern[str]:
    literal = [re.escape(part) for part in _PARAM.split(path)]
    return re.compile("[^/]+".join(literal))


def _http_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is invalid"


def answer_for(exc: IngestError) -> Answer | None:
    """The row of ``exc``'s code, else of the nearest parent class's code that has one."""
    inherited = (cls.__dict__["code"] for cls in type(exc).__mro__ if "code" in cls.__dict__)
    return next((ANSWERS[c] for c in (exc.code, *inherited) if c in ANSWERS), None)


def ingest_error_response(exc: IngestError) -> JSONResponse:
    answer = answer_for(exc)
    if answer is None:
        log.error("unhandled %s: %s", type(exc).__name__, exc.reason)
        return error_response(500, "internal_error", "an unexpected error occurred")
    headers: dict[str, str] = {}
    if answer.retry:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        log.warning("%s: %s", exc.code, exc.reason)
    if isinstance(exc, LimitExceededError):
        headers["Retry-After"] = str(exc.retry_after)
    if answer.close:
        headers["Connection"] = "close"
    code = answer.shown_as or exc.code
    return error_response(answer.status, code, exc.reason + answer.note, headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(IngestError)
    async def ingest_error(_: Request, exc: IngestError) -> JSONResponse:
        return ingest_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(psycopg.errors.DataError)
    async def unstorable(_: Request, exc: psycopg.errors.DataError) -> JSONResponse:
        # Postgres refused a value the request carried (a NUL character in text or JSON, a
        # number out of range): bad input, not a server fault. The database's message may
        # quote the value, so it is not passed on.
        log.info("request data refused by the database: %s", type(exc).__name__)
        message = "the request contains a value the database cannot store (e.g. a NUL character)"
        return error_response(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and request.scope.get("path", "").startswith(_COLLECTIONS):
            message = "no such route; a collection name cannot contain '/'"
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers["Allow"] = ", ".join(allowed)
        return error_response(exc.status_code, _http_code(exc.status_code), message, headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
