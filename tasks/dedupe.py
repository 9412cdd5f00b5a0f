"""The dedupe step: skip sources whose bytes are already indexed, claim the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ingestflow.core.types import DocumentStatus
from storage.db import transaction
from storage.documents import claim_document
from tasks.options import stage_task
from tasks.work import DocWork, StageContext, Stopwatch


def dedupe_documents(
    works: Sequence[DocWork], ctx: StageContext, *, final_attempt: bool = True
) -> list[DocWork]:
    """Claim every active document in one transaction; unchanged ones leave the pipeline.

    The run's pipeline fingerprint (``ctx.config.fingerprint()``) names the parser and chunking
    settings: the same bytes chunked differently are not unchanged. Claims are
    all-or-nothing: a database error rolls the transaction back and the task retries it whole.
    """
    pipeline = ctx.config.fingerprint()
    out = []
    with Stopwatch() as watch, transaction() as conn:
        for work in works:
            if not work.active:
                out.append(work)
                continue
            assert work.fetched is not None and work.sha256 is not None
            claim = claim_document(
                conn,
                collection_id=ctx.collection_id,
                source_uri=work.fetched.source_uri,
                sha256=work.sha256,
                pipeline=pipeline,
                size=work.fetched.size,
                metadata=work.metadata,
                force=ctx.force,
                flow_run_id=ctx.flow_run_id,
            )
            status = DocumentStatus.UNCHANGED if claim.unchanged else DocumentStatus.PROCESSING
            out.append(
                replace(
                    work,
                    document_id=claim.document_id,
                    status=status,
                    chunk_count=claim.chunk_count,
                )
            )
    share = watch.seconds / max(len(out), 1)
    return [replace(w, timings=w.timed("dedupe", share)) for w in out]


dedupe_task = stage_task("dedupe", timeout_seconds=600)(dedupe_documents)
