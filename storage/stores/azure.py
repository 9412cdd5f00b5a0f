"""The ``az://container/blob`` store, through prefect-azure's blob storage blocks.

Credentials: the ``AzureBlobStorageCredentials`` (or ``AzureBlobStorageContainer``) block
named by ``INGESTFLOW_STORE_AZURE_BLOCK``, else ``AZURE_STORAGE_CONNECTION_STRING``. The
block's own clients are asynchronous, and stores are blocking code, so the same client is
built from the block's fields with the synchronous SDK. Writes stage blocks and commit the
block list at the end: nothing is visible until the commit.
"""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import Any

from ingestflow.core.errors import ConfigError, IngestError, SourceNotFoundError
from ingestflow.core.settings import StoreSettings
from storage import objectstore
from storage.objectstore import ObjectInfo, PagedListing, Sink, WriteResult
from storage.stores._common import Meter, Op, Parts, emit, load_credentials, per_settings, transient

_NO_CREDENTIALS = (
    "no Azure credentials: set AZURE_STORAGE_CONNECTION_STRING or INGESTFLOW_STORE_AZURE_BLOCK"
)
_GET_BYTES = 4 * 1024 * 1024  # per download request; the SDK's first request defaults to 32 MiB


def azure_credentials(settings: StoreSettings) -> Any:
    """The ``AzureBlobStorageCredentials`` block to use."""
    from prefect_azure import AzureBlobStorageCredentials
    from pydantic import SecretStr

    if settings.azure_block:
        return load_credentials(settings.azure_block, AZURE_CREDENTIALS)  # or a container's
    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if not connection_string:
        raise ConfigError(_NO_CREDENTIALS)
    return AzureBlobStorageCredentials(connection_string=SecretStr(connection_string))


def service_client(creds: Any) -> Any:
    """A synchronous ``BlobServiceClient`` equivalent to the block's ``get_client()``."""
    from azure.storage.blob import BlobServiceClient

    sizes: dict[str, Any] = {"max_single_get_size": _GET_BYTES, "max_chunk_get_size": _GET_BYTES}
    if creds.connection_string is not None:
        try:
            secret = creds.connection_string.get_secret_value()
            return BlobServiceClient.from_connection_string(secret, **sizes)
        except ValueError as e:  # the SDK's message quotes no part of the string
            raise ConfigError("the Azure connection string is malformed") from e
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    if creds.client_id is not None:
        credential: Any = ClientSecretCredential(
            tenant_id=creds.tenant_id,
            client_id=creds.client_id,
            client_secret=creds.client_secret.get_secret_value(),
        )
    else:
        credential = DefaultAzureCredential()
    return BlobServiceClient(account_url=creds.account_url, credential=credential, **sizes)


