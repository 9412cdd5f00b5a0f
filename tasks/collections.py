"""Resolving a collection name: the one way every front door and flow turns (name, tenant)
into a ``Collection``."""

from __future__ import annotations

import re

from prefect import task

from ingestflow.core.errors import InvalidRequestError
from ingestflow.core.settings import get_settings
from storage.collections import Collection, ensure_collection, get_collection
from storage.db import connection, transaction
from storage.vector_index import heal_vector_index
from tasks.config import EmbeddingConfig
from tasks.options import stage_options

_NAME = re.compile(r"[^/\x00-\x1f\x7f]{1,200}")


def open_collection(
    name: str, *, tenant: str = "default", create_with: EmbeddingConfig | None = None
) -> Collection:
    """The tenant's collection ``name``.

    Without ``create_with`` it must exist (``CollectionNotFoundError``). With it, the
    collection is created for that model on first use (asking the embedder for its
    dimension), and a different model is ``CollectionMismatchError``.
    """
    if create_with is None:
        with connection() as conn:
            return get_collection(conn, name=name, tenant=tenant)
    check_collection_name(name)
    embedder = create_with.embedder()
    with transaction() as conn:
        return ensure_collection(
            conn,
            name=name,
            tenant=tenant,
            provider=embedder.provider,
            model=embedder.model,
            dimension=embedder.dimension,
        )


def check_collection_name(name: str) -> None:
    """A new collection's name must be addressable everywhere, in a URL path too: 1-200
    characters, no ``/``, no control characters, no surrounding spaces."""
    if not _NAME.fullmatch(name) or name != name.strip():
        raise InvalidRequestError(
            f"collection name {name[:60]!r} is not usable: 1-200 characters, without '/',"
            " control characters or surrounding spaces"
        )


@task(**stage_options("collection", timeout_seconds=4 * 3600))
def collection_task(name: str, tenant: str, create_with: EmbeddingConfig) -> Collection:
    """``open_collection`` as a retried task at the start of an ingest run (creating a
    collection asks the provider for the model's dimension, and a flaky provider must not fail
    the whole run on that one request), which also rebuilds a vector index that an
    interrupted bulk load left missing."""
    coll = open_collection(name, tenant=tenant, create_with=create_with)
    heal_vector_index(
        collection_id=coll.id,
        dimension=coll.dimension,
        build_memory=get_settings().ingest.index_build_memory,
    )
    return coll
