"""Receivers that telemetry is sent to in tests, speaking the real wire protocols:

- ``OTLPReceiver``: OTLP/HTTP with protobuf (``POST /v1/traces``), the protocol of an
  OpenTelemetry Collector's ``otlphttp`` receiver; each request is decoded with the
  OpenTelemetry protobuf definitions into ``ReceivedSpan``s.
- ``SentryReceiver``: Sentry's envelope endpoint (``POST /api/<project>/envelope/``), gzip or
  brotli bodies; keeps each envelope's raw text and its items.

    with run_otlp_receiver() as otlp:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.endpoint
        ...
        otlp.spans  # everything received so far
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    service: str


class _Server:
    """A threaded HTTP server on 127.0.0.1, on a port the OS picks."""

    def __init__(self, handle_post: Any) -> None:
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = _decoded(body, self.headers.get("Content-Encoding", ""))
                with lock:
                    status, reply, content_type = handle_post(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _decoded(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    return body


@dataclass
class OTLPReceiver:
    port: int = 0
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0

    @property
    def endpoint(self) -> str:
        """For ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter appends ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    def handle(self, path: str, body: bytes) -> tuple[int, bytes, str]:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        if path != "/v1/traces":
            return 404, b"", "text/plain"
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes=_attributes(s.attributes),
                            status_code=int(s.status.code),
                            service=str(resource.get("service.name", "")),
                        )
                    )
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return 200, reply, "application/x-protobuf"

    def named(self, prefix: str) -> list[ReceivedSpan]:
        return [s for s in list(self.spans) if s.name.startswith(prefix)]


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


@contextmanager
def run_otlp_receiver() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver()
    with _Server(receiver.handle) as server:
        receiver.port = server.port
        yield receiver


@dataclass
class SentryReceiver:
    port: int = 0
    envelopes: list[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/42"

    def handle(self, path: str, body: bytes) -> tuple[int, bytes, str]:
        if not path.startswith("/api/42/envelope"):
            return 404, b"", "text/plain"
        self.envelopes.append(body.decode("utf-8", errors="replace"))
        return 200, b"{}", "application/json"

    def items(self) -> list[dict[str, Any]]:
        """Every JSON item of every envelope (headers and payloads alike)."""
        found = []
        for envelope in list(self.envelopes):
            for line in envelope.splitlines():
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found


@contextmanager
def run_sentry_receiver() -> Iterator[SentryReceiver]:
    receiver = SentryReceiver()
    with _Server(receiver.handle) as server:
        receiver.port = server.port
        yield receiver
