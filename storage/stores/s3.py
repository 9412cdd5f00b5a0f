"""The ``s3://bucket/key`` store, through prefect-aws (AWS S3, MinIO, R2, moto ...).

Credentials: the ``AwsCredentials`` (or ``S3Bucket``) block named by
``INGESTFLOW_STORE_S3_BLOCK``, else boto3's own chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` ...). ``INGESTFLOW_STORE_S3_ENDPOINT_URL`` points
the client at an S3-compatible server. Streaming goes through the block's boto3 client:
``get_object`` bodies are read in blocks, and writes of more than one part are multipart
uploads, invisible until completed and aborted on any failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import Any

from ingestflow.core.errors import ConfigError, IngestError, SourceNotFoundError
from ingestflow.core.settings import StoreSettings
from storage import objectstore
from storage.objectstore import ObjectInfo, PagedListing, Sink, WriteResult
from storage.stores._common import (
    Meter,
    Op,
    Parts,
    drain,
    load_credentials,
    per_settings,
    transient,
)

_REJECTED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_RETRY = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequests",
}
_NO_CREDENTIALS = (
    "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    " or INGESTFLOW_STORE_S3_BLOCK"
)


def aws_credentials(settings: StoreSettings) -> Any:
    """The ``AwsCredentials`` block to use, with the endpoint and region settings applied."""
    from prefect_aws import AwsCredentials

    if settings.s3_block:
        creds = load_credentials(settings.s3_block, S3_CREDENTIALS)  # or a bucket block's
    else:
        creds = AwsCredentials()  # boto3's default chain: environment, profile, role
    return with_store_settings(creds, settings)


def with_store_settings(creds: Any, settings: StoreSettings) -> Any:
    """``creds`` with the endpoint and region settings filling what the block leaves unset."""
    from prefect_aws import AwsClientParameters

    updates: dict[str, Any] = {}
    if settings.s3_region and not creds.region_name:
        updates["region_name"] = settings.s3_region
    if settings.s3_endpoint_url and not creds.aws_client_parameters.endpoint_url:
        params = creds.aws_client_parameters.model_dump(exclude_unset=True)
        params["endpoint_url"] = settings.s3_endpoint_url
        updates["aws_client_parameters"] = AwsClientParameters(**params)
    return creds.model_copy(update=updates) if updates else creds


def s3_client(creds: Any, config: Any = None) -> Any:
    """A boto3 S3 client from an ``AwsCredentials`` block's session and client parameters.

    This is ``AwsCredentials.get_s3_client`` without its process-wide cache, which would keep
    serving a client built from stale environment credentials. ``config`` (a botocore
    ``Config``) gives defaults that the block's own ``config`` overrides.
    """
    params = creds.aws_client_parameters.get_params_override()
    if creds.region_name:
        params["region_name"] = creds.region_name
    if config is not None:
        params["config"] = config.merge(params["config"]) if "config" in params else config
    return creds.get_boto3_session().client("s3", **params)


class S3Store(PagedListing):
    """Objects in S3 buckets."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings

    @cached_property
    def client(self) -> Any:
        """The boto3 client, built on first use (clients are thread-safe); this store is
        rebuilt with each settings snapshot, so it follows changed credentials."""
        return s3_client(aws_credentials(self.settings))

    def read_into(self, uri: str, sink: Sink) -> None:
        bucket, key = objectstore.split_uri(uri)
        with translated("read", uri):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            with contextlib.closing(body):
                for block in body.iter_chunks(objectstore.CHUNK_BYTES):
                    sink(block)

    def write(
        self, uri: str, chunks: Iterable[bytes], *, max_bytes: int | None = None
    ) -> WriteResult:
        bucket, key = objectstore.split_uri(uri)
        meter = Meter(chunks, max_bytes, uri)
        pieces = Parts(meter, self.settings.part_bytes)
        stream = iter(pieces)
        with translated("write", uri):
            head = [next(stream)]
            if pieces.final:  # small: one request
                etag = self.client.put_object(Bucket=bucket, Key=key, Body=head.pop())["ETag"]
            else:
                etag = self._multipart(bucket, key, drain(head, stream))
        return WriteResult(uri, meter.size, meter.sha256, etag.strip('"'))

    def _multipart(self, bucket: str, key: str, pieces: Iterator[bytes]) -> str:
        """Upload ``pieces`` as one multipart upload; abort it if anything fails."""
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        where = {"Bucket": bucket, "Key": key, "UploadId": upload}
        try:
            done: list[dict[str, Any]] = []
            # Not enumerate(): its cached result tuple would keep the previous part alive
            # while the next one fills.
            for piece in pieces:
                number = len(done) + 1
                sent = self.client.upload_part(**where, PartNumber=number, Body=piece)
                done.append({"PartNumber": number, "ETag": sent["ETag"]})
                del piece  # free the part before the next one is filled
            result = self.client.complete_multipart_upload(**where, MultipartUpload={"Parts": done})
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(**where)
            raise
        return str(result["ETag"])

    def exists(self, uri: str) -> bool:
        bucket, key = objectstore.split_uri(uri)
        try:
            with translated("exists", uri):
                self.client.head_object(Bucket=bucket, Key=key)
        except SourceNotFoundError:
            return False
        return True

    def delete(self, uri: str) -> None:
        bucket, key = objectstore.split_uri(uri)
        with translated("delete", uri):
            self.client.delete_object(Bucket=bucket, Key=key)  # idempotent in S3

    def list_pages(
        self, prefix: str, *, page_size: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        bucket, key_prefix = objectstore.split_uri(prefix)
        size = page_size or self.settings.list_page_size
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix, "MaxKeys": size}
        while True:
            with translated("list", prefix):
                page = self.client.list_objects_v2(**request)
            yield [_info(bucket, item) for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]


