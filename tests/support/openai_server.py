"""A local OpenAI-compatible ``/v1/embeddings`` server for tests, with fault injection.

    with run_openai_server(dimension=64) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="test")
        srv.fail_next(1, status=429, retry_after=1)
        ...
        srv.stats().by_status  # {429: 1, 200: 1}

Vectors are feature-hashed word tokens and character trigrams (blake2b, so stable across
processes), L2-normalised: the same text always gives the same vector, and texts that share
words have a higher cosine, which is enough for search tests. The server runs uvicorn in a
background thread on 127.0.0.1 with a port the OS picks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

_WORD = re.compile(r"\w+")
_TRIGRAM_WEIGHT = 0.5  # words dominate; trigrams let "embedder" and "embedding" overlap
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}


@dataclass
class Faults:
    """Fault-injection knobs; change them at runtime with ``OpenAIServer.configure``.

    Rates are probabilities per request, drawn from a RNG seeded with ``seed``, so a
    sequential client sees the same faults on every run.
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    retry_after: float | None = 1.0  # Retry-After seconds on injected 429s; None: no header
    # When set, each injected 429's Retry-After is drawn from [retry_after, retry_after_max]
    # (tenths of a second), so a client cannot pass by always waiting one fixed time.
    retry_after_max: float | None = None
    retry_after_ms: float | None = None  # also send retry-after-ms (fractional waits)
    hang: float = 30.0  # how long a "timeout" request stalls; set above the client timeout
    latency: float = 0.0  # added to every request, seconds
    reverse_order: bool = False  # return data last-index-first (clients must sort by index)
    seed: int = 0
    latency_per_token: float = 0.0  # added per input token, seconds (a provider's compute)
    # Limits enforced over a sliding window (a minute, like OpenAI's): a request that would
    # pass one gets a 429 whose Retry-After says when enough of the window has expired.
    requests_per_window: int | None = None
    tokens_per_window: int | None = None
    limit_window: float = 60.0


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it. ``at`` is ``time.monotonic()`` on arrival.

    A request made to hang (a client timeout) is recorded as status 504. ``retry_after`` is
    the Retry-After (seconds) the answer carried, if any.
    """

    at: float
    status: int
    texts: int
    model: str
    encoding_format: str
    retry_after: float | None = None
    tokens: int = 0  # input tokens, as the server counts them (``count_tokens``)


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of what the server has seen since start (or ``reset_stats``)."""

    requests: int
    by_status: dict[int, int]
    texts_embedded: int  # texts in successful responses only
    records: list[RequestRecord] = field(default_factory=list)
    most_in_flight: int = 0  # the most requests the server was answering at one moment

    @property
    def timestamps(self) -> list[float]:
        """Arrival times (monotonic seconds) of every request, in order."""
        return [r.at for r in self.records]


class EmbeddingRequest(BaseModel):
    """The subset of OpenAI's request body the server understands (no token-id input)."""

    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def count_tokens(text: str) -> int:
    """Input tokens as this server counts them: about four characters each, which is what
    OpenAI's tokenizers give for English prose."""
    return max(1, round(len(text) / 4))


def embed_text(text: str, dimension: int) -> np.ndarray:
    """The server's deterministic vector for ``text``: unit length, float32."""
    vector = np.zeros(dimension, dtype=np.float32)
    for word in _WORD.findall(text.lower()):
        _add_feature(vector, "w:" + word, 1.0)
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            _add_feature(vector, "t:" + padded[i : i + 3], _TRIGRAM_WEIGHT)
    norm = float(np.linalg.norm(vector))
    if norm == 0:  # no word characters at all: still a stable, non-zero vector
        _add_feature(vector, "s:" + text, 1.0)
        norm = 1.0
    return vector / norm


def _add_feature(vector: np.ndarray, feature: str, weight: float) -> None:
    # Signed hashing: collisions cancel out on average instead of piling up.
    digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    sign = 1.0 if digest & 1 else -1.0
    vector[(digest >> 1) % vector.shape[0]] += sign * weight


