"""Every 4xx/5xx answer is JSON ``{"error": {"code": "<stable_snake_code>", "message": "..."}}``."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import lru_cache
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.multipart import MultipartError
from ingestflow.errors import (
    BackendUnavailableError,
    CollectionMismatchError,
    IngestError,
    InvalidRequestError,
    StoreError,
    TooLargeError,
)
from ingestflow.jobs import JobConflictError, JobNotFoundError
from storage.collections import CollectionNotFoundError
from storage.documents import DocumentNotFoundError

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5
_MULTIPART_STATUS = {
    "not_multipart": 415,
    "too_many_parts": 413,
    "field_too_large": 413,
    "header_too_large": 431,
}


class ApiError(Exception):
    """Raise from a route or dependency to answer ``status`` with a stable ``code``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class RequestTooLargeError(IngestError):
    """A request body passed ``INGESTFLOW_API_MAX_REQUEST_BYTES`` (``api.limits``)."""

    permanent = True


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(InvalidRequestError)
    async def invalid_input(_: Request, exc: InvalidRequestError) -> JSONResponse:
        if isinstance(exc, MultipartError):
            return error_response(_MULTIPART_STATUS.get(exc.code, 400), exc.code, exc.reason)
        return error_response(422, exc.code, exc.reason)

    @app.exception_handler(psycopg.errors.DataError)
    async def unstorable(_: Request, exc: psycopg.errors.DataError) -> JSONResponse:
        # Postgres refused a value the request carried (a NUL character in text or JSON, a
        # number out of range): bad input, not a server fault. The database's message may
        # quote the value, so it is not passed on.
        log.info("request data refused by the database: %s", type(exc).__name__)
        message = "the request contains a value the database cannot store (e.g. a NUL character)"
        return error_response(422, "invalid_request", message)

    @app.exception_handler(TooLargeError)
    async def too_large(_: Request, exc: TooLargeError) -> JSONResponse:
        return error_response(413, "too_large", exc.reason, {"Connection": "close"})

    @app.exception_handler(RequestTooLargeError)
    async def request_too_large(_: Request, exc: RequestTooLargeError) -> JSONResponse:
        return error_response(413, "request_too_large", exc.reason, {"Connection": "close"})

    @app.exception_handler(JobNotFoundError)
    async def no_job(_: Request, exc: JobNotFoundError) -> JSONResponse:
        return error_response(404, "job_not_found", exc.reason)

    @app.exception_handler(JobConflictError)
    async def job_conflict(_: Request, exc: JobConflictError) -> JSONResponse:
        return error_response(409, "job_conflict", exc.reason)

    @app.exception_handler(CollectionMismatchError)
    async def mismatch(_: Request, exc: CollectionMismatchError) -> JSONResponse:
        return error_response(409, "collection_mismatch", exc.reason)

    @app.exception_handler(BackendUnavailableError)
    async def backend_down(_: Request, exc: BackendUnavailableError) -> JSONResponse:
        log.warning("queue backend unavailable: %s", exc.reason)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        message = f"{exc.reason}; queued documents are kept and submitted when it is back"
        return error_response(503, "backend_unavailable", message, headers)

    @app.exception_handler(CollectionNotFoundError)
    async def no_collection(_: Request, exc: CollectionNotFoundError) -> JSONResponse:
        return error_response(404, "collection_not_found", exc.reason)

    @app.exception_handler(DocumentNotFoundError)
    async def no_document(_: Request, exc: DocumentNotFoundError) -> JSONResponse:
        return error_response(404, "document_not_found", exc.reason)

    @app.exception_handler(StoreError)
    async def unavailable(_: Request, exc: StoreError) -> JSONResponse:
        log.warning("store unavailable: %s", exc.reason)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return error_response(503, "service_unavailable", exc.reason, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers["Allow"] = ", ".join(allowed)
        return error_response(exc.status_code, _http_code(exc.status_code), message, headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
