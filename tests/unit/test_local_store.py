"""The local store: key sanitisation, confinement to a root folder, atomic writes, listing."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ingestflow.core.errors import ConfigError, InvalidKeyError, TooLargeError, is_permanent
from storage.objectstore import store_for, write_async
from storage.stores._common import Parts, block_slug
from storage.stores.local import TMP_PREFIX, LocalFileStore, clean_key


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("not yours")
    return folder


def _read(store: LocalFileStore, uri: str) -> bytes:
    blocks: list[bytes] = []
    store.read_into(uri, blocks.append)
    return b"".join(blocks)


@pytest.mark.parametrize(
    "key",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "a/b/../../../escape.txt",
        "..",
        "/etc/passwd",
        "//server/share/x",
        "C:\\Windows\\x.txt",
        "C:/x.txt",
        "..\\..\\escape.txt",
        "a\\..\\..\\escape.txt",
        "a\x00b.txt",
        "",
        ".",
        "./",
    ],
)
def test_bad_keys_are_refused(key: str, root: Path) -> None:
    with pytest.raises(InvalidKeyError) as raised:
        LocalFileStore(root).uri_for(key)
    assert is_permanent(raised.value)
    assert repr(key) in raised.value.reason or "escape" in raised.value.reason


@pytest.mark.parametrize(
    ("key", "relative"),
    [("a.txt", "a.txt"), ("a/b/c.pdf", "a/b/c.pdf"), ("a//b/./c", "a/b/c"), ("..a/b..", "..a/b..")],
)
def test_good_keys_stay_under_the_root(key: str, relative: str, root: Path) -> None:
    assert str(clean_key(key)) == relative
    assert LocalFileStore(root).uri_for(key) == (root / relative).as_uri()


def test_symlinked_folder_out_of_the_root_is_refused(root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside, target_is_directory=True)
    store = LocalFileStore(root)
    with pytest.raises(InvalidKeyError, match="outside the store folder"):
        store.uri_for("link/secret.txt")
    for uri in ((root / "link" / "secret.txt").as_uri(), str(root / "link" / "new.txt")):
        with pytest.raises(InvalidKeyError):
            store.read_into(uri, lambda block: None)
        with pytest.raises(InvalidKeyError):
            store.write(uri, [b"planted"])
        with pytest.raises(InvalidKeyError):
            store.delete(uri)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "not yours"


def test_symlinked_file_out_of_the_root_is_refused_and_not_listed(
    root: Path, outside: Path
) -> None:
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "fine.txt").write_text("mine")
    (root / "alias.txt").symlink_to(root / "fine.txt")
    store = LocalFileStore(root)
    with pytest.raises(InvalidKeyError):
        store.read_into(store.root.joinpath("leak.txt").as_uri(), lambda block: None)
    assert _read(store, str(root / "alias.txt")) == b"mine"  # inside the root: fine
    assert [i.key for i in store.list_objects(root.as_uri() + "/")] == ["alias.txt", "fine.txt"]


def test_paths_outside_the_root_are_refused(root: Path, outside: Path) -> None:
    store = LocalFileStore(root)
    for uri in ((outside / "secret.txt").as_uri(), str(outside / "secret.txt"), "/etc/hostname"):
        with pytest.raises(InvalidKeyError):
            store.read_into(uri, lambda block: None)
    with pytest.raises(InvalidKeyError):
        store.write(str(root / ".." / "outside" / "x.txt"), [b"x"])
    with pytest.raises(InvalidKeyError):
        list(store.list_objects(outside.as_uri() + "/"))
    with pytest.raises(InvalidKeyError, match="NUL"):
        store.exists(str(root / "a\x00b"))


def test_without_a_root_any_path_reads(outside: Path) -> None:
    store = store_for(str(outside / "secret.txt"))
    assert isinstance(store, LocalFileStore) and store.root is None
    assert _read(store, (outside / "secret.txt").as_uri()) == b"not yours"
    with pytest.raises(ConfigError, match="no root"):
        store.uri_for("a.txt")


def test_relative_paths_are_relative_to_the_root(root: Path) -> None:
    store = LocalFileStore(root)
    written = store.write("sub/doc.txt", [b"hello"])
    assert written.uri == (root / "sub" / "doc.txt").as_uri()
    assert store.exists("sub/doc.txt") and _read(store, written.uri) == b"hello"


def test_writes_are_atomic_and_leave_no_temporary_files(root: Path) -> None:
    store = LocalFileStore(root)
    uri = store.uri_for("doc.bin")
    first = store.write(uri, [b"old"])

    def failing() -> Iterator[bytes]:
        yield b"new bytes"
        raise OSError(5, "disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        store.write(uri, failing())
    with pytest.raises(TooLargeError):
        store.write(uri, [b"x" * 10] * 10, max_bytes=50)
    assert _read(store, uri) == b"old"
    assert [p.name for p in root.iterdir()] == ["doc.bin"]
    second = store.write(uri, [b"new"])
    assert second.etag != first.etag and second.sha256 == hashlib.sha256(b"new").hexdigest()
    assert oct((root / "doc.bin").stat().st_mode & 0o777) == oct(0o644)


def test_a_folder_in_the_way_is_a_permanent_error(root: Path) -> None:
    (root / "taken").mkdir()
    store = LocalFileStore(root)
    with pytest.raises(InvalidKeyError, match="folder is in the way"):
        store.write(store.uri_for("taken"), [b"x"])
    with pytest.raises(InvalidKeyError):
        store.delete(store.uri_for("taken"))


def test_listing_order_prefixes_and_pages(root: Path) -> None:
    names = ["a-b.txt", "a/b.txt", "a/c/d.txt", "a0.txt", "b.txt", "ab.txt"]
    store = LocalFileStore(root)
    for name in names:
        store.write(store.uri_for(name), [name.encode()])
    (root / f"{TMP_PREFIX}half-written").write_bytes(b"?")
    base = root.as_uri() + "/"
    assert [i.key for i in store.list_objects(base)] == sorted(names)  # as bucket keys sort
    assert [i.key for i in store.list_objects(base + "a/")] == ["a/b.txt", "a/c/d.txt"]
    assert [i.key for i in store.list_objects(base + "a")] == [
        "a-b.txt", "a/b.txt", "a/c/d.txt", "a0.txt", "ab.txt",
    ]  # fmt: skip
    assert [len(p) for p in store.list_pages(base, page_size=4)] == [4, 2]
    assert list(store.list_objects(base + "nothing/")) == []
    info = next(store.list_objects(base + "b.txt"))
    assert (info.size, info.uri) == (5, (root / "b.txt").as_uri())
    assert info.modified.tzinfo is not None


def test_write_async_streams_from_an_async_iterator(root: Path) -> None:
    store = LocalFileStore(root)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0)
            yield b"abc"

    written = asyncio.run(write_async(store, store.uri_for("async.txt"), body(), max_bytes=9))
    assert (written.size, _read(store, written.uri)) == (9, b"abcabcabc")
    with pytest.raises(TooLargeError):
        asyncio.run(write_async(store, store.uri_for("big.txt"), body(), max_bytes=8))
    assert not store.exists(store.uri_for("big.txt"))


def test_parts_regroups_chunks_and_knows_the_last() -> None:
    stream = Parts([b"ab", b"cde", b"f", b"ghij"], 4)
    seen = [(part, stream.final) for part in stream]
    assert seen == [(b"abcd", False), (b"efgh", False), (b"ij", True)]
    exact = Parts([b"abcd"], 4)
    assert [(p, exact.final) for p in exact] == [(b"abcd", True)]
    assert list(Parts([], 4)) == [b""]


def test_block_settings_take_a_bare_name_or_a_slug() -> None:
    assert block_slug("prod", "aws-credentials") == "aws-credentials/prod"
    assert block_slug("s3-bucket/docs", "aws-credentials") == "s3-bucket/docs"


def test_unknown_schemes_list_the_built_in_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        store_for("ftp://host/file")
    assert "az, file, gs, s3" in raised.value.reason


def test_cloud_stores_are_reused_per_settings_snapshot() -> None:
    from ingestflow.core.settings import get_settings

    get_settings.cache_clear()
    for uri in ("s3://b/k", "gs://b/k", "az://c/k"):
        assert store_for(uri) is store_for(uri)  # so one client, built on first use
        before = store_for(uri)
        get_settings.cache_clear()
        assert store_for(uri) is not before


def test_store_modules_import_no_sdk() -> None:
    code = (
        "import sys, storage.stores.s3, storage.stores.gcs, storage.stores.azure\n"
        "heavy = {'boto3', 'botocore', 'google', 'azure', 'prefect'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
