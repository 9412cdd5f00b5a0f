"""The service functions behind every front door: Python, the CLI, the API and Celery.

from ingestflow import ingest, search
result = ingest(["reports/", "notes/*.md"], collection="docs")
for hit in search("what changed in Q3?", collection="docs"):
    print(hit.score, hit.source_uri, hit.provenance)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingestflow.errors import InvalidRequestError
from ingestflow.prefect_env import use_running_server
from ingestflow.sources import expand_sources
from ingestflow.types import IngestResult, SearchHit

if TYPE_CHECKING:
    from storage.chunks import SearchMode
    from storage.documents import DocumentRecord
    from storage.objectstore import ObjectInfo
    from storage.registration import Registration


def ingest(
    sources: str | Path | Iterable[str | Path],
    *,
    collection: str = "default",
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    batch_size: int | None = None,
    password: str | None = None,
) -> IngestResult:
    """Ingest files, folders, globs or URIs through the Prefect ingest flow, in this process.

    One source runs ``ingest_document``; several run ``ingest_batch``. Uses a running Prefect
    server when there is one, otherwise Prefect's ephemeral mode. ``password`` (or
    ``metadata["password"]``) opens encrypted PDFs and is never stored.
    """
    from pydantic import SecretStr

    from tasks.work import split_password

    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    expanded = expand_sources(items)
    public, secret = split_password(metadata, password)
    use_running_server()
    from flows import ingest_batch, ingest_document

    options: dict[str, Any] = {
        "collection": collection,
        "metadata": public,
        "force": force,
        "password": SecretStr(secret) if secret is not None else None,
    }
    if len(expanded) == 1:
        return ingest_document(expanded[0], **options)
    return ingest_batch(expanded, batch_size=batch_size, **options)


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


def add_storage(
    name: str,
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    replace: bool = False,
) -> Registration:
    """Register a bucket as a source: reuse or create the Prefect credentials block ``name``
    and list the first page under ``uri`` with it (see ``storage.registration``)."""
    use_running_server()
    from storage.registration import register_source

    return register_source(name, uri, endpoint_url=endpoint_url, region=region, replace=replace)


def list_storage(uri: str, *, limit: int | None = None) -> Iterator[ObjectInfo]:
    """``ObjectInfo`` of the objects under ``uri``, page by page, at most ``limit``."""
    from itertools import islice

    from ingestflow.settings import get_settings
    from storage.objectstore import store_for

    use_running_server()  # a store's credentials may be a Prefect block
    page_size = get_settings().store.list_page_size
    if limit is not None:
        page_size = max(1, min(page_size, limit))
    return islice(store_for(uri).list_objects(uri, page_size=page_size), limit)


def presign_upload(uri: str, *, expires: int = 3600) -> str:
    """A presigned PUT URL for ``uri`` on an S3-compatible store (see ``storage.presign``)."""
    use_running_server()
    from storage.presign import presign_put

    return presign_put(uri, expires=expires)


def search(
    query: str,
    *,
    collection: str = "default",
    k: int = 5,
    filter: dict[str, Any] | None = None,
    tenant: str = "default",
    mode: SearchMode = "vector",
) -> list[SearchHit]:
    """The ``k`` chunks that best answer ``query``, embedded with the collection's own model.

    ``mode="vector"`` ranks by cosine similarity (the score); ``"hybrid"`` fuses that ranking
    with Postgres full-text search by reciprocal rank fusion (the score is the fused score),
    which helps queries with rare exact terms: identifiers, codes, names.
    """
    from storage.chunks import search_chunks
    from storage.collections import get_collection
    from storage.db import connection
    from storage.migrate import ensure_schema
    from tasks.embedders import get_embedder

    if not query.strip():
        raise InvalidRequestError("the search query is empty")
    if mode not in ("vector", "hybrid"):
        raise InvalidRequestError(f"unknown search mode {mode!r}; use 'vector' or 'hybrid'")
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
            query_text=query,
            mode=mode,
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


@dataclass(frozen=True)
class DocumentPage:
    items: list[DocumentRecord]
    next_cursor: str | None


def list_documents(
    *,
    collection: str,
    tenant: str = "default",
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> DocumentPage:
    """One page of a collection's documents, oldest first; ``next_cursor`` fetches the next."""
    from storage.collections import get_collection
    from storage.db import connection
    from storage.documents import list_documents as list_rows
    from storage.migrate import ensure_schema

    after = _decode_cursor(cursor) if cursor else None
    ensure_schema()
    with connection() as conn:
        cid = get_collection(conn, name=collection, tenant=tenant).id
        rows = list_rows(conn, collection_id=cid, status=status, limit=limit + 1, after=after)
    more = len(rows) > limit
    items = rows[:limit]
    return DocumentPage(items, _encode_cursor(items[-1]) if more and items else None)


