"""Operations: liveness and readiness (no auth, so orchestrators can probe them)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.errors import RETRY_AFTER_SECONDS, error_response
from api.models import ErrorResponse
from ingestflow.service.health import readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz():  # -> dict | JSONResponse
    """The database, the upload store and the queue backend answer; 503 with the reasons
    and Retry-After otherwise."""
    checks = await run_in_threadpool(readiness)
    failing = {name: why for name, why in checks.items() if why != "ok"}
    if failing:
        message = "; ".join(f"{name}: {why}" for name, why in failing.items())
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return error_response(503, "not_ready", message, headers)
    return {"status": "ok", "checks": checks}
