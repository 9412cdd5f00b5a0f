"""``ingestflow storage add / ls / presign``, run in process with Typer's CliRunner, against
moto_server, Azurite and gcp-storage-emulator, with blocks on the session's Prefect server."""

from __future__ import annotations

import contextlib
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from storage.objectstore import store_for
from tests.conftest import reset_caches
from tests.support.db import document_rows
from tests.support.emulators import (
    BUCKET,
    MOTO_REGION,
    Emulator,
    StoreTarget,
    azure_connection_string,
    free_port,
    random_key_b64,
    reset_store_settings,
    run_server,
    service_account_file,
    token_endpoint,
)

_BLOCK_TYPE = {
    "s3": "aws-credentials",
    "gs": "gcp-credentials",
    "az": "azure-blob-storage-credentials",
}
_SETTING = {"s3": "S3", "gs": "GCS", "az": "AZURE"}
# What the environment holds for each store: dropped once its block is saved.
_ENV = {
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "INGESTFLOW_STORE_S3_ENDPOINT_URL"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS",),  # STORAGE_EMULATOR_HOST stays: the endpoint
    "az": ("AZURE_STORAGE_CONNECTION_STRING",),
}
cloud_stores = pytest.mark.parametrize("store_target", ["s3", "gs", "az"], indirect=True)
Cli = Callable[..., object]


@pytest.fixture
def cli(prefect_server, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``ingestflow ...`` in this process; blocks go to the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL
    from typer.testing import CliRunner

    from ingestflow.cli import app

    # Set, so the CLI does not look for a server on 127.0.0.1:4200 instead.
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    runner = CliRunner()

    def run(*args: str):
        reset_store_settings()
        return runner.invoke(app, list(args))

    return run


@contextlib.contextmanager
def credentials(target: StoreTarget, *, good: bool) -> Iterator[str]:
    """The store's credential in the environment, right or wrong; yields its secret part.

    GCS: a service-account key file, which a local token endpoint grants or refuses (the
    emulator itself checks nothing). S3 and Azure: the emulator's key, or a wrong one.
    """
    mp, emu = target.monkeypatch, target.emulator
    assert emu is not None
    with contextlib.ExitStack() as stack:
        if target.scheme == "gs":
            url = stack.enter_context(token_endpoint(grant=good))
            path, pem = service_account_file(target.tmp_path, url)
            mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
            lines = [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]
            secret = max(lines, key=len)
        elif target.scheme == "s3":
            secret = emu.extra["secret"] if good else "wrong-" + random_key_b64(24)
            mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
        else:
            secret = emu.extra["key"] if good else random_key_b64()
            mp.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string(emu, secret))
        yield secret


def block_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def saved(slug: str) -> bool:
    from prefect.blocks.core import Block

    try:
        Block.load(slug, _sync=True)
    except ValueError:
        return False
    return True


@cloud_stores
def test_add_saves_a_block_that_alone_reaches_the_bucket(cli, store_target: StoreTarget) -> None:
    scheme, base = store_target.scheme, store_target.base
    with credentials(store_target, good=True) as secret:
        store = store_for(base)
        for name in ("a.txt", "b.txt"):
            store.write(store_target.uri(name), [b"hello"])
        name = block_name()
        slug = f"{_BLOCK_TYPE[scheme]}/{name}"

        result = cli("storage", "add", name, base)

        assert result.exit_code == 0, result.output
        assert f"saved Prefect block {slug}" in result.stdout
        assert f"listed {base}: 2 objects on the first page" in result.stdout
        assert f"INGESTFLOW_STORE_{_SETTING[scheme]}_BLOCK={slug}" in result.stdout
        assert secret not in result.output
        # Only the block now: the provider's variables are gone.
        for var in _ENV[scheme]:
            store_target.monkeypatch.delenv(var)
        store_target.monkeypatch.setenv(f"INGESTFLOW_STORE_{_SETTING[scheme]}_BLOCK", slug)
        reset_store_settings()
        listed = [info.uri for info in store_for(base).list_objects(base)]
        assert listed == [store_target.uri("a.txt"), store_target.uri("b.txt")]

        again = cli("storage", "add", name, base)  # an existing block is reused

    assert again.exit_code == 0, again.output
    assert f"using the saved block {slug}" in again.stdout


@cloud_stores
def test_add_with_a_wrong_credential_is_one_line_and_saves_nothing(
    cli, store_target: StoreTarget
) -> None:
    scheme = store_target.scheme
    expected = {"s3": "S3", "gs": "GCS", "az": "Azure"}[scheme] + " credentials rejected"
    with credentials(store_target, good=False) as secret:
        name = block_name()
        result = cli("storage", "add", name, store_target.base)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {expected}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert secret not in result.output
    assert not saved(f"{_BLOCK_TYPE[scheme]}/{name}")


