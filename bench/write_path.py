"""The write path: ingestflow's chunk writes against a raw COPY into the same indexed table.

Usage::

    .venv/bin/python -m bench.write_path --json OUT [--small] [--database-url URL]

Rows are real text: SciFact abstracts cut by the product's own chunker at several chunk sizes,
every text distinct, with vectors from ``bench.hash_embedding`` at 384 and 1536 dimensions.
Distinct matters: pgvector stores a vector identical to one already in the graph as one more
heap pointer of that element, so writing the same rows twice would make the second write
cheap.

(a) Single-document upsert. A collection made by ``storage.collections.ensure_collection``
(so its partial HNSW index is the product's) is filled with data first (COPY, then the index
built, as a deferred load would). Then, alternately and with fresh rows each time:
``storage.chunks.replace_chunks`` writes a document of N chunks in its own transaction (lock
the document row, delete its old chunks, binary COPY, mark it indexed), against a raw binary
COPY of N rows into the same table and collection (so the same partial index is maintained),
in its own transaction. Both run on the product's pooled connections and include the commit.
Also: replacing an indexed document's N chunks (the delete of its old chunks included) against
the same raw COPY.

(b) Bulk load of a new collection, 100,000 chunks at 384 dimensions and 10,000 at 1536
(``--small``: 10,000 at 384), 10 chunks per document. The baseline is a raw COPY into the
table while the collection's index exists (10,000-row transactions). ingestflow: its bulk path
as the ingest flow runs it, ``replace_chunks`` in a transaction per 32-document micro-batch
under the run's ``storage.vector_index.DeferredVectorIndex`` (with the product's settings: a
run of at least ``INGESTFLOW_BULK_INDEX_MIN_DOCUMENTS`` documents drops the collection's index
and rebuilds it ``CONCURRENTLY`` at the end; the rebuild is timed, and the index checked to be
back as the product defines it). A diagnostic row gives the ceiling of deferral: raw COPY
without the index, then ``CREATE INDEX CONCURRENTLY``. Index builds use
``maintenance_work_mem`` = 1GB (the product's ``INGESTFLOW_INDEX_BUILD_MEMORY``) and the
server's ``max_parallel_maintenance_workers`` (reported). While the index is away, the
collection's chunks stay searchable by exact scan, so deferral opens no correctness window.

This module also holds what the other micro-benchmarks share: the command line, the result
table, alternating repetitions, SciFact texts and the bench database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from bench.hash_embedding import hash_embed  # noqa: E402
from bench.pg import database  # noqa: E402

SCIFACT = REPO.parent / "shared" / "eval-data" / "scifact"
TENANT = "bench"
SHA256 = "0" * 64  # the digest every bench document is claimed with
# As the product builds an index (INGESTFLOW_INDEX_BUILD_MEMORY); parallel workers are the
# server's (reported with the results).
MAINTENANCE_SETTINGS = {"maintenance_work_mem": "1GB"}
CHUNKS_PER_DOCUMENT = 10  # in bulk loads: 10,000 chunks are 1,000 documents, enough to defer
DOCUMENTS_PER_BATCH = 32  # INGESTFLOW_BATCH_SIZE's default
_COPY = (
    "COPY chunks (document_id, collection_id, ordinal, content, content_hash, provenance,"
    " embedding) FROM STDIN WITH (FORMAT BINARY)"
)
_COPY_TYPES = ["uuid", "int4", "int4", "text", "text", "jsonb", "vector"]
ChunkRow = tuple[uuid.UUID, int, int, str, str, dict[str, Any], np.ndarray]


# --------------------------------------------------------------------------------------------
# Shared by the micro-benchmarks: command line, result table, repetitions
# --------------------------------------------------------------------------------------------


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options every micro-benchmark takes; a module may add its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, required=True, help="write the result here")
    parser.add_argument("--small", action="store_true", help="a quick run at reduced sizes")
    parser.add_argument(
        "--database-url", help="Postgres with pgvector (default: bench.pg.database())"
    )
    return parser


@dataclass(frozen=True)
class Row:
    """One line of the result table: ingestflow and its baseline, measured side by side."""

    measure: str
    ingestflow: float
    baseline: float
    unit: str
    ratio: float
    target: str
    met: bool | None


def ratio_row(
    measure: str, ingestflow: float, baseline: float, unit: str, *, at_least: float | None
) -> Row:
    """A row whose ratio is ingestflow / baseline, met when it is ``at_least`` (None: no
    target stated, so neither met nor missed)."""
    ratio = ingestflow / baseline if baseline else float("nan")
    target = f">= {at_least:g}" if at_least is not None else "none stated"
    return Row(measure, ingestflow, baseline, unit, ratio, target, _met(ratio, at_least))


def _met(ratio: float, at_least: float | None) -> bool | None:
    return None if at_least is None else bool(ratio >= at_least)


def write_result(path: Path, rows: Sequence[Row], **detail: Any) -> None:
    """Write ``{"table": rows, **detail}`` to ``path`` and print the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"table": [asdict(r) for r in rows], **detail}, indent=2))
    for r in rows:
        flag = {True: "met", False: "NOT met", None: ""}[r.met]
        print(
            f"{r.measure}: ingestflow {r.ingestflow:.4g} vs baseline {r.baseline:.4g} {r.unit}"
            f" -> ratio {r.ratio:.3f} (target {r.target}) {flag}"
        )


