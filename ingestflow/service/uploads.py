"""Documents arriving through the service: uploads streamed to the upload store, URIs to
ingest, PDFs to merge. Each becomes a ``queued`` document row and an ingest job.

Identical bytes already in the collection are not ingested again: the caller gets the
existing document. When the queue backend is down, the row stays ``queued`` (the upload is
kept) and ``BackendUnavailableError`` tells the caller to come back; submitting again, or the
re-queue pass, picks it up.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr
from pypdf import PdfReader, PdfWriter
from pypdf.errors import PdfReadError

from deployments.submit import submit_ingest
from ingestflow.core.errors import ConfigError, InvalidRequestError, TooLargeError
from ingestflow.core.settings import get_settings
from ingestflow.core.types import Priority
from ingestflow.service.metadata import check_metadata
from storage.collections import Collection
from storage.db import Conn, transaction
from storage.documents import DocumentRecord, enqueue_document, find_document
from storage.job_documents import find_by_sha256
from storage.objectstore import (
    WriteResult,
    canonical_uri,
    local_path,
    scheme_of,
    store_for,
    write_async,
)
from storage.passwords import hold_password


class UriNotAllowedError(InvalidRequestError, code="uri_not_allowed"):
    """The API may not ingest this URI (a local path outside the allowed roots)."""


@dataclass(frozen=True)
class Accepted:
    """A document taken in: ``job_id`` is None when nothing new had to run."""

    document: DocumentRecord
    job_id: str | None
    duplicate: bool


@dataclass(frozen=True)
class StoredUpload:
    """An upload safely in the upload store, not yet a document."""

    uri: str
    filename: str
    size: int
    sha256: str


def upload_uri(coll: Collection, filename: str) -> str:
    """A fresh key in the upload store for one upload (never overwrites another).

    The name is percent-quoted: a ``file://`` URI is percent-decoded into a path, so a name
    like ``%2e%2e%2f...`` must not become ``../``. For local stores the result is also
    checked to lie inside the upload folder.
    """
    root = canonical_uri(get_settings().api.upload_uri).rstrip("/")
    uri = f"{root}/c{coll.id}/{uuid.uuid4().hex}/{quote(filename, safe='')}"
    if scheme_of(root) == "file":
        folder = local_path(root).resolve()
        if not local_path(uri).resolve().is_relative_to(folder):
            raise InvalidRequestError("the file name is not acceptable")
    return uri


async def store_upload(
    coll: Collection, filename: str, chunks: AsyncIterator[bytes]
) -> StoredUpload:
    """Stream an upload into the upload store, hashing it and enforcing the size limit as it
    goes; an oversized upload raises ``TooLargeError`` and leaves nothing behind."""
    uri = upload_uri(coll, filename)
    max_bytes = get_settings().api.max_upload_bytes
    try:
        written: WriteResult = await write_async(store_for(uri), uri, chunks, max_bytes=max_bytes)
    except TooLargeError:  # named by the caller's file name, never the store's path
        raise TooLargeError(
            f"{filename} is larger than the upload limit of {max_bytes:,} bytes"
        ) from None
    return StoredUpload(uri, filename, written.size, written.sha256)


def accept_uploads(
    coll: Collection,
    uploads: list[StoredUpload],
    *,
    metadata: dict[str, Any],
    priority: Priority = Priority.NORMAL,
    force: bool = False,
    password: SecretStr | None = None,
) -> list[Accepted]:
    """Turn stored uploads into documents and submit one job for the new ones.

    Bytes already in the collection (or twice in this request) are answered with the
    existing document and their upload is removed; bytes whose document failed are that
    document, tried again. ``password`` opens encrypted PDFs: held for the job's run, never
    stored with the document. Raises ``BackendUnavailableError`` after the rows are written,
    so a retried request finds them and submits them.
    """
    metadata = check_metadata(metadata)
    accepted: dict[str, Accepted] = {}  # by sha256: one document per distinct content
    fresh: list[DocumentRecord] = []
    with transaction() as conn:
        for up in uploads:
            if up.sha256 in accepted:  # the same bytes twice in one request
                _discard(up.uri)
                continue
            existing = find_by_sha256(conn, collection_id=coll.id, sha256=up.sha256)
            waiting = existing is not None and existing.status == "queued" and not existing.job_id
            again = waiting or (existing is not None and existing.status == "failed")
            if existing is not None and not (force or again):
                _discard(up.uri)
                accepted[up.sha256] = Accepted(existing, existing.job_id, duplicate=True)
                continue
            if existing is not None:  # re-index it (force), it failed, or it waits since an outage
                _discard(up.uri)
                doc = requeue(conn, existing, collection_id=coll.id)
            else:
                doc = enqueue_document(
                    conn,
                    collection_id=coll.id,
                    source_uri=up.uri,
                    sha256=up.sha256,
                    size=up.size,
                    metadata={**metadata, "filename": up.filename},
                )
            fresh.append(doc)
            accepted[up.sha256] = Accepted(doc, None, duplicate=False)
        _hold(conn, fresh, password)
    if fresh:
        job_id = submit_ingest(
            tenant=coll.tenant,
            collection=coll.name,
            documents=fresh,
            priority=priority,
            force=force,
            idempotency_key=None if force else _idempotency_key(fresh),
        )
        for sha, item in accepted.items():
            if not item.duplicate:
                accepted[sha] = Accepted(item.document, job_id, duplicate=False)
    return [accepted[up.sha256] for up in uploads]


def requeue(conn: Conn, doc: DocumentRecord, *, collection_id: int) -> DocumentRecord:
    """The document's row back to ``queued`` for a new job, keeping its source and metadata."""
    return enqueue_document(
        conn,
        collection_id=collection_id,
        source_uri=doc.source_uri,
        metadata=doc.metadata,
        sha256=doc.sha256,
        size=doc.size_bytes,
    )


