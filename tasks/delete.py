"""The delete step: documents leave the index, and copies the API made leave the upload store.

Every delete path uses it: the delete flow (as a task), the service's immediate deletes, and a
delete job's retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prefect import task

from ingestflow.core.errors import DocumentNotFoundError, IngestError
from ingestflow.core.settings import get_settings
from storage.db import connection
from storage.documents import delete_document
from storage.objectstore import canonical_uri, store_for
from tasks.options import stage_options


@dataclass
class DeleteResult:
    collection: str = ""
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # document id -> reason


def owned_upload(source_uri: str) -> bool:
    """True for a copy the API made in the upload store (the only objects a delete removes;
    a bucket's own objects belong to their owner)."""
    root = canonical_uri(get_settings().api.upload_uri).rstrip("/") + "/"
    return canonical_uri(source_uri).startswith(root)


def delete_one(document_id: str, *, collection_id: int) -> str:
    """Drop the document's chunks and mark it deleted, then remove its uploaded copy.

    The row goes first: a crash in between leaves an unreferenced upload, never a live
    document without its bytes. Returns the document's source URI;
    ``DocumentNotFoundError`` if the collection has no such document.
    """
    with connection() as conn:
        record = delete_document(conn, collection_id=collection_id, document_id=document_id)
    if owned_upload(record.source_uri):
        store = store_for(record.source_uri)
        if store.exists(record.source_uri):
            store.delete(record.source_uri)
    return record.source_uri


def delete_documents(document_ids: Sequence[str], *, collection_id: int) -> DeleteResult:
    """Delete each document once; ids the collection does not have are reported as missing,
    permanent failures by id. A transient error is raised (deleting twice is harmless, so
    the whole step can be retried)."""
    result = DeleteResult()
    for document_id in dict.fromkeys(document_ids):
        try:
            delete_one(document_id, collection_id=collection_id)
            result.deleted.append(document_id)
        except DocumentNotFoundError:
            result.missing.append(document_id)
        except IngestError as exc:
            if not exc.permanent:
                raise
            result.errors[document_id] = exc.reason
    return result


def delete_outcome(result: DeleteResult) -> tuple[str, str | None, tuple[int, int, int]]:
    """A finished delete job's state, message and documents (total, done, failed): ``failed``
    when no document could be deleted, ``completed_with_errors`` when some could not, else
    ``completed`` (ids that do not exist are reported, not errors)."""
    done, failed = len(result.deleted) + len(result.missing), len(result.errors)
    counts = (done + failed, done, failed)
    if not result.errors:
        return "completed", None, counts
    first = next(iter(result.errors.items()))
    message = f"{failed} could not be deleted; the first, {first[0]}: {first[1]}"
    return ("completed_with_errors" if result.deleted else "failed"), message, counts


@task(**stage_options("delete", timeout_seconds=600))
def delete_task(document_ids: list[str], collection_id: int) -> DeleteResult:
    return delete_documents(document_ids, collection_id=collection_id)
