"""The dedupe step: skip sources whose bytes are already indexed, claim the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from prefect import task

from ingestflow.types import DocumentStatus
from storage.db import transaction
from storage.documents import claim_document
from tasks.options import stage_options
from tasks.work import DocWork, Stopwatch


def dedupe_documents(
    works: Sequence[DocWork],
    *,
    collection_id: int,
    pipeline: str,
    force: bool,
    flow_run_id: str | None,
) -> list[DocWork]:
    """Claim every active document in one transaction; unchanged ones leave the pipeline.

    ``pipeline`` fingerprints the parser and chunking settings: the same bytes chunked
    differently are not unchanged.
    """
    out = []
    with Stopwatch() as watch, transaction() as conn:
        for work in works:
            if not work.active:
                out.append(work)
                continue
            assert work.fetched is not None and work.sha256 is not None
            claim = claim_document(
                conn,
                collection_id=collection_id,
                source_uri=work.fetched.source_uri,
                sha256=work.sha256,
                pipeline=pipeline,
                size=work.fetched.size,
                metadata=work.metadata,
                force=force,
                flow_run_id=flow_run_id,
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


@task(**stage_options("dedupe", timeout_seconds=600))
def dedupe_task(
    works: list[DocWork], collection_id: int, pipeline: str, force: bool, flow_run_id: str | None
) -> list[DocWork]:
    # Claims are all-or-nothing: a database error rolls back the transaction and the
    # task retries it whole.
    return dedupe_documents(
        works, collection_id=collection_id, pipeline=pipeline, force=force, flow_run_id=flow_run_id
    )
