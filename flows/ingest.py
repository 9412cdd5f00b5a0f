"""The ingest flows: one document, or many in micro-batches, through the seven stages.

    fetch -> hash -> dedupe -> parse -> chunk -> embed -> upsert

Each stage is one task run over a micro-batch of documents (a one-document batch for
``ingest_document``), so a large batch costs a few task runs per micro-batch instead of
seven per document, while each document keeps its own status, error and timings.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote
from pydantic import SecretStr

from ingestflow.progress import Progress, report
from ingestflow.settings import IngestSettings, get_settings
from ingestflow.types import DocumentOutcome, DocumentStatus, IngestResult
from storage.collections import Collection, ensure_collection
from storage.db import transaction
from storage.migrate import ensure_schema
from storage.objectstore import canonical_uri
from storage.vector_index import DeferredVectorIndex, heal_vector_index
from tasks.chunk import chunk_task
from tasks.dedupe import dedupe_task
from tasks.embed import embed_task
from tasks.embedders import Embedder, get_embedder
from tasks.fetch import fetch_task, hash_task
from tasks.options import stage_options
from tasks.parse import PARSER_VERSION, parse_task
from tasks.upsert import upsert_task
from tasks.work import DocWork, split_password


@flow(name="ingest-document", flow_run_name="ingest {source}", log_prints=False)
def ingest_document(
    source: str,
    collection: str = "default",
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    password: SecretStr | None = None,
    tenant: str = "default",
) -> IngestResult:
    """Ingest one document (a path or URI) into ``collection`` of ``tenant``.

    Identical bytes already indexed are skipped as ``unchanged`` unless ``force``; changed
    bytes replace the document's chunks atomically. A bad document ends ``failed`` with a
    reason instead of raising. ``password`` opens an encrypted PDF; as a ``SecretStr`` it is
    masked in the run's stored parameters.
    """
    return _ingest(
        [source],
        collection=collection,
        metadata=metadata,
        force=force,
        batch_size=1,
        password=password,
        tenant=tenant,
    )


@flow(name="ingest-batch", flow_run_name="ingest {collection}", log_prints=False)
def ingest_batch(
    sources: list[str],
    collection: str = "default",
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    batch_size: int | None = None,
    password: SecretStr | None = None,
    tenant: str = "default",
) -> IngestResult:
    """Ingest many documents in one flow run, ``batch_size`` documents per micro-batch.

    The embedding model is loaded once, and the chunks of a micro-batch's documents share
    embedding batches. Every document gets its own outcome.
    """
    size = batch_size or get_settings().ingest.batch_size
    return _ingest(
        sources,
        collection=collection,
        metadata=metadata,
        force=force,
        batch_size=size,
        password=password,
        tenant=tenant,
    )


def _ingest(
    sources: Sequence[str],
    *,
    collection: str,
    metadata: dict[str, Any] | None,
    force: bool,
    batch_size: int,
    password: SecretStr | None,
    tenant: str,
) -> IngestResult:
    unique = unique_sources(sources)
    batches = (unique[i : i + batch_size] for i in range(0, len(unique), batch_size))
    return ingest_batches(
        batches,
        collection=collection,
        metadata=metadata,
        force=force,
        total=len(unique),
        password=password.get_secret_value() if password else None,
        tenant=tenant,
    )


def ingest_batches(
    batches: Iterable[list[str]],
    *,
    collection: str,
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    total: int | None = None,
    password: str | None = None,
    tenant: str = "default",
) -> IngestResult:
    """Run the stages over each micro-batch of sources as it arrives; call inside a flow.

    ``batches`` may be a generator (a sweep yields batches while it lists a bucket);
    ``total``, when known, drives the progress artifact.
    """
    ensure_schema()
    embedder = get_embedder()
    coll = collection_task(collection, embedder.provider, embedder.model, tenant)
    tracker = _Tracker(total)
    public, password = split_password(metadata, password)
    ingest = get_settings().ingest
    deferral = DeferredVectorIndex(
        collection_id=coll.id,
        dimension=coll.dimension,
        min_documents=ingest.bulk_index_min_documents,
        build_memory=ingest.index_build_memory,
    )
    with tempfile.TemporaryDirectory(prefix="ingestflow-") as tmp, deferral:
        seen = 0
        for sources in batches:
            seen += len(sources)
            deferral.before_batch(max(total or 0, seen))
            works = [DocWork(source=s, metadata=public, password=password) for s in sources]
            tracker.advance(_run_stages(works, coll, embedder, tmp, force))
    result = IngestResult(collection, tracker.outcomes, flow_run_id=flow_run.id)
    _summarise(result)
    return result


def _run_stages(
    works: list[DocWork], coll: Collection, embedder: Embedder, tmp: str, force: bool
) -> list[DocWork]:
    ingest = get_settings().ingest
    run_id = flow_run.id
    works = fetch_task(_unvisited(works), tmp, ingest.max_document_bytes)
    works = hash_task(_unvisited(works))
    works = dedupe_task(_unvisited(works), coll.id, pipeline_fingerprint(ingest), force, run_id)
    works = parse_task(_unvisited(works), ingest.parse_workers)
    works = chunk_task(
        _unvisited(works),
        ingest.chunk_size,
        ingest.chunk_overlap,
        ingest.chunk_unit,
        embedder.provider,
        embedder.model,
    )
    works = embed_task(_unvisited(works), embedder.provider, embedder.model)
    works = upsert_task(_unvisited(works), coll.id, run_id)
    for work in works:
        if work.fetched is not None:
            work.fetched.path.unlink(missing_ok=True)
    return works


def _unvisited(works: list[DocWork]) -> list[DocWork]:
    """The batch as a task argument Prefect passes through without walking it: it would
    otherwise visit every document, chunk and vector looking for futures, which cost 20-50 ms
    per task run for a batch of 32 documents, more than the task run itself."""
    return cast("list[DocWork]", quote(works))


def pipeline_fingerprint(ingest: IngestSettings) -> str:
    """What, besides the bytes, decides a document's chunks."""
    return (
        f"parse-v{PARSER_VERSION};"
        f"chunk={ingest.chunk_unit}:{ingest.chunk_size}/{ingest.chunk_overlap}"
    )


