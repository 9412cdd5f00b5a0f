"""The OpenAI embedder with the real openai client over real HTTP, against a local server."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from ingestflow.core.errors import ConfigError, EmbedError, EmbedRequestRejected
from ingestflow.core.settings import EmbeddingSettings
from tasks.embedders.openai import PLACEHOLDER_KEY, OpenAIEmbedder, retry_after_seconds
from tests.support.openai_server import OpenAIServer, run_openai_server

DIM = 64
MODEL = "test-embed"  # not in the known table, so the dimension is probed
SECRET = "sk-test-Zq81secretvalue"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # EmbeddingSettings reads the environment for every field a test leaves out.
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "INGESTFLOW_EMBED_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def _server() -> Iterator[OpenAIServer]:
    before = set(threading.enumerate())
    with run_openai_server(dimension=DIM) as server:
        yield server
    leaked = set(threading.enumerate()) - before
    assert not [t for t in leaked if t.name == "openai-test-server"]


@pytest.fixture
def srv(_server: OpenAIServer) -> OpenAIServer:
    _server.reset()
    return _server


def settings(base_url: str | None, **overrides: object) -> EmbeddingSettings:
    values: dict[str, Any] = {
        "openai_base_url": base_url,
        "openai_api_key": SECRET,
        "batch_size": 16,
        "request_timeout": 2.0,
        "max_retries": 3,
        "max_retry_wait": 0.1,
        "budget_url": "memory://",  # each test's pauses its own; the shared store has its test
    }
    values.update(overrides)
    return EmbeddingSettings(**values)


def embedder(srv: OpenAIServer, **overrides: object) -> OpenAIEmbedder:
    """An embedder whose dimension is already probed and whose probe is not counted."""
    emb = OpenAIEmbedder(MODEL, settings(srv.base_url, **overrides))
    assert emb.dimension == DIM
    srv.reset_stats()
    return emb


def texts(n: int) -> list[str]:
    topics = ["invoice payment", "network outage", "holiday schedule", "embedding model"]
    return [f"document {i} about {topics[i % len(topics)]} number {i * 7}" for i in range(n)]


def statuses(srv: OpenAIServer) -> list[int]:
    return [r.status for r in srv.stats().records]


def test_vectors_are_unit_rows_in_input_order(srv: OpenAIServer) -> None:
    srv.configure(reverse_order=True)  # the client must sort by index, not trust the order
    batch = texts(7)
    vectors = embedder(srv).embed_batch(batch)
    assert vectors.shape == (7, DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, [srv.vector(t) for t in batch], atol=1e-6)


def test_shared_words_mean_higher_cosine(srv: OpenAIServer) -> None:
    a, b, c = embedder(srv).embed_batch(
        ["the invoice payment is late", "late invoice payment", "penguins swim in cold water"]
    )
    assert a @ b > a @ c + 0.3


def test_dimension_is_probed_once(srv: OpenAIServer) -> None:
    emb = OpenAIEmbedder(MODEL, settings(srv.base_url))
    assert (emb.dimension, emb.dimension) == (DIM, DIM)
    assert srv.stats().requests == 1


def test_known_model_on_the_official_api_needs_no_request() -> None:
    emb = OpenAIEmbedder(None, settings(None))
    assert (emb.model, emb.dimension) == ("text-embedding-3-small", 1536)


def test_default_base64_path_matches_float(srv: OpenAIServer) -> None:
    batch = texts(5)
    ours = embedder(srv).embed_batch(batch)
    client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
    floats = client.embeddings.create(input=batch, model=MODEL, encoding_format="float")
    assert [r.encoding_format for r in srv.stats().records] == ["base64", "float"]
    np.testing.assert_allclose(ours, [d.embedding for d in floats.data], atol=1e-6)


def test_429_waits_for_retry_after(srv: OpenAIServer) -> None:
    emb = embedder(srv, max_retry_wait=5)
    srv.fail_next(1, status=429, retry_after=1)
    emb.embed_batch(["hello"])
    first, second = srv.stats().records
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0


def test_retry_after_ms_wins_over_retry_after(srv: OpenAIServer) -> None:
    emb = embedder(srv, max_retry_wait=3)
    srv.configure(retry_after_ms=300)
    srv.fail_next(1, status=429, retry_after=3)
    emb.embed_batch(["hello"])
    first, second = srv.stats().records
    assert 0.3 <= second.at - first.at < 1.5


def test_waits_are_capped_by_max_retry_wait(srv: OpenAIServer) -> None:
    waits: list[float] = []
    emb = OpenAIEmbedder(MODEL, settings(srv.base_url, max_retry_wait=0.5), sleep=waits.append)
    srv.fail_next(3, status=429, retry_after=100)
    emb.embed_batch(["hello"])
    assert waits == [0.5, 0.5, 0.5]


def test_5xx_are_retried(srv: OpenAIServer) -> None:
    emb = embedder(srv, max_retries=4)
    for status in (500, 502, 503, 504):
        srv.fail_next(1, status=status)
    vectors = emb.embed_batch(["hello"])
    assert statuses(srv) == [500, 502, 503, 504, 200]
    np.testing.assert_allclose(vectors[0], srv.vector("hello"), atol=1e-6)


def test_timeout_is_retried(srv: OpenAIServer) -> None:
    emb = embedder(srv, request_timeout=0.5)
    srv.configure(hang=5)
    srv.fail_next(1, status=0)  # 0: hang instead of answering
    started = time.monotonic()
    emb.embed_batch(["hello"])
    assert time.monotonic() - started >= 0.5
    assert srv.stats().requests == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_fail_at_once(srv: OpenAIServer, status: int) -> None:
    emb = embedder(srv)
    srv.fail_next(1, status=status)
    with pytest.raises(EmbedRequestRejected, match=f"HTTP {status}") as info:
        emb.embed_batch(["hello"])
    assert info.value.permanent
    assert srv.stats().requests == 1


def test_wrong_key_is_rejected_without_leaking_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with run_openai_server(dimension=DIM, api_key="the-right-key") as server:
        emb = OpenAIEmbedder(MODEL, settings(server.base_url))
        with pytest.raises(EmbedRequestRejected, match="HTTP 401") as info:
            emb.embed_batch(["hello"])
        assert server.stats().requests == 1
    assert "OPENAI_API_KEY" in info.value.reason
    assert SECRET not in info.value.reason + repr(emb) + caplog.text


def test_empty_text_is_rejected(srv: OpenAIServer) -> None:
    with pytest.raises(EmbedRequestRejected, match="HTTP 400"):
        embedder(srv).embed_batch(["fine", ""])


def test_exhausted_retries_raise_transient_error(
    srv: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    emb = embedder(srv, max_retries=2)
    srv.fail_next(10, status=503)
    with pytest.raises(EmbedError, match="failed after 3 attempts; last: HTTP 503") as info:
        emb.embed_batch(["hello"])
    assert not info.value.permanent
    assert pickle.loads(pickle.dumps(info.value)).reason == info.value.reason
    assert srv.stats().requests == 3
    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 2 and all("HTTP 503" in r.getMessage() for r in retries)
    assert SECRET not in caplog.text


def test_connection_errors_are_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emb = OpenAIEmbedder(MODEL, settings(f"http://127.0.0.1:{port}/v1", max_retries=2))
    with pytest.raises(EmbedError, match="last: connection error"):
        emb.embed_batch(["hello"])


def test_batches_split_by_count(srv: OpenAIServer) -> None:
    emb = embedder(srv, batch_size=4)
    vectors = emb.embed(texts(10))
    assert sorted(r.texts for r in srv.stats().records) == [2, 4, 4]  # arrival order varies
    np.testing.assert_allclose(vectors, [srv.vector(t) for t in texts(10)], atol=1e-6)


def test_batches_split_by_token_budget(srv: OpenAIServer) -> None:
    emb = embedder(srv, batch_size=100, max_batch_tokens=50)
    long_texts = [f"{i:02d} " + "word " * 16 for i in range(6)]  # 83 chars: 21 tokens each
    assert {emb.count_tokens(t) for t in long_texts} == {21}
    emb.embed(long_texts)
    assert [r.texts for r in srv.stats().records] == [2, 2, 2]


def test_flaky_server_still_embeds_everything(srv: OpenAIServer) -> None:
    batch = texts(100)
    emb = embedder(srv, batch_size=8, max_retries=10, max_retry_wait=0.05)
    clean = emb.embed(batch)
    srv.reset_stats()
    srv.configure(rate_429=0.3, rate_500=0.1, retry_after=None, retry_after_ms=20, seed=7)
    flaky = emb.embed(batch)
    stats = srv.stats()
    assert stats.by_status.get(429, 0) > 0 and stats.by_status.get(500, 0) > 0
    assert stats.texts_embedded == 100
    np.testing.assert_array_equal(flaky, clean)


def test_missing_key_without_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set") as info:
        OpenAIEmbedder(None, settings(None, openai_api_key=None))
    assert info.value.permanent
    assert "sk-" not in info.value.reason and SECRET not in info.value.reason


def test_custom_base_url_needs_no_key() -> None:
    with run_openai_server(dimension=DIM, api_key=PLACEHOLDER_KEY) as server:
        emb = OpenAIEmbedder(MODEL, settings(server.base_url, openai_api_key=None))
        assert emb.embed_batch(["hello"]).shape == (1, DIM)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5", "retry-after-ms": "250"}, 0.25),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:10 GMT"}, 5.0),  # now = 5
        ({"retry-after": "Thu, 01 Jan 1970 00:00:01 GMT"}, 0.0),  # already past
        ({"retry-after": "soon"}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=5.0) == expected
