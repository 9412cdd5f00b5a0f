"""The stages in order, with or without Prefect:

    fetch -> hash -> dedupe -> parse -> chunk -> embed -> upsert

``run_stages`` runs one micro-batch through them and ``run_batches`` runs many, deferring the
collection's vector index during a bulk load and preparing the next micro-batch (fetch to
chunk, in a second thread) while the current one is embedded and written. Both take the
stages to call: ``PLAIN`` are the plain functions (a benchmark or a script, no Prefect at
all); the flows hand in ``TASK_STAGES``, the same functions as Prefect task runs. The
sequence exists once.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, cast

from prefect import Task
from prefect.utilities.annotations import quote

from ingestflow.core.settings import IngestSettings
from storage.objectstore import canonical_uri
from storage.vector_index import DeferredVectorIndex
from tasks.chunk import chunk_documents, chunk_task
from tasks.dedupe import dedupe_documents, dedupe_task
from tasks.embed import embed_documents, embed_task
from tasks.fetch import fetch_documents, fetch_task, hash_documents, hash_task
from tasks.parse import parse_documents, parse_task
from tasks.upsert import upsert_documents, upsert_task
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


def _as_task_run(stage: Task[..., list[DocWork]]) -> Stage:
    """A stage task called with the batch quoted: Prefect passes it through without walking
    it (it would otherwise visit every document, chunk and vector looking for futures, which
    cost 20-50 ms per task run for a batch of 32 documents, more than the task run itself)."""

    def run(works: list[DocWork], ctx: StageContext) -> list[DocWork]:
        return stage(cast("list[DocWork]", quote(works)), ctx)

    return run


# The same stages as Prefect task runs: what the flows run.
TASK_STAGES: tuple[Stage, ...] = tuple(
    _as_task_run(t)
    for t in (fetch_task, hash_task, dedupe_task, parse_task, chunk_task, embed_task, upsert_task)
)
PREPARE = 5  # fetch .. chunk; the stages after them (embed, upsert) finish a micro-batch


def run_stages(
    works: list[DocWork], ctx: StageContext, stages: Sequence[Stage] = PLAIN
) -> list[DocWork]:
    """One micro-batch through every stage; fetched temp files are removed at the end."""
    return _finish(_prepare(works, ctx, stages), ctx, stages)


class _Stopped(Exception):
    """The run stopped while this micro-batch was being prepared."""


def _prepare(
    works: list[DocWork],
    ctx: StageContext,
    stages: Sequence[Stage],
    stop: threading.Event | None = None,
) -> list[DocWork]:
    for stage in stages[:PREPARE]:
        if stop is not None and stop.is_set():
            raise _Stopped  # before the next stage: dedupe must not claim for a stopped run
        works = stage(works, ctx)
    return works


def _finish(works: list[DocWork], ctx: StageContext, stages: Sequence[Stage]) -> list[DocWork]:
    try:
        for stage in stages[PREPARE:]:
            works = stage(works, ctx)
    finally:
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
    at_least: Callable[[], int] = lambda: 0,
) -> None:
    """Each micro-batch of sources through the stages as it arrives (``batches`` may be a
    generator: a sweep yields batches while it lists a bucket); ``on_batch`` sees each
    finished batch, in order. A run large enough (``total`` when known, else the sources seen
    so far, or ``at_least()``: the sources a sweep has listed so far) defers the collection's
    vector index and rebuilds it at the end.

    While one micro-batch is embedded and written, the next is fetched, parsed and chunked in
    a second thread (the stages keep their Prefect task runs: the thread runs in the flow's
    context). At most two micro-batches are in memory at once; the index changes and every
    write of documents happen in the calling thread, in order."""
    deferral = index_deferral(ctx, dimension=dimension, settings=settings)
    stop = threading.Event()
    ahead = ThreadPoolExecutor(1, thread_name_prefix="prepare")
    try:
        with deferral:
            seen = 0
            prepared: Future[list[DocWork]] | None = None
            for sources in batches:
                seen += len(sources)
                works = [
                    DocWork(source=s, metadata=metadata or {}, password=password) for s in sources
                ]
                # A batch whose preparation failed stops the run before the next is claimed.
                current = prepared.result() if prepared is not None else None
                run = contextvars.copy_context().run
                prepared = ahead.submit(run, _prepare, works, ctx, stages, stop)
                if current is not None:
                    on_batch(_finish(current, ctx, stages))
                deferral.before_batch(max(total or 0, seen, at_least()))
            if prepared is not None:
                on_batch(_finish(prepared.result(), ctx, stages))
    except BaseException:
        # A failure, or the run cancelled (a signal raised here): the preparation still
        # running stops before its next stage, and nobody waits for it.
        stop.set()
        ahead.shutdown(wait=False, cancel_futures=True)
        raise
    ahead.shutdown()


def index_deferral(
    ctx: StageContext, *, dimension: int, settings: IngestSettings
) -> DeferredVectorIndex:
    """The run's deferral of its collection's vector index (``storage.vector_index``), by the
    settings' bulk-load threshold and build memory."""
    return DeferredVectorIndex(
        collection_id=ctx.collection_id,
        dimension=dimension,
        min_documents=settings.bulk_index_min_documents,
        build_memory=settings.index_build_memory,
    )


def micro_batches(sources: Sequence[str], size: int) -> list[list[str]]:
    """``sources`` in input order, each once (two spellings of one file count once), in
    batches of ``size``."""
    first: dict[str, str] = {}
    for source in sources:
        first.setdefault(canonical_uri(source), source)
    unique = list(first.values())
    return [unique[i : i + size] for i in range(0, len(unique), size)]
