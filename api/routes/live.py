"""A job's live progress over a WebSocket: ``/v1/jobs/{job_id}/ws``.

The same snapshots as the Server-Sent Events of ``/v1/jobs/{job_id}/events``, as JSON text
messages ``{"event": "progress"|"heartbeat"|"end"|"timeout", "data": {...}}``; the server
closes the socket after ``end`` (or ``timeout``). A browser cannot set headers on a
WebSocket, so the API key comes as ``Authorization: Bearer <key>`` or as the subprotocols
``["bearer", "<key>"]`` (the server then accepts with ``bearer``). A refused socket is
closed before it opens, with 4401 (no or a bad key), 4404 (no such job), 4429 (rate).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from api.routes.jobs import job_snapshots
from ingestflow.core.errors import JobNotFoundError, RateLimitedError
from ingestflow.service import jobs, keys

router = APIRouter(tags=["jobs"])
CLOSE_UNAUTHORIZED, CLOSE_NOT_FOUND, CLOSE_RATE_LIMITED = 4401, 4404, 4429


@router.websocket("/v1/jobs/{job_id}/ws")
async def job_socket(websocket: WebSocket, job_id: str) -> None:
    secret, subprotocol = _presented_key(websocket)
    try:
        key = await run_in_threadpool(keys.authenticate, secret) if secret else None
        if key is None:
            await websocket.close(code=CLOSE_UNAUTHORIZED, reason="an API key is required")
            return
        first = await run_in_threadpool(jobs.get_job, job_id, tenant=key.tenant)
    except RateLimitedError as exc:
        await websocket.close(code=CLOSE_RATE_LIMITED, reason=exc.reason[:120])
        return
    except JobNotFoundError as exc:
        await websocket.close(code=CLOSE_NOT_FOUND, reason=exc.reason[:120])
        return
    await websocket.accept(subprotocol=subprotocol)
    try:
        async for event, payload in job_snapshots(job_id, key.tenant, first):
            await websocket.send_text(json.dumps({"event": event, "data": json.loads(payload)}))
    except WebSocketDisconnect:
        return
    await websocket.close()


def _presented_key(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The key and the subprotocol to accept with: from the Authorization header, or from
    the subprotocols ``bearer, <key>``."""
    scheme, _, given = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip(), None
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    if len(offered) == 2 and offered[0].lower() == "bearer" and offered[1]:
        return offered[1], offered[0]
    return None, None
