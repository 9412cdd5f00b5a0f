"""The ObjectStore extension point: where source bytes live, chosen by URI scheme.

Four stores are built in (``storage/stores/``): ``file`` (plain paths and ``file://``),
``s3://bucket/key``, ``gs://bucket/key`` and ``az://container/blob``. Each is a ``StoreKind``
named by its scheme in the ``ingestflow.stores`` entry points, the built-ins exactly as a
plugin package would declare its own; a store's module is imported the first time its scheme
is asked for, so the SDKs load only when used.

Every store streams: reads call a sink with blocks of at most ``CHUNK_BYTES``; writes consume
an iterator of byte chunks, hash and size-check them as they go, and become visible only when
complete, so a failed or oversized write leaves nothing behind (and an overwritten object
keeps its old content). Listings are paginated generators.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from ingestflow.core import registry
from ingestflow.core.errors import ConfigError
from ingestflow.core.registry import Registry
from ingestflow.core.settings import StoreSettings

CHUNK_BYTES = 1024 * 1024

Sink = Callable[[bytes], object]


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object. ``etag`` is whatever changes when the bytes change: the ETag (S3,
    Azure), the generation (GCS), or inode, mtime and size (local files)."""

    uri: str
    key: str
    size: int
    etag: str
    modified: datetime


@dataclass(frozen=True)
class WriteResult:
    """A committed write: the bytes' size and sha256 as streamed, and the new ``etag``."""

    uri: str
    size: int
    sha256: str
    etag: str


class ObjectStore(Protocol):
    """What ingestflow needs from a store of documents."""

    def read_into(self, uri: str, sink: Sink) -> None:
        """Stream the object at ``uri`` into ``sink`` in blocks of at most ``CHUNK_BYTES``."""
        ...

    def write(
        self, uri: str, chunks: Iterable[bytes], *, max_bytes: int | None = None
    ) -> WriteResult:
        """Store ``chunks`` at ``uri``, all or nothing; ``TooLargeError`` past ``max_bytes``."""
        ...

    def exists(self, uri: str) -> bool:
        """True if an object is stored at ``uri``."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the object at ``uri``; removing a missing object is not an error."""
        ...

    def list_pages(
        self, prefix: str, *, page_size: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        """Objects whose URI starts with ``prefix``, in key order, one service page at a time
        (``page_size`` objects at most; the store's setting when None)."""
        ...

    def list_objects(self, prefix: str, *, page_size: int | None = None) -> Iterator[ObjectInfo]:
        """``list_pages`` flattened: never more than one page in memory."""
        ...


class PagedListing:
    """Mixin for stores: ``list_objects`` from the store's own ``list_pages``."""

    def list_pages(
        self, prefix: str, *, page_size: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        raise NotImplementedError

    def list_objects(self, prefix: str, *, page_size: int | None = None) -> Iterator[ObjectInfo]:
        for page in self.list_pages(prefix, page_size=page_size):
            yield from page


@dataclass(frozen=True)
class BlockCredentials:
    """A store's credentials as a Prefect block: the block type and the setting that names
    one; what a bucket or container block calls the credentials it carries (``carried_as``),
    and how to tell them (``holds``, ``label``); for ``ingestflow storage add``, a block
    built from the provider's own environment variables (with where they came from) and the
    store opened with a given block, to prove it works before it is saved."""

    block_type: str
    setting: str
    carried_as: str
    holds: Callable[[Any], bool]
    label: str
    from_env: Callable[[StoreSettings, str | None, str | None], tuple[Any, str]]
    store_with: Callable[[StoreSettings, Any], ObjectStore]


@dataclass(frozen=True)
class StoreKind:
    """An object store plugin: the store for the current settings, and, for a store whose
    credentials can be a Prefect block, how to make one."""

    open: Callable[[], ObjectStore]
    credentials: BlockCredentials | None = None


STORES: Registry[StoreKind] = Registry(
    registry.STORES,
    "object store",
    lambda scheme, known: f"no object store handles {scheme}:// URIs (known: {known})",
)


def scheme_of(uri: str) -> str:
    """The URI scheme, with plain paths (including Windows drive letters) as ``file``."""
    scheme = urlparse(uri).scheme
    return "file" if len(scheme) <= 1 else scheme.lower()


def store_for(uri: str) -> ObjectStore:
    """The store that handles ``uri``'s scheme."""
    return STORES.get(scheme_of(uri)).open()


def split_uri(uri: str) -> tuple[str, str]:
    """``scheme://bucket/key`` as ``(bucket, key)``; the key is taken literally (no
    percent-decoding, and ``?`` or ``#`` are part of it), as cloud CLIs do."""
    _, sep, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or not bucket:
        raise ConfigError(f"not a bucket URI (want scheme://bucket/key): {uri}")
    return bucket, key


def local_path(uri: str) -> Path:
    """The filesystem path of a plain path or ``file://`` URI."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        return Path(unquote(parsed.path))
    return Path(uri)


def canonical_uri(source: str) -> str:
    """The stable identity of a source: local files become absolute ``file://`` URIs."""
    if scheme_of(source) == "file":
        return local_path(source).expanduser().resolve().as_uri()
    return source


async def write_async(
    store: ObjectStore, uri: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
) -> WriteResult:
    """``store.write`` from an async chunk iterator (an upload body, say).

    The store's blocking write runs in a worker thread and pulls each chunk from this event
    loop, so only one chunk is in flight and nothing is buffered beyond what the store holds.
    """
    loop = asyncio.get_running_loop()
    source = aiter(chunks)

    async def next_chunk() -> bytes:
        return await anext(source)

    def pull() -> Iterator[bytes]:
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()
            except StopAsyncIteration:
                return

    return await asyncio.to_thread(store.write, uri, pull(), max_bytes=max_bytes)
