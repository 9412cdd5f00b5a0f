"""The size of each request body, bounded before and while it is read.

The other limits on a caller, the request rate of each API key and the active jobs of each
tenant, are the service's (``ingestflow.service.keys`` and ``.jobs``), checked by the
dependencies in ``api.deps`` before a route reads its body.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from ingestflow.core.errors import IngestError
from ingestflow.core.settings import get_settings

_FRAMING_BYTES = 64 * 1024


class RequestTooLargeError(IngestError, code="request_too_large", permanent=True):
    """A request body passed ``INGESTFLOW_API_MAX_REQUEST_BYTES``."""


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
