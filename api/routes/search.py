"""Search, vector or hybrid: the same ``ingestflow.service.search`` as the CLI and notebook."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CollectionName, Principal
from api.models import SearchHit, SearchRequest, SearchResponse
from ingestflow.service.search import search as run_search

router = APIRouter(tags=["search"])


@router.post("/collections/{collection}/search", response_model=SearchResponse)
def search(collection: CollectionName, body: SearchRequest, key: Principal) -> SearchResponse:
    """The ``k`` chunks that best answer ``query`` whose document metadata contains ``filter``,
    ranked by vector similarity or, with ``mode: "hybrid"``, vector and full text fused."""
    hits = run_search(
        body.query,
        collection=collection,
        k=body.k,
        filter=body.filter,
        tenant=key.tenant,
        mode=body.mode,
    )
    return SearchResponse(hits=[SearchHit.model_validate(h) for h in hits])
