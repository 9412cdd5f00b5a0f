"""Traces and error reports, both off unless configured:

- **OpenTelemetry**: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (an OTLP/HTTP receiver such as
  an OpenTelemetry Collector on port 4318), a span for each job (``ingestflow.job``), each
  stage run (``ingestflow.stage``, the stage in ``ingestflow.stage.name``) and each
  embedding request (``ingestflow.embed.request``) is exported, in batches, from every
  process that does the work. The exporter reads the other standard variables itself
  (``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``OTEL_SERVICE_NAME``). Unset, ``span()``
  is OpenTelemetry's no-op and costs next to nothing.
- **Sentry**: with ``SENTRY_DSN`` set and the ``sentry`` extra installed, unhandled errors
  are reported, without local variables, request bodies or personal data.

Spans carry ids, counts, names and outcomes, never a source URI (a presigned URL holds a
credential), document text or a secret. ``setup_telemetry()`` runs once per process: at the
API's start, and at the start of every flow run (a flow runs in a process of its own under
``serve``, a Prefect worker or a Celery worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from ingestflow.core.settings import get_settings

log = logging.getLogger(__name__)
TRACER = "ingestflow"
_lock = threading.Lock()
_done = False


def setup_telemetry() -> None:
    """Export spans and report errors as configured (idempotent; nothing when unset)."""
    global _done
    with _lock:
        if _done:
            return
        _done = True
    settings = get_settings().telemetry
    if settings.otlp_endpoint:
        _setup_tracing(settings.service_name)
    if settings.sentry_dsn is not None:
        _setup_sentry(settings.sentry_dsn.get_secret_value())


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span around the block, a child of the current one, with ``attributes`` (str, int,
    float or bool; None is left out); an exception leaving the block marks it as an error
    (its type only: the message may quote input)."""
    tracer = trace.get_tracer(TRACER)
    values = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(
        name, attributes=values, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            mark_error(current, type(exc).__name__)
            raise


def mark_error(current: Any, kind: str) -> None:
    """Mark a span as failed, with the kind of failure (a class name, a state)."""
    current.set_status(trace.Status(trace.StatusCode.ERROR, kind))
    current.set_attribute("error.type", kind)


def _setup_tracing(service_name: str) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # the host application set one up: use it
        provider = current
    else:
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        trace.set_tracer_provider(provider)
    # The provider flushes the batch when the process exits (its atexit hook).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("exporting traces with OTLP/HTTP")


def _without_request_secrets(event: Any, hint: Any) -> Any:
    """An event without the request's headers (the API key), cookies or query string."""
    request = event.get("request")
    if isinstance(request, dict):
        for field in ("headers", "cookies", "query_string", "data"):
            request.pop(field, None)
    return event


def _setup_sentry(dsn: str) -> None:
    try:
        import sentry_sdk
        from sentry_sdk.integrations.logging import LoggingIntegration
    except ImportError:
        log.warning(
            "SENTRY_DSN is set but sentry-sdk is not installed: pip install 'ingestflow[sentry]'"
        )
        return
    sentry_sdk.init(
        dsn=dsn,
        # Locals may hold a password or a key; bodies hold documents; users are tenants.
        data_collection={"user_info": False, "http_bodies": [], "stack_frame_variables": False},
        max_request_body_size="never",
        traces_sample_rate=None,  # traces go to OpenTelemetry
        before_send=_without_request_secrets,
        # Every error logged (a failed job, an unhandled API error) is an event.
        integrations=[LoggingIntegration(event_level=logging.ERROR)],
    )
    log.info("reporting errors to Sentry")
