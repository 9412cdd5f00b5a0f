"""Pieces every store shares: metered chunk streams, part sizing, errors, Prefect blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any, Literal, TypeVar

from ingestflow.core.errors import ConfigError, FetchError, IngestError, StoreError, TooLargeError
from ingestflow.core.settings import Settings, StoreSettings, get_settings
from storage import objectstore
from storage.objectstore import BlockCredentials

Op = Literal["read", "write", "exists", "delete", "list"]
T = TypeVar("T")


S = TypeVar("S")


class Meter:
    """Wraps a chunk iterator: counts and hashes the bytes, and raises ``TooLargeError`` as
    soon as they pass ``max_bytes``, before the excess is handed on."""

    def __init__(self, chunks: Iterable[bytes], max_bytes: int | None, uri: str) -> None:
        self._chunks, self.max_bytes, self.uri = chunks, max_bytes, uri
        self.size = 0
        self._digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.size += len(chunk)
            if self.max_bytes is not None and self.size > self.max_bytes:
                raise TooLargeError(
                    f"{self.uri} is larger than the limit of {self.max_bytes:,} bytes"
                )
            self._digest.update(chunk)
            yield chunk if isinstance(chunk, bytes) else bytes(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class Parts:
    """Regroups chunks into parts of exactly ``part_bytes`` (the last may be shorter).

    A part is handed out only once a byte beyond it has arrived or the stream has ended, so
    ``final`` tells whether the part just handed out is the last one without reading a
    whole part ahead. Always yields at least one part (an empty stream, one empty part).
    Memory: the part being filled plus the one handed out; consumers drop each once sent.
    """

    def __init__(self, chunks: Iterable[bytes], part_bytes: int) -> None:
        self._chunks, self.part_bytes = chunks, part_bytes
        self.final = False

    def __iter__(self) -> Iterator[bytes]:
        buffer = bytearray()
        for chunk in self._chunks:
            buffer += chunk
            while len(buffer) > self.part_bytes:
                with memoryview(buffer) as view:  # one copy, not a slice and then a copy
                    part = bytes(view[: self.part_bytes])
                del buffer[: self.part_bytes]
                yield part
                del part  # the consumer holds it now; it must not outlive its upload here
        self.final = True
        yield bytes(buffer)


def pages_of(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter; none if no items)."""
    page: list[T] = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def drain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """``head`` then ``rest``, dropping each item of ``head`` from the list as it is handed
    out, so parts read ahead to peek at the stream are not all kept to the end."""
    while head:
        yield head.pop(0)
    yield from rest


def emit(sink: objectstore.Sink, block: bytes) -> None:
    """Hand ``block`` to ``sink`` in pieces of at most ``objectstore.CHUNK_BYTES``."""
    step = objectstore.CHUNK_BYTES
    if len(block) <= step:
        sink(block)
        return
    view = memoryview(block)
    for start in range(0, len(block), step):
        sink(bytes(view[start : start + step]))


def transient(op: Op, reason: str) -> IngestError:
    """A retryable error: ``FetchError`` for reads, ``StoreError`` for writes and deletes."""
    return StoreError(reason) if op in ("write", "delete") else FetchError(reason)


def block_slug(value: str, default_type: str) -> str:
    """``type-slug/name`` for a setting that may give a bare block name."""
    return value if "/" in value else f"{default_type}/{value}"


def load_block(value: str, default_type: str, setting: str) -> Any:
    """Load the Prefect block a setting names, or raise one clear ``ConfigError``."""
    import httpx
    from prefect.blocks.core import Block

    slug = block_slug(value, default_type)
    try:
        # _sync: stores are blocking code, also when called from inside an event loop.
        return Block.load(slug, _sync=True)  # type: ignore[call-arg]
    except (ValueError, KeyError) as e:
        raise ConfigError(f"Prefect block {slug!r} not found or invalid ({setting})") from e
    except (httpx.TransportError, OSError) as e:  # the Prefect API is unreachable
        raise FetchError(f"could not load Prefect block {slug!r}: {type(e).__name__}") from e


def load_credentials(value: str, kind: BlockCredentials) -> Any:
    """The credentials in the Prefect block a setting names: the block itself, or those a
    bucket or container block carries; ``ConfigError`` when it holds none."""
    block = load_block(value, kind.block_type, kind.setting)
    creds = getattr(block, kind.carried_as, block)
    if not kind.holds(creds):
        raise ConfigError(f"Prefect block {value!r} holds no {kind.label} credentials")
    return creds


def per_settings(store_class: Callable[[StoreSettings], S]) -> Callable[[], S]:
    """The factory a ``StoreKind`` opens: the store for the current settings, one per settings
    snapshot (so one client, until the settings change)."""

    @lru_cache(maxsize=1)
    def build(settings: Settings) -> S:
        return store_class(settings.store)

    return lambda: build(get_settings())
