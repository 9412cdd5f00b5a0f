"""The ingest flows: one document, or many in micro-batches, through the seven stages.

    fetch -> hash -> dedupe -> parse -> chunk -> embed -> upsert

Each stage is one task run over a micro-batch of documents (a one-document batch for
``ingest_document``), so a large batch costs a few task runs per micro-batch instead of
seven per document, while each document keeps its own status, error and timings.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from pydantic import SecretStr

from flows.fan_out import fan_out, should_fan_out
from ingestflow.core.errors import DocumentsFailedError
from ingestflow.core.progress import Progress, report
from ingestflow.core.settings import get_settings
from ingestflow.core.types import DocumentOutcome, DocumentStatus, IngestResult
from storage.migrate import ensure_schema
from tasks.collections import collection_task
from tasks.config import ChunkingConfig, PipelineConfig
from tasks.jobs import ingest_outcome, job_ended, job_span, job_started, span_outcome
from tasks.stages import TASK_STAGES, micro_batches, run_batches
from tasks.work import DocWork, StageContext, describe_error, split_password


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
    return ingest_batch.fn([source], collection, metadata, force, 1, password, tenant)


@flow(name="ingest-batch", flow_run_name="ingest {collection}", log_prints=False)
def ingest_batch(
    sources: list[str],
    collection: str = "default",
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    batch_size: int | None = None,
    password: SecretStr | None = None,
    tenant: str = "default",
    chunking: ChunkingConfig | None = None,
    jobs: dict[str, list[str]] | None = None,
) -> IngestResult:
    """Ingest many documents in one flow run, ``batch_size`` documents per micro-batch.

    The embedding model is loaded once, and the chunks of a micro-batch's documents share
    embedding batches. Every document gets its own outcome. ``chunking`` overrides the
    chunking settings for this run. ``jobs`` names the jobs this run does, each with its
    sources (several when submissions were coalesced); each job's record follows its own
    documents, and the run ends ``Failed`` when every document of every job failed.
    """
    batches = micro_batches(sources, batch_size or get_settings().ingest.batch_size)
    return ingest_batches(
        batches,
        collection=collection,
        metadata=metadata,
        force=force,
        total=sum(len(b) for b in batches),
        password=password.get_secret_value() if password else None,
        tenant=tenant,
        chunking=chunking,
        jobs=jobs,
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
    chunking: ChunkingConfig | None = None,
    jobs: dict[str, list[str]] | None = None,
    at_least: Callable[[], int] = lambda: 0,
) -> IngestResult:
    """Run the stages, as Prefect tasks, over each micro-batch of sources as it arrives; call
    inside a flow. ``total``, when known, drives the progress artifact; ``at_least()``, when
    the total is not known, is how many sources the run knows of so far (a sweep's listing),
    which lets a large run defer the vector index from its first batch. The records of the
    ``jobs``, when there are any, follow their documents."""
    ensure_schema()
    jobs = jobs or {}
    with job_span(list(jobs), kind="ingest", tenant=tenant, collection=collection) as span:
        # A job cancelled while its run waited (it shared the run with others) is left out.
        cancelled = [job for job in jobs if not job_started(job, flow_run_id=flow_run.id)]
        if cancelled:
            skipped = {source for job in cancelled for source in jobs[job]}
            batches = _without(batches, skipped)
            total = None if total is None else total - len(skipped)
            jobs = {job: names for job, names in jobs.items() if job not in cancelled}
        job_ids = list(jobs)
        try:
            result, sources = _ingest(
                batches,
                collection=collection,
                metadata=metadata,
                force=force,
                total=total,
                password=password,
                tenant=tenant,
                chunking=chunking,
                jobs=jobs,
                at_least=at_least,
            )
        except BaseException as exc:
            for job_id in job_ids:
                job_ended(job_id, "failed", describe_error(exc))
            raise
        state, message, documents = ingest_outcome(result.outcomes)
        span_outcome(span, state, documents)
        for job_id, outcomes in _by_job(result.outcomes, sources, jobs).items():
            job_ended(job_id, *ingest_outcome(outcomes))
    if job_ids and state == "failed":
        raise DocumentsFailedError(message or "every document failed")
    return result


def _without(batches: Iterable[list[str]], skipped: set[str]) -> Iterator[list[str]]:
    for batch in batches:
        kept = [source for source in batch if source not in skipped]
        if kept:
            yield kept


def _by_job(
    outcomes: list[DocumentOutcome], sources: list[str], jobs: dict[str, list[str]]
) -> dict[str, list[DocumentOutcome]]:
    """Each job's outcomes, by the source each outcome is for (as the job named it)."""
    job_of = {source: job for job, names in jobs.items() for source in names}
    found: dict[str, list[DocumentOutcome]] = {job: [] for job in jobs}
    for source, outcome in zip(sources, outcomes, strict=True):
        if source in job_of:
            found[job_of[source]].append(outcome)
    return found


def _ingest(
    batches: Iterable[list[str]],
    *,
    collection: str,
    metadata: dict[str, Any] | None,
    force: bool,
    total: int | None,
    password: str | None,
    tenant: str,
    chunking: ChunkingConfig | None,
    jobs: dict[str, list[str]],
    at_least: Callable[[], int],
) -> tuple[IngestResult, list[str]]:
    """The run's result, and the source (as given) of each of its outcomes."""
    settings = get_settings()
    config = PipelineConfig.from_settings(settings, chunking=chunking)
    coll = collection_task(collection, tenant, config.embedding)
    tracker = _Tracker(total)
    public, password = split_password(metadata, password)
    with tempfile.TemporaryDirectory(prefix="ingestflow-") as tmp:
        ctx = StageContext(
            coll.id,
            config,
            Path(tmp),
            settings.ingest,
            force,
            flow_run.id,
            {source: job for job, sources in jobs.items() for source in sources},
            tenant,
        )
        if should_fan_out(settings, total=total, password=password):
            for each in fan_out(
                batches,
                ctx,
                dimension=coll.dimension,
                settings=settings,
                metadata=public,
                chunking=chunking,
                total=total,
                stages=TASK_STAGES,
                on_progress=tracker.show,
                at_least=at_least,
            ):
                tracker.add(each.source, each.outcome)
            tracker.show(len(tracker.outcomes), outcomes_known=True)
        else:
            run_batches(
                batches,
                ctx,
                dimension=coll.dimension,
                settings=settings.ingest,
                metadata=public,
                password=password,
                total=total,
                stages=TASK_STAGES,
                on_batch=tracker.advance,
                at_least=at_least,
            )
    result = IngestResult(collection, tracker.outcomes, flow_run_id=flow_run.id)
    _summarise(result)
    return result, tracker.sources


class _Tracker:
    """Keeps the outcomes and reports progress to the Prefect UI and to local listeners."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.outcomes: list[DocumentOutcome] = []
        self.sources: list[str] = []
        self.artifact_id: UUID | None = None
        self.shown = 0
        if total:
            # Called from a sync flow, Prefect's dual sync/async helpers return plain values.
            self.artifact_id = cast(
                UUID, create_progress_artifact(progress=0.0, description="documents done")
            )

    def advance(self, works: list[DocWork]) -> None:
        """A micro-batch of this process's has finished."""
        for work in works:
            self.add(work.source, work.outcome())
        self.show(len(self.outcomes), outcomes_known=True)

    def add(self, source: str, outcome: DocumentOutcome) -> None:
        self.outcomes.append(outcome)
        self.sources.append(source)

    def show(self, done: int, *, outcomes_known: bool = False) -> None:
        """``done`` documents have finished (in this process, or in the parts of a
        fanned-out run, which are counted before their outcomes are gathered; reported again
        once they are)."""
        if done == self.shown and not outcomes_known:
            return
        self.shown = done
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
