"""Search: the ``k`` chunks that best answer a query, the same for every front door."""

from __future__ import annotations

from typing import Any, get_args

from ingestflow.core.errors import InvalidRequestError
from ingestflow.core.types import SearchHit, SearchMode
from storage.chunks import search_chunks
from storage.db import connection
from tasks.collections import open_collection
from tasks.embedders import get_embedder


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
    if not query.strip():
        raise InvalidRequestError("the search query is empty")
    if mode not in get_args(SearchMode):
        raise InvalidRequestError(f"unknown search mode {mode!r}; use 'vector' or 'hybrid'")
    coll = open_collection(collection, tenant=tenant)
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
