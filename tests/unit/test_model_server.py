"""The model server: the packaged model behind an OpenAI-compatible API, served over real
HTTP and called through the ``local`` provider (the ``openai`` client), with the real model."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from ingestflow.core.settings import EmbeddingSettings
from tasks.embedders.local import LocalEmbedder
from tasks.embedders.model_server import BatchingEncoder, create_app

TEXTS = [
    "Tides follow the moon.",
    "A sourdough starter needs flour and water.",
    "Cyclists should wear a helmet at night.",
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("INGESTFLOW_EMBED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def in_process() -> LocalEmbedder:
    return LocalEmbedder(None, EmbeddingSettings(torch_threads=1))


@pytest.fixture(scope="module")
def server(in_process: LocalEmbedder) -> Iterator[tuple[str, BatchingEncoder]]:
    """The app on uvicorn in a thread, on a free port; (base URL, its encoder)."""
    import uvicorn

    app = create_app(in_process)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        pytest.fail("the model server did not start")
    yield base, app.state.encoder
    server.should_exit = True
    thread.join(10)


def test_the_local_provider_through_the_server_gives_the_models_own_vectors(
    server: tuple[str, BatchingEncoder], in_process: LocalEmbedder
) -> None:
    base, _ = server
    remote = LocalEmbedder(None, EmbeddingSettings(model_server_url=f"{base}/v1"))
    got = remote.embed(TEXTS)
    want = in_process.embed(TEXTS)
    assert got.shape == (3, 384) and got.dtype == np.float32
    assert np.min(np.sum(got * want, axis=1)) > 0.99999
    assert remote.identity == in_process.identity  # one vector cache for both ways
    assert remote._model is None  # the model was never loaded in this embedder


def test_base64_and_float_encodings_agree(server: tuple[str, BatchingEncoder]) -> None:
    base, _ = server
    as_float = httpx.post(f"{base}/v1/embeddings", json={"input": TEXTS[0]}).json()
    as_b64 = httpx.post(
        f"{base}/v1/embeddings", json={"input": [TEXTS[0]], "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, np.asarray(as_float["data"][0]["embedding"], dtype=np.float32))
    assert as_float["usage"]["prompt_tokens"] > 0


def test_concurrent_requests_share_forward_passes(server: tuple[str, BatchingEncoder]) -> None:
    base, encoder = server
    before = encoder.passes
    start = threading.Barrier(12)
    answers: list[int] = []

    def ask(i: int) -> None:
        start.wait()
        reply = httpx.post(f"{base}/v1/embeddings", json={"input": [f"{TEXTS[i % 3]} {i}"]})
        answers.append(reply.status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [200] * 12
    assert encoder.passes - before < 12


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": ["x"], "model": "text-embedding-3-small"}, 404, "model_not_found"),
        ({"input": []}, 400, "invalid_request"),
        ({"input": [1, 2, 3]}, 400, "invalid_request"),
        ({"input": ["x"] * 2049}, 400, "invalid_request"),
        ({"input": ["x" * 100_001]}, 400, "invalid_request"),
        ({"input": ["x"], "encoding_format": "int8"}, 400, "invalid_request"),
    ],
)
def test_bad_requests_get_openai_style_errors(
    server: tuple[str, BatchingEncoder], body: dict[str, object], status: int, code: str
) -> None:
    base, _ = server
    reply = httpx.post(f"{base}/v1/embeddings", json=body)
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code
    assert httpx.get(f"{base}/health").status_code == 200  # and it keeps serving
