"""The ObjectStore extension point: where source bytes live, chosen by URI scheme.

A store streams an object into a writable file; ``fetch`` in the ingest flow hashes and
size-checks the stream as it copies. Built-in stores register themselves the same way a
plugin would, with ``register_store(scheme)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from ingestflow.errors import ConfigError, FetchError, SourceNotFoundError

CHUNK_BYTES = 1024 * 1024


class ObjectStore(Protocol):
    """What the ingest flow needs from a store of source documents."""

    def read_into(self, uri: str, sink: Callable[[bytes], None]) -> None:
        """Stream the object at ``uri`` into ``sink`` in blocks of at most ``CHUNK_BYTES``."""
        ...


_stores: dict[str, Callable[[], ObjectStore]] = {}


def register_store(
    *schemes: str,
) -> Callable[[Callable[[], ObjectStore]], Callable[[], ObjectStore]]:
    def decorate(factory: Callable[[], ObjectStore]) -> Callable[[], ObjectStore]:
        for scheme in schemes:
            _stores[scheme] = factory
        return factory

    return decorate


def scheme_of(uri: str) -> str:
    """The URI scheme, with plain paths (including Windows drive letters) as ``file``."""
    scheme = urlparse(uri).scheme
    return "file" if len(scheme) <= 1 else scheme.lower()


def store_for(uri: str) -> ObjectStore:
    scheme = scheme_of(uri)
    if scheme not in _stores:
        known = ", ".join(sorted(_stores))
        raise ConfigError(f"no object store handles {scheme}:// URIs (known: {known})")
    return _stores[scheme]()


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


@register_store("file")
class LocalFileStore:
    """Files on a local or mounted filesystem."""

    def read_into(self, uri: str, sink: Callable[[bytes], None]) -> None:
        path = local_path(uri)
        try:
            fh: BinaryIO = path.open("rb")
        except FileNotFoundError as e:
            raise SourceNotFoundError(f"file not found: {path}") from e
        except IsADirectoryError as e:
            raise SourceNotFoundError(f"is a directory, not a file: {path}") from e
        except PermissionError as e:
            raise SourceNotFoundError(f"permission denied: {path}") from e
        except OSError as e:
            raise FetchError(f"cannot open {path}: {e.strerror}") from e
        with fh:
            while block := fh.read(CHUNK_BYTES):
                sink(block)
