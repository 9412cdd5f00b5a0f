"""Presigned PUT URLs are signed locally: their shape and their errors need no server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ingestflow.core.errors import ConfigError
from storage.presign import presign_put

ENDPOINT = "http://127.0.0.1:9"  # never contacted


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    from ingestflow.core.settings import get_settings

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "INGESTFLOW_STORE_S3_BLOCK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNITTESTKEY00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-test-secret-value")
    monkeypatch.setenv("INGESTFLOW_STORE_S3_ENDPOINT_URL", ENDPOINT)
    monkeypatch.setenv("INGESTFLOW_STORE_S3_REGION", "eu-west-3")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_sigv4_url_for_the_object_on_the_configured_endpoint(s3_env: None) -> None:
    url = presign_put("s3://bucket/inbox/q3 report.pdf", expires=900)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert url.startswith(f"{ENDPOINT}/bucket/inbox/q3%20report.pdf?")
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "900"
    assert query["X-Amz-Credential"].startswith("AKIAUNITTESTKEY00001/")
    assert "/eu-west-3/s3/" in query["X-Amz-Credential"]
    assert "unit-test-secret-value" not in url


@pytest.mark.parametrize(
    ("uri", "expires", "message"),
    [
        ("gs://bucket/a.pdf", 60, "need an S3-compatible store"),
        ("az://container/a.pdf", 60, "need an S3-compatible store"),
        ("/tmp/a.pdf", 60, "need an S3-compatible store"),
        ("s3://bucket/folder/", 60, "needs an object key"),
        ("s3://bucket", 60, "needs an object key"),
        ("s3://bucket/a.pdf", 0, "between 1 and 604800"),
        ("s3://bucket/a.pdf", 8 * 24 * 3600, "between 1 and 604800"),
    ],
)
def test_bad_requests_are_config_errors(s3_env: None, uri: str, expires: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        presign_put(uri, expires=expires)


def test_no_credentials_names_what_to_set(s3_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from ingestflow.core.settings import get_settings

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        presign_put("s3://bucket/a.pdf")
