"""Vectors cached by (embedder identity, chunk content hash): unchanged text is embedded once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from storage.db import Conn


def cached_vectors(
    conn: Conn, *, model: str, content_hashes: Sequence[str]
) -> dict[str, np.ndarray]:
    if not content_hashes:
        return {}
    rows = conn.execute(
        "SELECT content_hash, embedding FROM embedding_cache"
        " WHERE model = %s AND content_hash = ANY(%s)",
        (model, list(content_hashes)),
        binary=True,
    ).fetchall()
    return {r["content_hash"]: r["embedding"].to_numpy().astype(np.float32) for r in rows}


def store_vectors(conn: Conn, *, model: str, vectors: dict[str, np.ndarray]) -> None:
    """Add vectors to the cache; existing entries win (they are identical by construction)."""
    if not vectors:
        return
    # In hash order: two runs caching overlapping texts then take the row locks in the same
    # order, so they cannot deadlock on each other.
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO embedding_cache (model, content_hash, embedding) VALUES (%s, %s, %b)"
            " ON CONFLICT (model, content_hash) DO NOTHING",
            [(model, h, vectors[h]) for h in sorted(vectors)],
        )
