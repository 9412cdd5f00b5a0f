"""The object store fails mid-listing: the sweep deletes nothing, and the collection is still
exactly what a clean sweep of the full bucket left.

The failure is real network trouble: the S3 store talks to moto through a proxy that resets
the connection of every listing request after the first page (the client retries, then
gives up). Half of the objects are really gone from the bucket, and the fraction guard is
off, so only the listing guard stands between them and deletion. Once the network heals,
the next sweep retires exactly those.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from tests.conftest import reset_caches
from tests.integration.test_sweep_s3 import Bucket, admin_client
from tests.support.db import consistency_problems, statuses
from tests.support.emulators import make_store_target
from tests.support.fault_proxy import run_fault_proxy
from tests.support.faults import exact_state_problems

# A sweep through a proxy that cuts the store's listing: seconds of retries per case.
pytestmark = pytest.mark.slow

OBJECTS = 12
PAGE = 3


@pytest.fixture
def proxied_bucket(request, pipeline, collection, monkeypatch):
    """A fresh prefix of the test bucket with ``OBJECTS`` documents; the S3 store reaches
    moto only through a fault proxy."""
    targets = make_store_target(request, "s3")
    target = next(targets)
    assert target.emulator is not None
    endpoint = urlparse(target.emulator.endpoint)
    with run_fault_proxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        monkeypatch.setenv("INGESTFLOW_STORE_S3_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # give up on a dead listing sooner
        reset_caches()
        bucket = Bucket(target.base, admin_client(target.emulator), target.emulator)
        for i in range(OBJECTS):
            text = f"Object {i} of {collection}: sweeping while the network fails. " * 20
            bucket.put(f"doc-{i:02d}.txt", text.encode())
        yield bucket, proxy
    next(targets, None)
    reset_caches()


def sweep(bucket: Bucket, collection: str, **kwargs):
    from flows import sweep_bucket

    return sweep_bucket(bucket.prefix, collection=collection, **kwargs)


def test_listing_cut_mid_way_deletes_nothing_and_leaves_the_state_exact(proxied_bucket, collection):
    from flows.sweep import SweepGuardError

    bucket, proxy = proxied_bucket
    clean = f"{collection}_clean"
    assert sweep(bucket, clean).added == OBJECTS  # the reference: a full, clean sweep
    assert sweep(bucket, collection).added == OBJECTS
    gone = [f"doc-{i:02d}.txt" for i in range(0, OBJECTS, 2)]
    for name in gone:
        bucket.delete(name)

    proxy.cut_after(b"list-type=2", 1)  # the first page comes back; the second never does
    with pytest.raises(SweepGuardError) as raised:
        sweep(bucket, collection, page_size=PAGE, max_delete_fraction=1.0)

    reason = raised.value.reason
    print(f"guard: {reason}; the proxy cut {proxy.cut} connection(s)")
    assert f"failed after {PAGE} objects" in reason and "S3 unreachable" in reason, reason
    assert proxy.cut >= 1
    assert "deleted" not in statuses(collection).values()
    assert exact_state_problems(collection, reference=clean) == []

    proxy.heal()
    report = sweep(bucket, collection, page_size=PAGE, max_delete_fraction=1.0)
    assert report.deleted == len(gone)
    assert {n for n, s in statuses(collection).items() if s == "deleted"} == set(gone)
    assert consistency_problems(collection) == []
