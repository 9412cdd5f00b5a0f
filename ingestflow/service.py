"""The service functions behind every front door: Python, the CLI, the API and Celery.

from ingestflow import ingest, search
result = ingest(["reports/", "notes/*.md"], collection="docs")
for hit in search("what changed in Q3?", collection="docs"):
    print(hit.score, hit.source_uri, hit.provenance)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingestflow.prefect_env import use_running_server
from ingestflow.sources import expand_sources
from ingestflow.types import IngestResult, SearchHit


def ingest(
    sources: str | Path | Iterable[str | Path],
    *,
    collection: str = "default",
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    batch_size: int | None = None,
) -> IngestResult:
    """Ingest files, folders, globs or URIs through the Prefect ingest flow, in this process.

    One source runs ``ingest_document``; several run ``ingest_batch``. Uses a running Prefect
    server when there is one, otherwise Prefect's ephemeral mode.
    """
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    expanded = expand_sources(items)
    use_running_server()
    from flows import ingest_batch, ingest_document

    if len(expanded) == 1:
        return ingest_document(expanded[0], collection=collection, metadata=metadata, force=force)
    return ingest_batch(
        expanded, collection=collection, metadata=metadata, force=force, batch_size=batch_size
    )


def sweep(
    uri: str,
    *,
    collection: str = "default",
    prune: bool = True,
    max_delete_fraction: float = 0.2,
) -> Any:
    """One sweep of a bucket prefix or folder now (see ``flows.sweep.sweep_bucket``).

    Returns the ``SweepReport``; raises ``SweepGuardError`` when the deletion guard held.
    """
    use_running_server()
    from flows import sweep_bucket

    return sweep_bucket(
        uri, collection=collection, prune=prune, max_delete_fraction=max_delete_fraction
    )


def search(
    query: str,
    *,
    collection: str = "default",
    k: int = 5,
    filter: dict[str, Any] | None = None,
    tenant: str = "default",
) -> list[SearchHit]:
    """The ``k`` chunks most similar to ``query``, embedded with the collection's own model."""
    from storage.chunks import search_chunks
    from storage.collections import get_collection
    from storage.db import connection
    from storage.migrate import ensure_schema
    from tasks.embedders import get_embedder

    if not query.strip():
        raise ValueError("the search query is empty")
    ensure_schema()
    with connection() as conn:
        coll = get_collection(conn, name=collection, tenant=tenant)
    vector = get_embedder(coll.embedding_provider, coll.embedding_model).embed([query])[0]
    with connection() as conn:
        return search_chunks(
            conn,
            collection_id=coll.id,
            dimension=coll.dimension,
            query_vector=vector,
            k=k,
            metadata_filter=filter,
        )


@dataclass(frozen=True)
class StatusReport:
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    collections: list[str]


def status(*, collection: str | None = None, tenant: str = "default") -> StatusReport:
    """Documents by status, and the most recent failures with their reasons."""
    from storage.collections import get_collection, list_collections
    from storage.db import connection
    from storage.documents import recent_failures, status_counts
    from storage.migrate import ensure_schema

    ensure_schema()
    with connection() as conn:
        cid = get_collection(conn, name=collection, tenant=tenant).id if collection else None
        return StatusReport(
            counts=status_counts(conn, collection_id=cid),
            failures=recent_failures(conn, collection_id=cid),
            collections=[c.name for c in list_collections(conn, tenant=tenant)],
        )
