"""The sweep flow: keep a collection in step with a bucket prefix.

New objects are ingested, and changed ones (etag, size or modified time differ from what was
indexed) are re-indexed through the same stages as ``ingest_batch``: a touched-but-identical
object is fetched, found ``unchanged`` by its sha256 and never re-embedded. Documents whose
objects disappeared are retired. The listing is consumed page by page while micro-batches
are ingested, so a bucket of any size never sits in memory.

Deletion guard: nothing is deleted when the listing failed part-way, or when the deletions
would exceed ``max_delete_fraction`` of the live documents under the prefix. The run then
ends ``Failed`` with the reason in its logs and summary artifact, so it stands out in the UI.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.ingest import ingest_batches
from ingestflow.core.errors import IngestError
from ingestflow.core.settings import get_settings
from ingestflow.core.types import DocumentOutcome, DocumentStatus
from storage.db import transaction
from storage.documents import retire_unseen
from storage.migrate import ensure_schema
from storage.objectstore import ObjectInfo, canonical_uri, local_path, scheme_of, store_for
from storage.sweeps import (
    known_versions,
    live_under_prefix,
    mark_seen,
    record_versions,
    unseen_under_prefix,
)
from tasks.collections import collection_task
from tasks.config import PipelineConfig

_RETRY_STATES = {"failed", "deleted", "queued", "processing"}


class SweepGuardError(IngestError, code="sweep_guard", permanent=True):
    """The sweep refused to delete (the listing failed, or too much would go)."""


@dataclass
class SweepReport:
    uri: str
    collection: str
    listed: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    guard: str | None = None


@flow(name="sweep-bucket", flow_run_name="sweep {uri}", log_prints=False)
def sweep_bucket(
    uri: str,
    collection: str = "default",
    prune: bool = True,
    max_delete_fraction: float = 0.2,
    batch_size: int | None = None,
    page_size: int | None = None,
) -> SweepReport:
    """Ingest new and changed objects under ``uri`` and retire deleted ones.

    ``uri`` is a prefix: ``s3://bucket/docs/``, ``gs://...``, ``az://container/...`` or a
    local folder. With ``prune=False`` nothing is ever deleted.
    """
    ensure_schema()
    prefix = sweep_prefix(uri)
    report = SweepReport(uri=prefix, collection=collection)
    started = datetime.now(UTC)
    settings = get_settings()
    coll = collection_task(collection, "default", PipelineConfig.from_settings(settings).embedding)
    size = batch_size or settings.ingest.batch_size
    lister = _Lister(prefix, coll.id, started, report, page_size)
    result = ingest_batches(
        lister.batches(size), collection=collection, at_least=lambda: len(lister.candidates)
    )
    _count_outcomes(report, result.outcomes, lister)
    with transaction() as conn:
        record_versions(
            conn, collection_id=coll.id, versions=lister.versions(result.outcomes), seen_at=started
        )
    if prune:
        _retire(report, coll.id, prefix, started, max_delete_fraction, lister.error)
    _publish(report)
    if report.guard:
        raise SweepGuardError(report.guard)
    return report


def sweep_prefix(uri: str) -> str:
    """The canonical prefix; a local folder gets a trailing slash so that ``docs`` does not
    also cover ``docs-old``."""
    prefix = canonical_uri(uri)
    if scheme_of(uri) == "file" and local_path(uri).expanduser().is_dir():
        prefix = prefix.rstrip("/") + "/"
    return prefix


class _Lister:
    """Turns the store's paginated listing into micro-batches of candidate sources."""

    def __init__(
        self,
        prefix: str,
        collection_id: int,
        started: datetime,
        report: SweepReport,
        page_size: int | None,
    ) -> None:
        self.prefix, self.collection_id, self.started = prefix, collection_id, started
        self.report, self.page_size = report, page_size
        self.candidates: dict[str, ObjectInfo] = {}
        self.new: set[str] = set()
        self.error: str | None = None

    def batches(self, size: int) -> Iterator[list[str]]:
        pending: list[str] = []
        try:
            for page in store_for(self.prefix).list_pages(self.prefix, page_size=self.page_size):
                pending.extend(self._select(page))
                while len(pending) >= size:
                    yield pending[:size]
                    pending = pending[size:]
        except Exception as exc:  # noqa: BLE001 - any listing failure arms the guard
            reason = exc.reason if isinstance(exc, IngestError) else f"{type(exc).__name__}: {exc}"
            self.error = (
                f"listing {self.prefix} failed after {self.report.listed} objects: {reason}"
            )
        if pending:
            yield pending

    def _select(self, page: list[ObjectInfo]) -> list[str]:
        infos = {canonical_uri(info.uri): info for info in page}
        self.report.listed += len(infos)
        with transaction() as conn:
            known = known_versions(conn, collection_id=self.collection_id, uris=list(infos))
            mark_seen(
                conn, collection_id=self.collection_id, uris=list(known), seen_at=self.started
            )
        chosen = []
        for uri, info in infos.items():
            k = known.get(uri)
            if k is None:
                self.new.add(uri)
            elif k.status not in _RETRY_STATES and (k.etag, k.size, k.modified) == (
                info.etag,
                info.size,
                info.modified,
            ):
                self.report.unchanged += 1
                continue
            self.candidates[uri] = info
            chosen.append(uri)
        return chosen

    def versions(
        self, outcomes: Sequence[DocumentOutcome]
    ) -> list[tuple[str, str | None, datetime | None]]:
        """Listed versions to store; failed documents keep none, so the next sweep retries."""
        out: list[tuple[str, str | None, datetime | None]] = []
        for o in outcomes:
            info = self.candidates.get(o.source_uri)
            if info is not None:
                ok = o.status is not DocumentStatus.FAILED
                out.append((o.source_uri, info.etag if ok else None, info.modified))
        return out


