"""``GET /metrics``: the pipeline in the Prometheus text format (no auth, like ``/healthz``).

Nothing is counted in this process. Each scrape reads one snapshot from the database and the
queue backend's depth (``ingestflow.service.metrics``), and renders them through a registry
built for that scrape, so every API replica reports the same numbers and a restart loses
nothing. Include it with ``app.include_router(metrics.router)``.

Exposed (all prefixed ``ingestflow_``): ``up``, ``documents{status}``, ``chunks``,
``failures{reason}`` (failed documents by error code), ``stage_seconds{stage}`` (``_sum`` and
``_count``, over each document's latest indexing), ``embedding_tokens_total``,
``jobs_total{tenant,kind,event}``, ``stage_runs_total{tenant,stage,outcome}``, the
histograms ``job_seconds{kind}`` and ``stage_run_seconds{stage}``, ``queue_depth`` and
``queue_up``. When the queue
backend cannot be reached, or does not answer within ``QUEUE_TIMEOUT_SECONDS``,
``queue_depth`` is left out and ``queue_up`` is 0; when the database cannot be reached, the
scrape answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from api.errors import RETRY_AFTER_SECONDS, error_response
from api.models import ErrorResponse
from ingestflow.core.errors import StoreError
from ingestflow.service import metrics as service
from ingestflow.service.metrics import PipelineMetrics

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])
# Prometheus gives up on a scrape after 10 s by default; a hung queue backend must cost the
# queue samples only, not every metric.
QUEUE_TIMEOUT_SECONDS = 3.0


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        503: {"model": ErrorResponse},
    },
)
async def metrics() -> Response:
    """The pipeline's documents, chunks, failures, stage timings, tokens and queue depth."""
    try:
        snapshot = await run_in_threadpool(service.snapshot)
    except StoreError as exc:
        log.warning("metrics unavailable: %s", exc.reason)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return error_response(503, "service_unavailable", exc.reason, headers)
    try:
        depth = await asyncio.wait_for(
            run_in_threadpool(service.queue_depth), QUEUE_TIMEOUT_SECONDS
        )
    except TimeoutError:
        log.warning("queue depth: no answer within %s s", QUEUE_TIMEOUT_SECONDS)
        depth = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(snapshot, depth))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class PipelineCollector(Collector):
    """A one-scrape collector over a snapshot; it holds no state between scrapes."""

    def __init__(self, snapshot: PipelineMetrics, queue_depth: int | None) -> None:
        self.snapshot, self.queue_depth = snapshot, queue_depth

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family of the snapshot."""
        s = self.snapshot
        yield GaugeMetricFamily("ingestflow_up", "The API answered this scrape.", value=1)
        documents = GaugeMetricFamily(
            "ingestflow_documents", "Documents by status.", labels=["status"]
        )
        for status, n in sorted(s.documents.items()):
            documents.add_metric([status], n)
        yield documents
        yield GaugeMetricFamily("ingestflow_chunks", "Chunks stored.", value=s.chunks)
        failures = GaugeMetricFamily(
            "ingestflow_failures", "Failed documents by error code.", labels=["reason"]
        )
        for code, n in sorted(s.failures.items()):
            failures.add_metric([code], n)
        yield failures
        stages = SummaryMetricFamily(
            "ingestflow_stage_seconds",
            "Stage durations over each document's latest indexing.",
            labels=["stage"],
        )
        for stage, totals in s.stages.items():
            stages.add_metric([stage], count_value=totals.count, sum_value=totals.seconds)
        yield stages
        yield CounterMetricFamily(
            "ingestflow_embedding_tokens",
            "Tokens sent to the embedder (cache hits cost none).",
            value=s.embedding_tokens,
        )
        yield from self._runs()
        yield from self._queue()

    def _runs(self) -> Iterator[Metric]:
        """The counters and histograms of jobs and stage runs."""
        for counter in service.COUNTERS:
            family = CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
            for c in self.snapshot.counters.get(counter.name, []):
                family.add_metric(list(c.labels), c.value)
            yield family
        for histogram in service.HISTOGRAMS:
            observed = HistogramMetricFamily(
                histogram.name, histogram.help, labels=histogram.labels
            )
            for h in self.snapshot.histograms.get(histogram.name, []):
                if len(h.buckets) != len(histogram.bounds):
                    continue  # written under other bounds; the next observation resets it
                buckets = [
                    (_bound(b), float(n)) for b, n in zip(histogram.bounds, h.buckets, strict=True)
                ]
                buckets.append(("+Inf", float(h.count)))
                observed.add_metric(list(h.labels), buckets, sum_value=h.sum)
            yield observed

    def _queue(self) -> Iterator[Metric]:
        up = self.queue_depth is not None
        yield GaugeMetricFamily(
            "ingestflow_queue_up", "The queue backend answered.", value=1 if up else 0
        )
        if self.queue_depth is not None:
            yield GaugeMetricFamily(
                "ingestflow_queue_depth",
                "Jobs submitted to the queue backend and not yet started.",
                value=self.queue_depth,
            )


def _bound(value: float) -> str:
    """A bucket's ``le`` as Prometheus writes it (``0.5``, ``10.0``)."""
    return str(float(value))