@pytest.mark.parametrize("store_target", ["s3"], indirect=True)
def test_add_explains_what_is_missing(cli, store_target: StoreTarget) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        store_target.monkeypatch.delenv(var)
    cases = {
        ("storage", "add", block_name(), store_target.base): "no S3 credentials to save: set",
        ("storage", "add", "Not A Name", store_target.base): "lowercase letters, digits",
        ("storage", "add", block_name(), "/tmp/folder"): "takes az://, gs:// or s3:// URIs",
        ("storage", "add", block_name(), "gs://b/", "--region", "x"): "apply to s3:// only",
    }
    for args, message in cases.items():
        result = cli(*args)
        assert result.exit_code == 1 and message in result.stderr, (args, result.output)


@pytest.mark.parametrize("store_target", ["s3"], indirect=True)
def test_ls_lists_in_key_order_and_stops_at_the_limit(cli, store_target: StoreTarget) -> None:
    store = store_for(store_target.base)
    for i in range(5):
        store.write(store_target.uri(f"docs/{i}.txt"), [b"x" * (i + 1)])

    everything = cli("storage", "ls", store_target.uri("docs/"))
    limited = cli("storage", "ls", store_target.uri("docs/"), "--limit", "3")
    nothing = cli("storage", "ls", store_target.uri("nothing-here/"))

    assert everything.exit_code == 0, everything.output
    rows = [line.split("\t") for line in everything.stdout.splitlines()]
    assert [(uri, size) for uri, size, _ in rows] == [
        (store_target.uri(f"docs/{i}.txt"), str(i + 1)) for i in range(5)
    ]
    assert all(modified.endswith("Z") for *_, modified in rows)
    assert everything.stderr == ""
    assert limited.exit_code == 0 and len(limited.stdout.splitlines()) == 3
    assert "stopped at --limit 3" in limited.stderr
    assert nothing.exit_code == 0 and nothing.stdout == "" and "no objects" in nothing.stderr


# presigned uploads ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_moto() -> Iterator[Emulator]:
    """A moto_server without authentication: in auth mode moto cannot read the query-string
    signature of a presigned URL (it answers 500), and without it checks no signature."""
    import boto3

    port = free_port()
    cmd = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    with run_server("moto-open", cmd, port) as emu:
        emu.extra = {"key_id": "AKIAPRESIGNTESTKEY01", "secret": random_key_b64(30)}
        boto3.client(
            "s3",
            endpoint_url=emu.endpoint,
            region_name=MOTO_REGION,
            aws_access_key_id=emu.extra["key_id"],
            aws_secret_access_key=emu.extra["secret"],
        ).create_bucket(Bucket=BUCKET)
        yield emu


def test_a_presigned_put_lands_in_the_bucket_and_the_next_sweep_ingests_it(
    pipeline, cli, collection, open_moto: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import sweep_bucket

    key_id, secret = open_moto.extra["key_id"], open_moto.extra["secret"]
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "INGESTFLOW_STORE_S3_BLOCK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("INGESTFLOW_STORE_S3_ENDPOINT_URL", open_moto.endpoint)
    monkeypatch.setenv("INGESTFLOW_STORE_S3_REGION", MOTO_REGION)
    reset_caches()
    prefix = f"s3://{BUCKET}/inbox-{uuid.uuid4().hex[:8]}/"
    uri = prefix + "field notes.txt"

    result = cli("storage", "presign", uri, "--expires", "600")

    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}" == open_moto.endpoint
    assert parts.path == f"/{BUCKET}/{prefix.split('/')[3]}/field%20notes.txt"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "600"
    assert query["X-Amz-Credential"].startswith(f"{key_id}/")
    assert secret not in url
    body = f"Field notes for {collection}: the heron came back.".encode()
    # A content type of its own: urllib's default (a form) is parsed away by moto's server.
    request = urllib.request.Request(
        url, data=body, method="PUT", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (a local URL)
        assert response.status == 200

    fetched: list[bytes] = []
    store_for(uri).read_into(uri, fetched.append)
    assert b"".join(fetched) == body
    report = sweep_bucket(prefix, collection=collection)
    assert (report.listed, report.added, report.failed) == (1, 1, [])
    assert document_rows(collection)[uri]["status"] == "indexed"


def test_presign_refuses_other_stores_and_prefixes(cli) -> None:
    for uri, message in {
        f"gs://{BUCKET}/x.pdf": "need an S3-compatible store",
        f"s3://{BUCKET}/folder/": "needs an object key",
    }.items():
        result = cli("storage", "presign", uri)
        assert result.exit_code == 1 and message in result.stderr, result.output
