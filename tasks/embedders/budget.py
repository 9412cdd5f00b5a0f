"""The embedding provider's limits, shared by every process that embeds for one model and
endpoint: a requests-per-minute and a tokens-per-minute budget, and the pause a Retry-After
asks for.

The budgets are moving windows from the ``limits`` library (a log of what was spent in the
last window, as a provider counts its minute), kept in Redis (see ``budget_for`` for which),
so four workers against one account's limit spend one budget instead of each discovering the
429s. Tokens are logged in coarse units (at most ``UNITS_PER_WINDOW`` per window, each
request rounded up), which keeps the log small. A request waits until both budgets admit it.
A Retry-After seen by any process is a Redis key that expires when the pause ends: every
process checks it before each request. With ``memory://`` both are kept in this process
only. If Redis cannot be reached, the process falls back to its own budget and pause for a
minute (logged), and then tries Redis again: embedding never stops because the shared store
is down.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from ingestflow.core.settings import EmbeddingSettings, get_settings

log = logging.getLogger(__name__)

FALLBACK_SECONDS = 60.0  # after a Redis failure, how long this process keeps its own budget
_LONGEST_NAP = 1.0  # a waiting request looks at the budget again at least this often
UNITS_PER_WINDOW = 2000  # the most entries a tokens budget logs per window
ARRIVAL_MARGIN_SECONDS = 1
_HOLD = "ingestflow:embed:hold:"
# Set the pause only if it ends later than the one already set (PTTL -2: none is set).
_EXTEND_HOLD = """
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return left
"""


class SharedBudget:
    """What one provider endpoint and model allow; ``key`` names them (the embedder's
    identity), ``storage_url`` is a Redis URL or ``memory://``."""

    def __init__(
        self,
        key: str,
        *,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        storage_url: str,
        window_seconds: float = 60,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.key = key
        self._limits: list[tuple[RateLimitItem, bool]] = []  # (limit, costs tokens)
        scale = window_seconds / 60
        # What was spent stays in the log a second longer than the provider keeps it: the
        # provider counts a request when it arrives, a moment after the budget spent it.
        window = max(1, round(window_seconds)) + ARRIVAL_MARGIN_SECONDS
        self.tokens_per_window = int(tokens_per_minute * scale) if tokens_per_minute else None
        # Tokens per logged unit: a request's estimate is rounded up to whole units.
        self.unit = max(1, -(-(self.tokens_per_window or 1) // UNITS_PER_WINDOW))
        if requests_per_minute:
            amount = max(1, int(requests_per_minute * scale))
            self._limits.append((RateLimitItemPerSecond(amount, window), False))
        self._window_units = max(1, (self.tokens_per_window or 1) // self.unit)
        if self.tokens_per_window:
            self._limits.append((RateLimitItemPerSecond(self._window_units, window), True))
        self._sleep = sleep
        self._url = storage_url
        self._shared = not storage_url.startswith("memory://")
        self._local_limiter = MovingWindowRateLimiter(MemoryStorage())
        self._local_hold_until = 0.0
        self._lock = threading.Lock()
        self._fallback_until = 0.0
        self._limiter: MovingWindowRateLimiter | None = None
        self._redis: Any = None

    def __repr__(self) -> str:
        where = "shared" if self._shared else "this process"
        return f"SharedBudget({self.key!r}, {where})"

    # Retry-After ------------------------------------------------------------------------

    def hold(self, seconds: float) -> None:
        """Every process waits ``seconds`` from now before its next request."""
        if seconds <= 0:
            return
        with self._lock:
            self._local_hold_until = max(self._local_hold_until, time.monotonic() + seconds)
        client = self._shared_client()
        if client is not None:
            try:
                client.eval(_EXTEND_HOLD, 1, _HOLD + self.key, int(seconds * 1000))
            except Exception as exc:  # noqa: BLE001 - any Redis failure: keep it local
                self._fall_back(exc)

    def hold_left(self) -> float:
        """Seconds until the longest pause asked for ends (0 when none)."""
        left = self._local_hold_until - time.monotonic()
        client = self._shared_client()
        if client is not None:
            try:
                left = max(left, client.pttl(_HOLD + self.key) / 1000)
            except Exception as exc:  # noqa: BLE001
                self._fall_back(exc)
        return max(left, 0.0)

    # Budgets ----------------------------------------------------------------------------

    def acquire(self, tokens: int) -> float:
        """Wait until a pause has passed and both budgets admit one request of ``tokens``,
        then spend them; returns the seconds waited. A request larger than the whole
        tokens-per-minute budget is charged the whole budget (it could never pass)."""
        waited = 0.0
        cost = min(self._units(max(tokens, 1)), self._window_units)
        while True:
            left = self.hold_left()
            if left > 0:
                log.warning("embeddings for %s: waiting %.2f s for a Retry-After", self.key, left)
                self._sleep(left)
                waited += left
                continue
            if not self._limits:
                return waited
            nap = self._try_spend(cost)
            if nap is None:
                return waited
            self._sleep(nap)
            waited += nap

    def charge(self, tokens: int) -> None:
        """Spend ``tokens`` more than were acquired (the provider counted more), without
        waiting, as far as the window has room: the next requests wait for them instead."""
        if tokens <= 0:
            return
        limiter = self._current_limiter()
        for item, by_tokens in self._limits:
            if by_tokens:
                try:
                    units = min(self._units(tokens), item.amount)
                    limiter.hit(item, self.key, "tokens", cost=units)
                except StorageError as exc:
                    self._fall_back(exc)

    def _units(self, tokens: int) -> int:
        return -(-tokens // self.unit)

    def _try_spend(self, cost: int) -> float | None:
        """None when the request may go (its cost spent), else seconds to wait first."""
        limiter = self._current_limiter()
        try:
            for item, by_tokens in self._limits:
                if not limiter.test(
                    item, self.key, _name(by_tokens), cost=cost if by_tokens else 1
                ):
                    return self._nap(limiter, item, by_tokens)
            for item, by_tokens in self._limits:
                # Another process may have spent the budget since the test: then wait.
                if not limiter.hit(item, self.key, _name(by_tokens), cost=cost if by_tokens else 1):
                    return self._nap(limiter, item, by_tokens)
        except StorageError as exc:
            self._fall_back(exc)
            return 0.0
        return None

    def _nap(self, limiter: MovingWindowRateLimiter, item: RateLimitItem, by_tokens: bool) -> float:
        reset = limiter.get_window_stats(item, self.key, _name(by_tokens)).reset_time
        # Jitter, so processes that wait together do not all come back at once.
        return min(max(reset - time.time(), 0.02), _LONGEST_NAP) * random.uniform(0.5, 1.0)

    # Where the budget lives -------------------------------------------------------------

    def _current_limiter(self) -> MovingWindowRateLimiter:
        if not self._shared or time.monotonic() < self._fallback_until:
            return self._local_limiter
        if self._limiter is None:
            storage = storage_from_string(self._url, wrap_exceptions=True)
            assert isinstance(storage, Storage)  # a synchronous scheme
            self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    def _shared_client(self) -> Any:
        if not self._shared or time.monotonic() < self._fallback_until:
            return None
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self._url, socket_connect_timeout=2, socket_timeout=2
            )
        return self._redis

    def _fall_back(self, exc: BaseException) -> None:
        self._fallback_until = time.monotonic() + FALLBACK_SECONDS
        log.warning(
            "embedding budget store unreachable (%s); this process keeps its own budget and"
            " Retry-After pauses for %.0f s",
            type(exc).__name__,
            FALLBACK_SECONDS,
        )


def _name(by_tokens: bool) -> str:
    return "tokens" if by_tokens else "requests"


_budgets: dict[tuple[str, str, int | None, int | None, float], SharedBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(key: str, settings: EmbeddingSettings) -> SharedBudget:
    """This process's budget for ``key`` (an embedder's identity), one per key and limits.

    Kept in ``INGESTFLOW_EMBED_BUDGET_URL`` if set; else in the queue's Redis when there is
    a reason to share (the Celery backend, or a budget configured); else in this process.
    """
    url = _storage_url(settings)
    rpm, tpm = settings.requests_per_minute, settings.tokens_per_minute
    window = settings.budget_window_seconds
    spec = (key, url, rpm, tpm, window)
    with _budgets_lock:
        found = _budgets.get(spec)
        if found is None:
            found = _budgets[spec] = SharedBudget(
                key,
                requests_per_minute=rpm,
                tokens_per_minute=tpm,
                storage_url=url,
                window_seconds=window,
            )
        return found


def _storage_url(settings: EmbeddingSettings) -> str:
    if settings.budget_url is not None:
        return settings.budget_url.get_secret_value()
    queue = get_settings().queue
    if queue.backend == "celery" or settings.requests_per_minute or settings.tokens_per_minute:
        return queue.redis_url.get_secret_value()
    return "memory://"
