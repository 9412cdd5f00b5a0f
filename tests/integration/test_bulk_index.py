"""A bulk load defers the collection's HNSW index and builds it at the end; every chunk
committed meanwhile is found by search (exactly, through the btree on collection_id); a
load interrupted without its rebuild is healed by the next run; the end state equals an
ingest that never deferred."""

from __future__ import annotations

import uuid

import pytest

from ingestflow.core.progress import Progress, listen
from tests.conftest import reset_caches
from tests.support.faults import clean_ingest, exact_state_problems, make_corpus


def _collection_id(name: str) -> int:
    from storage.collections import get_collection
    from storage.db import connection

    with connection() as conn:
        return get_collection(conn, name=name).id


def _state(name: str) -> str:
    from storage.db import connection
    from storage.vector_index import index_state

    with connection() as conn:
        return index_state(conn, collection_id=_collection_id(name))


def _first_chunk(document_id: str) -> str:
    from storage.db import connection

    with connection() as conn:
        row = conn.execute(
            "SELECT content FROM chunks WHERE document_id = %s ORDER BY ordinal LIMIT 1",
            (document_id,),
        ).fetchone()
    assert row is not None, f"document {document_id} has no chunks"
    return str(row["content"])


class _Watcher:
    """After every micro-batch: the index's state, and whether each document indexed so far
    is the top hit for its own first chunk's text."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.states: list[str] = []
        self.unfound: list[str] = []

    def __call__(self, progress: Progress) -> None:
        from ingestflow import search

        self.states.append(_state(self.collection))
        for outcome in progress.outcomes:
            if str(outcome.status) != "indexed" or outcome.document_id is None:
                continue
            hits = search(_first_chunk(outcome.document_id), collection=self.collection, k=1)
            if not hits or hits[0].document_id != outcome.document_id:
                self.unfound.append(outcome.source_uri)


@pytest.mark.slow
def test_bulk_load_defers_the_index_keeps_search_exact_and_rebuilds_it(
    pipeline, tmp_path, monkeypatch
):
    from ingestflow import ingest

    nonce = uuid.uuid4().hex[:12]
    paths = make_corpus(tmp_path / "first", nonce, count=30)
    more = make_corpus(tmp_path / "more", nonce + "-more", count=12)
    bulk, clean = f"bulk_{nonce}", f"clean_{nonce}"

    monkeypatch.setenv("INGESTFLOW_BULK_INDEX_MIN_DOCUMENTS", "0")  # never defers
    reset_caches()
    clean_ingest(paths + more, collection=clean, batch_size=5)
    assert _state(clean) == "valid"

    monkeypatch.setenv("INGESTFLOW_BULK_INDEX_MIN_DOCUMENTS", "10")
    reset_caches()
    watcher = _Watcher(bulk)
    with listen(watcher):
        result = ingest(paths, collection=bulk, batch_size=5)
    assert {str(o.status) for o in result.outcomes} == {"indexed"}
    # 30 documents into an empty collection: deferred from the first micro-batch on.
    assert watcher.states == ["missing"] * 6
    assert watcher.unfound == []
    assert _state(bulk) == "valid"

    # 12 more into a collection of 30: too small a load to defer; the index is maintained.
    watcher = _Watcher(bulk)
    with listen(watcher):
        ingest(more, collection=bulk, batch_size=5)
    assert watcher.states == ["valid"] * 3
    assert watcher.unfound == []
    assert exact_state_problems(bulk, reference=clean) == []


def test_a_missing_index_is_rebuilt_unless_a_bulk_load_holds_the_collection(pipeline, tmp_path):
    from ingestflow import ingest
    from storage.db import connection
    from storage.vector_index import heal_vector_index, index_name

    nonce = uuid.uuid4().hex[:12]
    name = f"heal_{nonce}"
    first, second = make_corpus(tmp_path / "docs", nonce, count=2)
    ingest([first], collection=name)
    cid = _collection_id(name)
    with connection() as conn:  # what a bulk load killed before its rebuild leaves behind
        conn.execute(f"DROP INDEX {index_name(cid)}")
        dimension = conn.execute(
            "SELECT dimension FROM collections WHERE id = %s", (cid,)
        ).fetchone()["dimension"]

    with connection() as holder:  # a bulk load in progress holds the collection's lock
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (0x1F_5EC7, cid))
        assert (
            heal_vector_index(collection_id=cid, dimension=dimension, build_memory="64MB") is False
        )
        assert _state(name) == "missing"
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", (0x1F_5EC7, cid))

    ingest([second], collection=name)  # the next run heals it
    assert _state(name) == "valid"


@pytest.mark.slow
def test_a_large_sweep_defers_the_index_from_its_first_batch(pipeline, tmp_path, monkeypatch):
    """A sweep does not know its total, but it knows what it has listed: 30 new documents
    into an empty collection defer the index before the first micro-batch is written."""
    from flows import sweep_bucket

    nonce = uuid.uuid4().hex[:12]
    make_corpus(tmp_path / "bucket", nonce, count=30)
    collection = f"sweep_{nonce}"
    monkeypatch.setenv("INGESTFLOW_BULK_INDEX_MIN_DOCUMENTS", "10")
    reset_caches()
    watcher = _Watcher(collection)
    with listen(watcher):
        report = sweep_bucket(str(tmp_path / "bucket"), collection=collection, batch_size=5)

    assert report.added == 30
    assert watcher.states == ["missing"] * 6
    assert watcher.unfound == []
    assert _state(collection) == "valid"
