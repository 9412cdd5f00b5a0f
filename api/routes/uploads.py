"""Documents coming in: one streamed upload, many in one request, a URI, or PDFs to merge.

Bodies are read as a stream (``api.multipart``): each file goes straight into the upload store
while its sha256 and size are computed, so a request is never held whole in memory and an
oversized file is stopped as soon as it passes the limit (413).
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from api.deps import (
    CollectionName,
    DocumentId,
    ForceParam,
    Principal,
    PriorityParam,
    SubmitsJob,
)
from api.models import (
    BulkAccepted,
    DocumentSummary,
    IngestUriRequest,
    Rejected,
    UploadAccepted,
)
from api.multipart import Part, iter_parts, safe_filename
from ingestflow.core.errors import InvalidRequestError, TooLargeError
from ingestflow.core.settings import get_settings
from ingestflow.core.types import Priority
from ingestflow.service import uploads
from ingestflow.service.collections import (
    Collection,
    existing_collection,
    open_collection_for_ingest,
)
from ingestflow.service.metadata import parse_metadata

router = APIRouter(tags=["documents"])
FileSink = Callable[[Part, str], Awaitable[None]]


def _multipart_body(*, many: bool, description: str) -> dict[str, Any]:
    """OpenAPI for a multipart body the route reads as a stream (so FastAPI cannot infer it)."""
    file_schema = {"type": "string", "format": "binary"}
    files = {"type": "array", "items": file_schema} if many else file_schema
    field = "files" if many else "file"
    properties = {
        field: files,
        "metadata": {
            "type": "object",
            "description": "A JSON object stored on the document (at most 16 levels deep and"
            " 64 KiB; no key naming a secret).",
        },
        "password": {
            "type": "string",
            "format": "password",
            "description": "Opens encrypted PDFs; used for this job's run, never stored.",
        },
    }
    schema = {"type": "object", "properties": properties, "required": [field]}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "multipart/form-data": {
                    "schema": schema,
                    "encoding": {"metadata": {"contentType": "application/json"}},
                }
            },
        }
    }


def _status_url(job_id: str | None) -> str | None:
    return f"/v1/jobs/{job_id}" if job_id else None


def _accepted(item: uploads.Accepted) -> UploadAccepted:
    return UploadAccepted(
        document=DocumentSummary.model_validate(item.document),
        job_id=item.job_id,
        status_url=_status_url(item.job_id),
        duplicate=item.duplicate,
    )


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise TooLargeError(f"the upload is larger than the limit of {limit} bytes")


@dataclass
class Form:
    """A multipart body's plain fields: ``metadata`` (a JSON object stored on the documents)
    and ``password`` (opens encrypted PDFs; held for the job's run, never stored)."""

    metadata: dict[str, Any] = field(default_factory=dict)
    password: SecretStr | None = None


async def read_form(request: Request, *, max_parts: int, on_file: FileSink) -> Form:
    """Read a multipart body in order: its plain fields, and each file part handed to
    ``on_file``, with its cleaned name, while its bytes are still arriving. Other plain
    fields are skipped."""
    form = Form()
    content_type = request.headers.get("content-type", "")
    async for part in iter_parts(request.stream(), content_type, max_parts=max_parts):
        if part.filename is None:
            if part.name == "metadata":
                form.metadata = parse_metadata(await part.read_text())
            elif part.name == "password":
                form.password = SecretStr(await part.read_text()) or None
            continue
        await on_file(part, safe_filename(part.filename))
    return form


async def store_files(
    request: Request,
    coll: Collection,
    *,
    max_parts: int,
    single: bool = False,
    rejected: list[Rejected] | None = None,
) -> tuple[Form, list[uploads.StoredUpload]]:
    """The form's fields, and its files streamed into the upload store. A file that cannot
    be taken (too large, an unusable name) fails the request, or with ``rejected`` is listed
    there while the others go on. On any failure, every file stored so far is removed."""
    stored: list[uploads.StoredUpload] = []

    async def store(part: Part, name: str) -> None:
        if single and stored:
            raise InvalidRequestError("send one file here; use documents:bulk for several")
        try:
            stored.append(await uploads.store_upload(coll, name, part.chunks()))
        except (TooLargeError, InvalidRequestError) as exc:
            if rejected is None:
                raise
            rejected.append(Rejected(filename=name, code=exc.code, message=exc.reason))

    try:
        form = await read_form(request, max_parts=max_parts, on_file=store)
    except BaseException:
        await run_in_threadpool(uploads.discard, stored)
        raise
    return form, stored


def takes_documents(
    path: str,
    *,
    duplicates: bool = False,
    response_model: type[Any] = UploadAccepted,
    **extra: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A route that takes documents in and starts their job: 202, with the tenant's job limit
    checked first; with ``duplicates``, 200 when nothing new came (identical bytes are
    already in the collection), and no job."""
    duplicate: dict[int | str, dict[str, Any]] = {
        200: {"model": response_model, "description": "Nothing new: identical bytes are there."}
    }
    return router.post(
        path,
        status_code=202,
        dependencies=[SubmitsJob],
        response_model=response_model,
        responses=duplicate if duplicates else None,
        **extra,
    )


async def _accept(
    coll: Collection,
    stored: list[uploads.StoredUpload],
    form: Form,
    *,
    priority: Priority,
    force: bool,
) -> list[uploads.Accepted]:
    """The stored files as documents of ``coll``, with the form's metadata and password,
    and the job that takes the new ones."""
    return await run_in_threadpool(
        uploads.accept_uploads,
        coll,
        stored,
        metadata=form.metadata,
        password=form.password,
        priority=priority,
        force=force,
    )


async def _open(collection: str, tenant: str) -> Collection:
    return await run_in_threadpool(open_collection_for_ingest, collection, tenant=tenant)


@takes_documents(
    "/collections/{collection}/documents",
    duplicates=True,
    openapi_extra=_multipart_body(many=False, description="One file, field `file`."),
)
async def upload_document(
    collection: CollectionName,
    request: Request,
    key: Principal,
    priority: PriorityParam = Priority.NORMAL,
    force: ForceParam = False,
) -> JSONResponse:
    """Stream one file into the collection: 202 with the document and its job, or 200 with
    the existing document when identical bytes are already there (no new job)."""
    limit = get_settings().api.max_upload_bytes
    _check_length(request, limit)
    coll = await _open(collection, key.tenant)
    form, stored = await store_files(request, coll, max_parts=16, single=True)
    if not stored:
        raise InvalidRequestError("the request has no file part (field `file`)")
    [item] = await _accept(coll, stored, form, priority=priority, force=force)
    body = _accepted(item).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if item.duplicate else 202)


@takes_documents(
    "/collections/{collection}/documents:bulk",
    duplicates=True,
    response_model=BulkAccepted,
    openapi_extra=_multipart_body(many=True, description="Many files, each in field `files`."),
)
async def upload_documents(
    collection: CollectionName,
    request: Request,
    key: Principal,
    priority: PriorityParam = Priority.NORMAL,
    force: ForceParam = False,
) -> JSONResponse:
    """Stream many files; one ingest job takes all the new ones. A file that cannot be taken
    (too large, unreadable name) is listed under ``rejected`` and the others go on."""
    settings = get_settings().api
    coll = await _open(collection, key.tenant)
    rejected: list[Rejected] = []
    form, stored = await store_files(
        request, coll, max_parts=settings.max_files_per_request + 16, rejected=rejected
    )
    if not stored and not rejected:
        raise InvalidRequestError("the request has no file parts (field `files`)")
    items = await _accept(coll, stored, form, priority=priority, force=force)
    job_id = next((i.job_id for i in items if not i.duplicate), None)
    body = BulkAccepted(
        operation_id=job_id,
        status_url=_status_url(job_id),
        documents=[_accepted(i) for i in items],
        rejected=rejected,
    )
    # Nothing new to run (every file already there, or refused): 200, not 202.
    return JSONResponse(body.model_dump(mode="json"), status_code=202 if job_id else 200)


@takes_documents("/collections/{collection}/documents:ingest")
def ingest_by_uri(
    collection: CollectionName, body: IngestUriRequest, key: Principal
) -> UploadAccepted:
    """Ingest a document by URI (s3://, gs://, az://, or a local path under the API's
    allowed roots). Its bytes are read by the job, not by this request."""
    uploads.check_uri(body.uri)  # a refused URI creates no collection either
    coll = open_collection_for_ingest(collection, tenant=key.tenant)
    item = uploads.ingest_uri(
        coll,
        body.uri,
        metadata=body.metadata,
        password=body.password,
        priority=Priority(body.priority),
        force=body.force,
    )
    return _accepted(item)


@takes_documents("/collections/{collection}/documents/{document_id}:reingest")
def reingest_document(
    collection: CollectionName,
    document_id: DocumentId,
    key: Principal,
    priority: PriorityParam = Priority.NORMAL,
) -> UploadAccepted:
    """Index the document again from its source, even if its bytes did not change."""
    coll = existing_collection(collection, tenant=key.tenant)
    return _accepted(uploads.reingest_document(coll, document_id, priority=priority))


@takes_documents(
    "/collections/{collection}/documents:merge",
    duplicates=True,
    openapi_extra=_multipart_body(many=True, description="PDFs in order, field `files`."),
)
async def merge_documents(
    collection: CollectionName,
    request: Request,
    key: Principal,
    filename: Annotated[str, Query(max_length=300)] = "merged.pdf",
    priority: PriorityParam = Priority.NORMAL,
) -> JSONResponse:
    """Merge the uploaded PDFs, in the order sent, into one new document and ingest it."""
    limit = get_settings().api.max_upload_bytes
    _check_length(request, limit)
    coll = await _open(collection, key.tenant)
    with tempfile.TemporaryDirectory(prefix="ingestflow-merge-") as tmp:
        parts: list[Path] = []

        async def spool(part: Part, name: str) -> None:
            parts.append(await _spool(part, Path(tmp) / f"{len(parts):04d}.pdf", limit))

        form = await read_form(request, max_parts=200, on_file=spool)
        if len(parts) < 1:
            raise InvalidRequestError("send the PDFs to merge as file parts (field `files`)")
        merged = Path(tmp) / "merged.pdf"
        await run_in_threadpool(uploads.merge_pdfs, parts, merged)
        stored = await uploads.store_upload(coll, safe_filename(filename), _read_file(merged))
    metadata = {**form.metadata, "merged_from": len(parts)}
    [item] = await run_in_threadpool(
        uploads.accept_uploads, coll, [stored], metadata=metadata, priority=priority
    )
    body = _accepted(item).model_dump(mode="json")
    return JSONResponse(body, status_code=200 if item.duplicate else 202)


async def _spool(part: Part, path: Path, limit: int) -> Path:
    """A part to a temp file on disk (the merge needs random access), within ``limit``."""
    size = 0
    with path.open("wb") as fh:
        async for chunk in part.chunks():
            size += len(chunk)
            if size > limit:
                raise TooLargeError(f"a file is larger than the limit of {limit} bytes")
            fh.write(chunk)
    return path


async def _read_file(path: Path, block: int = 1024 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while data := fh.read(block):
            yield data