@dataclass(frozen=True)
class DocumentDetail:
    document: DocumentRecord
    provenance: list[dict[str, Any]]  # the first chunks' ordinal and provenance


def get_document(document_id: str, *, collection: str, tenant: str = "default") -> DocumentDetail:
    """A document of ``collection`` with its error, timings, metadata and a provenance summary."""
    from storage.collections import get_collection
    from storage.db import connection
    from storage.documents import chunk_provenance, find_document
    from storage.migrate import ensure_schema

    ensure_schema()
    with connection() as conn:
        cid = get_collection(conn, name=collection, tenant=tenant).id
        doc = find_document(conn, collection_id=cid, document_id=document_id)
        return DocumentDetail(doc, chunk_provenance(conn, document_id=doc.id))


def delete_document(
    document_id: str, *, collection: str, tenant: str = "default"
) -> DocumentRecord:
    """Remove a document's chunks and mark it ``deleted`` (one transaction), then remove its
    uploaded copy from the upload store (objects in a user's own bucket are left alone)."""
    from flows.delete import delete_one
    from storage.collections import get_collection
    from storage.db import connection
    from storage.documents import find_document
    from storage.migrate import ensure_schema

    ensure_schema()
    with connection() as conn:
        cid = get_collection(conn, name=collection, tenant=tenant).id
    delete_one(document_id, collection_id=cid)
    with connection() as conn:
        return find_document(conn, collection_id=cid, document_id=document_id)


def delete_documents_now(
    document_ids: list[str], *, collection: str, tenant: str = "default"
) -> tuple[list[str], list[str]]:
    """Delete documents in this call; returns (deleted ids, ids not in the collection)."""
    from flows.delete import delete_one
    from storage.collections import get_collection
    from storage.db import connection
    from storage.documents import DocumentNotFoundError
    from storage.migrate import ensure_schema

    ensure_schema()
    with connection() as conn:
        cid = get_collection(conn, name=collection, tenant=tenant).id
    deleted, missing = [], []
    for document_id in dict.fromkeys(document_ids):
        try:
            delete_one(document_id, collection_id=cid)
            deleted.append(document_id)
        except DocumentNotFoundError:
            missing.append(document_id)
    return deleted, missing


def submit_delete(document_ids: list[str], *, collection: str, tenant: str = "default") -> str:
    """Queue a delete job for documents of the collection; returns the job id. Ids that are
    not the collection's are refused up front (``DocumentNotFoundError``)."""
    from deployments.submit import submit_delete as submit
    from storage.collections import get_collection
    from storage.db import connection
    from storage.documents import find_document
    from storage.migrate import ensure_schema

    ensure_schema()
    ids = list(dict.fromkeys(document_ids))
    with connection() as conn:
        cid = get_collection(conn, name=collection, tenant=tenant).id
        for document_id in ids:
            find_document(conn, collection_id=cid, document_id=document_id)
    return submit(tenant=tenant, collection=collection, document_ids=ids)


def readiness() -> dict[str, str]:
    """What the service needs, each ``"ok"`` or the reason it is not ready: the database,
    the upload store and the queue backend."""
    return {
        "database": _check(_database_ready),
        "upload_store": _check(_upload_store_ready),
        "queue": _check(_queue_ready),
    }


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with a reason
        return getattr(exc, "reason", None) or type(exc).__name__  # never a URL or secret
    return "ok"


def _database_ready() -> None:
    from storage.db import connection

    with connection() as conn:
        conn.execute("SELECT 1")


def _upload_store_ready() -> None:
    """The upload prefix can be listed (a local folder is created if missing)."""
    from itertools import islice

    from ingestflow.settings import get_settings
    from storage.objectstore import local_path, scheme_of, store_for

    uri = get_settings().api.upload_uri
    if scheme_of(uri) == "file":
        local_path(uri).mkdir(parents=True, exist_ok=True)
    list(islice(store_for(uri).list_objects(uri, page_size=1), 1))


def _queue_ready() -> None:
    from deployments.queue import get_backend

    get_backend().ping()


def _encode_cursor(doc: DocumentRecord) -> str:
    import base64

    raw = f"{doc.created_at.isoformat()}|{doc.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[Any, str]:
    import base64
    import binascii
    import uuid
    from datetime import datetime

    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, doc_id = raw.partition("|")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        return when, str(uuid.UUID(doc_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError("the page cursor is malformed") from None
