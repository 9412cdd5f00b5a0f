"""The bench protocol (``bench/systems/__init__.py``) for ingestflow, run by ``.venv/bin/python``.

Every indexing phase is one call of the product's own front door for keeping a folder
indexed, ``ingestflow.service.sweep`` (the ``sweep-bucket`` flow, as ``ingestflow sweep`` and
the scheduled sweep deployment run it): new and changed files are ingested, unchanged ones
are skipped by their listed version, and documents whose files are gone are retired with
their chunks. ``ingest()`` would need a separate delete step for the ``delete`` phase; the
sweep does all four phases the way a user keeping a folder in step would.

The flow runs in this process against the Prefect server in ``PREFECT_API_URL`` (the harness
starts one on Postgres); without it Prefect falls back to its ephemeral SQLite server,
whose lock waits would dominate every task run.

Settings come from the product's own environment variables: ``INGESTFLOW_CHUNK_SIZE``,
``INGESTFLOW_CHUNK_OVERLAP``, ``INGESTFLOW_CHUNK_UNIT=chars``, ``INGESTFLOW_EMBED_BATCH_SIZE``
and ``INGESTFLOW_EMBED_PROVIDER`` / ``INGESTFLOW_EMBED_MODEL``: ``minilm`` is the product's
``local`` provider; ``hash`` is a provider registered here through ``register_embedder``,
wrapping ``bench.hash_embedding.hash_embed``. Documents per micro-batch stay at the
product's default (``INGESTFLOW_BATCH_SIZE``, when set, is honoured).

``embedded_chunks`` counts the texts that reach the embedder's ``embed_batch``: texts found
in the product's embedding cache never get there. The ``first`` phase empties that cache for
the model (before the clock starts), so a first ingest is a cold one even when the bench
database is reused.

Beyond the protocol's keys, indexing phases report the sweep's counts (``report``), the
documents that failed in the phase by ``error_code`` (``failures``), the chunks stored
(``stored_chunks``) and the summed per-stage seconds of the documents indexed in the phase,
from their ``documents.timings`` (``stage_seconds``, ``stage_documents``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.hash_embedding import MODEL_NAME, PROVIDER, register_provider  # noqa: E402

SYSTEM = "ingestflow"
PROVIDERS = {
    "minilm": ("local", "all-MiniLM-L6-v2"),
    "hash": (PROVIDER, MODEL_NAME),
    # The product's openai provider, at OPENAI_BASE_URL with OPENAI_API_KEY (bench/harness.py).
    "remote": ("openai", "text-embedding-3-small"),
}
INDEXING_PHASES = ("first", "unchanged", "change", "delete")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ingestflow under the bench protocol")
    parser.add_argument("--phase", required=True, choices=[*INDEXING_PHASES, "final"])
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--embedder", required=True, choices=sorted(PROVIDERS))
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


def configure_environment(args: argparse.Namespace) -> None:
    """The product's settings, set before anything reads them."""
    provider, model = PROVIDERS[args.embedder]
    os.environ.update(
        {
            "DATABASE_URL": args.database_url,
            "INGESTFLOW_CHUNK_SIZE": str(args.chunk_size),
            "INGESTFLOW_CHUNK_OVERLAP": str(args.chunk_overlap),
            "INGESTFLOW_CHUNK_UNIT": "chars",
            "INGESTFLOW_EMBED_BATCH_SIZE": str(args.batch_size),
            "INGESTFLOW_EMBED_PROVIDER": provider,
            "INGESTFLOW_EMBED_MODEL": model,
            "HF_HUB_OFFLINE": "1",
        }
    )
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "warning: PREFECT_API_URL is unset; Prefect may use its ephemeral SQLite server",
            file=sys.stderr,
        )


if TYPE_CHECKING:
    from tasks.embedders import Embedder


class EmbedCounter:
    """Counts the texts reaching ``embed_batch`` of the embedder's class in this process."""

    def __init__(self) -> None:
        self.texts = 0

    def wrap(self, embedder_class: type[Embedder]) -> None:
        original = embedder_class.embed_batch
        counter = self

        def counting_embed_batch(self: Any, texts: Sequence[str]) -> Any:
            counter.texts += len(texts)
            return original(self, texts)

        embedder_class.embed_batch = counting_embed_batch  # type: ignore[method-assign]


