"""The delete flow: documents leave the index, and uploaded copies leave the upload store."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow, get_run_logger, task

from ingestflow.errors import IngestError
from ingestflow.settings import get_settings
from storage.collections import get_collection
from storage.db import connection
from storage.documents import DocumentNotFoundError, delete_document
from storage.migrate import ensure_schema
from storage.objectstore import store_for
from tasks.options import stage_options


@dataclass
class DeleteResult:
    collection: str
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # document id -> reason


def owned_upload(source_uri: str) -> bool:
    """True for a copy the API made in the upload store (the only objects a delete removes;
    a bucket's own objects belong to their owner)."""
    root = get_settings().api.upload_uri.rstrip("/") + "/"
    return source_uri.startswith(root)


def delete_one(document_id: str, *, collection_id: int) -> str:
    """Drop the document's chunks and mark it deleted, then remove its uploaded copy.

    The row goes first: a crash in between leaves an unreferenced upload, never a live
    document without its bytes. Returns the document's source URI.
    """
    with connection() as conn:
        record = delete_document(conn, collection_id=collection_id, document_id=document_id)
    if owned_upload(record.source_uri):
        store = store_for(record.source_uri)
        if store.exists(record.source_uri):
            store.delete(record.source_uri)
    return record.source_uri


@task(**stage_options("delete", timeout_seconds=600))
def delete_task(document_ids: list[str], collection_id: int) -> DeleteResult:
    result = DeleteResult(collection="")
    for document_id in document_ids:
        try:
            delete_one(document_id, collection_id=collection_id)
            result.deleted.append(document_id)
        except DocumentNotFoundError:
            result.missing.append(document_id)
        except IngestError as exc:
            if not exc.permanent:
                raise  # the task retries; deleting twice is harmless
            result.errors[document_id] = exc.reason
    return result


@flow(name="delete-documents", flow_run_name="delete from {collection}", log_prints=False)
def delete_documents(
    document_ids: list[str], collection: str = "default", tenant: str = "default"
) -> DeleteResult:
    """Delete documents of ``collection`` of ``tenant``: chunks removed, rows marked
    ``deleted``, uploaded copies removed. Ids that do not exist are reported, not errors."""
    ensure_schema()
    with connection() as conn:
        coll = get_collection(conn, name=collection, tenant=tenant)
    result = delete_task(list(dict.fromkeys(document_ids)), coll.id)
    result.collection = collection
    get_run_logger().info(
        "deleted %d document(s) from %r (%d not found)",
        len(result.deleted),
        collection,
        len(result.missing),
    )
    return result
