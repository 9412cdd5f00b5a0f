"""The fetch and hash steps: copy a source to a local temp file, hashing as it streams."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

from ingestflow.core.errors import TooLargeError
from ingestflow.core.types import FetchedSource
from storage.objectstore import canonical_uri, store_for
from tasks.options import stage_task
from tasks.work import DocWork, StageContext, per_document


class _HashingWriter:
    """A sink that writes blocks to a file, hashing and enforcing a size limit as it goes."""

    def __init__(self, fh, max_bytes: int) -> None:
        self.fh, self.max_bytes = fh, max_bytes
        self.size = 0
        self.digest = hashlib.sha256()

    def __call__(self, block: bytes) -> None:
        self.size += len(block)
        if self.size > self.max_bytes:
            raise TooLargeError(
                f"document is larger than the limit of {self.max_bytes:,} bytes"
                " (INGESTFLOW_MAX_DOCUMENT_BYTES)"
            )
        self.digest.update(block)
        self.fh.write(block)


def fetch_source(source: str, *, dest_dir: Path, max_bytes: int) -> FetchedSource:
    """Stream ``source`` into a new file under ``dest_dir``; never holds it whole in memory.

    A failed or oversized fetch leaves no file behind.
    """
    uri = canonical_uri(source)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix="fetch-")
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = _HashingWriter(fh, max_bytes)
            store_for(uri).read_into(uri, writer)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    name = unquote(uri.rstrip("/").rsplit("/", 1)[-1])
    return FetchedSource(uri, Path(tmp), writer.size, writer.digest.hexdigest(), name)


def sha256_of(fetched: FetchedSource) -> str:
    """The hash step: the digest computed while fetching, checked against the file on disk.

    Checking the size catches a temp file that was truncated or replaced after the fetch.
    """
    actual = fetched.path.stat().st_size
    if actual != fetched.size:
        raise OSError(f"fetched file changed size ({fetched.size} -> {actual} bytes)")
    return fetched.sha256


def fetch_documents(
    works: Sequence[DocWork], ctx: StageContext, *, final_attempt: bool = True
) -> list[DocWork]:
    """The fetch stage over a micro-batch: each source into ``ctx.workdir``."""

    def step(work: DocWork) -> DocWork:
        fetched = fetch_source(
            work.source, dest_dir=ctx.workdir, max_bytes=ctx.limits.max_document_bytes
        )
        return replace(work, fetched=fetched)

    return per_document(works, step, stage="fetch", final_attempt=final_attempt)


def hash_documents(
    works: Sequence[DocWork], ctx: StageContext, *, final_attempt: bool = True
) -> list[DocWork]:
    """The hash stage over a micro-batch."""

    def step(work: DocWork) -> DocWork:
        assert work.fetched is not None
        return replace(work, sha256=sha256_of(work.fetched))

    return per_document(works, step, stage="hash", final_attempt=final_attempt)


fetch_task = stage_task("fetch", timeout_seconds=3600)(fetch_documents)


hash_task = stage_task("hash", timeout_seconds=600)(hash_documents)
