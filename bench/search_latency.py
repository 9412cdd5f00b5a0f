"""Search latency and recall: ingestflow's HNSW search against exact search, same collection.

Usage::

    .venv/bin/python -m bench.search_latency --json OUT [--small] [--database-url URL]

The collection holds 100,000 chunks (10,000 with ``--small``): SciFact abstracts cut by the
product's chunker into sentence-sized pieces (200 characters, then 250, 300, ... as needed for
enough distinct texts, so the passes overlap in words but never repeat a text), embedded with
``bench.hash_embedding`` (384 dimensions: a bag of hashed words, so texts that share words are
near each other, as with a real model, unlike random vectors). It is made by the product
(``ensure_collection``: its partial HNSW index) and loaded fast: COPY with that index dropped,
then the same index built, then ANALYZE.

Queries: the 300 SciFact test queries (``qrels/test.tsv``), embedded the same way.

- **ingestflow**: ``storage.chunks.search_chunks`` (k = 10, ``hnsw.ef_search`` = 100), timed
  around the call on a held pooled connection.
- **exact**: the same function on another connection whose session has
  ``enable_indexscan = off``: the same SQL, planned without the HNSW index (a scan that
  computes every distance), giving the true top 10.

After a warm-up of 20 queries each way (exact first), all queries run through ingestflow, then
all exactly, then all through ingestflow again. ingestflow's percentiles are over both passes:
the first runs on a warm index, the second after the exact scans have pushed much of it out of
Postgres' shared buffers, as any large scan would (each pass's p50 is in the detail); both
passes must return the same hits. The index-scan counter of the collection's index
(``pg_stat_user_indexes``) checks that every ingestflow search used the index and no exact one
did. recall@10 is the mean overlap of the
two top-10 sets (by document and ordinal) over 10; ``recall_at_10_distance`` counts instead the
hits not farther than the exact 10th hit (ann-benchmarks' definition), which is robust to ties.
Afterwards every query runs again at a few other ``ef_search`` values (``ef_search_sweep``:
recall@10 and p50 at each), to show what the product's setting trades.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.hash_embedding import hash_embed
from bench.write_path import (
    MAINTENANCE_SETTINGS,
    SCIFACT,
    Row,
    argument_parser,
    bench_database,
    build_vector_index,
    chunk_rows,
    copy_in_transactions,
    create_collection,
    create_documents,
    distinct_chunks,
    drop_collection,
    drop_vector_index,
    ratio_row,
    write_result,
)

K = 10
WARMUP = 20
SWEEP_EF_SEARCH = (40, 200, 400)
DIMENSION = 384


# --------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between the closest ranks (as
    NumPy's default): rank ``(n - 1) * q / 100`` in the sorted values."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def recall_at_k(found: Sequence[Any], truth: Sequence[Any], k: int) -> float:
    """Share of the true top ``k`` that ``found``'s top ``k`` holds."""
    return len(set(found[:k]) & set(truth[:k])) / k


def distance_recall_at_k(
    found_distances: Sequence[float], true_distances: Sequence[float], k: int, eps: float = 1e-6
) -> float:
    """Share of ``found``'s top ``k`` no farther than the true ``k``-th nearest (plus ``eps``):
    a hit tied with the true ``k``-th counts even when exact search listed the other one."""
    bound = true_distances[k - 1] + eps
    return sum(1 for d in found_distances[:k] if d <= bound) / k


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_queries() -> list[str]:
    """The texts of SciFact's test queries, in qrels order."""
    with (SCIFACT / "qrels" / "test.tsv").open(encoding="utf-8") as f:
        ids = list(dict.fromkeys(row["query-id"] for row in csv.DictReader(f, delimiter="\t")))
    texts = {}
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as f:
        for line in f:
            query = json.loads(line)
            texts[str(query["_id"])] = query["text"]
    return [texts[i] for i in ids]


