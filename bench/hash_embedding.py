"""A fast, deterministic embedder shared by every system in a bench run.

It makes the pipelines' own overhead visible apart from the model: a bag of hashed words
(signed feature hashing), L2-normalised. Texts that share words get similar vectors, so search
over it has structure, unlike random vectors. Only the standard library and NumPy are used,
because the peers' own environment imports this file too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

DIMENSION = 384
MODEL_NAME = "bench-hash-384"
PROVIDER = "bench-hash"  # its name as an ingestflow embedding provider
_WORD = re.compile(r"\w+")


def _bucket(word: str, dimension: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return digest % dimension, (1.0 if digest >> 63 else -1.0)


def hash_embed(texts: Sequence[str], dimension: int = DIMENSION) -> np.ndarray:
    """(len(texts), dimension) float32 unit rows; a text without words maps to a fixed unit
    vector, so every row is a valid cosine operand."""
    out = np.zeros((len(texts), dimension), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            index, sign = _bucket(word, dimension)
            out[row, index] += sign
        norm = float(np.linalg.norm(out[row]))
        if norm:
            out[row] /= norm
        else:
            out[row, 0] = 1.0
    return out


def register_provider() -> None:
    """Make ``hash_embed`` ingestflow's embedding provider ``bench-hash`` in this process.

    ingestflow is imported here, not at the top: the peers' environment imports this file
    without it."""
    from tasks.embedders import Embedder, register_embedder

    @register_embedder(PROVIDER)
    class HashEmbedder(Embedder):
        default_model = MODEL_NAME

        @property
        def dimension(self) -> int:
            return DIMENSION

        def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
            return hash_embed(texts)
