"""The embed step: chunks -> vectors, through the vector cache and the collection's embedder.

All chunks of a micro-batch are embedded together, so many small documents fill whole model
batches. Texts already in the cache, or repeated within the batch, are embedded once. Each
document is charged the tokens of the texts actually sent for it (``embedding_tokens``): a
cache hit costs nothing, and a text shared by several documents of the batch is charged once,
to the first of them, so the charges add up to what the provider was sent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from ingestflow.core.errors import is_permanent
from storage.db import transaction
from storage.embedding_cache import cached_vectors, store_vectors
from tasks.embedders import Embedder
from tasks.jobs import chunks_by_job
from tasks.options import stage_task
from tasks.work import DocWork, StageContext, Stopwatch, describe_error, error_code


def embed_documents(
    works: Sequence[DocWork], ctx: StageContext, *, final_attempt: bool = True
) -> list[DocWork]:
    """Attach one vector per chunk to every active document, embedded by the run's model.

    A provider failure affects the whole micro-batch: it is raised for a retry, and on the
    final attempt (or when permanent) every active document fails with the reason.
    """
    embedder = ctx.config.embedding.embedder()
    active = [w for w in works if w.active and w.chunks]
    try:
        with Stopwatch() as watch:
            vectors, sent = _vectors_by_hash(active, embedder, ctx) if active else ({}, {})
    except Exception as exc:
        if not (is_permanent(exc) or final_attempt):
            raise
        reason, code = f"embedding failed: {describe_error(exc)}", error_code(exc)
        return [w.failed(reason, code) if w.active and w.chunks else w for w in works]
    total = sum(len(w.chunks or []) for w in active)
    uncharged = dict(sent)  # popped as charged, so a text shared by documents counts once
    out = []
    for work in works:
        if not work.active:
            out.append(work)
            continue
        hashes = [c.content_hash for c in work.chunks or []]
        if not hashes:
            out.append(replace(work, vectors=np.empty((0, embedder.dimension), np.float32)))
            continue
        share = watch.seconds * len(hashes) / max(total, 1)
        out.append(
            replace(
                work,
                vectors=np.stack([vectors[h] for h in hashes]),
                embedded=sum(1 for h in set(hashes) if h in sent),
                embedding_tokens=sum(uncharged.pop(h, 0) for h in dict.fromkeys(hashes)),
                timings=work.timed("embed", share),
            )
        )
    return out


def _vectors_by_hash(
    works: Sequence[DocWork], embedder: Embedder, ctx: StageContext
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Vectors for every chunk hash in ``works``, and the tokens sent for each hash that was
    newly embedded (cache hits are absent). The job's progress counts chunks: those whose
    vectors were cached at once, the others as their embedding batches come back."""
    texts = {c.content_hash: c.content for w in works for c in w.chunks or []}
    holders: dict[str, Counter[str]] = defaultdict(Counter)  # hash -> source -> chunks
    for work in works:
        for chunk in work.chunks or []:
            holders[chunk.content_hash][work.source] += 1

    def chunks_of(hashes: Iterable[str]) -> Iterator[tuple[str, int]]:
        return (pair for h in hashes for pair in holders[h].items())

    with transaction() as conn:
        vectors = cached_vectors(conn, model=embedder.identity, content_hashes=list(texts))
    missing = [h for h in texts if h not in vectors]
    chunks_by_job(ctx.jobs, chunks_of(vectors), what="embedded")

    def embedded(positions: list[int]) -> None:
        chunks_by_job(ctx.jobs, chunks_of(missing[i] for i in positions), what="embedded")

    if missing:
        fresh = embedder.embed([texts[h] for h in missing], on_batch=embedded)
        new = dict(zip(missing, fresh, strict=True))
        # Cache before the upsert, so a crash after this point never pays for them again.
        with transaction() as conn:
            store_vectors(conn, model=embedder.identity, vectors=new)
        vectors.update(new)
    return vectors, {h: embedder.count_tokens(texts[h]) for h in missing}


embed_task = stage_task("embed", timeout_seconds=4 * 3600)(embed_documents)
