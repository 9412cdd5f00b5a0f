"""Presigned PUT URLs: a client uploads a new document straight into an S3-compatible bucket,
and the next sweep of its prefix ingests it.

The URL is signed with the S3 store's own credentials and endpoint (the same client
construction as ``storage.stores.s3``), with Signature Version 4, which AWS, MinIO and R2 all
accept. Signing happens locally: no request is sent, so a URL for a wrong key is refused only
when it is used.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ingestflow.core.errors import ConfigError
from ingestflow.core.settings import Settings, get_settings
from storage.objectstore import scheme_of, split_uri
from storage.stores.s3 import aws_credentials, s3_client, translated

MAX_EXPIRES = 7 * 24 * 3600  # SigV4's limit


def presign_put(uri: str, *, expires: int = 3600) -> str:
    """A URL that accepts one HTTP PUT of the object at ``uri`` for ``expires`` seconds."""
    if scheme_of(uri) != "s3":
        raise ConfigError(
            f"presigned uploads need an S3-compatible store (s3://bucket/key), not {uri}"
        )
    bucket, key = split_uri(uri)
    if not key or key.endswith("/"):
        raise ConfigError(f"a presigned upload needs an object key, not a prefix: {uri}")
    if not 1 <= expires <= MAX_EXPIRES:
        raise ConfigError(f"expiry must be between 1 and {MAX_EXPIRES} seconds, not {expires}")
    with translated("write", uri):
        url = _signer(get_settings()).generate_presigned_url(
            "put_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=expires,
            HttpMethod="PUT",
        )
    return str(url)


@lru_cache(maxsize=1)
def _signer(settings: Settings) -> Any:
    """The S3 client that signs, one per settings snapshot; SigV4 unless the block's own
    client ``config`` chooses another signature version."""
    from botocore.config import Config

    return s3_client(aws_credentials(settings.store), Config(signature_version="s3v4"))
