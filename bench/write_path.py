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

(b) Bulk load of a new collection. The baseline is COPY into the table while the collection's
index exists (10,000-row transactions); against it: the product's current path (the
``replace_chunks`` call of each ingest micro-batch: 32 documents of 20 chunks per transaction,
index present), and what deferring index maintenance would give: COPY with the collection's
index absent, then the same index built (``CREATE INDEX``, and ``CONCURRENTLY``, which a shared
chunks table would need so that writes to other collections are not blocked meanwhile). The
deferred rows are labelled as not the product's path: ingestflow has no deferred-index mode.
Index builds run with the ``maintenance_work_mem`` and ``max_parallel_maintenance_workers``
reported in the result. Between COPY and the index build the collection's chunks stay
searchable (by a sequential scan: exact, slower), so deferral costs no correctness window.

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
MAINTENANCE_SETTINGS = {"maintenance_work_mem": "1GB", "max_parallel_maintenance_workers": "1"}
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
    from ingestflow.types import Segment
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
        from ingestflow.settings import get_settings
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
    product_bulk: int  # rows loaded through replace_chunks (384 dimensions)


DEFAULT = Sizes(
    prefill=20_000,
    docs=(50, 500),
    reps={(384, 50): 15, (384, 500): 7, (1536, 50): 9, (1536, 500): 3},
    bulk={384: 100_000, 1536: 10_000},
    product_bulk=10_000,
)
SMALL = Sizes(
    prefill=2_000,
    docs=(50, 500),
    reps={(384, 50): 5, (384, 500): 3, (1536, 50): 3, (1536, 500): 2},
    bulk={384: 10_000, 1536: 2_000},
    product_bulk=2_000,
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
    from ingestflow.types import Chunk
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


def bulk_rows(
    pool: TextPool, count: int, *, product_rows: int, concurrently: bool
) -> tuple[list[Row], dict[str, Any]]:
    """Rows of part (b) at the pool's dimension: ``count`` rows of ``pool`` loaded into a new
    collection each way. The product's path (when ``product_rows``) loads the first
    ``product_rows`` of them, against the first transaction of the indexed COPY (the same rows
    into an index as empty). Detail: the phases' seconds."""
    dim = pool.vectors.shape[1]
    texts, vectors = pool.texts[:count], pool.vectors[:count]
    seconds: dict[str, float] = {}
    made: list[int] = []

    def new_collection() -> tuple[int, str]:
        coll, definition = create_collection("bench-bulk", dim)
        made.append(coll)
        return coll, definition

    def rows_for(coll: int) -> list[ChunkRow]:
        return chunk_rows(coll, create_documents(coll, count // 20), texts, vectors)

    try:
        for name, concurrent in [("deferred", False), ("deferred_concurrently", True)]:
            if concurrent and not concurrently:
                continue
            coll, definition = new_collection()
            drop_vector_index(coll)
            seconds[f"{name}_copy"] = sum(copy_in_transactions(rows_for(coll)))
            seconds[f"{name}_build"] = build_vector_index(coll, definition, concurrently=concurrent)
            seconds[name] = seconds[f"{name}_copy"] + seconds[f"{name}_build"]
        coll, _ = new_collection()
        indexed = copy_in_transactions(rows_for(coll), product_rows or 10_000)
        seconds["copy_indexed"] = sum(indexed)
        if product_rows:
            seconds[f"copy_indexed_first_{product_rows}"] = indexed[0]
            coll, _ = new_collection()
            seconds[f"replace_chunks_{product_rows}"] = _replace_chunks_bulk(
                coll, texts[:product_rows], vectors[:product_rows]
            )
    finally:
        for coll in made:
            drop_collection(coll)

    base = count / seconds["copy_indexed"]
    label = f"bulk load of {count:,} chunks, {dim}d"
    rows_out = []
    if product_rows:
        rows_out.append(
            ratio_row(
                f"bulk load of {product_rows:,} chunks, {dim}d: ingestflow's path today"
                " (replace_chunks per 32-document micro-batch, index maintained) vs COPY into"
                " the indexed table",
                product_rows / seconds[f"replace_chunks_{product_rows}"],
                product_rows / seconds[f"copy_indexed_first_{product_rows}"],
                "rows/s",
                at_least=5.0,
            )
        )
    for name in ("deferred", "deferred_concurrently"):
        if name in seconds:
            how = "CREATE INDEX CONCURRENTLY" if name.endswith("concurrently") else "CREATE INDEX"
            rows_out.append(
                ratio_row(
                    f"{label}: what deferring the index would give, NOT ingestflow's path"
                    f" (COPY without the collection's index, then {how}) vs COPY into the"
                    " indexed table",
                    count / seconds[name],
                    base,
                    "rows/s",
                    at_least=5.0,
                )
            )
    detail = {k: round(v, 2) for k, v in seconds.items()}
    return rows_out, {f"bulk_{dim}d_{count}_seconds": detail}


def _replace_chunks_bulk(collection_id: int, texts: Sequence[str], vectors: np.ndarray) -> float:
    """Load through ``replace_chunks`` as the upsert stage does: a transaction per micro-batch
    of 32 documents (20 chunks each); the seconds it took."""
    from ingestflow.types import Chunk
    from storage.chunks import DocumentChunks, replace_chunks
    from storage.db import transaction
    from tasks.chunk import content_hash

    per_doc, per_batch = 20, 32
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
    started = time.perf_counter()
    for i in range(0, len(documents), per_batch):
        with transaction() as conn:
            replace_chunks(
                conn, collection_id=collection_id, documents=documents[i : i + per_batch]
            )
    return time.perf_counter() - started


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
        "maintenance_settings": MAINTENANCE_SETTINGS,
        "texts": f"{len(texts):,} distinct SciFact chunks, mean {mean_chars:.0f} chars",
    }
    with bench_database(database_url):
        for dim in (384, 1536):
            pool = TextPool(texts, dim)
            part, more = single_document_rows(pool, sizes)
            rows += part
            detail.update(more)
            part, more = bulk_rows(
                pool,
                sizes.bulk[dim],
                product_rows=sizes.product_bulk if dim == 384 else 0,
                concurrently=dim == 384,
            )
            rows += part
            detail.update(more)
    detail["seconds"] = round(time.perf_counter() - started, 1)
    return rows, detail


def main(argv: Sequence[str] | None = None) -> None:
    args = argument_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    rows, detail = run(args.database_url, SMALL if args.small else DEFAULT)
    write_result(args.json, rows, **detail)


if __name__ == "__main__":
    main()
