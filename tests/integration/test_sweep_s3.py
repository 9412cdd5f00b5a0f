"""Sweeping an S3 prefix on moto_server: new, changed, touched, deleted, and the deletion guard.

The S3 store is configured as a user would: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
plus ``INGESTFLOW_STORE_S3_ENDPOINT_URL`` and ``_REGION``. The bucket is changed from outside,
through a separate boto3 client, as another tool would change it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import reset_caches
from tests.support.db import consistency_problems, document_rows, statuses
from tests.support.emulators import BUCKET, MOTO_REGION, Emulator, make_store_target


@dataclass
class Bucket:
    """A prefix of the test bucket, and a client that changes it from outside."""

    prefix: str  # s3://ingestflow-test/run-.../
    client: Any
    emulator: Emulator

    def key(self, name: str) -> str:
        return self.prefix.split("/", 3)[3] + name

    def put(self, name: str, body: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=self.key(name), Body=body)

    def get(self, name: str) -> bytes:
        return bytes(self.client.get_object(Bucket=BUCKET, Key=self.key(name))["Body"].read())

    def head(self, name: str) -> dict[str, Any]:
        return dict(self.client.head_object(Bucket=BUCKET, Key=self.key(name)))

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=self.key(name))


def admin_client(emu: Emulator, service: str = "s3") -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=emu.endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id=emu.extra["key_id"],
        aws_secret_access_key=emu.extra["secret"],
    )


@pytest.fixture
def bucket(request: pytest.FixtureRequest, pipeline, collection: str) -> Iterator[Bucket]:
    """Ten documents under a fresh prefix; the environment points the S3 store at moto."""
    targets = make_store_target(request, "s3")  # sets AWS_* and INGESTFLOW_STORE_S3_*
    target = next(targets)
    reset_caches()
    assert target.emulator is not None
    b = Bucket(target.base, admin_client(target.emulator), target.emulator)
    for i in range(10):
        b.put(f"doc-{i}.txt", f"Document {i} of {collection} about sweeping.".encode())
    yield b
    next(targets, None)
    reset_caches()


def sweep(bucket: Bucket, collection: str, **kwargs: Any):
    from flows import sweep_bucket

    return sweep_bucket(bucket.prefix, collection=collection, **kwargs)


def test_first_sweep_adds_everything_and_second_changes_nothing(pipeline, collection, bucket):
    first = sweep(bucket, collection)
    embedded = pipeline.stats().texts_embedded

    second = sweep(bucket, collection)

    assert (first.listed, first.added, first.deleted, first.failed) == (10, 10, 0, [])
    assert (second.listed, second.added, second.updated, second.unchanged) == (10, 0, 0, 10)
    assert pipeline.stats().texts_embedded == embedded
    rows = document_rows(collection)
    assert sorted(rows) == [f"{bucket.prefix}doc-{i}.txt" for i in range(10)]
    assert all(r["source_etag"] for r in rows.values())
    assert consistency_problems(collection) == []


def test_changed_touched_and_deleted_objects(pipeline, collection, bucket):
    sweep(bucket, collection)
    bucket.put("doc-1.txt", f"New words about tide pools for {collection}.".encode())
    # Identical bytes put again: the same ETag and a new LastModified, so the object is
    # fetched and found unchanged by its sha256.
    bucket.put("doc-2.txt", bucket.get("doc-2.txt"))
    # A metadata-only copy onto itself: a later LastModified, the same ETag and size.
    before = bucket.head("doc-4.txt")["LastModified"]
    bucket.client.copy_object(
        Bucket=BUCKET,
        Key=bucket.key("doc-4.txt"),
        CopySource={"Bucket": BUCKET, "Key": bucket.key("doc-4.txt")},
        MetadataDirective="REPLACE",
        Metadata={"reviewed": "yes"},
    )
    assert bucket.head("doc-4.txt")["LastModified"] > before
    # Identical bytes as a multipart upload: a new ETag ("...-1"), so the sweep fetches the
    # object, and the sha256 dedupe finds it unchanged.
    multipart_etag = _put_multipart(bucket, "doc-5.txt", bucket.get("doc-5.txt"))
    bucket.delete("doc-3.txt")
    bucket.put("doc-new.txt", f"A brand new document for {collection}.".encode())
    embedded = pipeline.stats().texts_embedded

    report = sweep(bucket, collection)

    assert (report.listed, report.added, report.updated, report.deleted) == (10, 1, 1, 1)
    assert report.unchanged == 8  # five untouched plus doc-2, doc-4 and doc-5
    assert report.failed == []
    assert pipeline.stats().texts_embedded - embedded == 2  # doc-1 and doc-new only
    rows = document_rows(collection)
    assert statuses(collection)["doc-3.txt"] == "deleted"
    assert rows[bucket.prefix + "doc-5.txt"]["source_etag"] == multipart_etag
    assert consistency_problems(collection) == []

    again = sweep(bucket, collection)
    assert (again.listed, again.unchanged, again.added, again.updated) == (10, 10, 0, 0)


def test_mass_deletion_is_refused(pipeline, collection, bucket):
    from flows.sweep import SweepGuardError

    sweep(bucket, collection)
    for i in range(5):
        bucket.delete(f"doc-{i}.txt")

    with pytest.raises(SweepGuardError, match="refusing to delete 5 of 10"):
        sweep(bucket, collection, max_delete_fraction=0.2)

    assert "deleted" not in statuses(collection).values()
    assert consistency_problems(collection) == []
    report = sweep(bucket, collection, max_delete_fraction=0.5)
    assert report.deleted == 5
    assert sorted(n for n, s in statuses(collection).items() if s == "deleted") == [
        f"doc-{i}.txt" for i in range(5)
    ]
    assert consistency_problems(collection) == []


def test_credentials_revoked_mid_listing_delete_nothing(pipeline, collection, bucket, monkeypatch):
    """The sweep's own access key is deleted after the first page: S3 refuses the next page,
    and even with deletions allowed without limit, nothing is retired."""
    from flows.sweep import SweepGuardError
    from storage.stores.s3 import S3Store

    iam = admin_client(bucket.emulator, "iam")
    user = f"sweeper-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    allow = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [allow]})
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=policy)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    reset_caches()
    sweep(bucket, collection)
    for i in range(6, 10):
        bucket.delete(f"doc-{i}.txt")  # unlisted by the failed sweep either way

    real = S3Store.list_pages

    def revoked_after_first_page(self, prefix, *, page_size=None):
        pages = real(self, prefix, page_size=page_size)
        yield next(pages)
        iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
        yield from pages

    monkeypatch.setattr(S3Store, "list_pages", revoked_after_first_page)

    with pytest.raises(SweepGuardError) as raised:
        sweep(bucket, collection, page_size=3, max_delete_fraction=1.0)

    reason = raised.value.reason
    assert "failed after 3 objects" in reason and "S3 credentials rejected" in reason, reason
    assert "kept 7 documents that were not listed" in reason, reason
    assert key["SecretAccessKey"] not in reason
    assert set(statuses(collection).values()) <= {"indexed", "unchanged"}
    assert consistency_problems(collection) == []


def _put_multipart(bucket: Bucket, name: str, body: bytes) -> str:
    """Upload ``body`` as a one-part multipart upload; returns the new ETag."""
    client, key = bucket.client, bucket.key(name)
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=body)
    done = client.complete_multipart_upload(
        Bucket=BUCKET,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    return str(done["ETag"]).strip('"')
