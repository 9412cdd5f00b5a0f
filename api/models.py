"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable snake_case code, for programs.")
    message: str = Field(description="A sentence for people.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class DocumentSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    source_uri: str
    status: str
    error: str | None
    error_code: str | None = Field(description="A stable snake_case name of the error.")
    chunk_count: int
    media_type: str | None
    size_bytes: int | None
    created_at: datetime
    updated_at: datetime
    indexed_at: datetime | None

    @model_validator(mode="after")
    def _password_hint(self) -> DocumentSummary:
        self.error = _hinted(self.error, self.error_code)
        return self


PASSWORD_HINT = "; send its password in the `password` field"


def _hinted(message: str | None, code: str | None) -> str | None:
    """A document that needed a password says how to give one through the API."""
    if message and code == "password_required" and not message.endswith(PASSWORD_HINT):
        return f"{message}{PASSWORD_HINT}"
    return message


class DocumentPage(BaseModel):
    items: list[DocumentSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class ChunkProvenance(BaseModel):
    ordinal: int
    provenance: dict[str, Any]


class DocumentDetail(DocumentSummary):
    collection: str
    sha256: str | None
    attempts: int
    flow_run_id: str | None
    metadata: dict[str, Any]
    timings: dict[str, Any] = Field(description="Seconds per ingest step.")
    provenance: list[ChunkProvenance] = Field(description="The first chunks' provenance.")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=10_000)
    k: int = Field(default=5, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(
        default=None, description="A JSON object the document metadata must contain."
    )
    mode: Literal["vector", "hybrid"] = Field(
        default="vector",
        description="`vector`: cosine similarity; `hybrid`: vector and full-text rankings"
        " fused by reciprocal rank fusion (better for rare exact terms: codes, names).",
    )


class SearchHit(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    score: float = Field(
        description="`vector`: cosine similarity; `hybrid`: the fused score, the sum over the"
        " vector and full-text lists of 1 / (60 + rank)."
    )
    content: str
    source_uri: str
    document_id: str
    ordinal: int
    provenance: dict[str, Any]
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[SearchHit]


class UploadAccepted(BaseModel):
    document: DocumentSummary
    job_id: str | None = Field(description="The ingest job; null if nothing had to run.")
    status_url: str | None = Field(description="Where the job's progress is: GET it.")
    duplicate: bool = Field(description="Identical bytes were already in the collection.")


class Rejected(BaseModel):
    filename: str
    code: str
    message: str


class BulkAccepted(BaseModel):
    operation_id: str | None = Field(
        description="The batch's ingest job (an operation is its job); null if all duplicates."
    )
    status_url: str | None
    documents: list[UploadAccepted]
    rejected: list[Rejected] = Field(description="Files that were not taken, with the reason.")


class IngestUriRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1, max_length=4096, description="s3://, gs://, az:// ...")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="A JSON object stored on the document; no secrets."
    )
    password: SecretStr | None = Field(
        default=None,
        max_length=1024,
        description="Opens an encrypted PDF; used for this job's run, never stored.",
    )
    priority: Literal["high", "normal", "low"] = "normal"
    force: bool = False


class DeleteDocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=1000)
    mode: Literal["job", "now"] = Field(
        default="job", description="`job`: a delete job (202); `now`: in this request (200)."
    )


class DeleteNowResult(BaseModel):
    deleted: list[str]
    missing: list[str]


class JobAccepted(BaseModel):
    job_id: str
    status_url: str


class JobErrorModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    document_id: str
    source_uri: str
    code: str | None
    message: str

    @model_validator(mode="after")
    def _password_hint(self) -> JobErrorModel:
        self.message = _hinted(self.message, self.code) or self.message
        return self


class JobProgress(BaseModel):
    documents_total: int
    documents_done: int
    documents_failed: int
    chunks: int = Field(description="Chunks stored for the job's documents.")
    chunks_total: int = Field(description="Chunks found in the documents being indexed.")
    chunks_embedded: int = Field(description="Of those, embedded (or found in the cache).")
    chunks_written: int = Field(description="Of those, written to the index.")


# What a job's state can be (a queue backend's own words, like "cancelling", never show).
JobStateName = Literal[
    "queued", "running", "completed", "completed_with_errors", "failed", "cancelled"
]


class Job(BaseModel):
    id: str
    state: JobStateName = Field(
        description="completed_with_errors: some documents failed; failed: the run failed or"
        " every document did."
    )
    kind: Literal["ingest", "delete"]
    collection: str
    backend: str = Field(description="The queue backend that ran it: prefect or celery.")
    priority: str
    progress: JobProgress
    errors: list[JobErrorModel]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    flow_run_id: str | None
    flow_run_url: str | None = Field(description="The run in the Prefect UI.")
    message: str | None
    document_ids: list[str]


class JobPage(BaseModel):
    items: list[Job]
    next_cursor: str | None


class Worker(BaseModel):
    name: str
    status: Literal["online", "offline"]
    last_heartbeat: datetime | None = Field(
        description="A Prefect worker's last heartbeat, the served runner's last poll, or for"
        " Celery the moment it answered."
    )
    queues: list[str] = Field(description="The queues it takes jobs from.")
    active: list[str] = Field(description="Runs it is running (Celery task ids).")
    reserved: list[str] = Field(description="Runs it has taken but not started (Celery).")
    registered: list[str] = Field(description="The tasks or deployments it can run.")


class WorkerList(BaseModel):
    backend: str
    workers: list[Worker]


class QueueModel(BaseModel):
    name: Literal["high", "normal", "low"]
    depth: int = Field(description="Jobs waiting in it.")
    paused: bool


class QueueList(BaseModel):
    backend: str
    queues: list[QueueModel]


class StateCountsModel(BaseModel):
    jobs: int
    by_state: dict[str, int]
    by_kind: dict[str, dict[str, int]] = Field(description="kind -> state -> jobs")


class JobStatsModel(BaseModel):
    since: datetime
    until: datetime
    overall: StateCountsModel
    tenants: dict[str, StateCountsModel]


class CollectionFailure(BaseModel):
    id: str = Field(description="The document's id.")
    source_uri: str
    error: str | None
    error_code: str | None
    updated_at: datetime


class CollectionStatusModel(BaseModel):
    name: str
    embedding_model: str = Field(description="provider:model, fixed for the collection.")
    dimension: int
    documents: dict[str, int] = Field(description="Documents by status, every status named.")
    chunks: int = Field(description="Chunks in the index.")
    last_indexed_at: datetime | None = Field(description="When a document was last indexed.")
    last_activity_at: datetime | None = Field(description="When any document last changed.")
    failures: list[CollectionFailure] = Field(description="The latest failures, newest first.")
