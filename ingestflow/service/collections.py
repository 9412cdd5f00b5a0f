"""The tenant's collections by name, for the service's callers (``tasks.collections`` is
the one resolver; this picks the model a new collection gets)."""

from __future__ import annotations

from ingestflow.core.settings import get_settings
from storage.collections import Collection
from tasks.collections import open_collection
from tasks.config import PipelineConfig

__all__ = ["Collection", "existing_collection", "open_collection_for_ingest"]


def existing_collection(name: str, *, tenant: str) -> Collection:
    """The tenant's collection; ``CollectionNotFoundError`` if it does not exist."""
    return open_collection(name, tenant=tenant)


def open_collection_for_ingest(name: str, *, tenant: str) -> Collection:
    """The tenant's collection, created on first use for the configured embedder."""
    embedding = PipelineConfig.from_settings(get_settings()).embedding
    return open_collection(name, tenant=tenant, create_with=embedding)