def index(args: argparse.Namespace) -> dict[str, Any]:
    """One sweep of the corpus folder into the collection, timed alone."""
    from ingestflow.service.collections import open_collection_for_ingest
    from ingestflow.service.ingest import sweep
    from storage.db import transaction
    from storage.migrate import ensure_schema
    from tasks.embedders import get_embedder

    ensure_schema()
    embedder = get_embedder()
    embedder.embed_batch(["warm-up"])  # loads the model (minilm) outside the clock
    embedder.count_tokens("warm-up")  # and the tokenizer the embed step counts tokens with
    coll = open_collection_for_ingest(args.collection, tenant="default")
    if args.phase == "first":
        with transaction() as conn:
            conn.execute("DELETE FROM embedding_cache WHERE model = %s", (embedder.identity,))
    counter = EmbedCounter()
    counter.wrap(type(embedder))
    docs = sum(1 for p in args.corpus.iterdir() if p.is_file())
    with transaction() as conn:
        phase_start = _field(conn.execute("SELECT now() AS t").fetchone(), "t")

    started = time.perf_counter()
    report = sweep(str(args.corpus), collection=args.collection)
    seconds = time.perf_counter() - started

    stages, staged_docs = stage_seconds(coll.id, phase_start)
    return {
        "system": SYSTEM,
        "phase": args.phase,
        "seconds": seconds,
        "docs": docs,
        "embedded_chunks": counter.texts,
        "report": {
            "listed": report.listed,
            "added": report.added,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "deleted": report.deleted,
            "failed": len(report.failed),
        },
        "failures": failures(coll.id, phase_start),
        "stored_chunks": stored_chunks(coll.id),
        "stage_seconds": stages,
        "stage_documents": staged_docs,
    }


def stage_seconds(collection_id: int, since: Any) -> tuple[dict[str, float], int]:
    """Per-stage seconds summed over the documents indexed since ``since``, and how many."""
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT t.key AS stage, sum(t.value::float) AS seconds, count(DISTINCT d.id) AS docs"
            " FROM documents d CROSS JOIN LATERAL jsonb_each_text(d.timings) t"
            " WHERE d.collection_id = %s AND d.status = 'indexed' AND d.indexed_at >= %s"
            " GROUP BY t.key",
            (collection_id, since),
        ).fetchall()
        indexed = _field(
            conn.execute(
                "SELECT count(*) AS n FROM documents"
                " WHERE collection_id = %s AND status = 'indexed' AND indexed_at >= %s",
                (collection_id, since),
            ).fetchone(),
            "n",
        )
    return {r["stage"]: round(r["seconds"], 4) for r in rows}, int(indexed)


def failures(collection_id: int, since: Any) -> dict[str, dict[str, Any]]:
    """Documents that failed in this phase, by ``error_code``, with one example reason."""
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT coalesce(error_code, 'unknown') AS code, count(*) AS n, min(error) AS example"
            " FROM documents WHERE collection_id = %s AND status = 'failed' AND updated_at >= %s"
            " GROUP BY 1 ORDER BY 2 DESC, 1",
            (collection_id, since),
        ).fetchall()
    return {r["code"]: {"count": r["n"], "example": r["example"]} for r in rows}


def stored_chunks(collection_id: int) -> int:
    from storage.db import connection

    with connection() as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM chunks WHERE collection_id = %s", (collection_id,)
        ).fetchone()
    return int(_field(row, "n"))


def final_state(args: argparse.Namespace) -> dict[str, Any]:
    """Every chunk stored for the collection, with its document's source file name.

    No status filter: the product removes a retired document's chunks, so any chunk of a
    ``deleted`` document would be a leftover, and the judge counts it stale (its file is
    gone). ``chunks_of_retired_documents`` reports how many there are.
    """
    from storage.collections import get_collection
    from storage.db import connection
    from storage.migrate import ensure_schema

    ensure_schema()
    with connection() as conn:
        coll = get_collection(conn, name=args.collection)
        rows = conn.execute(
            "SELECT d.source_uri, d.status, k.content FROM chunks k"
            " JOIN documents d ON d.id = k.document_id"
            " WHERE k.collection_id = %s ORDER BY d.source_uri, k.ordinal",
            (coll.id,),
        ).fetchall()
        statuses = conn.execute(
            "SELECT status, count(*) AS n FROM documents WHERE collection_id = %s GROUP BY 1",
            (coll.id,),
        ).fetchall()
    return {
        "system": SYSTEM,
        "phase": "final",
        "chunks": [[file_name(r["source_uri"]), r["content"]] for r in rows],
        "chunks_of_retired_documents": sum(1 for r in rows if r["status"] == "deleted"),
        "documents_by_status": {r["status"]: r["n"] for r in statuses},
    }


def file_name(source_uri: str) -> str:
    """``file:///tmp/corpus/4983.txt`` -> ``4983.txt``."""
    return Path(unquote(urlsplit(source_uri).path)).name


def claim_stdout() -> TextIO:
    """The real stdout for the one result line; everything else printed to fd 1 from here
    on (Prefect's console logging included) goes to stderr."""
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(result_fd, "w", encoding="utf-8")


def _field(row: dict[str, Any] | None, name: str) -> Any:
    """A column of a query's one row (aggregates always return one)."""
    assert row is not None
    return row[name]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = claim_stdout()
    configure_environment(args)
    if args.embedder == "hash":
        register_provider()
    result = final_state(args) if args.phase == "final" else index(args)
    out.write(json.dumps(result) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
