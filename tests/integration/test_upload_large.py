"""Large and hostile uploads through the real upload route (correctness only, no timings).

The API runs in-process on the Prefect backend with served deployments (the ``api``
fixture); the upload store is the module's local upload folder. Bodies are non-repeating
bytes (SHAKE-256 output), so a dropped, repeated or reordered chunk changes the digest.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from storage.objectstore import local_path
from tests.conftest import reset_caches
from tests.integration.test_api import make_key
from tests.support.db import document_rows

MIB = 1024 * 1024
# Not a multiple of any chunk size on the way (64 KiB network reads, 1 MiB store blocks).
LARGE_BYTES = 40 * MIB + 12_345


@pytest.fixture
def tenant_key() -> dict[str, str]:
    return make_key(f"tenant-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def upload_dir(service_env) -> Path:
    return local_path(service_env["INGESTFLOW_API_UPLOAD_URI"]).resolve()


def noise(size: int, seed: str) -> bytes:
    """``size`` non-repeating pseudo-random bytes determined by ``seed``."""
    return hashlib.shake_256(seed.encode()).digest(size)


def files_under(folder: Path) -> set[Path]:
    """Every file below ``folder``, hidden temporary files included."""
    return {p for p in folder.rglob("*") if p.is_file()}


def stored_path(document: dict[str, Any]) -> Path:
    return local_path(document["source_uri"]).resolve()


def upload(api: TestClient, key: dict[str, str], collection: str, file: Any, **kw: Any) -> Any:
    return api.post(
        f"/v1/collections/{collection}/documents", headers=key, files={"file": file}, **kw
    )


def cancel_jobs(api: TestClient, key: dict[str, str], job_ids: list[str]) -> None:
    """Spare the shared machine the runs nobody waits for (best effort: a run may be done)."""
    for job_id in job_ids:
        api.post(f"/v1/jobs/{job_id}/cancel", headers=key)


def test_large_upload_is_stored_byte_identical(api, tenant_key, collection, upload_dir, tmp_path):
    body = noise(LARGE_BYTES, collection)
    digest = hashlib.sha256(body).hexdigest()
    source = tmp_path / "large.bin"
    source.write_bytes(body)
    del body

    with source.open("rb") as fh:
        resp = upload(
            api, tenant_key, collection, (f"{collection}.bin", fh, "application/octet-stream")
        )
    assert resp.status_code == 202, resp.text
    doc = resp.json()["document"]
    cancel_jobs(api, tenant_key, [resp.json()["job_id"]])

    path = stored_path(doc)
    assert path.is_relative_to(upload_dir)
    assert path.name == f"{collection}.bin"
    assert path.stat().st_size == LARGE_BYTES
    assert _sha256_file(path) == digest
    assert doc["size_bytes"] == LARGE_BYTES  # the summary carries no sha256; the row does
    [row] = document_rows(collection).values()
    assert (str(row["id"]), row["source_uri"]) == (doc["id"], doc["source_uri"])
    assert (row["sha256"], row["size_bytes"]) == (digest, LARGE_BYTES)
    assert not [p for p in files_under(upload_dir) if p.name.startswith(".ingestflow-tmp-")]


def test_upload_over_the_limit_is_413_and_leaves_nothing(
    api, tenant_key, collection, upload_dir, monkeypatch
):
    limit = 1 * MIB
    monkeypatch.setenv("INGESTFLOW_API_MAX_UPLOAD_BYTES", str(limit))
    reset_caches()
    before = files_under(upload_dir)

    # One byte over: the Content-Length check lets it in (multipart framing is allowed for),
    # so the limit is enforced while the body streams into the store.
    over = upload(
        api,
        tenant_key,
        collection,
        ("over.bin", noise(limit + 1, "over"), "application/octet-stream"),
    )
    # Far over: refused from Content-Length before the body is read.
    far = upload(
        api,
        tenant_key,
        collection,
        ("far.bin", noise(4 * limit, "far"), "application/octet-stream"),
    )
    for resp in (over, far):
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"]["code"] == "too_large"
    assert files_under(upload_dir) == before
    assert document_rows(collection) == {}

    # Exactly the limit is accepted, byte for byte.
    exact = noise(limit, "exact")
    ok = upload(api, tenant_key, collection, ("exact.bin", exact, "application/octet-stream"))
    assert ok.status_code == 202, ok.text
    cancel_jobs(api, tenant_key, [ok.json()["job_id"]])
    assert stored_path(ok.json()["document"]).read_bytes() == exact
    assert len(document_rows(collection)) == 1


# Names as a browser sends them: httpx applies the HTML5 form encoding browsers use
# (`"` -> %22, control characters -> %XX), so the server meets a NUL as the text "%00".
BROWSER_NAMES = {
    "dotdot-slash": "../../etc/passwd",
    "dotdot-backslash": "..\\..\\win.ini",
    "absolute": "/etc/passwd",
    "windows-full-path": "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "control-chars": "ctl\x01\x07\x1b[31m\r\n\tname.txt",
    "long-1000": "n" * 996 + ".txt",
    "dot": ".",
    "dotdot": "..",
    "hash-and-query": "report#1?.txt",
    "bidi-override": "invoice\u202etxt.exe",
}

# Percent-encoded names are passed on as sent (api/multipart.py); the upload store's URI
# quotes them, so "%2f" must stay the three characters "%2f" on disk, never a "/".
PERCENT_NAMES = {
    "nul-byte": "a\x00b.txt",  # arrives as "a%00b.txt"
    "percent-dotdot": "%2e%2e%2f%2e%2e%2f%2e%2e%2f{unique}.txt",
}

# Names as a non-browser client can send them: raw bytes in the Content-Disposition header.
RAW_NAMES = {
    "raw-nul-byte": b"a\x00b.txt",
    "raw-control-chars": b"ctl\x01\x07\x1b\x7f\tname.txt",
    "raw-dotdot-backslash": b"..\\..\\win.ini",
    "raw-utf8-dotdot": "../../ünïcode\u202egpj.exe".encode(),
}


BROWSER_CASES = [
    pytest.param(name, id=case) for case, name in {**BROWSER_NAMES, **PERCENT_NAMES}.items()
]


@pytest.mark.parametrize("raw_name", BROWSER_CASES)
def test_browser_filename_attack_stays_in_the_upload_folder(
    api, tenant_key, collection, upload_dir, raw_name
):
    unique = uuid.uuid4().hex
    name = raw_name.replace("{unique}", unique)
    content = f"filename attack {name!r} in {collection}".encode()
    escaped = upload_dir.parent / f"{unique}.txt"  # where "percent-dotdot" would land
    try:
        resp = upload(api, tenant_key, collection, (name, io.BytesIO(content), "text/plain"))
        _check_contained(api, tenant_key, collection, upload_dir, resp, content)
        assert not escaped.exists()
    finally:
        escaped.unlink(missing_ok=True)


@pytest.mark.parametrize("raw_name", [pytest.param(v, id=k) for k, v in RAW_NAMES.items()])
def test_raw_filename_attack_stays_in_the_upload_folder(
    api, tenant_key, collection, upload_dir, raw_name
):
    content = f"raw filename attack {raw_name!r} in {collection}".encode()
    body, content_type = _multipart(raw_name, content, "text/plain")
    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers={**tenant_key, "Content-Type": content_type},
        content=body,
    )
    _check_contained(api, tenant_key, collection, upload_dir, resp, content)


def _check_contained(
    api: TestClient,
    key: dict[str, str],
    collection: str,
    upload_dir: Path,
    resp: Any,
    content: bytes,
) -> tuple[Path, dict[str, Any]] | None:
    """A 4xx, or a 2xx whose file sits strictly inside the upload folder with the bytes sent;
    returns the stored file and its document row (None after a 4xx)."""
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert document_rows(collection) == {}
        return None
    assert resp.status_code in (200, 202), resp.text
    cancel_jobs(api, key, [resp.json()["job_id"]])
    doc = resp.json()["document"]
    path = stored_path(doc)
    assert path.is_relative_to(upload_dir) and path != upload_dir, path
    assert path.read_bytes() == content
    [row] = document_rows(collection).values()
    assert row["source_uri"] == doc["source_uri"]
    name = row["metadata"]["filename"]
    assert name and len(name.encode()) <= 200
    assert not any(ch in name for ch in "/\\\x00\r\n")
    return path, row


# The file on disk carries the cleaned name the document records (percent-quoted in the
# store's URI, so "%0A" stays text and "#" or "?" do not cut it).
NAME_CASES = [
    pytest.param("résumé 2024 (final).txt", id="unicode-and-spaces"),
    pytest.param(BROWSER_NAMES["control-chars"], id="control-chars"),
    pytest.param(BROWSER_NAMES["hash-and-query"], id="hash-and-query"),
]


@pytest.mark.parametrize("raw_name", NAME_CASES)
def test_stored_file_has_the_recorded_name(api, tenant_key, collection, upload_dir, raw_name):
    content = f"stored name {raw_name!r} in {collection}".encode()
    resp = upload(api, tenant_key, collection, (raw_name, io.BytesIO(content), "text/plain"))
    stored = _check_contained(api, tenant_key, collection, upload_dir, resp, content)
    assert stored is not None
    path, row = stored
    assert path.name == row["metadata"]["filename"]


def _multipart(filename: bytes, content: bytes, content_type: str) -> tuple[bytes, str]:
    """A one-file form as a browser lays it out, with ``filename`` as raw header bytes."""
    boundary = f"----WebKitFormBoundary{uuid.uuid4().hex[:16]}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename
        + f'"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
    )
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + content + tail, f"multipart/form-data; boundary={boundary}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in _blocks(fh):
            digest.update(block)
    return digest.hexdigest()


def _blocks(fh: Any, size: int = MIB) -> Iterator[bytes]:
    while block := fh.read(size):
        yield block
