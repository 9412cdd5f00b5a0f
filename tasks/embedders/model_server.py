"""The local model behind an OpenAI-compatible embeddings API: one copy of the model per
machine, shared by every run on it.

``ingestflow model-server`` (and ``ingestflow up``) serves it; the ``local`` provider sends
its batches here when ``INGESTFLOW_EMBED_MODEL_SERVER_URL`` is set, through the same client
and retries as the ``openai`` provider, so a run process never imports torch or loads the
model. The vectors are the model's own: the server runs ``LocalEmbedder`` itself.

Requests that arrive while the model is busy are batched together (dynamic batching): one
forward pass serves every request waiting, up to ``max_batch_texts`` texts, so twenty runs
embedding at once cost about what one run of twenty documents costs.

Routes: ``POST /v1/embeddings`` (``input`` a string or a list of strings, ``model`` one of the
packaged model's names, ``encoding_format`` ``float`` or ``base64``), ``GET /v1/models`` and
``GET /health`` (200 once the model is loaded).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ingestflow.core.settings import get_settings
from tasks.embedders.local import CANONICAL_MODEL, LocalEmbedder, model_aliases

log = logging.getLogger(__name__)

MAX_INPUTS = 2048  # what OpenAI accepts in one request
MAX_INPUT_CHARS = 100_000  # the model reads 256 tokens; a longer text is a client's mistake
DEFAULT_PORT = 8100


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str = CANONICAL_MODEL
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


@dataclass
class _Pending:
    texts: list[str]
    done: asyncio.Future[np.ndarray] = field(default_factory=asyncio.Future)


class BatchingEncoder:
    """Embeds the texts of concurrent requests in shared forward passes, one at a time.

    A request waits at most ``max_wait`` seconds for others to join its batch when the model
    is idle; while the model is busy, every request that arrives joins the next batch.
    """

    def __init__(
        self, embedder: LocalEmbedder, *, max_batch_texts: int = 256, max_wait: float = 0.005
    ) -> None:
        self.embedder = embedder
        self.max_batch_texts = max_batch_texts
        self.max_wait = max_wait
        self.passes = 0  # forward rounds run, for /health and the tests
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def embed(self, texts: list[str]) -> np.ndarray:
        pending = _Pending(texts)
        await self._queue.put(pending)
        return await pending.done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(self.max_wait)  # let the requests of a burst arrive
            size = len(batch[0].texts)
            while not self._queue.empty() and size < self.max_batch_texts:
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item.texts)
            await self._encode(batch)

    async def _encode(self, batch: list[_Pending]) -> None:
        texts = [text for item in batch for text in item.texts]
        try:
            vectors = await asyncio.to_thread(self.embedder.embed, texts)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        self.passes += 1
        start = 0
        for item in batch:
            end = start + len(item.texts)
            if not item.done.done():
                item.done.set_result(vectors[start:end])
            start = end


def create_app(embedder: LocalEmbedder | None = None) -> FastAPI:
    """The model server's app; the model loads before it answers its first request."""
    encoder = BatchingEncoder(embedder or _default_embedder())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(encoder.embedder.embed, ["warm-up"])  # loads the model
        encoder.start()
        log.info("model %s loaded; serving embeddings", encoder.embedder.model)
        yield
        await encoder.stop()

    app = FastAPI(title="ingestflow model server", lifespan=lifespan, docs_url=None)
    app.state.encoder = encoder

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": encoder.embedder.model, "passes": encoder.passes}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": CANONICAL_MODEL, "object": "model"}]}

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any] | JSONResponse:
        texts = [body.input] if isinstance(body.input, str) else body.input
        refusal = _refusal(body.model, texts)
        if refusal is not None:
            return refusal
        vectors = await encoder.embed(texts)
        tokens = sum(encoder.embedder.count_tokens(t) + 2 for t in texts)
        return {
            "object": "list",
            "model": CANONICAL_MODEL,
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(row, body.encoding_format)}
                for i, row in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def _refusal(model: str, texts: list[str]) -> JSONResponse | None:
    if model not in model_aliases():
        return _error(
            404,
            f"model {model!r} is not served here; it serves {CANONICAL_MODEL}",
            "model_not_found",
        )
    if not texts:
        return _error(400, "input: at least one text is needed", "invalid_request")
    if len(texts) > MAX_INPUTS:
        return _error(400, f"input: at most {MAX_INPUTS} texts per request", "invalid_request")
    if any(len(t) > MAX_INPUT_CHARS for t in texts):
        return _error(
            400, f"input: a text is longer than {MAX_INPUT_CHARS} characters", "invalid_request"
        )
    return None


def _encode(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in row]


def _error(status: int, message: str, code: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return JSONResponse(body, status_code=status)


def _default_embedder() -> LocalEmbedder:
    settings = get_settings().embedding.model_copy(update={"model_server_url": None})
    return LocalEmbedder(CANONICAL_MODEL, settings)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve the model until interrupted."""
    import uvicorn

    uvicorn.run(create_app(), host=host, port=port, log_level="warning")
