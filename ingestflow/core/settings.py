"""Settings, one class per concern, read from the environment when first asked for.

Nothing is read at import time: ``get_settings()`` builds the settings once and caches them;
``get_settings.cache_clear()`` makes the next call read the environment again. A value that
does not validate is a ``ConfigError`` naming its variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

from platformdirs import user_data_dir
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingestflow.core.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)


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
    fan_out_helpers: int = Field(
        default=3,
        ge=0,
        description="Helper runs a large job asks its queue backend for, so other workers of"
        " the pool take parts of it; 0 never splits a job.",
    )
    fan_out_part_documents: int = Field(
        default=512, gt=0, description="Documents per part of a split job."
    )
    fan_out_stale_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A part whose worker has been silent this long is taken again by another.",
    )

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, overlap: int, info: ValidationInfo) -> int:
        size = info.data.get("chunk_size")
        if size is not None and overlap >= size:
            raise ValueError(f"chunk overlap ({overlap}) must be smaller than chunk size ({size})")
        return overlap


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
    concurrent_requests: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Embedding requests in flight at once per process (remote providers and"
        " the model server; a model loaded in the process embeds one batch at a time).",
    )
    requests_per_minute: int | None = Field(
        default=None, gt=0, description="The provider's request budget, shared by all workers."
    )
    tokens_per_minute: int | None = Field(
        default=None, gt=0, description="The provider's token budget, shared by all workers."
    )
    budget_window_seconds: float = Field(
        default=60,
        gt=0,
        le=3600,
        description="The window the provider counts its limits over; the budgets are the"
        " per-minute figures scaled to it (Azure OpenAI checks over 10 s).",
    )
    budget_url: SecretStr | None = Field(
        default=None,
        description="Where the shared budgets and Retry-After pauses live: a Redis URL, or"
        " memory:// for each process on its own (default: the queue's REDIS_URL with the"
        " Celery backend or a budget set, else memory://).",
    )
    model_server_url: str | None = Field(
        default=None,
        description="The local provider's model server (`ingestflow model-server`); "
        "unset, each process loads the model itself.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="The local model's arithmetic: auto is bf16 on CPUs that have it"
        " (AVX512-BF16, AMX), else fp32.",
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

    # Any registered backend (``ingestflow.queue_backends`` entry points): checked when used.
    backend: str = Field(
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
    warm_processes: int | None = Field(
        default=None,
        ge=0,
        description="Flow-run processes the served runner keeps ready (default: as many as"
        " runs it may run at once; 0: a new process for each run).",
    )
    prefect_server: Literal["background", "ephemeral"] = Field(
        default="background",
        description="With no PREFECT_API_URL and nothing answering on prefect_port:"
        " background starts `prefect server start` there, detached, and later calls and"
        " processes reuse it; ephemeral uses Prefect's temporary in-process server each time.",
    )
    prefect_port: int = Field(
        default=4200, gt=0, lt=65536, description="The local Prefect server's port."
    )
    coalesce_ms: float = Field(
        default=100,
        ge=0,
        le=10_000,
        description="Ingest jobs submitted this close together share one run (0: never).",
    )


class CelerySettings(BaseSettings):
    """Celery-only knobs; the Redis URL itself is ``REDIS_URL`` (``QueueSettings``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_CELERY_", extra="ignore")

    visibility_timeout: int = Field(
        default=3 * 3600,
        gt=0,
        description="Seconds before an unacknowledged job (its worker died) is re-queued;"
        " must exceed the longest job.",
    )


class ParseSettings(BaseSettings):
    """Limits of the parser worker processes, per document (see ``tasks.sandbox``)."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_PARSE_", extra="ignore")

    memory_mb: float = Field(default=2048, gt=0, allow_inf_nan=False)
    cpu_seconds: float = Field(default=120, gt=0, allow_inf_nan=False)
    timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    max_chars: float = Field(default=50_000_000, gt=0, allow_inf_nan=False)
    # Long-lived parser processes may leak (caches in the libraries); a fresh one is cheap.
    jobs_per_worker: float = Field(default=500, gt=0, allow_inf_nan=False)
    isolation: Literal["process", "none"] = "process"
    # Comma-separated modules each worker imports, e.g. ones registering parser plugins.
    preload: str = ""

    @field_validator("isolation", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def preload_modules(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.preload.split(",") if name.strip())


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
    password_ttl_seconds: int = Field(
        default=3600,
        gt=0,
        description="How long a document's password, sent with it, waits for its run to read it.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="When set, GET /metrics wants it as a Bearer token (API keys never work).",
    )


class JobSettings(BaseSettings):
    """How long job records are kept."""

    model_config = SettingsConfigDict(env_prefix="INGESTFLOW_JOBS_", extra="ignore")

    retention_days: float = Field(
        default=30,
        ge=0,
        allow_inf_nan=False,
        description="Ended jobs older than this are deleted, with their Prefect flow runs and"
        " Celery results; 0 keeps them forever.",
    )


class TelemetrySettings(BaseSettings):
    """Traces and error reports: OpenTelemetry's and Sentry's own variables, both off unless
    set."""

    model_config = SettingsConfigDict(extra="ignore")

    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ),
        description="An OTLP/HTTP receiver (e.g. http://collector:4318): spans are exported.",
    )
    service_name: str = Field(default="ingestflow", validation_alias="OTEL_SERVICE_NAME")
    sentry_dsn: SecretStr | None = Field(
        default=None,
        validation_alias="SENTRY_DSN",
        description="Errors are reported to this Sentry project (needs ingestflow[sentry]).",
    )


class Settings:
    """The settings of every concern, built on first access."""

    def __init__(self) -> None:
        self.database = _build(DatabaseSettings)
        self.ingest = _build(IngestSettings)
        self.embedding = _build(EmbeddingSettings)
        self.store = _build(StoreSettings)
        self.sweep = _build(SweepSettings)
        self.queue = _build(QueueSettings)
        self.celery = _build(CelerySettings)
        self.parse = _build(ParseSettings)
        self.api = _build(ApiSettings)
        self.jobs = _build(JobSettings)
        self.telemetry = _build(TelemetrySettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def _build(cls: type[S]) -> S:
    """``cls()`` from the environment; an invalid value is a ``ConfigError`` that names its
    variable and what is wrong, never the value (it may be a secret)."""
    try:
        return cls()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{_variable(cls, name)}: {message}") from None


def _variable(cls: type[BaseSettings], field: str) -> str:
    """The environment variable a field is read from (its first alias, else prefix + name)."""
    info = cls.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    prefix = str(cls.model_config.get("env_prefix", ""))
    return (prefix + field).upper()
