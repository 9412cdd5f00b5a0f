"""The ObjectStore contract, run against every store: a local folder, S3 (moto_server), GCS
(gcp-storage-emulator) and Azure Blob (Azurite), each configured through the environment
the way a user would configure it, and reached through the registry (``store_for``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import random
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingestflow.core.errors import ConfigError, SourceNotFoundError, TooLargeError, is_permanent
from storage import objectstore
from storage.objectstore import ObjectStore, store_for, write_async
from storage.stores.local import TMP_PREFIX
from tasks.fetch import fetch_source
from tests.support.emulators import (
    BUCKET,
    MOTO_REGION,
    Emulator,
    StoreTarget,
    azure_connection_string,
    random_key_b64,
    reset_store_settings,
    service_account_file,
    token_endpoint,
)

MIB = 1024 * 1024
ALL = ["file", "s3", "gs", "az"]
CLOUD = ["s3", "gs", "az"]
all_stores = pytest.mark.parametrize("store_target", ALL, indirect=True)
cloud_stores = pytest.mark.parametrize("store_target", CLOUD, indirect=True)


def _store(target: StoreTarget) -> ObjectStore:
    return store_for(target.base)


def _read(store: ObjectStore, uri: str) -> bytes:
    blocks: list[bytes] = []
    store.read_into(uri, blocks.append)
    return b"".join(blocks)


class _HashingSink:
    def __init__(self) -> None:
        self.digest, self.size, self.largest = hashlib.sha256(), 0, 0

    def __call__(self, block: bytes) -> None:
        self.digest.update(block)
        self.size += len(block)
        self.largest = max(self.largest, len(block))


class _RssPeak:
    """Samples this process's resident memory every few ms: the peak growth over the start."""

    def __init__(self) -> None:
        self.growth = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    def _sample(self, baseline: int) -> None:
        while not self._stop.wait(0.005):
            self.growth = max(self.growth, self._rss() - baseline)

    def __enter__(self) -> _RssPeak:
        self._thread = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# the contract -----------------------------------------------------------------------------


@all_stores
def test_streaming_round_trip_in_bounded_memory(store_target: StoreTarget) -> None:
    """64 MiB written from a generator and read back, holding well under that in memory:
    about two upload parts (5 MiB each here, S3's smallest) while writing, a few blocks
    while reading."""
    store_target.monkeypatch.setenv("INGESTFLOW_STORE_PART_BYTES", str(5 * MIB))
    reset_store_settings()
    store, uri = _store(store_target), store_target.uri("big/object.bin")
    rng, expected = random.Random(7), hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            chunk = rng.randbytes(MIB)
            expected.update(chunk)
            yield chunk

    store.write(store_target.uri("big/warm-up"), [b"x"])  # client and imports: not per-object
    store.read_into(store_target.uri("big/warm-up"), lambda block: None)
    with _RssPeak() as writing:
        written = store.write(uri, chunks(), max_bytes=100 * MIB)
    sink = _HashingSink()
    with _RssPeak() as reading:
        store.read_into(uri, sink)
    print(
        f"{store_target.scheme}: RSS +{writing.growth / MIB:.1f} MiB writing,"
        f" +{reading.growth / MIB:.1f} MiB reading 64 MiB"
    )
    assert (written.size, written.sha256) == (64 * MIB, expected.hexdigest())
    assert (sink.size, sink.digest.hexdigest()) == (64 * MIB, expected.hexdigest())
    assert sink.largest <= objectstore.CHUNK_BYTES
    assert writing.growth < 24 * MIB, f"write grew RSS by {writing.growth / MIB:.0f} MiB"
    assert reading.growth < 24 * MIB, f"read grew RSS by {reading.growth / MIB:.0f} MiB"
    [listed] = store.list_objects(store_target.uri("big/obj"))
    assert (listed.size, listed.etag) == (64 * MIB, written.etag)


