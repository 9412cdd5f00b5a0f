"""Prefect's overhead: the batch flow against the same stage functions called without Prefect.

Usage::

    .venv/bin/python -m bench.prefect_overhead --json OUT [--small] [--database-url URL]
        [--reps 3]

The corpus: the first 2,000 SciFact abstracts (300 with ``--small``), each a ``<id>.txt`` file
of ``title + " " + text``. Every run ingests all of them into a fresh collection with the fast
hash embedder (``bench.hash_embedding``, registered as provider ``bench-hash`` and selected
through ``INGESTFLOW_EMBED_PROVIDER``), so the model does not hide the overhead; each run's
model name is new, so the vector cache is empty and every chunk is embedded every time.

- **ingestflow**: the ``ingest-batch`` flow (``flows.ingest.ingest_batch``, which runs
  ``ingest_batches``), called in this process as the CLI does, against a real Prefect API: a
  ``prefect server start`` on a scratch database of the machine's Postgres
  (``PREFECT_TEST_SERVER_PG``, default ``postgresql://postgres@127.0.0.1:5432/postgres``), as
  the tests start it. Every micro-batch is seven task runs, plus one for the collection; the
  flow's progress and summary artifacts are part of it.
- **direct**: ``ingest_direct`` below: ``tasks.stages.run_batches`` with the plain stage
  functions, the same sequence the flow runs as tasks, with no flow or task run and no
  artifacts. That both produce the same chunks is checked after every run (a digest of every
  stored (source, ordinal, content hash)), and that the collection's vector index is valid.
  With 2,000 documents (at least ``INGESTFLOW_BULK_INDEX_MIN_DOCUMENTS``) both ways defer the
  index and rebuild it at the end.

One untimed warm-up run each (parse workers, Prefect client, imports), then ``--reps`` runs
each, alternating which goes first; medians. Overhead = (flow - direct) / flow, target <= 10%.
Prefect's log level is ``PREFECT_LOGGING_LEVEL`` if set, else Prefect's default (INFO, how a
served deployment runs; the CLI sets WARNING); it is reported.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.hash_embedding import MODEL_NAME, PROVIDER, register_provider
from bench.write_path import (
    TENANT,
    Row,
    alternate,
    argument_parser,
    bench_database,
    median,
    scifact_documents,
    write_result,
)

if TYPE_CHECKING:
    from ingestflow.core.types import DocumentOutcome

TARGET = 0.10


@contextmanager
def prefect_api() -> Iterator[tuple[str, str]]:
    """A ``prefect server start`` of this run's own, on a scratch Postgres database when the
    machine's Postgres answers (SQLite otherwise); this process's Prefect client points at it.
    Yields the API URL and which database the server uses."""
    from tests.support.prefect_server import run_prefect_server, scratch_postgres_database

    admin = os.environ.get(
        "PREFECT_TEST_SERVER_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with scratch_postgres_database(admin) as db_url, run_prefect_server(db_url) as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            with temporary_settings({PREFECT_API_URL: api_url}):
                yield api_url, "postgres" if db_url else "sqlite"
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def use_fresh_model() -> str:
    """Select the hash embedder under a model name never used before (an empty vector cache);
    returns the embedder's cache identity."""
    from ingestflow.core.settings import get_settings
    from tasks.embedders import clear_embedders

    model = f"{MODEL_NAME}-{uuid.uuid4().hex[:8]}"
    os.environ["INGESTFLOW_EMBED_PROVIDER"] = PROVIDER
    os.environ["INGESTFLOW_EMBED_MODEL"] = model
    get_settings.cache_clear()
    clear_embedders()
    return f"{PROVIDER}:{model}"


def write_corpus(folder: Path, count: int) -> list[str]:
    """The first ``count`` SciFact abstracts as text files; their paths."""
    paths = []
    for doc_id, text in scifact_documents()[:count]:
        path = folder / f"{doc_id}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    return paths


def ingest_direct(sources: Sequence[str], *, collection: str, tenant: str) -> list[DocumentOutcome]:
    """What ``ingest_batch`` does, without Prefect: ``tasks.stages.run_batches`` with the plain
    stage functions, over the same micro-batches (a bulk load defers the vector index the
    same way); the documents' outcomes."""
    from ingestflow.core.progress import Progress, report
    from ingestflow.core.settings import get_settings
    from storage.migrate import ensure_schema
    from tasks.collections import collection_task
    from tasks.config import PipelineConfig
    from tasks.stages import micro_batches, run_batches
    from tasks.work import DocWork, StageContext

    ensure_schema()
    settings = get_settings()
    config = PipelineConfig.from_settings(settings)
    coll = collection_task.fn(collection, tenant, config.embedding)
    batches = micro_batches(sources, settings.ingest.batch_size)
    total = sum(len(b) for b in batches)
    outcomes: list[DocumentOutcome] = []

    def done(works: list[DocWork]) -> None:
        outcomes.extend(w.outcome() for w in works)
        report(Progress(done=len(outcomes), total=total, outcomes=list(outcomes)))

    with tempfile.TemporaryDirectory(prefix="ingestflow-") as tmp:
        ctx = StageContext(coll.id, config, Path(tmp), settings.ingest)
        run_batches(
            batches,
            ctx,
            dimension=coll.dimension,
            settings=settings.ingest,
            total=total,
            on_batch=done,
        )
    return outcomes


