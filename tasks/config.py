"""What the stages are configured with, as typed objects: chunking, parsing, embedding.

A ``PipelineConfig`` is built once per run (``from_settings``) and handed to every stage. What
decides a document's chunks besides its bytes is derived from it (``fingerprint``): every
field of the chunking and parsing configurations is in it, so a new setting cannot be left
out, and a document indexed under other settings is indexed again instead of being found
``unchanged``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingestflow.core.settings import Settings
from tasks.embedders import Embedder, get_embedder

# Bump when the parsers' output changes, so the next run re-indexes unchanged bytes.
PARSER_VERSION = 1


class _Stage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def describe(self) -> str:
        """``name=value`` pairs of every field, sorted: this stage's part of a fingerprint."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.model_dump(mode="json").items()))


class ChunkingConfig(_Stage):
    """How segments are cut into chunks (``tasks.chunk``)."""

    size: int = Field(default=1000, gt=0)
    overlap: int = Field(default=200, ge=0)
    unit: Literal["chars", "tokens"] = "chars"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingConfig:
        if self.overlap >= self.size:
            raise ValueError(
                f"chunk overlap ({self.overlap}) must be smaller than chunk size ({self.size})"
            )
        return self


class ParsingConfig(_Stage):
    """Which parser output a document was indexed from (``tasks.parse``)."""

    version: int = PARSER_VERSION


class EmbeddingConfig(_Stage):
    """Which model embeds the chunks (``tasks.embed``); a collection keeps the one it was
    created with."""

    provider: str
    model: str

    def embedder(self) -> Embedder:
        """The process-wide embedder of this provider and model (loaded once)."""
        return get_embedder(self.provider, self.model)


class PipelineConfig(BaseModel):
    """The configuration of every stage of one run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunking: ChunkingConfig = ChunkingConfig()
    parsing: ParsingConfig = ParsingConfig()
    embedding: EmbeddingConfig

    @classmethod
    def from_settings(
        cls, settings: Settings, *, chunking: ChunkingConfig | None = None
    ) -> PipelineConfig:
        """The configuration the settings describe; ``chunking`` overrides theirs."""
        ingest = settings.ingest
        embedder = get_embedder()
        return cls(
            chunking=chunking
            or ChunkingConfig(
                size=ingest.chunk_size, overlap=ingest.chunk_overlap, unit=ingest.chunk_unit
            ),
            embedding=EmbeddingConfig(provider=embedder.provider, model=embedder.model),
        )

    def fingerprint(self) -> str:
        """What, besides the bytes, decides a document's chunks (stored as
        ``documents.pipeline``): ``chunk:overlap=200,size=1000,unit=chars;parse:version=1``."""
        return f"chunk:{self.chunking.describe()};parse:{self.parsing.describe()}"