def _info(bucket: str, item: dict[str, Any]) -> ObjectInfo:
    key = item["Key"]
    return ObjectInfo(
        f"s3://{bucket}/{key}", key, item["Size"], item["ETag"].strip('"'), item["LastModified"]
    )


@contextlib.contextmanager
def translated(op: Op, uri: str) -> Iterator[None]:
    """Turn boto errors into ingestflow's: credentials and bad requests are permanent
    ``ConfigError``s, a missing object ``SourceNotFoundError``, the rest transient."""
    from botocore import exceptions as bx

    try:
        yield
    except IngestError:
        raise
    except bx.ClientError as e:
        raise _client_error(op, uri, e) from e
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as e:
        raise ConfigError(_NO_CREDENTIALS) from e
    except (bx.NoRegionError, bx.ParamValidationError, bx.ProfileNotFound) as e:
        raise ConfigError(f"S3 client misconfigured for {uri}: {type(e).__name__}") from e
    except (bx.BotoCoreError, ConnectionError) as e:
        raise transient(op, f"S3 unreachable for {uri}: {type(e).__name__}") from e


def _client_error(op: Op, uri: str, e: Any) -> IngestError:
    bucket = objectstore.split_uri(uri)[0]
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _REJECTED:
        return ConfigError(f"S3 credentials rejected for bucket {bucket}: {code}")
    if code in _DENIED:  # a HEAD request's 403 has no body to tell which of the two
        return ConfigError(f"S3 credentials rejected or access denied for bucket {bucket}: {code}")
    if code == "NoSuchBucket":
        return SourceNotFoundError(f"S3 bucket {bucket} does not exist")
    if code in _MISSING:
        return SourceNotFoundError(f"not found: {uri}")
    if code in _RETRY or status >= 500 or status == 429:
        return transient(op, f"S3 error for {uri}: {code or status} (will retry)")
    return ConfigError(f"S3 rejected the request for {uri}: {code or status}")


def aws_from_env(
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


def s3_store_with(settings: StoreSettings, creds: Any) -> S3Store:
    store = S3Store(settings)
    store.client = s3_client(with_store_settings(creds, settings))  # this block, not settings'
    return store


S3_CREDENTIALS = objectstore.BlockCredentials(
    "aws-credentials",
    "INGESTFLOW_STORE_S3_BLOCK",
    carried_as="credentials",
    holds=lambda c: hasattr(c, "get_s3_client"),
    label="S3",
    from_env=aws_from_env,
    store_with=s3_store_with,
)
S3 = objectstore.StoreKind(open=per_settings(S3Store), credentials=S3_CREDENTIALS)
