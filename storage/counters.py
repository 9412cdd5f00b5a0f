"""Counters and histograms of what happened to jobs and stage runs, kept in Postgres
(migration 0009) and exposed by ``/metrics``.

The work happens in many processes (flow runs under ``serve`` or a worker, Celery workers)
while ``/metrics`` is served by API replicas; an in-process ``prometheus_client`` counter would
know only its own process and restart at zero. So each event is one upsert, on the
connection that records it, and a scrape reads the totals. Each metric is declared here once,
with its labels; ``tenant`` appears only where an operator needs it per tenant (jobs and stage
runs), never on a histogram, whose buckets would multiply by the tenants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.db import Conn


@dataclass(frozen=True)
class Counter:
    name: str  # exposed with ``_total`` appended
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]  # upper bounds of the buckets, ascending (+Inf is implied)


JOBS = Counter(
    "ingestflow_jobs",
    "Jobs by what happened to them: submitted, started, retried (a run started again),"
    " completed, completed_with_errors, failed, cancelled.",
    ("tenant", "kind", "event"),
)
STAGE_RUNS = Counter(
    "ingestflow_stage_runs",
    "Stage runs (one stage over one micro-batch) by outcome: started, succeeded, failed,"
    " retried (failed, to be tried again).",
    ("tenant", "stage", "outcome"),
)
JOB_SECONDS = Histogram(
    "ingestflow_job_seconds",
    "How long ended jobs ran, from their start to their end.",
    ("kind",),
    (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
STAGE_RUN_SECONDS = Histogram(
    "ingestflow_stage_run_seconds",
    "How long each stage run took, whatever its outcome.",
    ("stage",),
    (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
COUNTERS = (JOBS, STAGE_RUNS)
HISTOGRAMS = (JOB_SECONDS, STAGE_RUN_SECONDS)


def increment(conn: Conn, counter: Counter, labels: Sequence[str], by: float = 1) -> None:
    _check(counter.labels, labels)
    conn.execute(
        "INSERT INTO metric_counters AS c (name, labels, value) VALUES (%s, %s, %s)"
        " ON CONFLICT (name, labels) DO UPDATE SET value = c.value + EXCLUDED.value",
        (counter.name, list(labels), by),
    )


_OBSERVE = """
INSERT INTO metric_histograms AS h (name, labels, buckets, count, sum)
VALUES (%(name)s, %(labels)s, %(buckets)s, 1, %(value)s)
ON CONFLICT (name, labels) DO UPDATE SET
    buckets = CASE WHEN cardinality(h.buckets) = cardinality(EXCLUDED.buckets)
        THEN ARRAY(SELECT a + b FROM unnest(h.buckets, EXCLUDED.buckets) WITH ORDINALITY
                   AS t(a, b, i) ORDER BY i)
        ELSE EXCLUDED.buckets END,  -- the bounds changed: start the buckets afresh
    count = h.count + 1,
    sum = h.sum + EXCLUDED.sum
"""


def observe(conn: Conn, histogram: Histogram, labels: Sequence[str], value: float) -> None:
    _check(histogram.labels, labels)
    buckets = [int(value <= bound) for bound in histogram.bounds]
    conn.execute(
        _OBSERVE,
        {"name": histogram.name, "labels": list(labels), "buckets": buckets, "value": value},
    )


@dataclass(frozen=True)
class CounterValue:
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class HistogramValue:
    labels: tuple[str, ...]
    buckets: tuple[int, ...]  # observations at or below each bound (Prometheus's ``le``)
    count: int
    sum: float


def read_counters(conn: Conn) -> dict[str, list[CounterValue]]:
    """Every counter's values by metric name (a metric never counted has none)."""
    out: dict[str, list[CounterValue]] = {c.name: [] for c in COUNTERS}
    for row in conn.execute(
        "SELECT name, labels, value FROM metric_counters ORDER BY name, labels"
    ).fetchall():
        if row["name"] in out:
            out[row["name"]].append(CounterValue(tuple(row["labels"]), float(row["value"])))
    return out


def read_histograms(conn: Conn) -> dict[str, list[HistogramValue]]:
    out: dict[str, list[HistogramValue]] = {h.name: [] for h in HISTOGRAMS}
    for row in conn.execute(
        "SELECT name, labels, buckets, count, sum FROM metric_histograms ORDER BY name, labels"
    ).fetchall():
        if row["name"] in out:
            out[row["name"]].append(
                HistogramValue(
                    tuple(row["labels"]), tuple(row["buckets"]), int(row["count"]), row["sum"]
                )
            )
    return out


def _check(names: tuple[str, ...], values: Sequence[str]) -> None:
    if len(names) != len(values):
        raise ValueError(f"expected labels {names}, got {tuple(values)}")