def _count_outcomes(
    report: SweepReport, outcomes: Sequence[DocumentOutcome], lister: _Lister
) -> None:
    for o in outcomes:
        if o.status is DocumentStatus.FAILED:
            report.failed.append((o.source_uri, o.error or "failed"))
        elif o.status is DocumentStatus.UNCHANGED:
            report.unchanged += 1
        elif o.source_uri in lister.new:
            report.added += 1
        else:
            report.updated += 1


def _retire(
    report: SweepReport,
    collection_id: int,
    prefix: str,
    started: datetime,
    max_fraction: float,
    listing_error: str | None,
) -> None:
    with transaction() as conn:
        doomed = unseen_under_prefix(
            conn, collection_id=collection_id, prefix=prefix, since=started
        )
        live = live_under_prefix(conn, collection_id=collection_id, prefix=prefix)
        if listing_error:
            if doomed:
                report.guard = f"{listing_error}; kept {doomed} documents that were not listed"
            else:
                report.guard = listing_error
            return
        if doomed and doomed > max_fraction * live:
            report.guard = (
                f"refusing to delete {doomed} of {live} documents under {prefix}"
                f" (more than max_delete_fraction={max_fraction:g}); nothing was deleted"
            )
            return
        report.deleted = len(
            retire_unseen(conn, collection_id=collection_id, prefix=prefix, since=started)
        )


def _publish(report: SweepReport) -> None:
    logger = get_run_logger()
    counts = (
        f"listed {report.listed}, added {report.added}, updated {report.updated},"
        f" unchanged {report.unchanged}, deleted {report.deleted}, failed {len(report.failed)}"
    )
    logger.info("sweep of %s into %r: %s", report.uri, report.collection, counts)
    if report.guard:
        logger.error("deletion guard: %s", report.guard)
    lines = [f"**Sweep of `{report.uri}` into `{report.collection}`**", "", counts]
    if report.guard:
        lines += ["", f"**Deletion guard held:** {report.guard}"]
    if report.failed:
        lines += ["", "| source | reason |", "|---|---|"]
        lines += [f"| {u} | {r.replace('|', '/')} |" for u, r in report.failed[:200]]
    create_markdown_artifact(
        "\n".join(lines), key="sweep-summary", description=f"sweep of {report.uri}"
    )