def loaded_collection(count: int) -> tuple[int, dict[str, Any]]:
    """A product collection of ``count`` chunks with its HNSW index; detail of the load."""
    from storage.db import connection

    started = time.perf_counter()
    texts = distinct_chunks(count, sizes=(200, 250, 300, 350, 400, 500, 600))
    vectors = hash_embed(texts, DIMENSION)
    prepared = time.perf_counter() - started
    coll, definition = create_collection("bench-search", DIMENSION)
    drop_vector_index(coll)
    copy_seconds = sum(
        copy_in_transactions(chunk_rows(coll, create_documents(coll, count // 20), texts, vectors))
    )
    build_seconds = build_vector_index(coll, definition)
    with connection() as conn:
        conn.execute("UPDATE documents SET status = 'indexed' WHERE collection_id = %s", (coll,))
        conn.execute("ANALYZE chunks")
        conn.execute("ANALYZE documents")
    return coll, {
        "chunks": count,
        "chunk_chars_mean": round(float(np.mean([len(t) for t in texts])), 1),
        "texts_and_vectors_s": round(prepared, 1),
        "copy_s": round(copy_seconds, 1),
        "index_build_s": round(build_seconds, 1),
        "index_build_settings": MAINTENANCE_SETTINGS,
    }


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def index_scans(conn: Any, collection_id: int) -> int:
    """Scans of the collection's HNSW index so far, as the statistics system counts them, once
    the count has stopped changing (backends flush their counts when they go idle, just after
    the statement that asked them to)."""
    name = f"chunks_embedding_c{collection_id}"
    last = -1
    for _ in range(20):
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s", (name,)
        ).fetchone()
        count = int(row["idx_scan"])
        if count == last:
            break
        last = count
        time.sleep(0.25)
    return last


def _at_ef_search(
    conn: Any,
    collection_id: int,
    vectors: np.ndarray,
    exact: Sequence[Sequence[tuple[tuple[str, int], float]]],
    ef_search: int,
) -> dict[str, float]:
    """recall@10 and p50 latency of ``search_chunks`` at another ``ef_search`` (what raising
    or lowering the product's 100 would trade), against the exact results already found."""
    from storage.chunks import search_chunks

    recalls, latency = [], []
    for vector, truth in zip(vectors, exact, strict=True):
        started = time.perf_counter()
        hits = search_chunks(
            conn,
            collection_id=collection_id,
            dimension=DIMENSION,
            query_vector=vector,
            k=K,
            ef_search=ef_search,
        )
        latency.append((time.perf_counter() - started) * 1000)
        recalls.append(
            recall_at_k([(h.document_id, h.ordinal) for h in hits], [h for h, _ in truth], K)
        )
    return {"recall_at_10": float(np.mean(recalls)), "p50_ms": round(percentile(latency, 50), 3)}


def measure(
    collection_id: int, count: int, queries: Sequence[str]
) -> tuple[list[Row], dict[str, Any]]:
    from storage.chunks import search_chunks
    from storage.db import connection

    vectors = hash_embed(queries, DIMENSION)
    results: dict[str, list[list[tuple[tuple[str, int], float]]]] = {}
    latency: dict[str, list[float]] = {"ann": [], "exact": []}

    with connection() as ann, connection() as exact, connection() as stats:
        exact.execute("SET enable_indexscan = off")

        def search(kind: str, i: int) -> list[tuple[tuple[str, int], float]]:
            started = time.perf_counter()
            hits = search_chunks(
                ann if kind == "ann" else exact,
                collection_id=collection_id,
                dimension=DIMENSION,
                query_vector=vectors[i],
                k=K,
            )
            latency[kind].append((time.perf_counter() - started) * 1000)
            return [((h.document_id, h.ordinal), 1 - h.score) for h in hits]

        for kind in ("exact", "ann"):
            for i in range(min(WARMUP, len(queries))):
                search(kind, i)
        for values in latency.values():
            values.clear()  # the warm-up's
        for conn in (ann, exact):
            conn.execute("SELECT pg_stat_force_next_flush()")
        before = index_scans(stats, collection_id)
        results["ann"] = [search("ann", i) for i in range(len(queries))]
        results["exact"] = [search("exact", i) for i in range(len(queries))]
        again = [search("ann", i) for i in range(len(queries))]
        for conn in (ann, exact):
            conn.execute("SELECT pg_stat_force_next_flush()")
        scans = index_scans(stats, collection_id) - before
        sweep = {
            ef: _at_ef_search(ann, collection_id, vectors, results["exact"], ef)
            for ef in SWEEP_EF_SEARCH
        }

    # One HNSW scan per ingestflow search and none for the exact ones: more would mean the
    # exact searches used the index too.
    if scans != 2 * len(queries):
        raise AssertionError(
            f"plans not as intended: {scans} HNSW index scans for {2 * len(queries)}"
            f" ingestflow searches and {len(queries)} exact ones"
        )
    if [[h for h, _ in r] for r in again] != [[h for h, _ in r] for r in results["ann"]]:
        raise AssertionError("the same HNSW search gave different results twice")
    by_id, by_distance, short = [], [], 0
    for found, truth in zip(results["ann"], results["exact"], strict=True):
        if len(truth) < K:
            raise AssertionError("exact search found fewer than k chunks")
        short += len(found) < K
        by_id.append(recall_at_k([h for h, _ in found], [h for h, _ in truth], K))
        by_distance.append(distance_recall_at_k([d for _, d in found], [d for _, d in truth], K))
    recall = float(np.mean(by_id))
    rows = [
        ratio_row(
            f"search latency p{q} ({len(queries)} SciFact queries, k={K}, {count:,} chunks):"
            " search_chunks with HNSW vs exact search (same SQL, index scans off)",
            percentile(latency["ann"], q),
            percentile(latency["exact"], q),
            "ms",
            at_least=None,
        )
        for q in (50, 95)
    ]
    rows.append(
        Row(
            f"recall@{K} of search_chunks against exact search ({len(queries)} queries,"
            f" {count:,} chunks, ef_search 100)",
            recall,
            1.0,
            "recall",
            recall,
            "none stated",
            None,
        )
    )
    detail = {
        "ef_search_sweep": sweep,
        "recall_at_10_distance": float(np.mean(by_distance)),
        "queries_with_fewer_than_k_hits": short,
        "queries_below_recall_0.8": sum(1 for r in by_id if r < 0.8),
        "ingestflow_p50_ms_per_pass": [
            round(percentile(latency["ann"][: len(queries)], 50), 3),
            round(percentile(latency["ann"][len(queries) :], 50), 3),
        ],
        "latency_ms": {
            kind: {f"p{q}": round(percentile(v, q), 3) for q in (50, 95, 99)}
            for kind, v in latency.items()
        },
        "hnsw_index_scans": scans,
        "ef_search": 100,
    }
    return rows, detail


def main(argv: Sequence[str] | None = None) -> None:
    args = argument_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    count = 10_000 if args.small else 100_000
    started = time.perf_counter()
    with bench_database(args.database_url):
        coll, load = loaded_collection(count)
        try:
            rows, detail = measure(coll, count, test_queries())
        finally:
            drop_collection(coll)
    write_result(
        args.json, rows, load=load, **detail, seconds=round(time.perf_counter() - started, 1)
    )


if __name__ == "__main__":
    main()
