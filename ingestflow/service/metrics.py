"""What ``/metrics`` reports: a snapshot of the documents table, the counters of jobs and
stage runs, and the queue's depth.

Nothing is counted in the serving process: each scrape reads the database (see
``storage.metrics``), so every API replica reports the same numbers and a restart loses
nothing.
"""

from __future__ import annotations

import logging

from deployments.queue import get_backend
from ingestflow.core.errors import BackendUnavailableError
from storage.counters import COUNTERS, HISTOGRAMS
from storage.db import connection
from storage.metrics import PipelineMetrics, StageTotals, read_metrics

__all__ = ["COUNTERS", "HISTOGRAMS", "PipelineMetrics", "StageTotals", "queue_depth", "snapshot"]
log = logging.getLogger(__name__)


def snapshot() -> PipelineMetrics:
    """One consistent snapshot of the pipeline; ``StoreError`` when the database is down."""
    with connection() as conn:
        return read_metrics(conn)


def queue_depth() -> int | None:
    """Jobs waiting in the queue backend, or None when it cannot say.

    A queue outage must not hide the rest of the metrics, so nothing here fails the scrape.
    """
    try:
        return get_backend().queue_depth()
    except BackendUnavailableError as exc:
        log.info("queue backend unavailable: %s", exc.reason)
    except Exception:  # noqa: BLE001 - a misconfigured backend is logged, the scrape goes on
        log.warning("queue depth could not be read", exc_info=True)
    return None