class OpenAIServer:
    """State and FastAPI app of one fake server; use ``run_openai_server`` to start one."""

    def __init__(self, dimension: int = 64, api_key: str | None = None, **faults: object):
        self.dimension = dimension
        self.api_key = api_key  # when set, other bearer tokens get a 401
        self.faults = Faults()
        self._lock = threading.Lock()
        self._rng = random.Random(0)
        self._forced: deque[tuple[int, float | None]] = deque()
        self._records: list[RequestRecord] = []
        self._admitted: deque[tuple[float, int]] = deque()  # (arrival, tokens) in the minute
        self._in_flight = 0
        self._most_in_flight = 0
        self._stopping = threading.Event()
        self.host, self.port = "127.0.0.1", 0
        self.configure(**faults)
        self.app = self._build_app()

    @property
    def base_url(self) -> str:
        """What to pass as the openai client's ``base_url``."""
        return f"http://{self.host}:{self.port}/v1"

    def configure(self, **knobs: object) -> None:
        """Change fault knobs (names of ``Faults``); a given ``seed`` re-seeds the RNG."""
        unknown = set(knobs) - {f.name for f in fields(Faults)}
        if unknown:
            raise TypeError(f"unknown fault knobs: {sorted(unknown)}")
        with self._lock:
            self.faults = replace(self.faults, **knobs)  # type: ignore[arg-type]
            if "seed" in knobs:
                self._rng = random.Random(self.faults.seed)

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and this Retry-After, if given).

        ``status=0`` makes them hang for ``faults.hang`` seconds instead (a timeout).
        """
        with self._lock:
            self._forced.extend([(status, retry_after)] * n)

    def stats(self) -> ServerStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            records, most = list(self._records), self._most_in_flight
        ok = [r for r in records if r.status == 200]
        return ServerStats(
            requests=len(records),
            by_status=dict(Counter(r.status for r in records)),
            texts_embedded=sum(r.texts for r in ok),
            records=records,
            most_in_flight=most,
        )

    def reset_stats(self) -> None:
        """Forget recorded requests (fault knobs and the RNG are kept)."""
        with self._lock:
            self._records.clear()
            self._most_in_flight = self._in_flight

    def reset(self) -> None:
        """Back to a fresh server: default faults, no forced failures, no records, RNG re-seeded.

        Lets one running server serve many tests (starting and stopping one costs ~0.2 s).
        """
        with self._lock:
            self.faults = Faults()
            self._rng = random.Random(self.faults.seed)
            self._forced.clear()
            self._records.clear()
            self._admitted.clear()
            self._most_in_flight = self._in_flight

    def vector(self, text: str) -> np.ndarray:
        """The vector this server returns for ``text``."""
        return embed_text(text, self.dimension)

    # The request path ---------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/embeddings")
        async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
            return await self._handle(body, request.headers.get("authorization", ""))

        return app

    async def _handle(self, body: EmbeddingRequest, authorization: str) -> JSONResponse:
        arrived = time.monotonic()
        texts = [body.input] if isinstance(body.input, str) else body.input
        tokens = sum(count_tokens(t) for t in texts)
        status, retry_after, hang = self._decide(authorization, texts)
        if status == 200:
            status, retry_after = self._admit(arrived, tokens)
        # Recorded on arrival, so a request that hangs is counted while it hangs.
        self._record(arrived, status, len(texts), body, retry_after, tokens)
        faults = self.faults
        compute = faults.latency_per_token * tokens if status == 200 else 0.0
        with self._lock:
            self._in_flight += 1
            self._most_in_flight = max(self._most_in_flight, self._in_flight)
        try:
            await self._pause(faults.latency + compute + hang)
        finally:
            with self._lock:
                self._in_flight -= 1
        if status != 200:
            return _error(status, retry_after, faults.retry_after_ms if status == 429 else None)
        return JSONResponse(self._payload(texts, body, faults.reverse_order))

    def _decide(self, authorization: str, texts: list[str]) -> tuple[int, float | None, float]:
        """(status, Retry-After, hang seconds) for one request."""
        with self._lock:
            faults = self.faults
            if self._forced:
                status, retry_after = self._forced.popleft()
                return (504, None, faults.hang) if status == 0 else (status, retry_after, 0.0)
            if self.api_key is not None and authorization != f"Bearer {self.api_key}":
                return 401, None, 0.0
            if any(not t for t in texts):  # OpenAI rejects empty strings too
                return 400, None, 0.0
            roll = self._rng.random()
        if roll < faults.rate_429:
            return 429, self._retry_after(faults), 0.0
        if roll < faults.rate_429 + faults.rate_500:
            return 500, None, 0.0
        if roll < faults.rate_429 + faults.rate_500 + faults.rate_timeout:
            return 504, None, faults.hang
        return 200, None, 0.0

    def _admit(self, now: float, tokens: int) -> tuple[int, float | None]:
        """(200, None) if the request fits the minute's budgets (and is counted), else a 429
        with the seconds until it would fit."""
        faults = self.faults
        rpm, tpm = faults.requests_per_window, faults.tokens_per_window
        if rpm is None and tpm is None:
            return 200, None
        window = faults.limit_window
        with self._lock:
            while self._admitted and self._admitted[0][0] <= now - window:
                self._admitted.popleft()
            waits = []
            if rpm is not None and len(self._admitted) + 1 > rpm:
                waits.append(self._admitted[len(self._admitted) - rpm][0] + window - now)
            spent = sum(t for _, t in self._admitted)
            if tpm is not None and spent + tokens > tpm:
                freed, wait = 0, window
                for at, t in self._admitted:  # oldest first: when enough has expired
                    freed += t
                    if spent - freed + tokens <= tpm:
                        wait = at + window - now
                        break
                waits.append(wait)
            if waits:
                return 429, round(max(max(waits), 0.001), 3)
            self._admitted.append((now, tokens))
        return 200, None

    def _retry_after(self, faults: Faults) -> float | None:
        if faults.retry_after is None or faults.retry_after_max is None:
            return faults.retry_after
        with self._lock:
            drawn = self._rng.uniform(faults.retry_after, faults.retry_after_max)
        return round(drawn, 1)

    async def _pause(self, seconds: float) -> None:
        # Sleep in slices so shutdown is not held up by a "timeout" request.
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))

    def _record(
        self,
        at: float,
        status: int,
        n: int,
        body: EmbeddingRequest,
        retry_after: float | None,
        tokens: int,
    ) -> None:
        ms = self.faults.retry_after_ms
        if status == 429 and ms is not None:
            retry_after = ms / 1000  # what the client is asked to wait: retry-after-ms wins
        with self._lock:
            self._records.append(
                RequestRecord(at, status, n, body.model, body.encoding_format, retry_after, tokens)
            )

    def _payload(self, texts: list[str], body: EmbeddingRequest, reverse: bool) -> dict:
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(self.vector(t), body)}
            for i, t in enumerate(texts)
        ]
        tokens = sum(count_tokens(t) for t in texts)
        return {
            "object": "list",
            "data": data[::-1] if reverse else data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _encode(vector: np.ndarray, body: EmbeddingRequest) -> list[float] | str:
    if body.encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _error(status: int, retry_after: float | None, retry_after_ms: float | None) -> JSONResponse:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    error = {
        "message": f"injected failure ({status})",
        "type": _ERROR_TYPES.get(status, "server_error"),
        "param": None,
        "code": None,
    }
    return JSONResponse({"error": error}, status_code=status, headers=headers)


@contextmanager
def run_openai_server(
    dimension: int = 64, api_key: str | None = None, **faults: object
) -> Iterator[OpenAIServer]:
    """Serve an ``OpenAIServer`` on 127.0.0.1:<free port> for the duration of the block."""
    server = OpenAIServer(dimension=dimension, api_key=api_key, **faults)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it; without it Nagle + delayed ACK add ~40 ms to every request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((server.host, 0))  # the OS picks the port; no race with other tests
    server.port = sock.getsockname()[1]
    config = uvicorn.Config(
        server.app,
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="h11",
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(
        target=runner.run, kwargs={"sockets": [sock]}, name="openai-test-server", daemon=True
    )
    thread.start()
    try:
        _wait_started(runner, thread)
        yield server
    finally:
        server._stopping.set()
        runner.should_exit = True
        thread.join(timeout=10)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the test OpenAI server did not shut down")


def _wait_started(runner: uvicorn.Server, thread: threading.Thread, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not runner.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test OpenAI server did not start")
        time.sleep(0.01)
