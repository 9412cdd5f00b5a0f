"""Hybrid search against real Postgres: full text and vectors fused, each list filtered.

Documents are written through the storage layer's own write path (``claim_document`` then
``replace_chunks``) with vectors from the hashed-word test embedder (tests/support/
openai_server.py), and searched through ``ingestflow.service.search`` as every front door
does.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient

from ingestflow.core.types import Chunk
from ingestflow.service.search import search
from storage.chunks import RRF_K, DocumentChunks, replace_chunks
from storage.collections import ensure_collection
from storage.db import connection
from storage.documents import claim_document
from tests.conftest import reset_caches
from tests.support.parts import CATALOGUE, PART_QUERY


@pytest.fixture
def embedder(database_url, openai_server, monkeypatch) -> Iterator[Any]:
    """The ``openai`` embedder on the local hashed-word server, as collections here use."""
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-secret")
    reset_caches()
    from tasks.embedders import get_embedder

    yield get_embedder("openai", "hash-64")
    reset_caches()


def index(
    embedder: Any,
    collection: str,
    texts: dict[str, str],
    *,
    tenant: str = "default",
    metadata: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Each text as a document of one chunk (source ``mem://<name>``); returns name -> id."""
    vectors = embedder.embed(list(texts.values()))
    ids = {}
    with connection() as conn, conn.transaction():
        coll = ensure_collection(
            conn, name=collection, provider="openai", model="hash-64", dimension=64, tenant=tenant
        )
        batch = []
        for (name, text), vector in zip(texts.items(), vectors, strict=True):
            digest = hashlib.sha256(text.encode()).hexdigest()
            claim = claim_document(
                conn,
                collection_id=coll.id,
                source_uri=f"mem://{name}",
                sha256=digest,
                pipeline="test",
                size=len(text),
                metadata=(metadata or {}).get(name, {}),
                force=False,
                flow_run_id=None,
            )
            chunk = Chunk(ordinal=0, content=text, content_hash=digest)
            batch.append(
                DocumentChunks(claim.document_id, digest, "text/plain", [chunk], vector[None], {})
            )
            ids[name] = claim.document_id
        replace_chunks(conn, collection_id=coll.id, documents=batch)
    return ids


def names(hits) -> list[str]:
    return [h.source_uri.removeprefix("mem://") for h in hits]


def test_a_rare_exact_term_ranks_its_chunk_first_in_hybrid_not_in_vector(embedder, collection):
    index(embedder, collection, CATALOGUE)

    vector = names(search(PART_QUERY, collection=collection, k=len(CATALOGUE)))
    hybrid = search(PART_QUERY, collection=collection, k=len(CATALOGUE), mode="hybrid")

    assert vector.index("xq7731") > 2, vector  # the premise: vectors alone bury it
    assert names(hybrid)[0] == "xq7731", names(hybrid)
    with_nul = search(PART_QUERY.replace(" ", "\x00"), collection=collection, mode="hybrid")
    assert names(with_nul)[0] == "xq7731"
    assert sorted(names(hybrid)) == sorted(CATALOGUE)
    # The score is the fused score: first in full text, and its vector rank.
    expected = 1 / (RRF_K + 1) + 1 / (RRF_K + 1 + vector.index("xq7731"))
    assert hybrid[0].score == pytest.approx(expected)
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    # The others are in the vector list only, in its order.
    assert names(hybrid)[1:] == [name for name in vector if name != "xq7731"]


def test_a_query_of_stop_words_only_is_ranked_by_vector_alone(embedder, collection):
    index(embedder, collection, CATALOGUE)
    everything = len(CATALOGUE)

    for query in ("what is the", "?!", "and... or?"):
        similarity = {
            h.document_id: h.score for h in search(query, collection=collection, k=everything)
        }
        hybrid = search(query, collection=collection, k=everything, mode="hybrid")

        # Every chunk, in the vector order (ties, such as orthogonal vectors, in any order),
        # each scored for its vector rank alone.
        assert {h.document_id for h in hybrid} == set(similarity)
        in_order = [similarity[h.document_id] for h in hybrid]
        assert in_order == sorted(in_order, reverse=True), query
        assert [h.score for h in hybrid] == pytest.approx(
            [1 / (RRF_K + rank) for rank in range(1, everything + 1)]
        )


def test_the_metadata_filter_applies_to_both_lists(embedder, collection):
    texts = {**CATALOGUE, "xq7731-stock": "XQ7731 is out of stock until March."}
    metadata = {name: {"shelf": "b"} for name in texts}
    metadata["xq7731-stock"] = metadata["xq7730"] = metadata["toner"] = {"shelf": "a"}
    index(embedder, collection, texts, metadata=metadata)

    everywhere = search(PART_QUERY, collection=collection, k=3, mode="hybrid")
    shelf_a = search(PART_QUERY, collection=collection, k=5, mode="hybrid", filter={"shelf": "a"})

    assert sorted(names(everywhere)[:2]) == ["xq7731", "xq7731-stock"]
    assert names(shelf_a)[0] == "xq7731-stock"
    assert sorted(names(shelf_a)) == ["toner", "xq7730", "xq7731-stock"]
    assert all(h.metadata == {"shelf": "a"} for h in shelf_a)