class AzureBlobStore(PagedListing):
    """Blobs in Azure Blob Storage containers."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings

    @cached_property
    def client(self) -> Any:
        """The ``BlobServiceClient``, built on first use (clients are thread-safe)."""
        return service_client(azure_credentials(self.settings))

    def _blob(self, uri: str) -> Any:
        container, name = objectstore.split_uri(uri)
        return self.client.get_blob_client(container, name)

    def read_into(self, uri: str, sink: Sink) -> None:
        with _translated("read", uri):
            for block in self._blob(uri).download_blob(max_concurrency=1).chunks():
                emit(sink, block)

    def write(
        self, uri: str, chunks: Iterable[bytes], *, max_bytes: int | None = None
    ) -> WriteResult:
        meter = Meter(chunks, max_bytes, uri)
        upload = uuid.uuid4().hex  # block ids must all have one length within a blob
        with _translated("write", uri):
            blob, ids = self._blob(uri), list[str]()
            # Not enumerate(): its cached result tuple would keep the previous block alive
            # while the next one fills.
            for piece in Parts(meter, self.settings.part_bytes):
                if piece:  # an empty stream commits an empty block list
                    ids.append(base64.b64encode(f"{upload}-{len(ids):06d}".encode()).decode())
                    blob.stage_block(ids[-1], piece)
                del piece  # free the block before the next one is filled
            # Staged blocks stay invisible (and expire) unless this commit happens.
            done = blob.commit_block_list(ids)
        return WriteResult(uri, meter.size, meter.sha256, str(done["etag"]).strip('"'))

    def exists(self, uri: str) -> bool:
        with _translated("exists", uri):
            return bool(self._blob(uri).exists())

    def delete(self, uri: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with _translated("delete", uri), contextlib.suppress(ResourceNotFoundError):
            self._blob(uri).delete_blob()

    def list_pages(
        self, prefix: str, *, page_size: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        container, name_prefix = objectstore.split_uri(prefix)
        size = page_size or self.settings.list_page_size
        with _translated("list", prefix):
            client = self.client.get_container_client(container)
            listing = client.list_blobs(name_starts_with=name_prefix or None, results_per_page=size)
            for page in listing.by_page():  # fetched lazily, one request per page
                yield [_info(container, blob) for blob in page]


def _info(container: str, blob: Any) -> ObjectInfo:
    uri = f"az://{container}/{blob.name}"
    return ObjectInfo(uri, blob.name, blob.size, blob.etag.strip('"'), blob.last_modified)


@contextlib.contextmanager
def _translated(op: Op, uri: str) -> Iterator[None]:
    """Turn Azure errors into ingestflow's: rejected credentials and bad requests are
    permanent ``ConfigError``s, a missing blob ``SourceNotFoundError``, the rest transient."""
    from azure.core import exceptions as zx

    container = objectstore.split_uri(uri)[0]
    try:
        yield
    except IngestError:
        raise
    except zx.ClientAuthenticationError as e:
        raise ConfigError(f"Azure credentials rejected for container {container}") from e
    except zx.ResourceNotFoundError as e:
        raise SourceNotFoundError(
            f"not found: {uri} ({getattr(e, 'error_code', None) or 404})"
        ) from e
    except zx.HttpResponseError as e:
        raise _http_error(op, uri, container, e) from e
    except (zx.AzureError, ConnectionError) as e:  # connection and transport failures
        raise transient(op, f"Azure unreachable for {uri}: {type(e).__name__}") from e


def _http_error(op: Op, uri: str, container: str, e: Any) -> IngestError:
    status, code = int(e.status_code or 0), e.error_code or ""
    if status in (401, 403):
        return ConfigError(f"Azure credentials rejected for container {container}: {code}")
    if status >= 500 or status in (408, 429):
        return transient(op, f"Azure error for {uri}: {code or status} (will retry)")
    return ConfigError(f"Azure rejected the request for {uri}: {code or status}")


def azure_from_env(settings: StoreSettings, *_: str | None) -> tuple[Any, str]:
    from prefect_azure import AzureBlobStorageCredentials
    from pydantic import SecretStr

    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if not connection_string:
        raise ConfigError("no Azure credentials to save: set AZURE_STORAGE_CONNECTION_STRING")
    creds = AzureBlobStorageCredentials(connection_string=SecretStr(connection_string))
    return creds, "AZURE_STORAGE_CONNECTION_STRING"


def azure_store_with(settings: StoreSettings, creds: Any) -> AzureBlobStore:
    store = AzureBlobStore(settings)
    store.client = service_client(creds)
    return store


def _is_azure_credentials(creds: Any) -> bool:
    from prefect_azure import AzureBlobStorageCredentials

    return isinstance(creds, AzureBlobStorageCredentials)


AZURE_CREDENTIALS = objectstore.BlockCredentials(
    "azure-blob-storage-credentials",
    "INGESTFLOW_STORE_AZURE_BLOCK",
    carried_as="credentials",
    holds=_is_azure_credentials,
    label="Azure",
    from_env=azure_from_env,
    store_with=azure_store_with,
)
AZURE = objectstore.StoreKind(open=per_settings(AzureBlobStore), credentials=AZURE_CREDENTIALS)
