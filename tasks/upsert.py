"""The upsert step: swap each document's chunks in atomically and record every outcome.

An indexed document's row gets its chunk count, timings and the embedding tokens this run
spent on it; a failed one gets its reason and stable ``error_code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ingestflow.core.types import DocumentStatus
from storage.chunks import DocumentChunks, replace_chunks
from storage.db import transaction
from storage.documents import record_failure
from tasks.jobs import chunks_by_job
from tasks.options import stage_task
from tasks.work import INTERNAL_ERROR, DocWork, StageContext, Stopwatch


def upsert_documents(
    works: Sequence[DocWork], ctx: StageContext, *, final_attempt: bool = True
) -> list[DocWork]:
    """Write the micro-batch in one transaction: new chunk sets and failure reasons.

    A document that a newer run claimed in the meantime is left to that run and reported
    with the status the database holds for it.
    """
    collection_id, flow_run_id = ctx.collection_id, ctx.flow_run_id
    ready = [w for w in works if w.active]
    with Stopwatch() as watch, transaction() as conn:
        written = set(
            replace_chunks(
                conn, collection_id=collection_id, documents=[_as_chunks(w) for w in ready]
            )
        )
        for work in works:
            if work.status is DocumentStatus.FAILED:
                record_failure(
                    conn,
                    collection_id=collection_id,
                    source_uri=work.fetched.source_uri if work.fetched else work.source,
                    error=work.error or "failed",
                    error_code=work.error_code or INTERNAL_ERROR,
                    flow_run_id=flow_run_id,
                    metadata=work.metadata,
                )
    share = watch.seconds / max(len(ready), 1)
    counts = ((w.source, len(w.chunks or [])) for w in ready if w.document_id in written)
    chunks_by_job(ctx.jobs, counts, what="written", flush=True)
    out = []
    for work in works:
        if work.active:
            status = (
                DocumentStatus.INDEXED if work.document_id in written else DocumentStatus.PROCESSING
            )
            work = replace(work, status=status, vectors=None, timings=work.timed("upsert", share))
        out.append(work)
    return out


def _as_chunks(work: DocWork) -> DocumentChunks:
    assert work.document_id and work.sha256 and work.chunks is not None
    assert work.vectors is not None
    return DocumentChunks(
        document_id=work.document_id,
        sha256=work.sha256,
        media_type=work.media_type or "",
        chunks=work.chunks,
        vectors=work.vectors,
        timings={**work.timings},
        embedding_tokens=work.embedding_tokens,
    )


upsert_task = stage_task("upsert", timeout_seconds=3600)(upsert_documents)
