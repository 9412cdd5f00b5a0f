"""The delete flow: a delete job's documents leave the index (``tasks.delete``)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from storage.migrate import ensure_schema
from tasks.collections import open_collection
from tasks.delete import DeleteResult, delete_task


@flow(name="delete-documents", flow_run_name="delete from {collection}", log_prints=False)
def delete_documents(
    document_ids: list[str], collection: str = "default", tenant: str = "default"
) -> DeleteResult:
    """Delete documents of ``collection`` of ``tenant``: chunks removed, rows marked
    ``deleted``, uploaded copies removed. Ids that do not exist are reported, not errors."""
    ensure_schema()
    coll = open_collection(collection, tenant=tenant)
    result = delete_task(list(dict.fromkeys(document_ids)), coll.id)
    result.collection = collection
    get_run_logger().info(
        "deleted %d document(s) from %r (%d not found)",
        len(result.deleted),
        collection,
        len(result.missing),
    )
    return result
