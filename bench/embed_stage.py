"""The embedding stage against the model's raw batch throughput (all-MiniLM-L6-v2, local).

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.embed_stage --json OUT [--small]
        [--database-url URL]

Texts: 2,000 chunks (256 with ``--small``) of SciFact abstracts, cut by the product's chunker
at its default settings (1,000 characters, overlap 200), all distinct, grouped by abstract.

- **ingestflow**: ``tasks.embed.embed_documents`` over the documents in micro-batches of
  ``INGESTFLOW_BATCH_SIZE`` (32) documents, as the flow runs the stage: vector-cache lookup,
  embedding in batches of ``INGESTFLOW_EMBED_BATCH_SIZE`` (64) texts, token counts, caching the
  new vectors. The embedder is the product's local one with a cache identity of its own per
  run, so the cache is empty and every chunk is really embedded (checked).
- **raw**: the same loaded model object (so the same torch threads), one
  ``SentenceTransformer.encode`` of the same texts with the same batch size, normalised.

A second row gives the stage all documents in one call, which tells the cost of micro-batch
boundaries (a micro-batch's last, partial model batch) apart from the stage's own work.
Model loading and a warm-up batch come first and are not timed; the measurements alternate
order, two repetitions, medians. The vectors of the stage and of the
raw encode are compared (lowest cosine) so that the speed is not bought with other vectors.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.write_path import (
    Row,
    alternate,
    argument_parser,
    bench_database,
    median,
    ratio_row,
    scifact_documents,
    write_result,
)


def documents_of_chunks(count: int) -> list[list[str]]:
    """SciFact abstracts as lists of their chunk texts (the product's default chunking),
    ``count`` distinct texts in all; the last abstract may be cut short."""
    from ingestflow.core.settings import get_settings
    from ingestflow.core.types import Segment
    from tasks.chunk import chunk_segments

    ingest = get_settings().ingest
    seen: set[str] = set()
    documents = []
    for _, text in scifact_documents():
        chunks = chunk_segments(
            [Segment(text)], size=ingest.chunk_size, overlap=ingest.chunk_overlap
        )
        texts = [c.content for c in chunks if c.content not in seen][: count - len(seen)]
        seen.update(texts)
        if texts:
            documents.append(texts)
        if len(seen) == count:
            return documents
    raise ValueError(f"SciFact gives only {len(seen)} distinct chunks")


FRESH_PROVIDER = "bench-fresh-cache"


def fresh_cache_embedder() -> Any:
    """The product's local embedder, its vector-cache identity renamed per run; registered as
    provider ``bench-fresh-cache``, so the embed stage gets this very instance."""
    from tasks.embedders import get_embedder, register_embedder
    from tasks.embedders.local import LocalEmbedder

    @register_embedder(FRESH_PROVIDER)
    class FreshCacheEmbedder(LocalEmbedder):
        run = ""

        @property
        def identity(self) -> str:
            return f"{super().identity}#bench-{self.run}"

    return get_embedder(FRESH_PROVIDER, LocalEmbedder.default_model)


def run(documents: list[list[str]], reps: int) -> tuple[list[Row], dict[str, Any]]:
    from ingestflow.core.settings import get_settings
    from ingestflow.core.types import Chunk
    from storage.db import connection
    from tasks.chunk import content_hash
    from tasks.config import EmbeddingConfig, PipelineConfig
    from tasks.embed import embed_documents
    from tasks.work import DocWork, StageContext

    settings = get_settings()
    doc_batch, model_batch = settings.ingest.batch_size, settings.embedding.batch_size
    texts = [t for doc in documents for t in doc]
    embedder = fresh_cache_embedder()
    model = embedder._get_model()  # the very model object the stage uses: same threads
    embedder.embed(texts[:model_batch])  # warm-up: model, tokenizer, first forward pass
    model.encode(texts[:model_batch], batch_size=model_batch, show_progress_bar=False)
    identities: list[str] = []
    vectors: dict[str, np.ndarray] = {}
    config = PipelineConfig(
        embedding=EmbeddingConfig(provider=FRESH_PROVIDER, model=embedder.model)
    )
    ctx = StageContext(collection_id=0, config=config, workdir=Path("."))

    def stage(per_call: int) -> float:
        embedder.run = uuid.uuid4().hex
        identities.append(embedder.identity)
        works = [
            DocWork(
                source=f"bench://{i}",
                chunks=[Chunk(j, t, content_hash(t)) for j, t in enumerate(doc)],
            )
            for i, doc in enumerate(documents)
        ]
        started = time.perf_counter()
        done = []
        for i in range(0, len(works), per_call):
            done += embed_documents(works[i : i + per_call], ctx)
        seconds = time.perf_counter() - started
        embedded = sum(w.embedded for w in done)
        if embedded != len(texts) or any(w.vectors is None for w in done):
            raise AssertionError(f"the stage embedded {embedded} of {len(texts)} chunks")
        vectors["stage"] = np.concatenate([w.vectors for w in done if w.vectors is not None])
        return len(texts) / seconds

    def raw() -> float:
        started = time.perf_counter()
        out = model.encode(
            texts,
            batch_size=model_batch,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        seconds = time.perf_counter() - started
        vectors["raw"] = np.asarray(out, dtype=np.float32)
        return len(texts) / seconds

    try:
        micro, whole, baseline = alternate(
            reps, lambda _i: stage(doc_batch), lambda _i: stage(len(documents)), lambda _i: raw()
        )
    finally:
        with connection() as conn:
            conn.execute("DELETE FROM embedding_cache WHERE model = ANY(%s)", (identities,))
    lowest_cosine = float(np.min(np.sum(vectors["stage"] * vectors["raw"], axis=1)))
    label = f"embedding stage, {len(texts):,} chunks, all-MiniLM-L6-v2"
    rows = [
        ratio_row(
            f"{label}: embed_documents per {doc_batch}-document micro-batch (as the flow runs"
            f" it) vs raw SentenceTransformer.encode (batch {model_batch})",
            median(micro),
            median(baseline),
            "chunks/s",
            at_least=0.90,
        ),
        ratio_row(
            f"{label}: embed_documents over all documents in one call (diagnostic: the"
            f" stage without micro-batch boundaries) vs raw SentenceTransformer.encode"
            f" (batch {model_batch})",
            median(whole),
            median(baseline),
            "chunks/s",
            at_least=None,
        ),
    ]
    import torch

    detail = {
        "chunks_per_s": {"micro_batches": micro, "one_call": whole, "raw": baseline},
        "documents": len(documents),
        "chunk_chars_mean": round(float(np.mean([len(t) for t in texts])), 1),
        "torch_threads": torch.get_num_threads(),
        "model_batch_size": model_batch,
        "documents_per_micro_batch": doc_batch,
        "lowest_cosine_stage_vs_raw": lowest_cosine,
    }
    return rows, detail


def main(argv: Sequence[str] | None = None) -> None:
    args = argument_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are packaged; never download
    started = time.perf_counter()
    with bench_database(args.database_url):
        documents = documents_of_chunks(256 if args.small else 2000)
        rows, detail = run(documents, reps=2)
    write_result(args.json, rows, **detail, seconds=round(time.perf_counter() - started, 1))


if __name__ == "__main__":
    main()