@all_stores
def test_a_write_over_the_size_limit_leaves_nothing(store_target: StoreTarget) -> None:
    store, uri = _store(store_target), store_target.uri("limited.bin")
    with pytest.raises(TooLargeError) as raised:
        store.write(uri, (b"x" * MIB for _ in range(12)), max_bytes=10 * MIB)
    assert "10,485,760 bytes" in raised.value.reason and is_permanent(raised.value)
    assert not store.exists(uri)
    assert list(store.list_objects(store_target.base)) == []
    assert _leftovers(store_target) == []


@all_stores
def test_a_failed_overwrite_keeps_the_old_object(store_target: StoreTarget) -> None:
    store, uri = _store(store_target), store_target.uri("doc.txt")
    store.write(uri, [b"version one"])

    def broken() -> Iterator[bytes]:
        yield b"y" * (9 * MIB)  # more than one part: the upload has begun
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        store.write(uri, broken())
    assert _read(store, uri) == b"version one"
    assert _leftovers(store_target) == []


@all_stores
def test_listing_comes_in_pages_in_key_order(store_target: StoreTarget) -> None:
    store = _store(store_target)
    started = datetime.now(UTC)
    names = [f"list/obj-{i:02d}.txt" for i in range(25)]
    for i, name in random.Random(1).sample(list(enumerate(names)), len(names)):
        store.write(store_target.uri(name), [b"x" * (i + 1)])
    store.write(store_target.uri("list-sibling.txt"), [b"not under list/"])

    pages = list(store.list_pages(store_target.uri("list/"), page_size=10))
    infos = [info for page in pages for info in page]
    if store_target.scheme != "gs":  # gcp-storage-emulator ignores maxResults: one page
        assert [len(page) for page in pages] == [10, 10, 5]
    assert [info.uri for info in infos] == [store_target.uri(n) for n in names]
    assert [info.size for info in infos] == list(range(1, 26))
    assert all(info.key.endswith(n) for info, n in zip(infos, names, strict=True))
    assert len({info.etag for info in infos}) == 25
    late = datetime.now(UTC) + timedelta(minutes=1)
    assert all(started - timedelta(minutes=1) <= info.modified <= late for info in infos)
    flat = store.list_objects(store_target.uri("list/"), page_size=7)
    assert [i.uri for i in flat] == [i.uri for i in infos]
    assert len(list(store.list_objects(store_target.uri("list")))) == 26  # a string prefix


@all_stores
def test_exists_delete_and_missing_objects(store_target: StoreTarget) -> None:
    store, uri = _store(store_target), store_target.uri("a/b/c.txt")
    assert not store.exists(uri)
    with pytest.raises(SourceNotFoundError):
        store.read_into(uri, lambda block: None)
    written = store.write(uri, [b"hello ", b"world"])
    assert written.sha256 == hashlib.sha256(b"hello world").hexdigest() and written.etag
    assert store.exists(uri) and _read(store, uri) == b"hello world"
    rewritten = store.write(uri, [b"hello again"])
    assert rewritten.etag != written.etag
    store.delete(uri)
    assert not store.exists(uri)
    store.delete(uri)  # deleting what is gone is fine


@all_stores
def test_empty_object_and_async_writer(store_target: StoreTarget) -> None:
    store = _store(store_target)
    empty = store.write(store_target.uri("empty"), iter([]))
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert _read(store, store_target.uri("empty")) == b""

    async def body() -> AsyncIterator[bytes]:
        for part in (b"streamed ", b"from ", b"async"):
            await asyncio.sleep(0)
            yield part

    written = asyncio.run(write_async(store, store_target.uri("async.txt"), body()))
    assert written.size == 19
    assert _read(store, store_target.uri("async.txt")) == b"streamed from async"


@all_stores
def test_fetch_step_accepts_the_scheme(store_target: StoreTarget, tmp_path: Path) -> None:
    store, uri = _store(store_target), store_target.uri("docs/report one.txt")
    store.write(uri, [b"quarterly numbers"])
    dest = tmp_path / "fetched"
    dest.mkdir()
    fetched = fetch_source(uri, dest_dir=dest, max_bytes=1000)
    assert fetched.path.read_bytes() == b"quarterly numbers"
    assert fetched.sha256 == hashlib.sha256(b"quarterly numbers").hexdigest()
    assert fetched.filename == "report one.txt"
    with pytest.raises(TooLargeError):
        fetch_source(uri, dest_dir=dest, max_bytes=5)
    assert list(dest.iterdir()) == [fetched.path]


