"""The ``file`` store: plain paths and ``file://`` URIs, optionally confined to a root folder.

Without a root (the registry's default, for ingesting a user's own files) any path works.
With a root, every path must resolve, symlinks followed, inside it; ``uri_for(key)`` turns an
untrusted key (an upload's name, say) into such a URI and refuses ``..``, absolute keys and
NUL bytes. Writes go to a hidden temporary file beside the target, are fsynced, then renamed
over it, so readers see the old bytes or the new, never a part.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from ingestflow.core.errors import (
    ConfigError,
    FetchError,
    IngestError,
    InvalidKeyError,
    SourceNotFoundError,
)
from storage import objectstore
from storage.objectstore import ObjectInfo, PagedListing, Sink, StoreKind, WriteResult
from storage.stores._common import Meter, Op, pages_of, transient

TMP_PREFIX = ".ingestflow-tmp-"
DEFAULT_PAGE_SIZE = 1000


def clean_key(key: str) -> PurePosixPath:
    """``key`` as a relative path that cannot leave its folder, or ``InvalidKeyError``."""
    if "\x00" in key:
        raise InvalidKeyError(f"key {key!r} contains a NUL byte")
    unified = key.replace("\\", "/")  # a key written on Windows must not escape either
    path = PurePosixPath(unified)
    if path.is_absolute() or PureWindowsPath(key).anchor:
        raise InvalidKeyError(f"key {key!r} is an absolute path; keys are relative")
    if ".." in path.parts:
        raise InvalidKeyError(f"key {key!r} contains '..'; keys may not leave their folder")
    if not path.parts:
        raise InvalidKeyError(f"key {key!r} names no file")
    return path


def etag_of(st: os.stat_result) -> str:
    """Changes whenever the file is replaced or rewritten."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalFileStore(PagedListing):
    """Files on a local or mounted filesystem."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root is not None else None

    # paths ------------------------------------------------------------------------------

    def uri_for(self, key: str) -> str:
        """The ``file://`` URI of ``key`` under the root, checked as every path is."""
        if self.root is None:
            raise ConfigError("this local store has no root folder to put keys under")
        return self._path(str(self.root / clean_key(key))).as_uri()

    def _path(self, uri: str) -> Path:
        """The path ``uri`` names; with a root, resolved and proven to lie inside it."""
        if "\x00" in uri:
            raise InvalidKeyError(f"path {uri!r} contains a NUL byte")
        path = objectstore.local_path(uri).expanduser()
        if self.root is None:
            return path
        if ".." in path.parts:
            raise InvalidKeyError(f"path {uri!r} contains '..'")
        return self._inside(self.root / path)  # an absolute path replaces the root here

    def _inside(self, path: Path) -> Path:
        assert self.root is not None
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise InvalidKeyError(f"{path} is outside the store folder {self.root}")
        return resolved

    # the protocol -----------------------------------------------------------------------

    def read_into(self, uri: str, sink: Sink) -> None:
        path = self._path(uri)
        try:
            fh: BinaryIO = path.open("rb")
        except FileNotFoundError as e:
            raise SourceNotFoundError(f"file not found: {path}") from e
        except IsADirectoryError as e:
            raise SourceNotFoundError(f"is a directory, not a file: {path}") from e
        except PermissionError as e:
            raise SourceNotFoundError(f"permission denied: {path}") from e
        except OSError as e:
            raise FetchError(f"cannot open {path}: {e.strerror}") from e
        with fh:
            while block := fh.read(objectstore.CHUNK_BYTES):
                sink(block)

    def write(
        self, uri: str, chunks: Iterable[bytes], *, max_bytes: int | None = None
    ) -> WriteResult:
        path = self._path(uri)
        with _fs_errors("write", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.root is not None:  # a folder swapped for a symlink meanwhile
                self._inside(path.parent)
        meter = Meter(chunks, max_bytes, uri)
        st = _commit(path, meter)
        return WriteResult(path.absolute().as_uri(), meter.size, meter.sha256, etag_of(st))

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def delete(self, uri: str) -> None:
        path = self._path(uri)
        with _fs_errors("delete", path):
            path.unlink(missing_ok=True)

    def list_pages(
        self, prefix: str, *, page_size: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        """Files under ``prefix`` (a string prefix, as in buckets: end a folder with ``/``).

        Symlinked folders are not descended; with a root, symlinked files that point outside
        it are skipped. One folder's names are sorted in memory at a time.
        """
        folder, name_prefix = self._split_prefix(prefix)
        infos = (self._info(entry) for entry in _walk(folder, name_prefix))
        yield from pages_of((i for i in infos if i is not None), page_size or DEFAULT_PAGE_SIZE)

    # listing helpers --------------------------------------------------------------------

    def _split_prefix(self, prefix: str) -> tuple[Path, str]:
        text = unquote(urlparse(prefix).path) if prefix.startswith("file://") else prefix
        text = os.path.expanduser(text)
        if text.endswith("/"):
            folder, name_prefix = text, ""
        else:
            folder, name_prefix = os.path.dirname(text) or ".", os.path.basename(text)
        if self.root is None:
            return Path(folder).resolve(), name_prefix
        return self._path(folder), name_prefix

    def _info(self, entry: os.DirEntry[str]) -> ObjectInfo | None:
        path = Path(entry.path)
        try:
            st = entry.stat()
            if self.root is not None and entry.is_symlink():
                self._inside(path)
        except (OSError, InvalidKeyError):
            return None  # vanished meanwhile, or a symlink out of the root
        key = path.relative_to(self.root).as_posix() if self.root else str(path)
        modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
        return ObjectInfo(path.as_uri(), key, st.st_size, etag_of(st), modified)


def _walk(folder: Path, name_prefix: str) -> Iterator[os.DirEntry[str]]:
    """Files under ``folder`` whose names start with ``name_prefix``, in full-path order."""
    try:
        with os.scandir(folder) as scan:
            entries = [e for e in scan if e.name.startswith(name_prefix)]
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise transient("list", f"cannot list {folder}: {e.strerror}") from e
    # A folder sorts as "name/", so its files fall where their full paths sort.
    entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), "")
        elif entry.is_file():
            yield entry


def _commit(path: Path, chunks: Iterable[bytes]) -> os.stat_result:
    """Write ``chunks`` to a temporary file beside ``path``, then rename it into place.

    Filesystem errors become ingestflow errors; the chunk source's own errors pass as they
    are. Either way the temporary file is removed.
    """
    with _fs_errors("write", path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                with _fs_errors("write", path):
                    fh.write(chunk)
            with _fs_errors("write", path):
                fh.flush()
                os.fsync(fh.fileno())
        with _fs_errors("write", path):
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            return path.stat()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _fs_errors(op: Op, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise _os_error(op, path, e) from e


def _os_error(op: Op, path: Path, e: OSError) -> IngestError:
    if isinstance(e, IsADirectoryError | NotADirectoryError | FileExistsError):
        return InvalidKeyError(f"cannot {op} {path}: a folder is in the way")
    if isinstance(e, PermissionError):
        return ConfigError(f"permission denied: cannot {op} {path}")
    return transient(op, f"cannot {op} {path}: {e.strerror}")


LOCAL = StoreKind(open=LocalFileStore)
