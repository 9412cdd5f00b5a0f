"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    chunk_count: int
    media_type: str | None
    size_bytes: int | None
    created_at: datetime
    updated_at: datetime
    indexed_at: datetime | None


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
    k: int = Field(default=5, ge=1, le=100)
    filter: dict[str, Any] | None = Field(
        default=None, description="A JSON object the document metadata must contain."
    )


class SearchHit(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    score: float
    content: str
    source_uri: str
    document_id: str
    ordinal: int
    provenance: dict[str, Any]
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[SearchHit]