# credentials ------------------------------------------------------------------------------


@pytest.fixture
def wrong_credential(store_target: StoreTarget) -> Iterator[tuple[str, str]]:
    """Swap the store's credential for a wrong one; yields the secret and the message start.

    S3: the right key id with a wrong secret. GCS: a well-formed service-account key that the
    token endpoint refuses. Azure: a connection string with a wrong account key.
    """
    mp, emu = store_target.monkeypatch, store_target.emulator
    assert emu is not None
    with contextlib.ExitStack() as stack:
        if store_target.scheme == "s3":
            secret = "wrong-" + random_key_b64(24)
            mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
            expected = "S3 credentials rejected"
        elif store_target.scheme == "gs":
            url = stack.enter_context(token_endpoint(grant=False))
            path, secret = service_account_file(store_target.tmp_path, url)
            mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
            expected = "GCS credentials rejected"
        else:
            secret = random_key_b64()
            mp.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string(emu, secret))
            expected = "Azure credentials rejected"
        reset_store_settings()
        yield secret, expected


def _secret_pieces(secret: str) -> list[str]:
    """The secret, or for a PEM key each line of its body."""
    lines = [line for line in secret.splitlines() if line and not line.startswith("-----")]
    return lines or [secret]


@cloud_stores
def test_a_wrong_credential_is_one_clear_config_error(
    store_target: StoreTarget, wrong_credential: tuple[str, str]
) -> None:
    secret, expected = wrong_credential
    store, uri = _store(store_target), store_target.uri("doc.txt")
    attempts = {
        "read": lambda: store.read_into(uri, lambda block: None),
        "write": lambda: store.write(uri, [b"x"]),
        "exists": lambda: store.exists(uri),
        "delete": lambda: store.delete(uri),
        "list": lambda: list(store.list_objects(store_target.base)),
    }
    for op, attempt in attempts.items():
        with pytest.raises(ConfigError) as raised:
            attempt()
        reason = raised.value.reason
        assert reason.startswith(expected) and BUCKET in reason, f"{op}: {reason}"
        assert is_permanent(raised.value)
        shown = "".join(traceback.format_exception(raised.value))  # with every chained cause
        assert not any(piece in shown for piece in _secret_pieces(secret)), f"{op} leaks"
    # A failed upload must stay failed: nothing left for garbage collection to finish (a
    # GCS writer left open would retry its upload from __del__).
    started = time.monotonic()
    gc.collect()
    assert time.monotonic() - started < 5


