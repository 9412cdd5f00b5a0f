"""Unit tests of the fetch and hash steps and the local object store, on temp files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestflow.core.errors import (
    ConfigError,
    FetchError,
    SourceNotFoundError,
    TooLargeError,
    is_permanent,
)
from ingestflow.core.settings import IngestSettings
from ingestflow.core.types import DocumentStatus
from storage import objectstore
from storage.objectstore import canonical_uri, local_path, scheme_of
from storage.stores.local import LocalFileStore
from tasks.config import EmbeddingConfig, PipelineConfig
from tasks.fetch import fetch_documents, fetch_source, hash_documents, sha256_of
from tasks.work import DocWork, StageContext


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "dest"
    folder.mkdir()
    return folder


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Stream in 4 KiB blocks, so small files take the many-block path."""
    monkeypatch.setattr(objectstore, "CHUNK_BYTES", 4096)
    return 4096


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _payload(n: int) -> bytes:
    return os.urandom(n)


def test_fetch_copies_bytes_and_hashes_them(tmp_path: Path, dest: Path, small_blocks: int) -> None:
    data = _payload(10 * small_blocks + 123)
    source = _write(tmp_path / "in" / "doc.bin", data)
    fetched = fetch_source(str(source), dest_dir=dest, max_bytes=10**9)
    assert fetched.path.parent == dest
    assert fetched.path.read_bytes() == data
    assert fetched.size == len(data)
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.filename == "doc.bin"
    assert fetched.source_uri == source.resolve().as_uri()


