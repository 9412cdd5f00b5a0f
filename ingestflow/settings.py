"""Settings, one class per concern, read from the environment when first asked for.

Nothing is read at import time: ``get_settings()`` builds the settings once and caches them;
``get_settings.cache_clear()`` makes the next call read the environment again.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_data_dir
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseSettings):
    """Where the Postgres + pgvector database is.

    With no ``DATABASE_URL`` an embedded Postgres (pgserver) is started under ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_DB_", extra="ignore")

    url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "INGESTFLOW_DB_URL")
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(user_data_dir("ingestflow")) / "pgdata",
        description="Data directory of the embedded Postgres.",
    )
    pool_size: int = 5


class IngestSettings(BaseSettings):
    """Limits and shapes of the ingest pipeline."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_", extra="ignore")

    max_document_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    chunk_size: int = Field(default=1000, gt=0)
    chunk_overlap: int = Field(default=200, ge=0)
    chunk_unit: Literal["chars", "tokens"] = "chars"
    # Measured with bench/ on 1,000 SciFact documents: 128 instead of 32 cut the first ingest
    # from 13.4 to 8.3 s with the hash embedder (a quarter of the task runs) and let the model
    # batch texts of similar length from a larger pool.
    batch_size: int = Field(default=128, gt=0, description="Documents per micro-batch.")
    parse_workers: int = Field(default=2, gt=0, description="Documents parsed at once.")
    bulk_index_min_documents: int = Field(
        default=1000,
        ge=0,
        description="A run loading at least this many documents, and at least as many as the"
        " collection holds, rebuilds the vector index at the end instead of row by row; 0 never.",
    )
    index_build_memory: str = Field(
        default="1GB",
        pattern=r"^[1-9][0-9]*(kB|MB|GB)$",
        description="maintenance_work_mem for building a vector index.",
    )


class EmbeddingSettings(BaseSettings):
    """Which embedder a new collection uses and how requests are batched and retried."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_EMBED_", extra="ignore")

    provider: str = "local"
    model: str | None = Field(default=None, description="Model name; provider default if unset.")
    batch_size: int = Field(default=64, gt=0, description="Most texts per request or forward pass.")
    max_batch_tokens: int = Field(default=100_000, gt=0, description="Most tokens per request.")
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "INGESTFLOW_EMBED_OPENAI_BASE_URL"),
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "INGESTFLOW_EMBED_OPENAI_API_KEY"),
    )
    request_timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    max_retry_wait: float = Field(
        default=60.0, gt=0, description="Longest single backoff, seconds."
    )
    # Measured here: 2 threads embed 1.6-2x faster than 1 on the 2-core machine.
    torch_threads: int = Field(default=2, gt=0, description="Torch threads for the local model.")


_MIB = 1024 * 1024


class StoreSettings(BaseSettings):
    """Object stores: which Prefect blocks hold credentials, endpoints, transfer sizes.

    A ``*_block`` names a saved Prefect block, either as ``type-slug/name`` or as a bare name
    of the default type (``aws-credentials``, ``gcp-credentials``,
    ``azure-blob-storage-credentials``); bucket blocks (``s3-bucket/...``) work too, their
    credentials are used. Unset, each store falls back to its provider's own environment
    variables (``AWS_ACCESS_KEY_ID`` ..., ``GOOGLE_APPLICATION_CREDENTIALS`` or
    ``STORAGE_EMULATOR_HOST``, ``AZURE_STORAGE_CONNECTION_STRING``).
    """

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_STORE_", extra="ignore")

    s3_block: str | None = None
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, R2, moto), if not AWS."
    )
    s3_region: str | None = None
    gcs_block: str | None = None
    gcs_project: str | None = None
    azure_block: str | None = None
    # S3 needs parts of at least 5 MiB; GCS needs multiples of 256 KiB.
    part_bytes: int = Field(
        default=8 * _MIB,
        ge=5 * _MIB,
        multiple_of=256 * 1024,
        description="Bytes buffered per uploaded part or block: the memory a write holds.",
    )
    list_page_size: int = Field(default=1000, gt=0, le=1000, description="Objects per page.")


class SweepSettings(BaseSettings):
    """The scheduled ``sweep-bucket`` deployment: which prefix, into which collection, when."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_SWEEP_", extra="ignore")

    uri: str | None = Field(default=None, description="Prefix or folder to keep in step.")
    collection: str = "default"
    cron: str = "*/15 * * * *"
    max_delete_fraction: float = Field(default=0.2, ge=0.0, le=1.0)


class QueueSettings(BaseSettings):
    """Which queue backend runs jobs, and how to reach it."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_QUEUE_", extra="ignore")

    backend: Literal["prefect", "celery"] = Field(
        default="prefect",
        validation_alias=AliasChoices("QUEUE_BACKEND", "INGESTFLOW_QUEUE_BACKEND"),
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=AliasChoices("REDIS_URL", "INGESTFLOW_QUEUE_REDIS_URL"),
        description="Celery's broker and result backend.",
    )
    prefect_ui_url: str | None = Field(
        default=None,
        description="Prefect UI base URL for job links; from PREFECT_API_URL if unset.",
    )
    stuck_after_seconds: int = Field(
        default=900,
        gt=0,
        description="A queued or processing document whose job ended this long ago is re-queued.",
    )


class ApiSettings(BaseSettings):
    """The HTTP API: where uploads are kept, how big they may be, which URIs it may ingest,
    and the limits on each key (request rate) and tenant (active jobs)."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_API_", extra="ignore")

    upload_uri: str = Field(
        default_factory=lambda: (Path(user_data_dir("ingestflow")) / "uploads").as_uri(),
        description="Store prefix (folder, s3://, gs://, az://) that uploads are streamed to.",
    )
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_files_per_request: int = Field(default=1000, gt=0)
    file_roots: list[Path] = Field(
        default_factory=list,
        description="Local folders whose files may be ingested by URI; none by default.",
    )
    source_prefixes: list[str] = Field(
        default_factory=list,
        description="Object-store prefixes (s3://bucket/folder/) that may be ingested by URI;"
        " none listed: any object the server's credentials can read.",
    )
    max_request_bytes: int = Field(
        default=1024 * _MIB,
        gt=0,
        description="Most bytes in one request body, all files of a bulk upload together.",
    )
    rate_limit: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per API key (a token bucket); 0 turns it off.",
    )
    rate_burst: int = Field(
        default=60, ge=1, description="Requests a key may make at once before the rate applies."
    )
    max_active_jobs_per_tenant: int = Field(
        default=20,
        ge=0,
        description="Ingest jobs a tenant may have queued or running; 0 means no limit.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, GET /metrics wants it as a Bearer token (API keys never work).",
    )


class Settings:
    """The settings of every concern, built on first access."""

    def __init__(self) -> None:
        self.database = DatabaseSettings()
        self.ingest = IngestSettings()
        self.embedding = EmbeddingSettings()
        self.store = StoreSettings()
        self.sweep = SweepSettings()
        self.queue = QueueSettings()
        self.api = ApiSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