def stored_digest(collection: str) -> tuple[str, int]:
    """A digest of every chunk the collection holds (source, ordinal, content hash) and the
    number of chunks: equal digests mean both ways stored the same chunks."""
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT d.source_uri, c.ordinal, c.content_hash FROM chunks c"
            " JOIN documents d ON d.id = c.document_id JOIN collections k ON k.id = c.collection_id"
            " WHERE k.tenant = %s AND k.name = %s ORDER BY 1, 2",
            (TENANT, collection),
        ).fetchall()
    text = "\n".join(f"{r['source_uri']}|{r['ordinal']}|{r['content_hash']}" for r in rows)
    return hashlib.sha256(text.encode()).hexdigest(), len(rows)


def index_is_valid(collection: str) -> bool:
    from storage.collections import get_collection
    from storage.db import connection
    from storage.vector_index import index_state

    with connection() as conn:
        coll = get_collection(conn, name=collection, tenant=TENANT)
        return index_state(conn, collection_id=coll.id) == "valid"


class Runs:
    """Runs either way into fresh collections, checking every outcome and stored chunk set."""

    def __init__(self, sources: list[str]) -> None:
        self.sources = sources
        self.collections: list[str] = []
        self.identities: list[str] = []
        self.digests: set[tuple[str, int]] = set()

    def flow(self, sources: list[str] | None = None) -> float:
        from flows.ingest import ingest_batch

        return self._timed(
            lambda s, c: ingest_batch(s, collection=c, tenant=TENANT).outcomes, sources
        )

    def direct(self, sources: list[str] | None = None) -> float:
        return self._timed(lambda s, c: ingest_direct(s, collection=c, tenant=TENANT), sources)

    def _timed(self, ingest: Any, sources: list[str] | None) -> float:
        sources = sources if sources is not None else self.sources
        collection = f"bench-prefect-{uuid.uuid4().hex[:8]}"
        self.identities.append(use_fresh_model())
        self.collections.append(collection)
        started = time.perf_counter()
        outcomes = ingest(sources, collection)
        seconds = time.perf_counter() - started
        bad = [o for o in outcomes if o.status.value != "indexed"]
        if len(outcomes) != len(sources) or bad:
            raise AssertionError(f"{len(bad)} of {len(sources)} documents not indexed: {bad[:3]}")
        if not index_is_valid(collection):
            raise AssertionError(f"collection {collection!r} was left without a valid index")
        if sources is self.sources:
            self.digests.add(stored_digest(collection))
            if len(self.digests) != 1:
                raise AssertionError("the flow and the direct calls stored different chunks")
        return seconds

    def clean_up(self) -> None:
        from storage.db import connection

        with connection() as conn:
            ids = [
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM collections WHERE tenant = %s AND name = ANY(%s)",
                    (TENANT, self.collections),
                )
            ]
            for cid in ids:
                conn.execute(f"DROP INDEX IF EXISTS chunks_embedding_c{int(cid)}")
            conn.execute("DELETE FROM collections WHERE id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM embedding_cache WHERE model = ANY(%s)", (self.identities,))


def measure(sources: list[str], reps: int, backend: str) -> tuple[list[Row], dict[str, Any]]:
    from ingestflow.core.settings import get_settings

    runs = Runs(sources)
    try:
        warm = sources[: get_settings().ingest.batch_size]
        runs.flow(warm)
        runs.direct(warm)
        flow_s, direct_s = alternate(reps, lambda _i: runs.flow(), lambda _i: runs.direct())
        digest, chunks = next(iter(runs.digests))
    finally:
        runs.clean_up()
    flow, direct = median(flow_s), median(direct_s)
    overhead = (flow - direct) / flow
    batch = get_settings().ingest.batch_size
    task_runs = 7 * -(-len(sources) // batch) + 1
    row = Row(
        f"Prefect overhead, batch flow ({len(sources)} SciFact documents, {chunks} chunks, hash"
        f" embedder, Prefect server on {backend}): (flow - direct) / flow",
        flow,
        direct,
        "s",
        overhead,
        f"<= {TARGET:g}",
        bool(overhead <= TARGET),
    )
    detail = {
        "flow_seconds": flow_s,
        "direct_seconds": direct_s,
        "task_runs_per_flow": task_runs,
        "overhead_ms_per_task_run": round(1000 * (flow - direct) / task_runs, 1),
        "documents_per_micro_batch": batch,
        "vector_index_deferred": len(sources) >= get_settings().ingest.bulk_index_min_documents,
        "chunks": chunks,
        "stored_chunks_digest": digest,
        "prefect_server_database": backend,
        "prefect_logging_level": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO (default)"),
    }
    return [row], detail


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timed runs each way (>= 3)")
    args = parser.parse_args(argv)
    # Prefect's settings and local state must be this run's own, before Prefect is imported.
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ingestflow-bench-prefect-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="ingestflow-bench-corpus-") as folder,
        prefect_api() as (_, backend),
        bench_database(args.database_url),
    ):
        register_provider()
        sources = write_corpus(Path(folder), 300 if args.small else 2000)
        try:
            rows, detail = measure(sources, args.reps, backend)
        finally:
            from tasks.sandbox import close_shared_sandbox

            close_shared_sandbox()
    write_result(args.json, rows, **detail, seconds=round(time.perf_counter() - started, 1))


if __name__ == "__main__":
    main()
