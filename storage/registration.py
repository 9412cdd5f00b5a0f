"""Register a bucket as a source: a Prefect credentials block, proven by listing the bucket.

``register_source(name, uri)`` takes the block saved under ``name`` if there is one, or
builds it from the provider's standard environment variables, lists the first page under
``uri`` with exactly that block, and only then saves it. A block that cannot list the bucket
is never saved. Settings then name it (``INGESTFLOW_STORE_S3_BLOCK=aws-credentials/<name>``
...). Errors name what is missing or refused, never a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ingestflow.core.errors import ConfigError, FetchError
from ingestflow.core.settings import get_settings
from storage.objectstore import STORES, scheme_of, split_uri

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # what Prefect accepts as a block name


@dataclass(frozen=True)
class Registration:
    uri: str
    block: str | None  # the slug for ``setting``; None when the store needs no block
    setting: str  # INGESTFLOW_STORE_S3_BLOCK ...
    source: str  # where the credentials came from (variable names or the saved block)
    saved: bool  # True when the block was saved now
    listed: int  # objects on the first page
    page_size: int


def register_source(
    name: str,
    uri: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    replace: bool = False,
) -> Registration:
    """Reuse or create the credentials block ``name`` for ``uri``'s store and list ``uri``.

    ``replace`` rebuilds an existing block from the environment. ``endpoint_url`` and
    ``region`` (S3 only) go into a new block; unset, they default to the store settings.
    """
    scheme = scheme_of(uri)
    provider = STORES.get(scheme).credentials if scheme in STORES.names() else None
    if provider is None:
        takes = [f"{s}://" for s in STORES.names() if STORES.get(s).credentials]
        schemes = ", ".join(takes[:-1]) + f" or {takes[-1]}" if len(takes) > 1 else "".join(takes)
        raise ConfigError(f"storage add takes {schemes} URIs, not {uri}")
    split_uri(uri)  # a bucket must be named
    if not _NAME.match(name):
        raise ConfigError(f"block name {name!r}: use lowercase letters, digits and dashes")
    if scheme != "s3" and (endpoint_url or region):
        raise ConfigError("--endpoint-url and --region apply to s3:// only")
    settings = get_settings().store
    slug = f"{provider.block_type}/{name}"
    block = None if replace else _saved_block(slug)
    if block is not None:
        if endpoint_url or region:
            raise ConfigError(f"block {slug} exists: add --replace to rebuild it with new options")
        source, saving = f"the saved block {slug}", False
    else:
        block, source = provider.from_env(settings, endpoint_url, region)
        saving = block is not None
    store = provider.store_with(settings, block)
    listed = len(next(iter(store.list_pages(uri, page_size=settings.list_page_size)), []))
    if saving:
        block.save(name, overwrite=replace, _sync=True)
    return Registration(
        uri=uri,
        block=slug if block is not None else None,
        setting=provider.setting,
        source=source,
        saved=saving,
        listed=listed,
        page_size=settings.list_page_size,
    )


def _saved_block(slug: str) -> Any | None:
    """The block saved under ``slug``, or None if there is none."""
    import httpx
    from prefect.blocks.core import Block

    try:
        return Block.load(slug, _sync=True)  # type: ignore[call-arg]
    except ValueError:
        return None
    except KeyError as e:
        raise ConfigError(f"Prefect block {slug!r} is of an unknown type") from e
    except (httpx.TransportError, OSError) as e:
        raise FetchError(f"could not reach the Prefect API for block {slug!r}") from e
