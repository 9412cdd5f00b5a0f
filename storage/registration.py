"""Register a bucket as a source: a Prefect credentials block, proven by listing the bucket.

``register_source(name, uri)`` takes the block saved under ``name`` if there is one, or
builds it from the provider's standard environment variables, lists the first page under
``uri`` with exactly that block, and only then saves it. A block that cannot list the bucket
is never saved. Settings then name it (``INGESTFLOW_STORE_S3_BLOCK=aws-credentials/<name>``
...). Errors name what is missing or refused, never a secret.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingestflow.errors import ConfigError, FetchError
from ingestflow.settings import StoreSettings, get_settings
from storage.objectstore import ObjectStore, scheme_of, split_uri

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


@dataclass(frozen=True)
class _Provider:
    block_type: str
    setting: str
    from_env: Callable[[StoreSettings, str | None, str | None], tuple[Any, str]]
    store: Callable[[StoreSettings, Any], ObjectStore]


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
    provider = _PROVIDERS.get(scheme)
    if provider is None:
        raise ConfigError(f"storage add takes s3://, gs:// or az:// URIs, not {uri}")
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
    store = provider.store(settings, block)
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


# S3 -------------------------------------------------------------------------------------


def _aws_from_env(
    settings: StoreSettings, endpoint_url: str | None, region: str | None
) -> tuple[Any, str]:
    from prefect_aws import AwsClientParameters, AwsCredentials
    from pydantic import SecretStr

    env = os.environ
    keys = bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
    if not keys and not env.get("AWS_PROFILE"):
        raise ConfigError(
            "no S3 credentials to save: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            " (or AWS_PROFILE)"
        )
    creds = AwsCredentials(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"] if keys else None,
        aws_secret_access_key=SecretStr(env["AWS_SECRET_ACCESS_KEY"]) if keys else None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") if keys else None,
        profile_name=None if keys else env["AWS_PROFILE"],
        region_name=region
        or settings.s3_region
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION"),
        aws_client_parameters=AwsClientParameters(
            endpoint_url=endpoint_url or settings.s3_endpoint_url
        ),
    )
    used = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" if keys else "AWS_PROFILE"
    return creds, used


def _s3_store(settings: StoreSettings, creds: Any) -> ObjectStore:
    from storage.stores.s3 import S3Store, s3_client, with_store_settings

    store = S3Store(settings)
    store.client = s3_client(with_store_settings(creds, settings))  # this block, not settings'
    return store


# GCS ------------------------------------------------------------------------------------


def _gcp_from_env(settings: StoreSettings, *_: str | None) -> tuple[Any, str]:
    from prefect_gcp import GcpCredentials

    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not key_file:
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            return None, "STORAGE_EMULATOR_HOST (an emulator needs no credentials)"
        raise ConfigError(
            "no GCS credentials to save: set GOOGLE_APPLICATION_CREDENTIALS to a"
            " service-account key file"
        )
    try:
        info = json.loads(Path(key_file).read_text())
    except (OSError, ValueError) as e:  # the message names the file, never its content
        raise ConfigError(f"cannot read the key file {key_file}: {type(e).__name__}") from e
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(f"{key_file} is not a service-account key file")
    creds = GcpCredentials(
        service_account_info=info, project=settings.gcs_project or info.get("project_id")
    )
    return creds, "GOOGLE_APPLICATION_CREDENTIALS"


def _gcs_store(settings: StoreSettings, creds: Any) -> ObjectStore:
    from storage.stores.gcs import GcsStore

    store = GcsStore(settings)
    if creds is not None:
        store.client = creds.get_cloud_storage_client(project=settings.gcs_project)
    return store


# Azure ----------------------------------------------------------------------------------


def _azure_from_env(settings: StoreSettings, *_: str | None) -> tuple[Any, str]:
    from prefect_azure import AzureBlobStorageCredentials
    from pydantic import SecretStr

    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if not connection_string:
        raise ConfigError("no Azure credentials to save: set AZURE_STORAGE_CONNECTION_STRING")
    creds = AzureBlobStorageCredentials(connection_string=SecretStr(connection_string))
    return creds, "AZURE_STORAGE_CONNECTION_STRING"


def _azure_store(settings: StoreSettings, creds: Any) -> ObjectStore:
    from storage.stores.azure import AzureBlobStore, service_client

    store = AzureBlobStore(settings)
    store.client = service_client(creds)
    return store


_PROVIDERS = {
    "s3": _Provider("aws-credentials", "INGESTFLOW_STORE_S3_BLOCK", _aws_from_env, _s3_store),
    "gs": _Provider("gcp-credentials", "INGESTFLOW_STORE_GCS_BLOCK", _gcp_from_env, _gcs_store),
    "az": _Provider(
        "azure-blob-storage-credentials",
        "INGESTFLOW_STORE_AZURE_BLOCK",
        _azure_from_env,
        _azure_store,
    ),
}
