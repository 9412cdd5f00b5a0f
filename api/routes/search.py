"""Similarity search, through the same ``ingestflow.service.search`` as the CLI and notebook."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Principal
from api.models import SearchHit, SearchRequest, SearchResponse
from api.routes.documents import CollectionName
from ingestflow import service

router = APIRouter(tags=["search"])


@router.post("/collections/{collection}/search", response_model=SearchResponse)
def search(collection: CollectionName, body: SearchRequest, key: Principal) -> SearchResponse:
    """The ``k`` chunks most similar to ``query`` whose document metadata contains ``filter``."""
    hits = service.search(
        body.query, collection=collection, k=body.k, filter=body.filter, tenant=key.tenant
    )
    return SearchResponse(hits=[SearchHit.model_validate(h) for h in hits])
