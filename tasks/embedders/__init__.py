"""Embedders: the ``Embedder`` protocol, its registry and the built-in providers."""

from tasks.embedders.base import (
    Embedder,
    available_providers,
    clear_embedders,
    get_embedder,
    register_embedder,
)

__all__ = [
    "Embedder",
    "available_providers",
    "clear_embedders",
    "get_embedder",
    "register_embedder",
]
