"""Token-aware chunking with the local model's own tokenizer (no torch needed)."""

from __future__ import annotations

from ingestflow.core.settings import EmbeddingSettings
from ingestflow.core.types import Segment
from tasks.chunk import chunk_segments
from tasks.embedders.local import LocalEmbedder


def test_token_chunks_fit_the_model_window():
    embedder = LocalEmbedder(None, EmbeddingSettings())
    text = " ".join(
        f"Sentence {i} talks about pgvector indexes and Prefect retries." for i in range(300)
    )

    chunks = chunk_segments([Segment(text)], size=200, overlap=40, length=embedder.count_tokens)

    counts = [embedder.count_tokens(c.content) for c in chunks]
    assert len(chunks) > 5
    assert max(counts) <= 200
    assert min(counts[:-1]) > 100  # packed, not one sentence per chunk
    # Character mode on the same text makes chunks of a different size in tokens.
    by_chars = chunk_segments([Segment(text)], size=200, overlap=40)
    assert max(embedder.count_tokens(c.content) for c in by_chars) < 100
