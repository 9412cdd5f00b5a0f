"""OpenAI (and OpenAI-compatible) embeddings through the official ``openai`` client.

The client's own retries are switched off (``max_retries=0``). This module retries 429s,
5xx, timeouts and connection errors itself through ``tenacity``, with exponential backoff and
full jitter that honours the server's Retry-After, so every wait is capped by
``max_retry_wait`` and logged; 4xx other than 408, 409 and 429 fail at once. A Retry-After
also holds back every other request for this endpoint and model, in this process and in
every process sharing the budget store (``tasks.embedders.budget``), including the next
request after one that ran out of retries. Each request first waits for the shared
requests- and tokens-per-minute budgets when they are set.
The ``openai`` package is imported only when an embedder is built: the registry imports this
module even when another provider is used, and ``openai`` takes about half a second to load.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ingestflow.core.errors import ConfigError, EmbedError, EmbedRequestRejected
from ingestflow.core.settings import EmbeddingSettings
from tasks.embedders.base import Embedder
from tasks.embedders.budget import budget_for

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# 408 and 409 are "try again" too (OpenAI's own client retries them). 501 and 505 say the
# server cannot ever do this, so they are permanent like the other 4xx.
_RETRY_4XX = frozenset({408, 409, 429})
_PERMANENT_5XX = frozenset({501, 505})
BASE_WAIT = 0.5  # ceiling of the first backoff, seconds; doubles with every retry
PLACEHOLDER_KEY = "not-needed"  # local OpenAI-compatible servers usually ignore the key
_PROBE_TEXT = "dimension probe"
_KEY_LIKE = re.compile(r"\b(?:sk|key)-[A-Za-z0-9_.*\-]+")
_STATUS_HINTS = {
    400: "the input was invalid (an empty or too long text?)",
    401: "check OPENAI_API_KEY",
    403: "the key has no access to this model or endpoint",
    404: "unknown model, or OPENAI_BASE_URL does not serve /embeddings",
    422: "the input was invalid",
}


@dataclass(frozen=True)
class _Failure:
    """One failed attempt, reduced to what the retry loop needs."""

    label: str  # "HTTP 429", "timeout", "connection error"; names the last failure
    retryable: bool
    wait_hint: float | None = None  # what the server asked for, seconds
    detail: str = ""


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, else ``Retry-After`` (seconds or date).

    Returns None when neither header is present or parseable; a date in the past gives 0.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = _to_float(lowered.get("retry-after-ms"))
    if millis is not None and millis >= 0:
        return millis / 1000
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _to_float(value)
    if seconds is None:
        seconds = _seconds_until(value, time.time() if now is None else now)
    return None if seconds is None else max(seconds, 0.0)


def backoff_wait(
    attempt: int,
    *,
    cap: float,
    hint: float | None = None,
    base: float = BASE_WAIT,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry ``attempt + 1``: full jitter, at least ``hint``, at most ``cap``.

    Full jitter (a uniform draw below the exponential ceiling) spreads out clients that failed
    together, so they do not come back in lockstep.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 60))  # min(): 2**1100 overflows a float
    jitter = (rng or random).uniform(0, ceiling)
    return min(cap, max(jitter, hint or 0.0))


class OpenAIEmbedder(Embedder):
    """Embeds through the OpenAI embeddings API or any server that speaks it (``base_url``).

    ``sleep`` and ``rng`` are injectable so tests of the backoff need not wait.
    """

    provider = "openai"
    default_model = "text-embedding-3-small"
    # OpenAI's documented caps for its embedding models, per request.
    max_request_inputs = 2048
    max_request_tokens = 300_000

    def __init__(
        self,
        model: str | None,
        settings: EmbeddingSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(model, settings)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = _build_client(settings)
        # A custom server may serve any model under any name, so only the official API's
        # dimensions are trusted; everything else is measured with one request.
        known = None if settings.openai_base_url else KNOWN_DIMENSIONS.get(self.model)
        self._dimension: int | None = known
        self._dimension_lock = threading.Lock()
        self._budget = budget_for(self.identity, settings)
        if self._budget.tokens_per_window:  # a larger request could never be admitted
            self.max_request_tokens = min(self.max_request_tokens, self._budget.tokens_per_window)

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r})"

    @property
    def in_flight(self) -> int:
        return self.settings.concurrent_requests

    @property
    def identity(self) -> str:
        """Cache key: another endpoint may serve different vectors under the same model name."""
        base = self.settings.openai_base_url
        if not base:
            return f"openai:{self.model}"
        url = urlparse(base)
        return f"openai:{self.model}@{url.hostname}:{url.port or ''}{url.path.rstrip('/')}"

    @property
    def dimension(self) -> int:
        """Known for OpenAI's own models; otherwise measured once with a probe request."""
        if self._dimension is None:
            with self._dimension_lock:
                if self._dimension is None:
                    self.embed_batch([_PROBE_TEXT])  # records the dimension
        assert self._dimension is not None
        return self._dimension

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """One request (with retries) -> (n, dimension) float32, unit rows, in input order."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        vectors = _vectors(self._request(list(texts)), len(texts))
        self._check_dimension(vectors.shape[1])
        return _normalise(vectors)

    def _request(self, texts: list[str]) -> Any:
        import openai

        tokens = sum(self.count_tokens(t) for t in texts)
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_retries + 1),
            retry=retry_if_exception(
                lambda e: isinstance(e, openai.OpenAIError) and _classify(e).retryable
            ),
            wait=self._backoff,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = self._send(texts, tokens)
        except openai.OpenAIError as exc:
            failure = _classify(exc)
            if not failure.retryable:
                reason = f"embeddings request for model {self.model!r} rejected: {failure.label}"
                if failure.detail:
                    reason += f"; {failure.detail}"
                raise EmbedRequestRejected(self._redact(reason)) from exc
            raise EmbedError(
                f"embeddings request for model {self.model!r} failed after"
                f" {retrying.statistics['attempt_number']} attempts; last: {failure.label}"
            ) from exc
        except ValueError as exc:  # the client's parser found no usable data
            raise EmbedError(f"malformed embeddings response: {exc}") from exc
        usage = getattr(response, "usage", None)
        if usage is not None and isinstance(getattr(usage, "prompt_tokens", None), int):
            self._budget.charge(usage.prompt_tokens - tokens)  # the provider's count rules
        return response

    def _send(self, texts: list[str], tokens: int) -> Any:
        """One attempt, after the shared pauses and budgets allow it; a Retry-After in the
        answer holds back every request for this endpoint (capped like every wait)."""
        import openai

        self._budget.acquire(tokens)
        try:
            return self._client.embeddings.create(input=texts, model=self.model)
        except openai.OpenAIError as exc:
            hint = _classify(exc).wait_hint
            if hint:
                self._budget.hold(min(hint, self.settings.max_retry_wait))
            raise

    def _backoff(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = _classify(exc).wait_hint if isinstance(exc, Exception) else None
        return backoff_wait(
            state.attempt_number - 1, cap=self.settings.max_retry_wait, hint=hint, rng=self._rng
        )

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        label = _classify(exc).label if isinstance(exc, Exception) else "unknown"
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "embeddings request for model %r failed (%s); retry %d of %d in %.2f s",
            self.model,
            label,
            state.attempt_number,
            self.settings.max_retries,
            wait,
        )

    def _check_dimension(self, found: int) -> None:
        if self._dimension is None:
            self._dimension = found  # benign race: every thread would store the same value
        elif found != self._dimension:
            raise EmbedRequestRejected(
                f"model {self.model!r} returned {found}-dimensional vectors, "
                f"expected {self._dimension}"
            )

    def _redact(self, text: str) -> str:
        # Providers echo (partly masked) keys in 401 messages; none may reach a stored reason.
        key = self.settings.openai_api_key
        if key is not None and key.get_secret_value():
            text = text.replace(key.get_secret_value(), "[redacted]")
        return _KEY_LIKE.sub("[redacted]", text)


def _build_client(settings: EmbeddingSettings) -> openai.OpenAI:
    import openai

    return openai.OpenAI(
        api_key=_api_key(settings),
        # Explicit, so the client never picks up a different OPENAI_BASE_URL on its own.
        base_url=settings.openai_base_url or OPENAI_BASE_URL,
        timeout=settings.request_timeout,
        max_retries=0,
    )


def _api_key(settings: EmbeddingSettings) -> str:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    if key:
        return key
    if settings.openai_base_url:
        return PLACEHOLDER_KEY
    raise ConfigError(
        "OPENAI_API_KEY is not set: set it (or INGESTFLOW_EMBED_OPENAI_API_KEY), or set "
        "OPENAI_BASE_URL to an OpenAI-compatible server that needs no key"
    )


def _classify(exc: Exception) -> _Failure:
    import openai

    if isinstance(exc, openai.APITimeoutError):  # before its base class, APIConnectionError
        return _Failure("timeout", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return _Failure("connection error", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        return _status_failure(exc)
    # Anything else (an unparseable body, say) is odd but not the request's fault.
    return _Failure(type(exc).__name__, retryable=True)


def _status_failure(exc: openai.APIStatusError) -> _Failure:
    status = exc.status_code
    label = f"HTTP {status}"
    if status in _RETRY_4XX or (status >= 500 and status not in _PERMANENT_5XX):
        return _Failure(label, retryable=True, wait_hint=retry_after_seconds(exc.response.headers))
    parts = [_STATUS_HINTS.get(status, ""), _server_message(exc)]
    return _Failure(label, retryable=False, detail="; ".join(p for p in parts if p))


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    return f"server said: {message[:300]}" if isinstance(message, str) and message else ""


def _vectors(response: Any, n: int) -> np.ndarray:
    data = sorted(response.data, key=lambda item: item.index)
    if [item.index for item in data] != list(range(n)):
        raise EmbedError(f"the embeddings response held {len(data)} vectors for {n} texts")
    try:
        return np.asarray([item.embedding for item in data], dtype=np.float32)
    except (ValueError, TypeError) as exc:  # ragged rows or non-numeric values
        raise EmbedError(f"malformed embeddings in the response: {exc}") from exc


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # A zero row stays zero rather than turning into NaNs.
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _to_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        return parsedate_to_datetime(http_date).timestamp() - now
    except (TypeError, ValueError):
        return None
