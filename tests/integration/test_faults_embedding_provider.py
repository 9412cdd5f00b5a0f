"""A bad embedding provider: the local OpenAI-compatible server answers 30% of requests with
429 and a Retry-After, 10% with 500 and 10% not at all (the client times out). A batch of 100
documents still ends with every document indexed and none failed, within a guard timeout, in
exactly the state of a clean ingest; and the server's own request log shows that no request
came before the Retry-After the previous answer asked for.

The faults are drawn by the server from a seeded generator (the client is sequential, so the
seed fixes which request fails how); the seed is printed and named in failures.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import reset_caches
from tests.support.faults import clean_ingest, exact_state_problems, fault_seed, make_corpus
from tests.support.openai_server import RequestRecord

DOCUMENTS = 100
BATCH_SIZE = 20
SEED = fault_seed()
FAULTS = {
    "rate_429": 0.3,
    "rate_500": 0.1,
    "rate_timeout": 0.1,
    "retry_after": 0.2,  # each 429's Retry-After is drawn from 0.2-1.5 s
    "retry_after_max": 1.5,
    "hang": 3.0,  # longer than the client's timeout below
}


def early_retries(records: list[RequestRecord]) -> list[str]:
    """Requests that came before the Retry-After the previous answer gave (the records of
    one sequential client, in arrival order)."""
    early = []
    for asked, then in zip(records, records[1:], strict=False):
        if asked.retry_after is not None and then.at - asked.at < asked.retry_after:
            early.append(f"{then.at - asked.at:.3f} s after a Retry-After of {asked.retry_after}")
    return early


@pytest.mark.slow
@pytest.mark.timeout(420)  # the bound: a guard against retrying forever, not a measurement
def test_bad_provider_still_indexes_every_document_and_honours_retry_after(
    pipeline, tmp_path, monkeypatch
):
    from ingestflow import ingest

    server = pipeline
    nonce = uuid.uuid4().hex[:12]
    paths = make_corpus(tmp_path / "docs", nonce, count=DOCUMENTS)
    collection, clean = f"badprovider_{nonce}", f"clean_{nonce}"
    monkeypatch.setenv("INGESTFLOW_EMBED_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("INGESTFLOW_EMBED_BATCH_SIZE", "8")  # more requests, more faults
    # One request at a time: the seed then fixes the faults, and each request follows the
    # answer before it (tests/integration/test_embedding_budget.py covers requests in flight).
    monkeypatch.setenv("INGESTFLOW_EMBED_CONCURRENT_REQUESTS", "1")
    reset_caches()
    server.configure(seed=SEED, **FAULTS)
    # The first three requests fail one way each, whatever the seed draws afterwards.
    server.fail_next(1, status=429, retry_after=1.2)
    server.fail_next(1, status=500)
    server.fail_next(1, status=0)  # hangs: a client timeout

    started = time.monotonic()
    result = ingest(paths, collection=collection, batch_size=BATCH_SIZE)
    elapsed = time.monotonic() - started
    records = server.stats().records

    by_status = {s: sum(1 for r in records if r.status == s) for s in (200, 429, 500, 504)}
    waits = [r.retry_after for r in records if r.retry_after is not None]
    print(
        f"seed {SEED}: {DOCUMENTS} documents in {elapsed:.1f} s over {len(records)} requests"
        f" {by_status}; {len(waits)} Retry-After waits of {min(waits)}-{max(waits)} s"
    )
    where = f"seed {SEED}"
    assert {str(o.status) for o in result.outcomes} == {"indexed"}, (where, result.failed)
    assert by_status[429] and by_status[500] and by_status[504], (where, by_status)
    assert early_retries(records) == [], where

    # The reference embeds afresh under its own model name, from a well-behaved server.
    server.reset()
    monkeypatch.setenv("INGESTFLOW_EMBED_MODEL", f"hash-64-{nonce}")
    reset_caches()
    clean_ingest(paths, collection=clean, batch_size=BATCH_SIZE)
    assert exact_state_problems(collection, reference=clean) == [], where


def test_a_request_that_gave_up_still_holds_the_next_one_to_retry_after(openai_server):
    """Retries exhausted on a 429: the next request (a task retry, another batch) still
    waits for the Retry-After that the last answer gave."""
    from ingestflow.core.errors import EmbedError
    from ingestflow.core.settings import EmbeddingSettings
    from tasks.embedders.openai import OpenAIEmbedder

    openai_server.reset()
    settings = EmbeddingSettings(
        openai_base_url=openai_server.base_url,
        openai_api_key="test-key-not-secret",
        max_retries=1,
        max_retry_wait=5,
    )
    embedder = OpenAIEmbedder("hash-64", settings)
    assert embedder.dimension == openai_server.dimension
    openai_server.reset_stats()
    openai_server.fail_next(2, status=429, retry_after=1)

    with pytest.raises(EmbedError, match="failed after 2 attempts; last: HTTP 429"):
        embedder.embed_batch(["first"])
    embedder.embed_batch(["second"])

    records = openai_server.stats().records
    assert [r.status for r in records] == [429, 429, 200]
    assert early_retries(records) == []
    assert records[2].at - records[1].at >= 1.0
