"""The stages in order, with or without Prefect:

    fetch -> hash -> dedupe -> parse -> chunk -> embed -> upsert

``run_stages`` runs one micro-batch through them and ``run_batches`` runs many, deferring the
collection's vector index during a bulk load. Both take the stages to call: ``PLAIN`` are the
plain functions (a benchmark or a script, no Prefect at all); the flows hand in the same
functions wrapped as Prefect tasks (``flows.ingest``). The sequence exists once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ingestflow.core.settings import IngestSettings
from storage.objectstore import canonical_uri
from storage.vector_index import DeferredVectorIndex
from tasks.chunk import chunk_documents
from tasks.dedupe import dedupe_documents
from tasks.embed import embed_documents
from tasks.fetch import fetch_documents, hash_documents
from tasks.parse import parse_documents
from tasks.upsert import upsert_documents
from tasks.work import DocWork, StageContext


class Stage(Protocol):
    def __call__(self, works: list[DocWork], ctx: StageContext, /) -> list[DocWork]: ...


PLAIN: tuple[Stage, ...] = (
    fetch_documents,
    hash_documents,
    dedupe_documents,
    parse_documents,
    chunk_documents,
    embed_documents,
    upsert_documents,
)


def run_stages(
    works: list[DocWork], ctx: StageContext, stages: Sequence[Stage] = PLAIN
) -> list[DocWork]:
    """One micro-batch through every stage; fetched temp files are removed at the end."""
    for stage in stages:
        works = stage(works, ctx)
    for work in works:
        if work.fetched is not None:
            work.fetched.path.unlink(missing_ok=True)
    return works


def run_batches(
    batches: Iterable[list[str]],
    ctx: StageContext,
    *,
    dimension: int,
    settings: IngestSettings,
    metadata: dict[str, Any] | None = None,
    password: str | None = None,
    total: int | None = None,
    stages: Sequence[Stage] = PLAIN,
    on_batch: Callable[[list[DocWork]], None] = lambda works: None,
) -> None:
    """Each micro-batch of sources through ``run_stages`` as it arrives (``batches`` may be a
    generator: a sweep yields batches while it lists a bucket); ``on_batch`` sees each
    finished batch. A run large enough (``total`` when known, else the sources seen so far)
    defers the collection's vector index and rebuilds it at the end."""
    deferral = DeferredVectorIndex(
        collection_id=ctx.collection_id,
        dimension=dimension,
        min_documents=settings.bulk_index_min_documents,
        build_memory=settings.index_build_memory,
    )
    with deferral:
        seen = 0
        for sources in batches:
            seen += len(sources)
            deferral.before_batch(max(total or 0, seen))
            works = [DocWork(source=s, metadata=metadata or {}, password=password) for s in sources]
            on_batch(run_stages(works, ctx, stages))


def micro_batches(sources: Sequence[str], size: int) -> list[list[str]]:
    """``sources`` in input order, each once (two spellings of one file count once), in
    batches of ``size``."""
    first: dict[str, str] = {}
    for source in sources:
        first.setdefault(canonical_uri(source), source)
    unique = list(first.values())
    return [unique[i : i + size] for i in range(0, len(unique), size)]