_MISSING_HINT = {
    "s3": ("AWS_ACCESS_KEY_ID", "INGESTFLOW_STORE_S3_BLOCK"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS", "INGESTFLOW_STORE_GCS_BLOCK"),
    "az": ("AZURE_STORAGE_CONNECTION_STRING", "INGESTFLOW_STORE_AZURE_BLOCK"),
}


@cloud_stores
def test_missing_credentials_name_what_to_set(store_target: StoreTarget) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "STORAGE_EMULATOR_HOST",
        "AZURE_STORAGE_CONNECTION_STRING",
    ):
        store_target.monkeypatch.delenv(name, raising=False)
    reset_store_settings()
    with pytest.raises(ConfigError) as raised:
        list(_store(store_target).list_objects(store_target.base))
    assert all(hint in raised.value.reason for hint in _MISSING_HINT[store_target.scheme])


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_a_malformed_credential_is_named(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text('{"type": "service_account", "private_key": "s3cr3t-key-material"')
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountKey=s3cr3t-key-material")
    reset_store_settings()
    with pytest.raises(ConfigError) as raised:
        store_for(f"{scheme}://{BUCKET}/x").exists(f"{scheme}://{BUCKET}/x")
    reset_store_settings()
    expected = str(key_file) if scheme == "gs" else "connection string is malformed"
    assert expected in raised.value.reason
    assert "s3cr3t" not in "".join(traceback.format_exception(raised.value))


# credentials from Prefect blocks ----------------------------------------------------------


def _save_block(target: StoreTarget, stack: contextlib.ExitStack, name: str) -> str:
    """Save the emulator's credentials as a Prefect block and take them out of the
    environment; returns the setting that names the block."""
    mp, emu = target.monkeypatch, target.emulator
    assert emu is not None
    if target.scheme == "s3":
        from prefect_aws import AwsClientParameters, AwsCredentials

        AwsCredentials(
            aws_access_key_id=emu.extra["key_id"],
            aws_secret_access_key=emu.extra["secret"],
            region_name=MOTO_REGION,
            aws_client_parameters=AwsClientParameters(endpoint_url=emu.endpoint),
        ).save(name)
        for var in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "INGESTFLOW_STORE_S3_ENDPOINT_URL",
        ):
            mp.delenv(var)
        return "INGESTFLOW_STORE_S3_BLOCK"
    if target.scheme == "gs":
        from prefect_gcp import GcpCredentials

        url = stack.enter_context(token_endpoint(grant=True))
        path, _ = service_account_file(target.tmp_path, url)
        GcpCredentials(service_account_info=path.read_text()).save(name)
        return "INGESTFLOW_STORE_GCS_BLOCK"  # STORAGE_EMULATOR_HOST stays: it is the endpoint
    from prefect_azure import AzureBlobStorageCredentials

    AzureBlobStorageCredentials(connection_string=azure_connection_string(emu)).save(name)
    mp.delenv("AZURE_STORAGE_CONNECTION_STRING")
    return "INGESTFLOW_STORE_AZURE_BLOCK"


@cloud_stores
def test_credentials_from_a_named_prefect_block(
    store_target: StoreTarget, prefect_server: None
) -> None:
    name = "ingestflow-test-" + store_target.base.rsplit("/", 2)[-2]
    with contextlib.ExitStack() as stack:
        setting = _save_block(store_target, stack, name)
        store_target.monkeypatch.setenv(setting, name)
        reset_store_settings()
        store, uri = _store(store_target), store_target.uri("via-block.txt")
        store.write(uri, [b"credentials from a block"])
        assert _read(store, uri) == b"credentials from a block"
        assert [i.uri for i in store.list_objects(store_target.base)] == [uri]


@cloud_stores
def test_a_missing_block_is_a_config_error(store_target: StoreTarget, prefect_server: None) -> None:
    setting = {"s3": "S3", "gs": "GCS", "az": "AZURE"}[store_target.scheme]
    store_target.monkeypatch.setenv(f"INGESTFLOW_STORE_{setting}_BLOCK", "no-such-block")
    reset_store_settings()
    with pytest.raises(ConfigError) as raised:
        _store(store_target).exists(store_target.uri("x"))
    assert "no-such-block" in raised.value.reason
    assert f"INGESTFLOW_STORE_{setting}_BLOCK" in raised.value.reason


# helpers ----------------------------------------------------------------------------------


def _leftovers(target: StoreTarget) -> list[str]:
    """What a failed write could leave that a listing would not show: temporary files
    (local) and unfinished multipart uploads (S3). GCS cancels its resumable session, and
    Azure's staged blocks are never visible and expire by themselves."""
    if target.scheme == "file":
        folder = objectstore.local_path(target.base)
        return [p.name for p in folder.rglob(TMP_PREFIX + "*")] if folder.exists() else []
    if target.scheme == "s3":
        client = getattr(_store(target), "client")  # noqa: B009 (not in the protocol)
        prefix = objectstore.split_uri(target.base)[1]
        uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        return [u["Key"] for u in uploads.get("Uploads", [])]
    return []


def test_emulators_start_quickly(
    moto_server: Emulator, gcs_emulator: Emulator, azurite: Emulator
) -> None:
    """Not a contract: records how long each emulator took to start (shown with -rA)."""
    for emu in (moto_server, gcs_emulator, azurite):
        print(f"{emu.name} started in {emu.startup_seconds:.2f} s")
        assert emu.startup_seconds < 60
