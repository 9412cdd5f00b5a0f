"""The ``gs://bucket/key`` store, through prefect-gcp.

Credentials: the ``GcpCredentials`` (or ``GcsBucket``) block named by
``INGESTFLOW_STORE_GCS_BLOCK``; else, with ``STORAGE_EMULATOR_HOST`` set and no
``GOOGLE_APPLICATION_CREDENTIALS``, anonymous credentials for the emulator; else Google's
application default credentials. Reads stream the download into the sink; writes are
resumable uploads, which create no object until the last chunk is sent and are cancelled on
failure.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from ingestflow.core.errors import ConfigError, IngestError, SourceNotFoundError
from ingestflow.core.settings import StoreSettings
from storage import objectstore
from storage.objectstore import ObjectInfo, PagedListing, Sink, WriteResult
from storage.stores._common import Meter, Op, emit, load_credentials, per_settings, transient

_NO_CREDENTIALS = (
    "no GCS credentials: set GOOGLE_APPLICATION_CREDENTIALS or INGESTFLOW_STORE_GCS_BLOCK"
    " (or STORAGE_EMULATOR_HOST for an emulator)"
)


@cache
def emulator_credentials_class() -> type:
    """``GcpCredentials`` that are anonymous, for a local emulator.

    The stock block looks up application default credentials as soon as it is built, which
    fails on a machine without any; an emulator needs none.
    """
    from google.auth.credentials import AnonymousCredentials
    from prefect_gcp import GcpCredentials

    class EmulatorGcpCredentials(GcpCredentials):  # type: ignore[misc]
        """Anonymous credentials for ``STORAGE_EMULATOR_HOST``."""

        _block_type_name = "Ingestflow GCS Emulator Credentials"

        def block_initialization(self) -> None:
            self.project = self.project or "ingestflow-emulator"  # type: ignore[has-type]

        def get_credentials_from_service_account(self) -> Any:
            return AnonymousCredentials()

    return EmulatorGcpCredentials


def gcp_credentials(settings: StoreSettings) -> Any:
    """The ``GcpCredentials`` block to use."""
    from google.auth import exceptions as gx
    from prefect_gcp import GcpCredentials

    if settings.gcs_block:
        return load_credentials(settings.gcs_block, GCS_CREDENTIALS)  # or a bucket block's
    if os.environ.get("STORAGE_EMULATOR_HOST") and not os.environ.get(
        "GOOGLE_APPLICATION_CREDENTIALS"
    ):
        return emulator_credentials_class()(project=settings.gcs_project)
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    try:
        return GcpCredentials(project=settings.gcs_project)  # application default credentials
    except (ValueError, gx.GoogleAuthError) as e:
        if isinstance(e, gx.DefaultCredentialsError) and not key_file:
            raise ConfigError(_NO_CREDENTIALS) from e
        raise ConfigError(
            f"GCS credentials could not be loaded (GOOGLE_APPLICATION_CREDENTIALS={key_file}):"
            f" {type(e).__name__}"
        ) from e


class GcsStore(PagedListing):
    """Objects in Google Cloud Storage buckets."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings

    @cached_property
    def client(self) -> Any:
        """The block's ``google.cloud.storage.Client``, built on first use."""
        creds = gcp_credentials(self.settings)
        return creds.get_cloud_storage_client(project=self.settings.gcs_project)

    def _blob(self, uri: str) -> Any:
        bucket, key = objectstore.split_uri(uri)
        # No chunk_size: with one, downloads become ranged requests each read whole into
        # memory; without, a download is one streamed response. Writes pass their own.
        return self.client.bucket(bucket).blob(key)

    def read_into(self, uri: str, sink: Sink) -> None:
        with _translated("read", uri):
            self._blob(uri).download_to_file(_SinkFile(sink))

    def write(
        self, uri: str, chunks: Iterable[bytes], *, max_bytes: int | None = None
    ) -> WriteResult:
        meter = Meter(chunks, max_bytes, uri)
        with _translated("write", uri):
            blob = self._blob(uri)
            out = blob.open("wb", chunk_size=self.settings.part_bytes, ignore_flush=True)
            try:
                for chunk in meter:
                    out.write(chunk)
                out.close()  # sends the last chunk: only now does the object exist
            except BaseException:
                _abandon(out)
                raise
            blob.reload()  # the writer does not keep the final response: fetch the generation
        return WriteResult(uri, meter.size, meter.sha256, str(blob.generation))

    def exists(self, uri: str) -> bool:
        with _translated("exists", uri):
            return bool(self._blob(uri).exists())

    def delete(self, uri: str) -> None:
        from google.api_core.exceptions import NotFound

        with _translated("delete", uri), contextlib.suppress(NotFound):
            self._blob(uri).delete()

    def list_pages(
        self, prefix: str, *, page_size: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        bucket, key_prefix = objectstore.split_uri(prefix)
        size = page_size or self.settings.list_page_size
        with _translated("list", prefix):
            blobs = self.client.list_blobs(bucket, prefix=key_prefix, page_size=size)
            for page in blobs.pages:  # fetched lazily, one request per page
                yield [_info(bucket, blob) for blob in page]


def _info(bucket: str, blob: Any) -> ObjectInfo:
    uri = f"gs://{bucket}/{blob.name}"
    return ObjectInfo(uri, blob.name, int(blob.size or 0), str(blob.generation), blob.updated)


def _abandon(writer: Any) -> None:
    """Cancel a failed resumable upload, and make sure it stays cancelled: a writer left
    open would be closed, and so finished, by garbage collection (``IOBase.__del__``)."""
    with contextlib.suppress(Exception):
        writer.terminate()
    if not writer.closed:
        writer._buffer.close()


class _SinkFile:
    """The file-like end of a download: ``write`` hands each block to the sink."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, block: bytes) -> int:
        emit(self._sink, block)
        return len(block)


@contextlib.contextmanager
def _translated(op: Op, uri: str) -> Iterator[None]:
    """Turn Google errors into ingestflow's: rejected credentials and bad requests are
    permanent ``ConfigError``s, a missing object ``SourceNotFoundError``, the rest transient."""
    import requests
    from google.api_core import exceptions as ax
    from google.auth import exceptions as gx
    from google.cloud.storage import exceptions as sx

    bucket = objectstore.split_uri(uri)[0]
    try:
        yield
    except IngestError:
        raise
    except gx.RefreshError as e:
        if getattr(e, "retryable", False):
            raise transient(op, f"GCS token refresh failed for {uri} (will retry)") from e
        raise ConfigError(f"GCS credentials rejected for bucket {bucket}: RefreshError") from e
    except gx.DefaultCredentialsError as e:
        raise ConfigError(_NO_CREDENTIALS) from e
    except ax.NotFound as e:
        raise SourceNotFoundError(f"not found: {uri} (or no bucket {bucket})") from e
    except (ax.Unauthorized, ax.Forbidden) as e:
        raise ConfigError(f"GCS credentials rejected for bucket {bucket}: {e.code}") from e
    except (ax.TooManyRequests, ax.ServerError, ax.RetryError) as e:
        raise transient(op, f"GCS error for {uri}: {type(e).__name__} (will retry)") from e
    except ax.GoogleAPICallError as e:
        raise ConfigError(f"GCS rejected the request for {uri}: {e.code}") from e
    except sx.InvalidResponse as e:  # resumable upload steps report the status this way
        status = getattr(e.response, "status_code", 0)
        if status in (401, 403):
            raise ConfigError(f"GCS credentials rejected for bucket {bucket}: {status}") from e
        raise transient(op, f"GCS upload step failed for {uri}: {status}") from e
    except (gx.TransportError, requests.RequestException, sx.DataCorruption) as e:
        raise transient(op, f"GCS unreachable for {uri}: {type(e).__name__}") from e
    except ConnectionError as e:
        raise transient(op, f"GCS unreachable for {uri}: {type(e).__name__}") from e


def gcp_from_env(settings: StoreSettings, *_: str | None) -> tuple[Any, str]:
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


def gcs_store_with(settings: StoreSettings, creds: Any) -> GcsStore:
    store = GcsStore(settings)
    if creds is not None:
        store.client = creds.get_cloud_storage_client(project=settings.gcs_project)
    return store


GCS_CREDENTIALS = objectstore.BlockCredentials(
    "gcp-credentials",
    "INGESTFLOW_STORE_GCS_BLOCK",
    carried_as="gcp_credentials",
    holds=lambda c: hasattr(c, "get_cloud_storage_client"),
    label="GCP",
    from_env=gcp_from_env,
    store_with=gcs_store_with,
)
GCS = objectstore.StoreKind(open=per_settings(GcsStore), credentials=GCS_CREDENTIALS)
