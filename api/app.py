"""The HTTP API (FastAPI). Routes are thin adapters over ``ingestflow.service``.

Run it with ``uvicorn api.app:app``; OpenAPI docs at /docs. Everything under /v1 needs an
API key (``ingestflow keys create --tenant T``) and sees only that tenant's collections; each
key has a request rate and each tenant a number of active jobs (``api.deps``), and every
request body a size (``api.limits``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline

from api.deps import authenticate, metrics_access
from api.errors import install_error_handlers
from api.limits import RequestSizeLimit
from api.models import ErrorResponse
from api.routes import documents, jobs, live, metrics, operators, ops, search, uploads
from ingestflow import __version__
from ingestflow.core.errors import IngestError
from ingestflow.core.telemetry import setup_telemetry
from ingestflow.service.runtime import prepare

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)
}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Set the process up once: the schema and the Prefect server. A database that is not
    reachable yet does not stop the API: ``/readyz`` reports it, and brings the schema up to
    date once it answers. Traces and error reports start here when configured."""
    setup_telemetry()
    try:
        await run_in_threadpool(prepare)
    except IngestError as exc:
        log.warning("not ready at start-up: %s", exc.reason)
    yield


def create_app() -> FastAPI:
    # Swagger UI and ReDoc assets are served from the package, not a CDN: /docs works offline.
    app = FastAPIOffline(
        title="ingestflow", version=__version__, docs_url="/docs", lifespan=lifespan
    )
    install_error_handlers(app)
    app.add_middleware(RequestSizeLimit)
    app.include_router(ops.router)
    app.include_router(
        metrics.router,
        dependencies=[Depends(metrics_access)],
        responses={401: {"model": ErrorResponse, "description": "INGESTFLOW_API_METRICS_TOKEN"}},
    )
    # Authentication (and the key's request rate) first; the routes that start a job check
    # the tenant's job limit next (``api.deps.SubmitsJob``), both before a route reads its body.
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=_ERRORS)
    v1.include_router(uploads.router)
    v1.include_router(documents.router)
    v1.include_router(jobs.router)
    v1.include_router(search.router)
    v1.include_router(operators.router, responses={403: {"model": ErrorResponse}})
    app.include_router(v1)
    app.include_router(live.router)  # authenticates in the socket's own handshake
    return app


app = create_app()
