"""Remote embedders at their limit: requests in flight at once, a token budget shared by
worker processes through Redis, and a Retry-After seen by one worker holding back the other.
Real processes, a real Redis, the real openai client against the OpenAI-compatible test
server, which enforces its own sliding-window limit with 429s."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ingestflow.core.settings import EmbeddingSettings
from tasks.embedders.openai import OpenAIEmbedder
from tests.conftest import REPO
from tests.support.openai_server import OpenAIServer, count_tokens, run_openai_server

MODEL = "budget-test"
WORKER = """
import sys
from tasks.embedders.openai import OpenAIEmbedder
from ingestflow.core.settings import get_settings
body = "lorem ipsum dolor sit amet " * 4
texts = [f"worker {sys.argv[1]} text {i:02d}: {body}" for i in range(int(sys.argv[2]))]
vectors = OpenAIEmbedder(None, get_settings().embedding).embed(texts)
print("EMBEDDED", len(vectors))
"""


@pytest.fixture
def server():
    with run_openai_server(dimension=32) as srv:
        yield srv


def _settings(srv: OpenAIServer, **overrides: object) -> EmbeddingSettings:
    values: dict[str, object] = {
        "openai_base_url": srv.base_url,
        "openai_api_key": "test-key-not-secret",
        "model": MODEL,
        "budget_url": "memory://",
        "max_retry_wait": 5,
    }
    return EmbeddingSettings(**(values | overrides))


def _worker_env(srv: OpenAIServer, budget_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTFLOW_EMBED_")}
    env |= {
        "INGESTFLOW_EMBED_PROVIDER": "openai",
        "INGESTFLOW_EMBED_OPENAI_BASE_URL": srv.base_url,
        "INGESTFLOW_EMBED_OPENAI_API_KEY": "test-key-not-secret",
        "INGESTFLOW_EMBED_MODEL": MODEL,
        "INGESTFLOW_EMBED_BUDGET_URL": budget_url,
        **{f"INGESTFLOW_EMBED_{k.upper()}": v for k, v in settings.items()},
    }
    return env


def _start_worker(env: dict[str, str], name: str, texts: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, name, str(texts)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_requests_go_several_at_once_and_come_back_in_order(server: OpenAIServer) -> None:
    server.configure(latency=0.3)
    texts = [f"text number {i} about topic {i % 5}" for i in range(32)]
    embedder = OpenAIEmbedder(None, _settings(server, batch_size=4, concurrent_requests=4))
    assert embedder.dimension == 32
    server.reset_stats()

    vectors = embedder.embed(texts)

    stats = server.stats()
    assert stats.requests == 8 and stats.most_in_flight == 4
    expected = np.stack([server.vector(t) for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_one_request_at_a_time_when_asked(server: OpenAIServer) -> None:
    server.configure(latency=0.1)
    embedder = OpenAIEmbedder(None, _settings(server, batch_size=2, concurrent_requests=1))
    assert embedder.dimension == 32
    server.reset_stats()
    embedder.embed([f"text {i}" for i in range(6)])
    stats = server.stats()
    assert stats.requests == 3 and stats.most_in_flight == 1


def test_request_sizes_stay_within_the_token_budget_of_one_window(server: OpenAIServer) -> None:
    embedder = OpenAIEmbedder(
        None, _settings(server, batch_size=2048, max_batch_tokens=10**6, tokens_per_minute=600)
    )
    assert embedder.max_request_tokens == 600
    texts = ["word " * 160] * 40  # 201 tokens each by the 4-characters estimate
    sizes = [len(b) for b in embedder.batches(texts)]
    assert sizes == [2] * 20


@pytest.mark.slow
def test_two_workers_share_one_token_budget_and_get_no_429(server, redis_server) -> None:
    # The server allows 6,000 tokens in any 3 s; the two workers together send 2.1 times
    # that, and each could send it all within one window.
    server.configure(tokens_per_window=6000, limit_window=3.0, latency=0.05)
    per_worker = 200
    tokens_each = count_tokens("worker a text 000: " + "lorem ipsum dolor sit amet " * 4)
    budget = dict(
        tokens_per_minute=str(int(0.9 * 6000 * 60 / 3)),  # 90% of the server's, per minute
        budget_window_seconds="3",
        batch_size="10",
        concurrent_requests="4",
    )
    shared = _worker_env(server, redis_server.url, **budget)
    began = time.monotonic()
    workers = [_start_worker(shared, name, per_worker) for name in ("a", "b")]
    for worker in workers:
        assert "EMBEDDED 200" in _finish(worker)
    took = time.monotonic() - began
    records = server.stats().records
    assert [r for r in records if r.status == 429] == []
    sent = sum(r.tokens for r in records if r.status == 200)
    assert sent >= 2 * per_worker * tokens_each * 0.95
    # Over two windows' worth of tokens at 90% of the limit cannot all go in one window.
    assert took > 3.0, took

    # The same two workers, each keeping its budget to itself, overrun the server's limit.
    server.reset()
    server.configure(tokens_per_window=6000, limit_window=3.0, latency=0.05)
    alone = _worker_env(server, "memory://", **budget)
    workers = [_start_worker(alone, name, per_worker) for name in ("c", "d")]
    for worker in workers:
        assert "EMBEDDED 200" in _finish(worker)
    assert any(r.status == 429 for r in server.stats().records)


@pytest.mark.slow
def test_a_retry_after_seen_by_one_worker_holds_back_the_other(server, redis_server) -> None:
    env = _worker_env(server, redis_server.url, batch_size="64")
    server.fail_next(1, status=429, retry_after=2)
    first = _start_worker(env, "a", 1)
    deadline = time.monotonic() + 60
    while not server.stats().records:
        assert time.monotonic() < deadline, "the first worker sent nothing"
        time.sleep(0.02)
    time.sleep(0.3)  # the first worker has read its 429 and stored the pause
    second = _start_worker(env, "b", 1)
    assert "EMBEDDED 1" in _finish(second)
    assert "EMBEDDED 1" in _finish(first)
    records = server.stats().records
    refused = records[0]
    assert refused.status == 429
    later = [r for r in records[1:]]
    assert len(later) >= 2 and all(r.status == 200 for r in later)
    # Neither worker's next request (a probe or the texts) came inside the pause.
    assert all(r.at - refused.at >= 2.0 - 0.05 for r in later), [r.at - refused.at for r in later]
