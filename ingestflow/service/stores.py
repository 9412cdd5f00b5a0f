"""Object-store locations: register a bucket as a source, list a prefix, presign an upload."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from ingestflow.core.settings import get_settings
from storage.objectstore import ObjectInfo, store_for
from storage.presign import presign_put
from storage.registration import register_source

# Register a bucket as a source: reuse or create the Prefect credentials block ``name`` and
# list the first page under ``uri`` with it (see ``storage.registration``).
add_storage = register_source


def list_storage(uri: str, *, limit: int | None = None) -> Iterator[ObjectInfo]:
    """``ObjectInfo`` of the objects under ``uri``, page by page, at most ``limit``."""
    page_size = get_settings().store.list_page_size
    if limit is not None:
        page_size = max(1, min(page_size, limit))
    return islice(store_for(uri).list_objects(uri, page_size=page_size), limit)


def presign_upload(uri: str, *, expires: int = 3600) -> str:
    """A presigned PUT URL for ``uri`` on an S3-compatible store (see ``storage.presign``)."""
    return presign_put(uri, expires=expires)
