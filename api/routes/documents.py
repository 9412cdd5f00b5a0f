"""A collection's status, and its documents: list (by status, paginated), get, delete one or
many."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from api.deps import CollectionName, DocumentId, Principal
from api.models import (
    ChunkProvenance,
    CollectionStatusModel,
    DeleteDocumentsRequest,
    DeleteNowResult,
    DocumentDetail,
    DocumentPage,
    DocumentSummary,
    JobAccepted,
)
from ingestflow.core.types import DocumentStatus
from ingestflow.service import documents as service

router = APIRouter(tags=["documents"])


@router.get("/collections/{collection}/status", response_model=CollectionStatusModel)
def collection_status(
    collection: CollectionName,
    key: Principal,
    failures: Annotated[int, Query(ge=0, le=100, description="How many failures to list.")] = 10,
) -> CollectionStatusModel:
    """Documents by status, chunks in the index, the last ingest and the latest failures with
    their reasons."""
    found = service.collection_status(collection, tenant=key.tenant, failures=failures)
    return CollectionStatusModel.model_validate(asdict(found))


@router.get("/collections/{collection}/documents", response_model=DocumentPage)
def list_documents(
    collection: CollectionName,
    key: Principal,
    status: DocumentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> DocumentPage:
    """The collection's documents, oldest first, optionally only those in ``status``."""
    page = service.list_documents(
        collection=collection,
        tenant=key.tenant,
        status=status.value if status else None,
        limit=limit,
        cursor=cursor,
    )
    return DocumentPage(
        items=[DocumentSummary.model_validate(d) for d in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/collections/{collection}/documents/{document_id}", response_model=DocumentDetail)
def get_document(collection: CollectionName, document_id: DocumentId, key: Principal):
    """One document with its error, chunk count, timings, metadata and provenance summary."""
    detail = service.get_document(document_id, collection=collection, tenant=key.tenant)
    summary = DocumentSummary.model_validate(detail.document).model_dump()
    doc = detail.document
    return DocumentDetail(
        **summary,
        collection=collection,
        sha256=doc.sha256,
        attempts=doc.attempts,
        flow_run_id=doc.flow_run_id,
        metadata=doc.metadata,
        timings=doc.timings,
        provenance=[ChunkProvenance(**p) for p in detail.provenance],
    )


@router.delete("/collections/{collection}/documents/{document_id}", status_code=204)
def delete_document(
    collection: CollectionName, document_id: DocumentId, key: Principal
) -> Response:
    """Remove the document's chunks and mark it ``deleted`` (one transaction), and its
    uploaded copy."""
    service.delete_document(document_id, collection=collection, tenant=key.tenant)
    return Response(status_code=204)


@router.post(
    "/collections/{collection}/documents:delete",
    response_model=JobAccepted | DeleteNowResult,
    status_code=202,
    responses={200: {"model": DeleteNowResult, "description": "mode=now: deleted already."}},
)
def delete_documents(collection: CollectionName, body: DeleteDocumentsRequest, key: Principal):
    """Delete many documents: as a delete job (202, the default) or in this request (200).
    Ids that do not exist in the collection are reported, not errors."""
    if body.mode == "now":
        deleted, missing = service.delete_documents_now(
            body.ids, collection=collection, tenant=key.tenant
        )
        return JSONResponse(
            DeleteNowResult(deleted=deleted, missing=missing).model_dump(), status_code=200
        )
    job_id = service.submit_delete(body.ids, collection=collection, tenant=key.tenant)
    return JobAccepted(job_id=job_id, status_url=f"/v1/jobs/{job_id}")