def reingest_document(
    coll: Collection, document_id: str, *, priority: Priority = Priority.NORMAL
) -> Accepted:
    """Index a document of the collection again from its source, even if its bytes did not
    change (after a parser or chunking change, say)."""
    with transaction() as conn:
        found = find_document(conn, collection_id=coll.id, document_id=document_id)
        doc = requeue(conn, found, collection_id=coll.id)
    job_id = submit_ingest(
        tenant=coll.tenant, collection=coll.name, documents=[doc], priority=priority, force=True
    )
    return Accepted(doc, job_id, duplicate=False)


def ingest_uri(
    coll: Collection,
    uri: str,
    *,
    metadata: dict[str, Any],
    priority: Priority = Priority.NORMAL,
    force: bool = False,
    password: SecretStr | None = None,
) -> Accepted:
    """Queue a document by URI (any registered scheme; local paths only under the API's
    ``file_roots``) and submit its job; ``password`` as for ``accept_uploads``."""
    source = check_uri(uri)
    metadata = check_metadata(metadata)
    with transaction() as conn:
        doc = enqueue_document(conn, collection_id=coll.id, source_uri=source, metadata=metadata)
        _hold(conn, [doc], password)
    job_id = submit_ingest(
        tenant=coll.tenant, collection=coll.name, documents=[doc], priority=priority, force=force
    )
    return Accepted(doc, job_id, duplicate=False)


def check_uri(uri: str) -> str:
    """The canonical source for ``uri``, or ``UriNotAllowedError``/``ConfigError``.

    A request names only a URI, never an endpoint: the store (and its endpoint and
    credentials) comes from the server's settings by scheme. What a caller may name is
    bounded: local paths under ``file_roots``, object-store URIs under ``source_prefixes``
    when that is set, and never the upload store, which holds every tenant's uploads.
    """
    if not uri.strip() or "\x00" in uri:
        raise InvalidRequestError("the URI is empty or contains a NUL byte")
    settings = get_settings().api
    if scheme_of(uri) == "file":
        path = local_path(uri).expanduser().resolve()
        roots = [r.expanduser().resolve() for r in settings.file_roots]
        if not any(path.is_relative_to(root) for root in roots):
            raise UriNotAllowedError(
                "local paths cannot be ingested through the API unless they are under"
                " INGESTFLOW_API_FILE_ROOTS"
            )
    else:
        try:
            store_for(uri)
        except ConfigError as exc:  # an unknown scheme
            raise UriNotAllowedError(exc.reason) from None
        if settings.source_prefixes and not any(
            _under(uri, prefix) for prefix in settings.source_prefixes
        ):
            raise UriNotAllowedError(
                "this URI is not under the prefixes INGESTFLOW_API_SOURCE_PREFIXES allows"
            )
    source = canonical_uri(uri)
    if _under(source, canonical_uri(settings.upload_uri)):
        raise UriNotAllowedError("the upload store cannot be ingested by URI; upload the file")
    return source


def _under(uri: str, prefix: str) -> bool:
    """``uri`` is ``prefix`` or inside it, on a path boundary (``s3://b`` holds not
    ``s3://b-other/``)."""
    root = prefix.rstrip("/")
    return uri == root or uri.startswith(root + "/")


def merge_pdfs(parts: list[Path], out: Path) -> None:
    """Concatenate PDFs in order into ``out`` (pypdf); a part that is not a readable PDF is an
    ``InvalidRequestError`` naming its position."""
    writer = PdfWriter()
    for position, part in enumerate(parts, start=1):
        try:
            reader = PdfReader(part)
            if reader.is_encrypted:
                raise InvalidRequestError(f"file {position} is an encrypted PDF; cannot merge it")
            writer.append(reader)
        except (PdfReadError, ValueError, KeyError, TypeError) as exc:
            raise InvalidRequestError(f"file {position} is not a readable PDF") from exc
    with out.open("wb") as fh:
        writer.write(fh)


def _idempotency_key(docs: list[DocumentRecord]) -> str:
    # The same rows with the same bytes, before any run claimed them again (attempts), are
    # the same submission: a retried request must not start a second run.
    parts = sorted(f"{d.id}:{d.sha256}:{d.attempts}" for d in docs)
    return "upload:" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def discard(stored: list[StoredUpload]) -> None:
    """Remove uploads that will not become documents (their request failed part-way)."""
    for up in stored:
        store_for(up.uri).delete(up.uri)


def _hold(conn: Conn, docs: list[DocumentRecord], password: SecretStr | None) -> None:
    if password is not None and docs:
        ttl = get_settings().api.password_ttl_seconds
        secret = password.get_secret_value()
        hold_password(conn, document_ids=[d.id for d in docs], password=secret, ttl_seconds=ttl)


def _discard(uri: str) -> None:
    store = store_for(uri)
    if store.exists(uri):
        store.delete(uri)
