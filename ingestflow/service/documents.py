"""A collection's documents: status counts, listing, reading one, deleting."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deployments.submit import submit_delete as submit_delete_job
from ingestflow.core.errors import DocumentNotFoundError, IngestError, InvalidRequestError
from ingestflow.core.types import DocumentStatus
from storage.collections import list_collections
from storage.db import connection
from storage.documents import (
    DocumentRecord,
    chunk_provenance,
    collection_totals,
    find_document,
    recent_failures,
    status_counts,
)
from storage.documents import list_documents as list_rows
from tasks.collections import open_collection
from tasks.delete import DeleteResult
from tasks.delete import delete_documents as delete_now


@dataclass(frozen=True)
class StatusReport:
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    collections: list[str]


def status(*, collection: str | None = None, tenant: str = "default") -> StatusReport:
    """Documents by status, and the most recent failures with their reasons."""
    cid = open_collection(collection, tenant=tenant).id if collection else None
    with connection() as conn:
        return StatusReport(
            counts=status_counts(conn, collection_id=cid),
            failures=recent_failures(conn, collection_id=cid),
            collections=[c.name for c in list_collections(conn, tenant=tenant)],
        )


@dataclass(frozen=True)
class CollectionStatus:
    name: str
    embedding_model: str
    dimension: int
    documents: dict[str, int]  # by status, every status present
    chunks: int
    last_indexed_at: datetime | None
    last_activity_at: datetime | None
    failures: list[dict[str, Any]]  # the latest, with their reasons


def collection_status(
    collection: str, *, tenant: str = "default", failures: int = 10
) -> CollectionStatus:
    """A collection at a glance: documents by status, chunks in the index, when a document
    was last indexed, and the latest failures with their reasons."""
    found = open_collection(collection, tenant=tenant)
    with connection() as conn:
        counts = status_counts(conn, collection_id=found.id)
        totals = collection_totals(conn, collection_id=found.id)
        failed = recent_failures(conn, collection_id=found.id, limit=failures)
    return CollectionStatus(
        name=found.name,
        embedding_model=found.embedder_identity,
        dimension=found.dimension,
        documents={s.value: counts.get(s.value, 0) for s in DocumentStatus},
        chunks=int(totals["chunks"]),
        last_indexed_at=totals["last_indexed_at"],
        last_activity_at=totals["last_activity_at"],
        failures=failed,
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
    after = _decode_cursor(cursor) if cursor else None
    cid = open_collection(collection, tenant=tenant).id
    with connection() as conn:
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
    cid = open_collection(collection, tenant=tenant).id
    with connection() as conn:
        doc = find_document(conn, collection_id=cid, document_id=document_id)
        return DocumentDetail(doc, chunk_provenance(conn, document_id=doc.id))


def delete_document(
    document_id: str, *, collection: str, tenant: str = "default"
) -> DocumentRecord:
    """Remove a document's chunks and mark it ``deleted`` (one transaction), then remove its
    uploaded copy from the upload store (objects in a user's own bucket are left alone);
    ``DocumentNotFoundError`` if the collection has no such document."""
    cid = open_collection(collection, tenant=tenant).id
    if delete_documents_in(cid, [document_id]).missing:
        raise DocumentNotFoundError(f"document {document_id!r} does not exist")
    with connection() as conn:
        return find_document(conn, collection_id=cid, document_id=document_id)


def delete_documents_now(
    document_ids: list[str], *, collection: str, tenant: str = "default"
) -> tuple[list[str], list[str]]:
    """Delete documents in this call; returns (deleted ids, ids not in the collection)."""
    result = delete_documents_in(open_collection(collection, tenant=tenant).id, document_ids)
    return result.deleted, result.missing


def delete_documents_in(collection_id: int, document_ids: list[str]) -> DeleteResult:
    """The delete step in this process; a document that could not be deleted is an error."""
    result = delete_now(document_ids, collection_id=collection_id)
    if result.errors:
        document_id, reason = next(iter(result.errors.items()))
        raise IngestError(f"document {document_id!r} could not be deleted: {reason}")
    return result


def submit_delete(document_ids: list[str], *, collection: str, tenant: str = "default") -> str:
    """Queue a delete job for documents of the collection; returns the job id. Ids that are
    not the collection's are refused up front (``DocumentNotFoundError``)."""
    ids = list(dict.fromkeys(document_ids))
    cid = open_collection(collection, tenant=tenant).id
    with connection() as conn:
        for document_id in ids:
            find_document(conn, collection_id=cid, document_id=document_id)
    return submit_delete_job(tenant=tenant, collection=collection, document_ids=ids)


def _encode_cursor(doc: DocumentRecord) -> str:
    raw = f"{doc.created_at.isoformat()}|{doc.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, doc_id = raw.partition("|")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        return when, str(uuid.UUID(doc_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError("the page cursor is malformed") from None
