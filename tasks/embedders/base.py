"""The Embedder extension point: one abstract ``embed_batch`` and a registry.

An embedder is a class; the ``ingestflow.embedders`` entry points name them by provider, the
built-ins (``local``, ``openai``) exactly as a plugin package would::

    [project.entry-points."ingestflow.embedders"]
    my-provider = "my_package.embedder:MyEmbedder"

``register_embedder("my-provider")`` adds one at run time (a notebook, a benchmark).
"""

from __future__ import annotations

import contextvars
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from ingestflow.core import registry
from ingestflow.core.registry import Registry
from ingestflow.core.settings import EmbeddingSettings, get_settings
from ingestflow.core.telemetry import span


class Embedder(ABC):
    """Turns texts into unit-length float32 vectors of a fixed dimension."""

    provider: str = ""
    default_model: str = ""
    # The provider's own caps on one request (None: none); settings may ask for less.
    max_request_inputs: int | None = None
    max_request_tokens: int | None = None

    def __init__(self, model: str | None, settings: EmbeddingSettings) -> None:
        self.model = model or self.default_model
        self.settings = settings

    @property
    @abstractmethod
    def dimension(self) -> int:
        """Length of every vector this embedder returns."""

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed one batch (already sized by ``batches``) into an (n, dimension) array."""

    @property
    def in_flight(self) -> int:
        """How many ``embed_batch`` calls ``embed`` runs at once (1: one after another)."""
        return 1

    def count_tokens(self, text: str) -> int:
        """Token count used for batch sizing and token-aware chunking.

        Subclasses with a real tokenizer override this; the default is a conservative
        estimate of four characters per token.
        """
        return len(text) // 4 + 1

    def batches(self, texts: Sequence[str]) -> Iterator[list[int]]:
        """Yield index lists whose size respects both the count and the token budget.

        Indices come shortest text first: a model pads a batch to its longest text, so texts
        of similar length batched together waste the least work (``embed`` puts the vectors
        back in input order).
        """
        limit, token_budget = self.settings.batch_size, self.settings.max_batch_tokens
        limit = min(limit, self.max_request_inputs or limit)
        token_budget = min(token_budget, self.max_request_tokens or token_budget)
        counts = [self.count_tokens(text) for text in texts]
        batch: list[int] = []
        tokens = 0
        for i in sorted(range(len(texts)), key=counts.__getitem__):
            n = counts[i]
            if batch and (len(batch) >= limit or tokens + n > token_budget):
                yield batch
                batch, tokens = [], 0
            batch.append(i)
            tokens += n
        if batch:
            yield batch

    def embed(
        self, texts: Sequence[str], on_batch: Callable[[list[int]], None] | None = None
    ) -> np.ndarray:
        """Embed any number of texts, batch by batch, keeping their order; ``on_batch`` is
        told the positions of each batch's texts once they are embedded. Each batch is one
        request to the model (one trace span); up to ``in_flight`` of them run at once, and
        the first failure stops the rest and is raised."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        batches = list(self.batches(texts))
        workers = min(self.in_flight, len(batches))
        if workers <= 1:
            for idx in batches:
                out[idx] = self._embed_traced(texts, idx)
                if on_batch is not None:
                    on_batch(idx)
            return out
        with ThreadPoolExecutor(workers, thread_name_prefix="embed") as pool:
            pending = {
                pool.submit(contextvars.copy_context().run, self._embed_traced, texts, idx): idx
                for idx in batches
            }
            try:
                for done in as_completed(pending):
                    idx = pending[done]
                    out[idx] = done.result()
                    if on_batch is not None:
                        on_batch(idx)
            finally:
                for future in pending:
                    future.cancel()  # after a failure: the batches not yet started
        return out

    def _embed_traced(self, texts: Sequence[str], idx: list[int]) -> np.ndarray:
        with span(
            "ingestflow.embed.request",
            **{
                "ingestflow.embed.provider": self.provider,
                "ingestflow.embed.model": self.model,
                "ingestflow.embed.texts": len(idx),
            },
        ):
            return self.embed_batch([texts[i] for i in idx])

    @property
    def identity(self) -> str:
        """Key for the vector cache: the same identity always gives the same vectors."""
        return f"{self.provider}:{self.model}"


EmbedderFactory = Callable[[str | None, EmbeddingSettings], Embedder]
EMBEDDERS: Registry[EmbedderFactory] = Registry(registry.EMBEDDERS, "embedding provider")
_instances: dict[tuple[str, str | None], Embedder] = {}
_lock = threading.Lock()


def register_embedder(provider: str) -> Callable[[type[Embedder]], type[Embedder]]:
    """Class decorator that makes an embedder available under ``provider``."""

    def decorate(cls: type[Embedder]) -> type[Embedder]:
        cls.provider = provider
        EMBEDDERS.register(provider, cls, replace=True)
        return cls

    return decorate


def available_providers() -> list[str]:
    return EMBEDDERS.names()


def get_embedder(provider: str | None = None, model: str | None = None) -> Embedder:
    """The process-wide embedder for (provider, model); models load once per process."""
    settings = get_settings().embedding
    provider = provider or settings.provider
    model = model or (settings.model if provider == settings.provider else None)
    with _lock:
        key = (provider, model)
        if key not in _instances:
            embedder = EMBEDDERS.get(provider)(model, settings)
            embedder.provider = provider  # the name it is registered under is its identity
            _instances[key] = embedder
        return _instances[key]


def clear_embedders() -> None:
    """Forget cached embedder instances (after settings change)."""
    with _lock:
        _instances.clear()
