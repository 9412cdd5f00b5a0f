"""The delete flow: a delete job's documents leave the index (``tasks.delete``)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from storage.migrate import ensure_schema
from tasks.collections import open_collection
from tasks.delete import DeleteResult, delete_outcome, delete_task
from tasks.jobs import job_ended, job_span, job_started, span_outcome
from tasks.work import describe_error


@flow(name="delete-documents", flow_run_name="delete from {collection}", log_prints=False)
def delete_documents(
    document_ids: list[str],
    collection: str = "default",
    tenant: str = "default",
    job_id: str | None = None,
) -> DeleteResult:
    """Delete documents of ``collection`` of ``tenant``: chunks removed, rows marked
    ``deleted``, uploaded copies removed. Ids that do not exist are reported, not errors.
    ``job_id`` is the job this run does (its record follows the run)."""
    ensure_schema()
    with job_span(job_id, kind="delete", tenant=tenant, collection=collection) as span:
        job_started(job_id, flow_run_id=flow_run.id)
        try:
            coll = open_collection(collection, tenant=tenant)
            result = delete_task(list(dict.fromkeys(document_ids)), coll.id)
        except BaseException as exc:
            job_ended(job_id, "failed", describe_error(exc))
            raise
        result.collection = collection
        state, message, documents = delete_outcome(result)
        span_outcome(span, state, documents)
        job_ended(job_id, state, message, documents)
    get_run_logger().info(
        "deleted %d document(s) from %r (%d not found)",
        len(result.deleted),
        collection,
        len(result.missing),
    )
    return result