def test_fetch_of_an_empty_file(tmp_path: Path, dest: Path) -> None:
    fetched = fetch_source(str(_write(tmp_path / "empty.txt", b"")), dest_dir=dest, max_bytes=1)
    assert (fetched.size, fetched.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert fetched.path.read_bytes() == b""


def test_local_store_streams_in_bounded_blocks(tmp_path: Path, small_blocks: int) -> None:
    data = _payload(5 * small_blocks + 1)
    uri = _write(tmp_path / "doc.bin", data).as_uri()
    blocks: list[bytes] = []
    LocalFileStore().read_into(uri, blocks.append)
    assert len(blocks) == 6
    assert max(len(b) for b in blocks) <= small_blocks
    assert b"".join(blocks) == data


def test_fetch_at_exactly_the_limit_succeeds(tmp_path: Path, dest: Path) -> None:
    data = _payload(5000)
    fetched = fetch_source(str(_write(tmp_path / "d", data)), dest_dir=dest, max_bytes=5000)
    assert fetched.size == 5000


@pytest.mark.parametrize("size", [5001, 50_000])
def test_fetch_over_the_limit_raises_and_leaves_no_file(
    tmp_path: Path, dest: Path, small_blocks: int, size: int
) -> None:
    source = _write(tmp_path / "big.bin", _payload(size))
    with pytest.raises(TooLargeError) as raised:
        fetch_source(str(source), dest_dir=dest, max_bytes=5000)
    assert "5,000 bytes" in raised.value.reason
    assert list(dest.iterdir()) == []


def test_missing_file_names_the_path(tmp_path: Path, dest: Path) -> None:
    missing = tmp_path / "nowhere" / "gone.pdf"
    with pytest.raises(SourceNotFoundError) as raised:
        fetch_source(str(missing), dest_dir=dest, max_bytes=100)
    assert str(missing) in raised.value.reason
    assert list(dest.iterdir()) == []


def test_a_directory_is_not_a_source(tmp_path: Path, dest: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(SourceNotFoundError) as raised:
        fetch_source(str(folder), dest_dir=dest, max_bytes=100)
    assert "directory" in raised.value.reason and str(folder) in raised.value.reason
    assert list(dest.iterdir()) == []


def test_file_uri_with_percent_encoded_space(tmp_path: Path, dest: Path) -> None:
    source = _write(tmp_path / "my report 100%.txt", b"hello")
    uri = source.as_uri()
    assert "%20" in uri and "%25" in uri
    fetched = fetch_source(uri, dest_dir=dest, max_bytes=100)
    assert fetched.path.read_bytes() == b"hello"
    assert fetched.filename == "my report 100%.txt"
    assert fetched.source_uri == uri
    # A plain path with the same name has the same identity.
    assert fetch_source(str(source), dest_dir=dest, max_bytes=100).source_uri == uri


def test_file_uri_with_localhost_host(tmp_path: Path, dest: Path) -> None:
    source = _write(tmp_path / "a.txt", b"abc")
    fetched = fetch_source(f"file://localhost{source}", dest_dir=dest, max_bytes=100)
    assert fetched.path.read_bytes() == b"abc"


def test_canonical_uri_makes_relative_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    expected = (tmp_path / "docs" / "a b.txt").resolve().as_uri()
    assert canonical_uri("docs/a b.txt") == expected
    assert canonical_uri("./docs/../docs/a b.txt") == expected
    assert canonical_uri(expected) == expected
    assert expected.startswith("file:///")


def test_canonical_uri_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert canonical_uri("~/a.txt") == (tmp_path / "a.txt").resolve().as_uri()


@pytest.mark.parametrize("uri", ["s3://bucket/key.pdf", "gs://b/k", "az://c/k", "ftp://x/y"])
def test_canonical_uri_leaves_other_schemes_alone(uri: str) -> None:
    assert canonical_uri(uri) == uri


def test_scheme_and_local_path() -> None:
    assert scheme_of("/tmp/a") == scheme_of("a/b.txt") == scheme_of("file:///a") == "file"
    assert scheme_of("C:/data/a.txt") == "file"
    assert scheme_of("S3://b/k") == "s3"
    assert local_path("file:///tmp/a%20b.txt") == Path("/tmp/a b.txt")
    assert local_path("/tmp/a%20b.txt") == Path("/tmp/a%20b.txt")  # plain paths stay literal


def test_unknown_scheme_is_a_config_error(dest: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        fetch_source("ftp://x/y", dest_dir=dest, max_bytes=100)
    assert "ftp://" in raised.value.reason
    assert is_permanent(raised.value)
    assert list(dest.iterdir()) == []


def test_sha256_of_returns_the_streamed_digest(tmp_path: Path, dest: Path) -> None:
    fetched = fetch_source(str(_write(tmp_path / "a", b"abc")), dest_dir=dest, max_bytes=100)
    assert sha256_of(fetched) == hashlib.sha256(b"abc").hexdigest()


def test_sha256_of_detects_a_size_change(tmp_path: Path, dest: Path) -> None:
    fetched = fetch_source(str(_write(tmp_path / "a", b"abc")), dest_dir=dest, max_bytes=100)
    with fetched.path.open("ab") as fh:
        fh.write(b"more")
    with pytest.raises(OSError, match="3 -> 7"):
        sha256_of(fetched)


# the stages over DocWork ------------------------------------------------------------------


class _FlakyStore:
    def read_into(self, uri: str, sink: Callable[[bytes], None]) -> None:
        sink(b"partial")
        raise FetchError(f"connection reset reading {uri}")


@pytest.fixture
def flaky_scheme() -> Iterator[str]:
    objectstore.STORES.register("flaky", objectstore.StoreKind(open=_FlakyStore))  # type: ignore[arg-type]
    yield "flaky"
    objectstore.STORES.unregister("flaky")


def _ctx(dest: Path, max_bytes: int) -> StageContext:
    config = PipelineConfig(embedding=EmbeddingConfig(provider="unused", model="unused"))
    limits = IngestSettings(max_document_bytes=max_bytes)
    return StageContext(collection_id=0, config=config, workdir=dest, limits=limits)


def test_fetch_documents_isolates_a_failing_document(tmp_path: Path, dest: Path) -> None:
    good = _write(tmp_path / "good.txt", b"good")
    other = _write(tmp_path / "other.txt", b"other")
    big = _write(tmp_path / "big.txt", b"x" * 200)
    works = [DocWork(source=str(s)) for s in (good, tmp_path / "missing.txt", other, big)]
    out = fetch_documents(works, _ctx(dest, 100), final_attempt=False)
    assert [w.status for w in out] == [
        DocumentStatus.PROCESSING,
        DocumentStatus.FAILED,
        DocumentStatus.PROCESSING,
        DocumentStatus.FAILED,
    ]
    assert str(tmp_path / "missing.txt") in (out[1].error or "")
    assert "larger than the limit" in (out[3].error or "")
    assert [w.fetched.path.read_bytes() for w in (out[0], out[2]) if w.fetched] == [
        b"good",
        b"other",
    ]
    assert all("fetch" in w.timings for w in (out[0], out[2]))
    assert len(list(dest.iterdir())) == 2  # failed fetches left nothing behind


def test_fetch_documents_raises_transient_errors_until_the_final_attempt(
    tmp_path: Path, dest: Path, flaky_scheme: str
) -> None:
    good = _write(tmp_path / "good.txt", b"good")
    works = [DocWork(source=f"{flaky_scheme}://host/doc"), DocWork(source=str(good))]
    with pytest.raises(FetchError, match="connection reset"):
        fetch_documents(works, _ctx(dest, 100), final_attempt=False)
    for leftover in dest.iterdir():  # only the good document's copy may remain
        assert leftover.read_bytes() == b"good"
    out = fetch_documents(works, _ctx(dest, 100), final_attempt=True)
    assert out[0].status is DocumentStatus.FAILED
    assert out[0].error == "connection reset reading flaky://host/doc"
    assert out[1].fetched is not None and out[1].active


def test_hash_documents_sets_the_digest(tmp_path: Path, dest: Path) -> None:
    works = [DocWork(source=str(_write(tmp_path / "a", b"abc")))]
    fetched = fetch_documents(works, _ctx(dest, 100))
    [hashed] = hash_documents(fetched, _ctx(dest, 100))
    assert hashed.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert "hash" in hashed.timings
