"""What the Prometheus endpoint exposes, read from the database in two aggregate queries.

Everything is derived from the ``documents`` table rather than counted in memory by the process
that serves ``/metrics``. The API is stateless and may run as several replicas behind a load
balancer, and the work itself happens in other processes (Prefect workers, Celery workers), so
an in-process counter would only know what that replica saw and would restart at zero on every
deploy. Reading the database makes every replica report the same numbers, and a scrape costs
two grouped scans of ``documents`` (no scan of ``chunks``: the chunk total is the sum of
``documents.chunk_count``, which each write keeps equal to the document's chunk rows).

What the numbers mean:

- documents by status, and failed documents by ``error_code`` (``unknown`` for rows failed
  before codes existed); labels are bounded by the statuses and the error codes, never by
  tenant, collection or source.
- chunks: the chunks stored now.
- embedding tokens: the running total per document (``replace_chunks`` adds each indexing's
  tokens), so the sum only grows, as a Prometheus counter must, except when a whole
  collection is dropped.
- stage seconds: the sum and count of each stage's duration over the documents' most recent
  successful indexing (``documents.timings``); re-indexing a document replaces its entry, so
  these describe the current corpus, not every run ever made.
- jobs and stage runs: counters and histograms of every run ever made, which the processes
  doing the work add to as it happens (``storage.counters``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from ingestflow.core.errors import StoreError
from ingestflow.core.types import DocumentStatus
from storage.counters import CounterValue, HistogramValue, read_counters, read_histograms
from storage.db import Conn

STAGES = ("fetch", "hash", "dedupe", "parse", "chunk", "embed", "upsert")
UNKNOWN_CODE = "unknown"  # failed rows that carry no error_code

_DOCUMENTS = (
    "SELECT status, CASE WHEN status = 'failed' THEN error_code END AS code, count(*) AS n,"
    " coalesce(sum(chunk_count), 0) AS chunks, coalesce(sum(embedding_tokens), 0) AS tokens"
    " FROM documents GROUP BY 1, 2"
)
_STAGES = (
    "SELECT t.key AS stage, sum(t.value::float8) AS seconds, count(*) AS n"
    " FROM documents d CROSS JOIN LATERAL jsonb_each_text(d.timings) t"
    " WHERE d.timings <> '{}'::jsonb AND t.key = ANY(%s) GROUP BY t.key"
)


@dataclass(frozen=True)
class StageTotals:
    """How long one stage took, summed over documents, and over how many."""

    seconds: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class PipelineMetrics:
    """One consistent snapshot of the pipeline's state, as ``/metrics`` exposes it."""

    documents: dict[str, int]  # every DocumentStatus value, 0 when none
    failures: dict[str, int]  # failed documents by error_code
    chunks: int
    embedding_tokens: int
    stages: dict[str, StageTotals] = field(default_factory=dict)  # every stage of STAGES
    counters: dict[str, list[CounterValue]] = field(default_factory=dict)  # by metric name
    histograms: dict[str, list[HistogramValue]] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        """Documents waiting for a job to take them."""
        return self.documents.get(DocumentStatus.QUEUED.value, 0)


def read_metrics(conn: Conn) -> PipelineMetrics:
    """Aggregate the documents table into a ``PipelineMetrics`` snapshot.

    Both queries read one snapshot (a read-only repeatable-read transaction), so the counts
    agree with each other. A lost connection raises ``StoreError``.
    """
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            documents = conn.execute(_DOCUMENTS).fetchall()
            stages = conn.execute(_STAGES, (list(STAGES),)).fetchall()
            counters, histograms = read_counters(conn), read_histograms(conn)
    except psycopg.OperationalError as e:
        # The first line only: enough to diagnose, and free of the connection string.
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(f"cannot read metrics from the database: {cause}") from e
    by_status = {s.value: 0 for s in DocumentStatus}
    failures: dict[str, int] = {}
    for row in documents:
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
        if row["status"] == DocumentStatus.FAILED.value:
            code = row["code"] or UNKNOWN_CODE
            failures[code] = failures.get(code, 0) + row["n"]
    timed = {r["stage"]: StageTotals(float(r["seconds"]), r["n"]) for r in stages}
    return PipelineMetrics(
        documents=by_status,
        failures=failures,
        chunks=sum(int(r["chunks"]) for r in documents),
        embedding_tokens=sum(int(r["tokens"]) for r in documents),
        stages={stage: timed.get(stage, StageTotals()) for stage in STAGES},
        counters=counters,
        histograms=histograms,
    )
