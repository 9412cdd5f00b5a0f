"""Real object-store emulators for tests: moto_server (S3), gcp-storage-emulator (GCS) and
Azurite (Azure Blob), each a subprocess on a free 127.0.0.1 port, started once a session on
first use and stopped at its end.

``store_target`` gives a test one store, by scheme, with the environment set the way a user
would set it (provider variables plus ``INGESTFLOW_STORE_*``), and a URI prefix of its own.

moto runs with IAM authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``): the first three
requests create a user, its key and an allow-all policy; after that, wrong keys are rejected
as they are by AWS. Azurite checks shared-key signatures. The GCS emulator checks nothing, so
a wrong GCS credential is a service account whose token endpoint (a local server here)
refuses it, which is what Google's endpoint does with a revoked key.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from tests.support.processes import free_port, stop_process

# No test may probe the cloud metadata endpoints (link-local addresses, not loopback) while
# looking for credentials. google-auth reads NO_GCE_CHECK when it is first imported.
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

REPO = Path(__file__).resolve().parents[2]
BUCKET = "ingestflow-test"
MOTO_REGION = "us-east-1"
_STARTUP_TIMEOUT = 60.0


@dataclass
class Emulator:
    """A running emulator: its endpoint and how long it took to accept connections."""

    name: str
    endpoint: str
    startup_seconds: float
    extra: dict[str, str] = field(default_factory=dict)


@contextmanager
def run_server(name: str, cmd: list[str], port: int, env: dict[str, str] | None = None):
    """Run ``cmd`` until it listens on ``port``; stop it (terminate, then kill) at exit."""
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while the server runs)
        prefix=f"ingestflow-{name}-", suffix=".log", delete=False
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        _wait_listening(name, proc, port, Path(log.name))
        yield Emulator(name, f"http://127.0.0.1:{port}", time.monotonic() - started)
    finally:
        stop_process(proc)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def _wait_listening(name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{name} did not listen on port {port} within {_STARTUP_TIMEOUT:.0f} s")


# the emulators --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Emulator]:
    """moto_server with authentication on; ``extra`` holds a valid key pair."""
    import boto3

    port = free_port()
    cmd = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    with run_server("moto", cmd, port, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as emu:
        emu.extra = _moto_user(emu.endpoint)
        s3 = boto3.client(
            "s3",
            endpoint_url=emu.endpoint,
            region_name=MOTO_REGION,
            aws_access_key_id=emu.extra["key_id"],
            aws_secret_access_key=emu.extra["secret"],
        )
        s3.create_bucket(Bucket=BUCKET)
        yield emu


def _moto_user(endpoint: str) -> dict[str, str]:
    """The three unauthenticated requests: a user, its access key and an allow-all policy."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="ingestflow")
    key = iam.create_access_key(UserName="ingestflow")["AccessKey"]
    allow = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [allow]})
    iam.put_user_policy(UserName="ingestflow", PolicyName="all", PolicyDocument=policy)
    return {"key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Emulator]:
    """gcp-storage-emulator, in memory, with the test bucket."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--in-memory",
        "--default-bucket",
        BUCKET,
        "-q",
    ]
    with run_server("gcp-storage-emulator", cmd, port) as emu:
        yield emu


def azurite_blob_command() -> str:
    """The ``azurite-blob`` that scripts/setup.sh installs under .tools/ (or one on PATH)."""
    local = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    found = str(local) if local.exists() else shutil.which("azurite-blob")
    if not found:
        pytest.fail("Azurite is not installed: run scripts/setup.sh (npm install into .tools/)")
    return found


def azurite_account_key(command: str) -> str:
    """Azurite's well-known development account key, read from the installed package."""
    package = Path(command).resolve().parents[1]  # node_modules/azurite/dist/src/...
    for constants in package.rglob("common/utils/constants.js"):
        found = re.search(r'EMULATOR_ACCOUNT_KEY = Buffer\.from\("([^"]+)"', constants.read_text())
        if found:
            return found.group(1)
    pytest.fail(f"Azurite's account key not found under {package}")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Azurite's blob service on a temporary location, with the test container."""
    from azure.storage.blob import BlobServiceClient

    command, port = azurite_blob_command(), free_port()
    location = tmp_path_factory.mktemp("azurite")
    cmd = [
        command,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(location),
        "--loose",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    with run_server("azurite", cmd, port) as emu:
        emu.extra = {"account": "devstoreaccount1", "key": azurite_account_key(command)}
        service = BlobServiceClient.from_connection_string(azure_connection_string(emu))
        service.create_container(BUCKET)
        yield emu


def azure_connection_string(emu: Emulator, key: str | None = None) -> str:
    account = emu.extra["account"]
    key = key or emu.extra["key"]
    return (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint={emu.endpoint}/{account};"
    )


# an OAuth token endpoint for service-account keys ---------------------------------------

_GRANTED = b'{"access_token": "emulator-token", "expires_in": 3600, "token_type": "Bearer"}'
_REFUSED = b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'


@contextmanager
def token_endpoint(*, grant: bool) -> Iterator[str]:
    """A token endpoint that grants every key a token (the GCS emulator ignores it) or,
    like Google's for a revoked key, refuses every key with ``400 invalid_grant``."""

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = _GRANTED if grant else _REFUSED
            self.send_response(200 if grant else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


def service_account_file(folder: Path, token_uri: str) -> tuple[Path, str]:
    """A well-formed service-account key file (fresh RSA key); returns it and its key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "ingestflow-test",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": "tester@ingestflow-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path = folder / "service-account.json"
    path.write_text(json.dumps(info))
    return path, pem


# one store, configured through the environment ------------------------------------------


@dataclass
class StoreTarget:
    """A store under test: a URI prefix of the test's own, and its emulator (if any)."""

    scheme: str
    base: str
    emulator: Emulator | None
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path

    def uri(self, key: str) -> str:
        return self.base + key


_CLEARED = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
    "AZURE_STORAGE_CONNECTION_STRING",
    "INGESTFLOW_STORE_S3_BLOCK",
    "INGESTFLOW_STORE_GCS_BLOCK",
    "INGESTFLOW_STORE_AZURE_BLOCK",
)


def configure_store_env(target: StoreTarget) -> None:
    """Point the store of ``target.scheme`` at its emulator, as a user's environment would."""
    mp, emu = target.monkeypatch, target.emulator
    for name in _CLEARED:
        mp.delenv(name, raising=False)
    # No profile or credentials file of this machine may stand in for the ones set here.
    mp.setenv("AWS_CONFIG_FILE", str(target.tmp_path / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(target.tmp_path / "no-aws-credentials"))
    mp.setenv("CLOUDSDK_CONFIG", str(target.tmp_path / "no-gcloud"))
    if target.scheme == "s3" and emu:
        mp.setenv("AWS_ACCESS_KEY_ID", emu.extra["key_id"])
        mp.setenv("AWS_SECRET_ACCESS_KEY", emu.extra["secret"])
        mp.setenv("INGESTFLOW_STORE_S3_ENDPOINT_URL", emu.endpoint)
        mp.setenv("INGESTFLOW_STORE_S3_REGION", MOTO_REGION)
    elif target.scheme == "gs" and emu:
        mp.setenv("STORAGE_EMULATOR_HOST", emu.endpoint)
        mp.setenv("INGESTFLOW_STORE_GCS_PROJECT", "ingestflow-test")
    elif target.scheme == "az" and emu:
        mp.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string(emu))
    reset_store_settings()


def reset_store_settings() -> None:
    """Make the next ``store_for`` read the environment again."""
    from ingestflow.core.settings import get_settings

    get_settings.cache_clear()


_EMULATOR_FIXTURE = {"s3": "moto_server", "gs": "gcs_emulator", "az": "azurite"}


def make_store_target(request: pytest.FixtureRequest, scheme: str) -> Iterator[StoreTarget]:
    """Build a ``StoreTarget`` for ``scheme``, starting its emulator on first use."""
    mp = request.getfixturevalue("monkeypatch")
    tmp_path: Path = request.getfixturevalue("tmp_path")
    fixture = _EMULATOR_FIXTURE.get(scheme)
    emulator = request.getfixturevalue(fixture) if fixture else None
    run = f"run-{uuid.uuid4().hex[:10]}/"
    if scheme == "file":
        base = (tmp_path / "store").as_uri() + "/" + run
    else:
        base = f"{scheme}://{BUCKET}/{run}"
    target = StoreTarget(scheme, base, emulator, mp, tmp_path)
    configure_store_env(target)
    yield target
    reset_store_settings()


@pytest.fixture
def store_target(request: pytest.FixtureRequest) -> Iterator[StoreTarget]:
    """Parametrize indirectly with a scheme: ``file``, ``s3``, ``gs`` or ``az``."""
    yield from make_store_target(request, request.param)


def random_key_b64(n: int = 64) -> str:
    """A random base64 key, shaped like an Azure account key."""
    return base64.b64encode(os.urandom(n)).decode()