def open_collection(name: str, embedder: Embedder, *, tenant: str = "default") -> Collection:
    """The collection, created for ``embedder`` on first use; a different model is an error."""
    with transaction() as conn:
        return ensure_collection(
            conn,
            name=name,
            tenant=tenant,
            provider=embedder.provider,
            model=embedder.model,
            dimension=embedder.dimension,
        )


@task(**stage_options("collection", timeout_seconds=4 * 3600))
def collection_task(name: str, provider: str, model: str, tenant: str = "default") -> Collection:
    """``open_collection`` as a retried task (creating a collection asks the provider for the
    model's dimension, and a flaky provider must not fail the whole run on that one request),
    which also rebuilds a vector index that an interrupted bulk load left missing."""
    coll = open_collection(name, get_embedder(provider, model), tenant=tenant)
    heal_vector_index(
        collection_id=coll.id,
        dimension=coll.dimension,
        build_memory=get_settings().ingest.index_build_memory,
    )
    return coll


def unique_sources(sources: Sequence[str]) -> list[str]:
    """Sources in input order, each once (two spellings of one file count once)."""
    seen: dict[str, str] = {}
    for source in sources:
        seen.setdefault(canonical_uri(source), source)
    return list(seen.values())


class _Tracker:
    """Keeps the outcomes and reports progress to the Prefect UI and to local listeners."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.outcomes: list[DocumentOutcome] = []
        self.artifact_id: UUID | None = None
        if total:
            # Called from a sync flow, Prefect's dual sync/async helpers return plain values.
            self.artifact_id = cast(
                UUID, create_progress_artifact(progress=0.0, description="documents done")
            )

    def advance(self, works: list[DocWork]) -> None:
        self.outcomes.extend(w.outcome() for w in works)
        done = len(self.outcomes)
        if self.artifact_id is not None and self.total:
            update_progress_artifact(self.artifact_id, progress=100.0 * done / self.total)
        report(Progress(done=done, total=self.total or done, outcomes=list(self.outcomes)))


def _summarise(result: IngestResult) -> None:
    logger = get_run_logger()
    counts = {s.value: result.count(s) for s in DocumentStatus if result.count(s)}
    logger.info("ingested into %r: %s", result.collection, counts)
    lines = ["| status | documents |", "|---|---|"]
    lines += [f"| {status} | {n} |" for status, n in counts.items()]
    if result.failed:
        lines += ["", "**Failures**", "", "| source | reason |", "|---|---|"]
        for o in result.failed[:200]:
            logger.warning("failed: %s: %s", o.source_uri, o.error)
            lines.append(f"| {_cell(o.source_uri)} | {_cell(o.error or '')} |")
    create_markdown_artifact("\n".join(lines), description=f"ingest into {result.collection}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