def test_other_collections_and_tenants_never_leak_into_either_list(embedder, collection):
    mine = index(embedder, collection, {k: v for k, v in CATALOGUE.items() if k != "xq7731"})
    # The exact match sits in a same-named collection of another tenant and in another
    # collection of this tenant: both would top the full-text list if they leaked.
    theirs = index(embedder, collection, {"xq7731": CATALOGUE["xq7731"]}, tenant="intruder")
    sibling = index(embedder, f"{collection}_b", {"xq7731": CATALOGUE["xq7731"]})

    hits = search(PART_QUERY, collection=collection, k=10, mode="hybrid")
    intruder_hits = search(
        PART_QUERY, collection=collection, k=10, mode="hybrid", tenant="intruder"
    )

    assert {h.document_id for h in hits} == set(mine.values())
    assert {h.document_id for h in intruder_hits} == set(theirs.values())
    assert sibling["xq7731"] not in {h.document_id for h in hits}


def test_a_deleted_document_is_in_neither_list(embedder, collection):
    from storage.collections import get_collection
    from storage.documents import delete_document

    ids = index(embedder, collection, CATALOGUE)
    with connection() as conn, conn.transaction():
        coll = get_collection(conn, name=collection)
        delete_document(conn, collection_id=coll.id, document_id=ids["xq7731"])

    hits = search(PART_QUERY, collection=collection, k=10, mode="hybrid")

    assert "xq7731" not in names(hits) and len(hits) == len(CATALOGUE) - 1


def test_api_takes_the_mode_and_refuses_unknown_ones(embedder, collection):
    from api.app import create_app
    from storage.api_keys import create_key

    index(embedder, collection, CATALOGUE)
    with connection() as conn:
        key = create_key(conn, tenant="default", name="hybrid").secret
    url = f"/v1/collections/{collection}/search"
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app()) as client:
        hybrid = client.post(url, headers=auth, json={"query": PART_QUERY, "mode": "hybrid"})
        vector = client.post(url, headers=auth, json={"query": PART_QUERY})
        unknown = client.post(url, headers=auth, json={"query": PART_QUERY, "mode": "bm25"})

    assert hybrid.status_code == vector.status_code == 200, (hybrid.text, vector.text)
    expected = search(PART_QUERY, collection=collection, k=5, mode="hybrid")
    assert [h["document_id"] for h in hybrid.json()["hits"]] == [h.document_id for h in expected]
    assert [h["score"] for h in hybrid.json()["hits"]] == pytest.approx([h.score for h in expected])
    assert hybrid.json()["hits"][0]["source_uri"] == "mem://xq7731"
    assert vector.json()["hits"][0]["source_uri"] != "mem://xq7731"
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "invalid_request"


def test_an_unknown_mode_is_an_invalid_request():
    from ingestflow.core.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="unknown search mode 'bm25'"):
        search(PART_QUERY, mode="bm25")  # type: ignore[arg-type]


def test_the_full_text_migration_applies_to_a_table_that_already_has_chunks(
    database_url, monkeypatch
):
    """A database at schema 5 with chunks in it: upgrading fills every chunk's full text."""
    import psycopg

    from storage.migrate import available_migrations, upgrade

    name = f"migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
        monkeypatch.setenv("DATABASE_URL", url)
        reset_caches()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for mig in available_migrations():
                if mig.version <= 5:
                    conn.execute(mig.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
            old_chunks(conn)

        applied = upgrade()

        assert 6 in [m.version for m in applied]
        with connection() as conn:
            rows = conn.execute(
                "SELECT ordinal, content_tsv @@ plainto_tsquery('english', 'fuser') AS fuser,"
                " content_tsv @@ plainto_tsquery('english', 'toner') AS toner"
                " FROM chunks ORDER BY ordinal"
            ).fetchall()
        assert [(r["fuser"], r["toner"]) for r in rows] == [(True, False), (False, True)]
    finally:
        from storage.db import reset_engine

        reset_engine()
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        monkeypatch.undo()
        reset_caches()


def old_chunks(conn: Any) -> None:
    """One collection, one document and two chunks, written with the schema-5 columns."""
    cid = conn.execute(
        "INSERT INTO collections (name, embedding_provider, embedding_model, dimension)"
        " VALUES ('old', 'openai', 'hash-3', 3) RETURNING id"
    ).fetchone()[0]
    doc = conn.execute(
        "INSERT INTO documents (collection_id, source_uri, status) VALUES (%s, 'mem://old',"
        " 'indexed') RETURNING id",
        (cid,),
    ).fetchone()[0]
    for ordinal, text in enumerate(["The fuser overheated.", "Toner is low."]):
        conn.execute(
            "INSERT INTO chunks (document_id, collection_id, ordinal, content, content_hash,"
            " embedding) VALUES (%s, %s, %s, %s, 'h', '[1,0,0]')",
            (doc, cid, ordinal, text),
        )
