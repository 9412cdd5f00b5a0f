"""Unit tests of the Embedder base class's batching, with a tiny in-test embedder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from ingestflow.core.settings import EmbeddingSettings
from tasks.embedders.base import Embedder


class _WordEmbedder(Embedder):
    """Counts one token per word; the vector of a text encodes its word count and first word."""

    provider = "test-words"
    default_model = "words-v1"

    def __init__(self, *, batch_size: int, max_batch_tokens: int) -> None:
        settings = EmbeddingSettings(batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        super().__init__(None, settings)
        self.calls: list[list[str]] = []

    @property
    def dimension(self) -> int:
        return 2

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t.split()), int(t.split()[0])] for t in texts], dtype=np.float32)


def _texts(*word_counts: int) -> list[str]:
    """Text i holds ``word_counts[i]`` words and starts with the number i."""
    return [" ".join([str(i)] + ["w"] * (n - 1)) for i, n in enumerate(word_counts)]


def test_batches_respect_the_batch_size() -> None:
    embedder = _WordEmbedder(batch_size=3, max_batch_tokens=1000)
    assert list(embedder.batches(_texts(*[1] * 8))) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_batches_respect_the_token_budget() -> None:
    embedder = _WordEmbedder(batch_size=100, max_batch_tokens=10)
    texts = _texts(4, 4, 2, 3, 8, 1, 1)
    batches = list(embedder.batches(texts))
    # shortest first: 1, 1, 2, 3 (7 tokens) | 4, 4 (8) | 8
    assert batches == [[5, 6, 2, 3], [0, 1], [4]]
    for batch in batches:
        assert sum(embedder.count_tokens(texts[i]) for i in batch) <= 10


def test_an_oversized_text_gets_its_own_batch() -> None:
    embedder = _WordEmbedder(batch_size=100, max_batch_tokens=10)
    assert list(embedder.batches(_texts(2, 25, 2, 30))) == [[0, 2], [1], [3]]
    assert list(embedder.batches(_texts(25, 2, 2))) == [[1, 2], [0]]  # never an empty batch


def test_batches_group_similar_lengths_and_cover_every_text_once() -> None:
    embedder = _WordEmbedder(batch_size=4, max_batch_tokens=12)
    counts = [(i * 7) % 5 + 1 for i in range(50)]
    batches = list(embedder.batches(_texts(*counts)))
    assert sorted(i for batch in batches for i in batch) == list(range(50))
    assert all(0 < len(batch) <= 4 for batch in batches)
    lengths = [[counts[i] for i in batch] for batch in batches]
    assert all(max(a) <= min(b) for a, b in zip(lengths, lengths[1:], strict=False))
    assert list(embedder.batches([])) == []


def test_embed_stitches_batches_back_in_order() -> None:
    embedder = _WordEmbedder(batch_size=2, max_batch_tokens=6)
    counts = [3, 1, 5, 2, 2, 6, 1]
    texts = _texts(*counts)
    vectors = embedder.embed(texts)
    assert vectors.shape == (7, 2) and vectors.dtype == np.float32
    assert vectors[:, 0].tolist() == counts
    assert vectors[:, 1].tolist() == list(range(7))
    assert len(embedder.calls) > 3
    assert sorted(t for call in embedder.calls for t in call) == sorted(texts)


def test_embed_of_nothing() -> None:
    embedder = _WordEmbedder(batch_size=2, max_batch_tokens=6)
    assert embedder.embed([]).shape == (0, 2)
    assert embedder.calls == []


def test_model_defaults_and_identity() -> None:
    embedder = _WordEmbedder(batch_size=2, max_batch_tokens=6)
    assert embedder.model == "words-v1"
    assert embedder.identity == "test-words:words-v1"


@pytest.mark.parametrize("text", ["", "a", "abcd", "x" * 401])
def test_default_token_estimate_is_positive(text: str) -> None:
    class Plain(_WordEmbedder):
        count_tokens = Embedder.count_tokens

    assert Plain(batch_size=1, max_batch_tokens=1).count_tokens(text) == len(text) // 4 + 1
