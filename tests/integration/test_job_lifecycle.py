"""A job through its states as a user watches it: queued (its queue paused), running with its
chunks moving through a long document, then completed, or cancelled; over Server-Sent Events
and a WebSocket at once, each ending on its own; and the job counters of /metrics. The API
in-process, a real Prefect server, the served runner, the local OpenAI-compatible embedder
answering slowly enough for progress to show."""

from __future__ import annotations

import io
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.websockets import WebSocketDisconnect

from tests.integration.test_api import make_key
from tests.integration.test_operators import operator_key
from tests.support.service import wait_until

pytestmark = pytest.mark.slow
WORDS = ("kelp", "otter", "tide", "basalt", "heron", "lichen", "fjord", "moraine")
STATE_ORDER = ("queued", "running", "completed")


@pytest.fixture
def tenant() -> tuple[str, dict[str, str]]:
    name = f"life-{uuid.uuid4().hex[:8]}"
    return name, make_key(name)


@pytest.fixture
def paused(api) -> Iterator[dict[str, str]]:
    """The normal queue paused; resumed afterwards whatever happens."""
    ops = operator_key()
    assert api.post("/v1/ops/queues/normal:pause", headers=ops).status_code == 200
    yield ops
    api.post("/v1/ops/queues/normal:resume", headers=ops)


def _long_document(chunks: int) -> bytes:
    """About ``chunks`` chunks of text that all differ (none comes from the vector cache)."""
    rng = random.Random(uuid.uuid4().int)
    words = (f"{rng.choice(WORDS)}{rng.randrange(10**6)}" for _ in range(chunks * 110))
    return " ".join(words).encode()


def _upload(api: TestClient, key, collection: str, data: bytes) -> str:
    files = {"file": (f"{uuid.uuid4().hex[:6]}.txt", io.BytesIO(data), "text/plain")}
    resp = api.post(f"/v1/collections/{collection}/documents", headers=key, files=files)
    assert resp.status_code == 202, resp.text
    return resp.json()["job_id"]


class Watch:
    """Both streams of one job, each read to its end on a thread of its own."""

    def __init__(self, api: TestClient, key: dict[str, str], job_id: str) -> None:
        self.sse: list[tuple[str, dict]] = []
        self.sse_heartbeats = 0
        self.ws: list[dict] = []
        self.ws_closed = False
        self.threads = [
            threading.Thread(target=self._read_sse, args=(api, key, job_id), daemon=True),
            threading.Thread(target=self._read_ws, args=(api, key, job_id), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _read_sse(self, api: TestClient, key, job_id: str) -> None:
        with api.stream("GET", f"/v1/jobs/{job_id}/events", headers=key) as stream:
            name = None
            for line in stream.iter_lines():
                if line.startswith(": keep-alive"):
                    self.sse_heartbeats += 1
                elif line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    self.sse.append((name or "", json.loads(line.removeprefix("data: "))))

    def _read_ws(self, api: TestClient, key, job_id: str) -> None:
        with api.websocket_connect(f"/v1/jobs/{job_id}/ws", headers=key) as ws:
            try:
                while True:
                    self.ws.append(ws.receive_json())
            except WebSocketDisconnect:
                self.ws_closed = True

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), "a stream did not end"

    def sse_jobs(self) -> list[dict]:
        return [data for name, data in self.sse if name == "progress"]

    def ws_jobs(self) -> list[dict]:
        return [m["data"] for m in self.ws if m["event"] == "progress"]


def _job_counts(api: TestClient, tenant: str) -> dict[str, float]:
    text = api.get("/metrics").text
    return {
        s.labels["event"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ingestflow_jobs_total" and s.labels.get("tenant") == tenant
    }


def _monotonic(values: list[int]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_a_long_job_is_watched_from_queued_to_completed_on_both_streams(
    api, tenant, paused, collection, openai_server
):
    name, key = tenant
    # Each embedding request takes a while: 14 requests, 4 at a time, about 8 s in all.
    openai_server.configure(latency=2.0)
    try:
        job_id = _upload(api, key, collection, _long_document(chunks=500))
        watch = Watch(api, key, job_id)
        time.sleep(3)  # the runner polls every second: the job stays queued while paused
        assert api.get(f"/v1/jobs/{job_id}", headers=key).json()["state"] == "queued"
        api.post("/v1/ops/queues/normal:resume", headers=paused)
        watch.join(timeout=300)
    finally:
        openai_server.reset()

    for jobs in (watch.sse_jobs(), watch.ws_jobs()):
        states = [j["state"] for j in jobs]
        assert states[0] == "queued" and states[-1] == "completed" and "running" in states
        assert _monotonic([STATE_ORDER.index(s) for s in states])
        progress = [j["progress"] for j in jobs]
        for field in ("documents_done", "chunks_total", "chunks_embedded", "chunks_written"):
            assert _monotonic([p[field] for p in progress]), field
        final = progress[-1]
        assert final["documents_done"] == final["documents_total"] == 1
        assert final["chunks_embedded"] == final["chunks_written"] == final["chunks_total"] > 400
        # The chunks moved while the document was embedded, not only at its end.
        between = {p["chunks_embedded"] for p in progress} - {0, final["chunks_total"]}
        assert len(between) >= 3, progress
    assert watch.sse[-1] == ("end", {"state": "completed"})
    assert watch.ws[-1] == {"event": "end", "data": {"state": "completed"}} and watch.ws_closed

    counts = _job_counts(api, name)
    assert {e: counts.get(e, 0) for e in ("submitted", "started", "completed", "failed")} == {
        "submitted": 1,
        "started": 1,
        "completed": 1,
        "failed": 0,
    }


def test_streams_of_a_waiting_job_beat_and_close_on_their_own_then_it_is_cancelled(
    api, tenant, paused, collection, monkeypatch
):
    from api.routes import jobs as job_routes

    name, key = tenant
    monkeypatch.setattr(job_routes, "EVENT_HEARTBEAT_SECONDS", 1.0)
    monkeypatch.setattr(job_routes, "EVENT_MAX_SECONDS", 4.0)
    job_id = _upload(api, key, collection, b"A note that waits in a paused queue.")
    waiting = Watch(api, key, job_id)
    waiting.join(timeout=60)
    assert [j["state"] for j in waiting.sse_jobs()] == ["queued"]
    assert waiting.sse_heartbeats >= 2 and waiting.sse[-1] == ("timeout", {})
    ws_events = [m["event"] for m in waiting.ws]
    assert ws_events[0] == "progress" and ws_events[-1] == "timeout" and "heartbeat" in ws_events
    assert waiting.ws_closed

    monkeypatch.setattr(job_routes, "EVENT_MAX_SECONDS", 60.0)
    watch = Watch(api, key, job_id)
    cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=key)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    watch.join(timeout=30)
    assert watch.sse[-1] == ("end", {"state": "cancelled"})
    assert watch.ws[-1] == {"event": "end", "data": {"state": "cancelled"}}
    wait_until(lambda: _job_counts(api, name).get("cancelled") == 1, timeout=10, what="count")
    assert _job_counts(api, name).get("started", 0) == 0