def alternate(reps: int, *measurements: Callable[[int], float]) -> tuple[list[float], ...]:
    """Run every measurement ``reps`` times, in reverse order every other repetition (so drift
    in a shared machine's load hits them alike); each is passed the repetition's index.
    Returns each measurement's values, in the order the measurements were given."""
    values: list[list[float]] = [[] for _ in measurements]
    order = list(range(len(measurements)))
    for i in range(reps):
        for m in order if i % 2 == 0 else order[::-1]:
            values[m].append(measurements[m](i))
    return tuple(values)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------------------------
# Shared: texts and the bench database
# --------------------------------------------------------------------------------------------


@cache
def scifact_documents() -> list[tuple[str, str]]:
    """SciFact's corpus as (id, ``title + " " + text``), in file order."""
    docs = []
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            docs.append((str(doc["_id"]), f"{doc['title']} {doc['text']}"))
    return docs


def distinct_chunks(count: int, sizes: Sequence[int]) -> list[str]:
    """``count`` distinct chunk texts: SciFact cut by the product's chunker at each size in
    turn (overlap a fifth of the size), until there are enough."""
    from ingestflow.core.types import Segment
    from tasks.chunk import chunk_segments

    seen: dict[str, None] = {}
    for size in sizes:
        for _, text in scifact_documents():
            for chunk in chunk_segments([Segment(text)], size=size, overlap=size // 5):
                seen.setdefault(chunk.content)
                if len(seen) == count:
                    return list(seen)
    raise ValueError(f"SciFact has only {len(seen)} distinct chunks at sizes {list(sizes)}")


@contextmanager
def bench_database(url: str | None) -> Iterator[str]:
    """``url`` (or an embedded Postgres), migrated, with the product's settings pointing at it."""
    with nullcontext(url) if url else database() as db_url:
        os.environ["DATABASE_URL"] = db_url
        from ingestflow.core.settings import get_settings
        from storage.db import reset_engine
        from storage.migrate import ensure_schema

        get_settings.cache_clear()
        reset_engine()
        ensure_schema()
        try:
            yield db_url
        finally:
            reset_engine()


def create_collection(prefix: str, dimension: int) -> tuple[int, str]:
    """A new collection made by the product (with its partial HNSW index, still empty); its
    id and that index's definition."""
    from storage.collections import ensure_collection
    from storage.db import transaction

    with transaction() as conn:
        coll = ensure_collection(
            conn,
            name=f"{prefix}-{uuid.uuid4().hex[:8]}",
            provider="bench-hash",
            model=f"bench-hash-{dimension}",
            dimension=dimension,
            tenant=TENANT,
        )
        return coll.id, _index_definition(conn, coll.id)


def drop_collection(collection_id: int) -> None:
    """Remove a bench collection, its index first (cheaper than maintaining it on delete)."""
    from storage.db import connection

    with connection() as conn:
        conn.execute(f"DROP INDEX IF EXISTS {_index_name(collection_id)}")
        conn.execute("DELETE FROM collections WHERE id = %s", (collection_id,))


def create_documents(collection_id: int, count: int) -> list[uuid.UUID]:
    """``count`` documents claimed for indexing (status ``processing``, digest ``SHA256``)."""
    from storage.db import transaction

    with transaction() as conn:
        rows = conn.execute(
            "INSERT INTO documents (collection_id, source_uri, sha256, status)"
            " SELECT %s, 'bench://' || gen_random_uuid(), %s, 'processing'"
            " FROM generate_series(1, %s) RETURNING id",
            (collection_id, SHA256, count),
        ).fetchall()
    return [r["id"] for r in rows]


def chunk_rows(
    collection_id: int,
    documents: Sequence[uuid.UUID],
    texts: Sequence[str],
    vectors: np.ndarray,
) -> list[ChunkRow]:
    """Rows for ``texts`` spread evenly over ``documents``, in document order."""
    from tasks.chunk import content_hash

    per_doc = -(-len(texts) // len(documents))
    return [
        (documents[i // per_doc], collection_id, i % per_doc, text, content_hash(text), {}, vec)
        for i, (text, vec) in enumerate(zip(texts, vectors, strict=True))
    ]


def copy_rows(conn: Any, rows: Sequence[ChunkRow]) -> None:
    """A raw binary COPY of ``rows`` into chunks, in the caller's transaction."""
    with conn.cursor() as cur, cur.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            copy.write_row(row)


def copy_in_transactions(rows: Sequence[ChunkRow], per_transaction: int = 10_000) -> list[float]:
    """COPY ``rows`` in transactions of ``per_transaction``; the seconds each one took."""
    from storage.db import connection

    seconds = []
    with connection() as conn:
        for i in range(0, len(rows), per_transaction):
            started = time.perf_counter()
            with conn.transaction():
                copy_rows(conn, rows[i : i + per_transaction])
            seconds.append(time.perf_counter() - started)
    return seconds


def drop_vector_index(collection_id: int) -> None:
    from storage.db import connection

    with connection() as conn:
        conn.execute(f"DROP INDEX {_index_name(collection_id)}")


def build_vector_index(collection_id: int, definition: str, *, concurrently: bool = False) -> float:
    """Build the collection's index as the product defines it (``definition``, from
    ``create_collection``), with ``MAINTENANCE_SETTINGS``; the seconds it took."""
    from storage.db import connection

    ddl = definition.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
    with connection() as conn:
        for name, value in MAINTENANCE_SETTINGS.items():
            conn.execute(f"SET {name} = '{value}'")
        started = time.perf_counter()
        conn.execute(ddl if concurrently else definition)
        seconds = time.perf_counter() - started
        for name in MAINTENANCE_SETTINGS:
            conn.execute(f"RESET {name}")
        if _index_definition(conn, collection_id) != definition:
            raise AssertionError("the rebuilt index differs from the product's")
    return seconds


def _index_name(collection_id: int) -> str:
    return f"chunks_embedding_c{int(collection_id)}"


def _index_definition(conn: Any, collection_id: int) -> str:
    row = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (_index_name(collection_id),)
    ).fetchone()
    if row is None:
        raise AssertionError(f"collection {collection_id} has no vector index")
    return str(row["indexdef"])


# --------------------------------------------------------------------------------------------
# (a) Single-document upsert
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    prefill: int  # rows in the collection before the single-document writes
    docs: tuple[int, ...]  # chunks per document written
    reps: dict[tuple[int, int], int]  # repetitions per (dimension, chunks per document)
    bulk: dict[int, int]  # rows of the bulk load per dimension


DEFAULT = Sizes(
    prefill=20_000,
    docs=(50, 500),
    reps={(384, 50): 15, (384, 500): 7, (1536, 50): 9, (1536, 500): 3},
    bulk={384: 100_000, 1536: 10_000},
)
SMALL = Sizes(
    prefill=2_000,
    docs=(50, 500),
    reps={(384, 50): 5, (384, 500): 3, (1536, 50): 3, (1536, 500): 2},
    bulk={384: 10_000},
)


class TextPool:
    """Distinct texts with their vectors, handed out once each."""

    def __init__(self, texts: Sequence[str], dimension: int) -> None:
        self.texts = list(texts)
        self.vectors = hash_embed(self.texts, dimension)
        self.next = 0

    def take(self, n: int) -> tuple[list[str], np.ndarray]:
        start, self.next = self.next, self.next + n
        if self.next > len(self.texts):
            raise ValueError(f"text pool of {len(self.texts)} exhausted")
        return self.texts[start : self.next], self.vectors[start : self.next]


def prefilled_collection(pool: TextPool, rows: int) -> int:
    """A product collection holding ``rows`` rows and its HNSW index over them."""
    coll, definition = create_collection("bench-write", pool.vectors.shape[1])
    drop_vector_index(coll)
    texts, vectors = pool.take(rows)
    copy_in_transactions(chunk_rows(coll, create_documents(coll, rows // 20), texts, vectors))
    build_vector_index(coll, definition)
    return coll


def single_document_rows(pool: TextPool, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    """Rows of part (a) at the pool's dimension; detail: every repetition's rows/s."""
    from ingestflow.core.types import Chunk
    from storage.chunks import DocumentChunks, replace_chunks
    from storage.db import connection, transaction
    from tasks.chunk import content_hash

    dim = pool.vectors.shape[1]
    coll = prefilled_collection(pool, sizes.prefill)

    def upsert(n: int, replace: bool, _rep: int) -> float:
        doc = create_documents(coll, 1)[0]
        if replace:  # the document is indexed already: its old chunks are deleted in the write
            old_texts, old_vectors = pool.take(n)
            with transaction() as conn:
                copy_rows(conn, chunk_rows(coll, [doc], old_texts, old_vectors))
        texts, vectors = pool.take(n)
        chunks = [Chunk(i, t, content_hash(t)) for i, t in enumerate(texts)]
        document = DocumentChunks(str(doc), SHA256, "text/plain", chunks, vectors, timings={})
        started = time.perf_counter()
        with transaction() as conn:
            written = replace_chunks(conn, collection_id=coll, documents=[document])
        seconds = time.perf_counter() - started
        if written != [str(doc)]:
            raise AssertionError(f"replace_chunks wrote {written}, not the document")
        return n / seconds

    def raw_copy(n: int, _rep: int) -> float:
        texts, vectors = pool.take(n)
        rows = chunk_rows(coll, create_documents(coll, 1), texts, vectors)
        with connection() as conn:
            started = time.perf_counter()
            with conn.transaction():
                copy_rows(conn, rows)
            return n / (time.perf_counter() - started)

    rows: list[Row] = []
    detail: dict[str, Any] = {"prefill_rows": sizes.prefill}
    cases = [(n, False) for n in sizes.docs] + [(sizes.docs[0], True)]
    try:
        for n, replace in cases:
            product, baseline = alternate(
                sizes.reps[dim, n],
                partial(upsert, n, replace),
                partial(raw_copy, n),
            )
            what = "replace an indexed document's" if replace else "new document,"
            rows.append(
                ratio_row(
                    f"single-document upsert ({what} {n} chunks, {dim}d, collection of"
                    f" {sizes.prefill:,} rows with its HNSW index): replace_chunks vs raw COPY",
                    median(product),
                    median(baseline),
                    "rows/s",
                    at_least=0.70,
                )
            )
            key = f"upsert_{dim}d_{n}_{'replace' if replace else 'new'}"
            detail[key] = {"ingestflow_rows_per_s": product, "raw_copy_rows_per_s": baseline}
    finally:
        drop_collection(coll)
    return rows, detail


# --------------------------------------------------------------------------------------------
# (b) Bulk load
# --------------------------------------------------------------------------------------------


def bulk_rows(pool: TextPool, count: int) -> tuple[list[Row], dict[str, Any]]:
    """Rows of part (b) at the pool's dimension: the first ``count`` texts of ``pool`` loaded
    into a new collection each way. Detail: the seconds of each way and phase."""
    dim = pool.vectors.shape[1]
    texts, vectors = pool.texts[:count], pool.vectors[:count]
    seconds: dict[str, float] = {}
    made: list[int] = []

    def new_collection() -> tuple[int, str]:
        coll, definition = create_collection("bench-bulk", dim)
        made.append(coll)
        return coll, definition

    try:
        coll, definition = new_collection()
        seconds["ingestflow_load"], seconds["ingestflow"], deferred = _product_bulk_load(
            coll, texts, vectors
        )
        seconds["ingestflow_rebuild"] = seconds["ingestflow"] - seconds["ingestflow_load"]
        if _index_definition_of(coll) != definition:
            raise AssertionError("the bulk load left the collection without its index")
        coll, _ = new_collection()
        seconds["copy_indexed"] = sum(copy_in_transactions(_bulk_rows(coll, texts, vectors)))
        coll, definition = new_collection()
        drop_vector_index(coll)
        seconds["ceiling_copy"] = sum(copy_in_transactions(_bulk_rows(coll, texts, vectors)))
        seconds["ceiling_build"] = build_vector_index(coll, definition, concurrently=True)
        seconds["ceiling"] = seconds["ceiling_copy"] + seconds["ceiling_build"]
    finally:
        for coll in made:
            drop_collection(coll)

    base = count / seconds["copy_indexed"]
    label = f"bulk load of {count:,} chunks ({count // CHUNKS_PER_DOCUMENT:,} documents), {dim}d"
    how = (
        "index deferred: dropped, rebuilt CONCURRENTLY at the end"
        if deferred
        else "index NOT deferred: fewer documents than INGESTFLOW_BULK_INDEX_MIN_DOCUMENTS"
    )
    rows = [
        ratio_row(
            f"{label}: ingestflow's bulk path (replace_chunks per {DOCUMENTS_PER_BATCH}-document"
            f" micro-batch under DeferredVectorIndex, {how}) vs COPY into the indexed table",
            count / seconds["ingestflow"],
            base,
            "rows/s",
            at_least=5.0,
        ),
        ratio_row(
            f"{label}: diagnostic, the ceiling of deferral (raw COPY without the index, then"
            " CREATE INDEX CONCURRENTLY; not ingestflow's code) vs COPY into the indexed table",
            count / seconds["ceiling"],
            base,
            "rows/s",
            at_least=None,
        ),
    ]
    detail = {k: round(v, 2) for k, v in seconds.items()}
    return rows, {f"bulk_{dim}d_{count}_seconds": detail}


def _bulk_rows(collection_id: int, texts: Sequence[str], vectors: np.ndarray) -> list[ChunkRow]:
    documents = create_documents(collection_id, -(-len(texts) // CHUNKS_PER_DOCUMENT))
    return chunk_rows(collection_id, documents, texts, vectors)


def _index_definition_of(collection_id: int) -> str:
    from storage.db import connection

    with connection() as conn:
        return _index_definition(conn, collection_id)


def _product_bulk_load(
    collection_id: int, texts: Sequence[str], vectors: np.ndarray
) -> tuple[float, float, bool]:
    """Load as the flow's upsert stage does in a bulk run: ``replace_chunks`` in a transaction
    per micro-batch, under the run's ``DeferredVectorIndex`` (told the run's document count
    before every micro-batch), with the product's settings. Returns the seconds until the
    last micro-batch was written, the seconds in all (the index rebuild included) and whether
    the index was deferred."""
    from ingestflow.core.settings import get_settings
    from ingestflow.core.types import Chunk
    from storage.chunks import DocumentChunks, replace_chunks
    from storage.db import transaction
    from storage.vector_index import DeferredVectorIndex
    from tasks.chunk import content_hash

    per_doc = CHUNKS_PER_DOCUMENT
    docs = create_documents(collection_id, -(-len(texts) // per_doc))
    documents = [
        DocumentChunks(
            str(doc),
            SHA256,
            "text/plain",
            [Chunk(j, t, content_hash(t)) for j, t in enumerate(texts[i : i + per_doc])],
            vectors[i : i + per_doc],
            timings={},
        )
        for doc, i in zip(docs, range(0, len(texts), per_doc), strict=True)
    ]
    ingest = get_settings().ingest
    deferred = False
    started = time.perf_counter()
    with DeferredVectorIndex(
        collection_id=collection_id,
        dimension=vectors.shape[1],
        min_documents=ingest.bulk_index_min_documents,
        build_memory=ingest.index_build_memory,
    ) as deferral:
        for i in range(0, len(documents), DOCUMENTS_PER_BATCH):
            deferral.before_batch(len(documents))
            deferred = deferred or deferral.deferred
            batch = documents[i : i + DOCUMENTS_PER_BATCH]
            with transaction() as conn:
                written = replace_chunks(conn, collection_id=collection_id, documents=batch)
            if len(written) != len(batch):
                raise AssertionError(f"replace_chunks wrote {len(written)} of {len(batch)}")
        loaded = time.perf_counter() - started
    return loaded, time.perf_counter() - started, deferred


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run(database_url: str | None, sizes: Sizes) -> tuple[list[Row], dict[str, Any]]:
    # Each repetition takes fresh texts: n for each side, and n more for the replaced chunks.
    first = sizes.docs[0]
    single = max(
        sum(2 * n * sizes.reps[dim, n] for n in sizes.docs) + 3 * first * sizes.reps[dim, first]
        for dim in (384, 1536)
    )
    needed = max(sizes.prefill + single, *sizes.bulk.values())
    started = time.perf_counter()
    # Largest chunks first: the single-document writes get the product's default chunk size.
    texts = distinct_chunks(needed, sizes=(1000, 800, 600, 500, 400, 300, 250, 200))
    mean_chars = float(np.mean([len(t) for t in texts]))
    rows: list[Row] = []
    detail: dict[str, Any] = {
        "index_build_settings": MAINTENANCE_SETTINGS,
        "texts": f"{len(texts):,} distinct SciFact chunks, mean {mean_chars:.0f} chars",
    }
    with bench_database(database_url):
        detail["max_parallel_maintenance_workers"] = _server_setting(
            "max_parallel_maintenance_workers"
        )
        for dim in (384, 1536):
            pool = TextPool(texts, dim)
            part, more = single_document_rows(pool, sizes)
            rows += part
            detail.update(more)
            if dim in sizes.bulk:
                part, more = bulk_rows(pool, sizes.bulk[dim])
                rows += part
                detail.update(more)
    detail["seconds"] = round(time.perf_counter() - started, 1)
    return rows, detail


def _server_setting(name: str) -> str:
    from storage.db import connection

    with connection() as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
    return str(row[name]) if row else ""


def main(argv: Sequence[str] | None = None) -> None:
    args = argument_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    rows, detail = run(args.database_url, SMALL if args.small else DEFAULT)
    write_result(args.json, rows, **detail)


if __name__ == "__main__":
    main()
