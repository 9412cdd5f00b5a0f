"""The ingest flows end to end on real Postgres + pgvector, Prefect and the openai client."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestflow.core.errors import CollectionMismatchError
from ingestflow.core.types import DocumentStatus
from tests.support.db import chunk_rows, consistency_problems, document_rows

INDEXED, UNCHANGED, FAILED = DocumentStatus.INDEXED, DocumentStatus.UNCHANGED, DocumentStatus.FAILED


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path, collection: str) -> Path:
    # The collection name makes the text unique, so the shared vector cache starts cold.
    write(
        tmp_path, "otters.md", f"# Otters\n\nSea otters hold hands while they sleep. {collection}\n"
    )
    write(tmp_path, "volcano.txt", f"{collection} basalt lava flows from shield volcanoes. " * 60)
    write(
        tmp_path,
        "tea.html",
        "<html><body><h1>Tea</h1><p>Oolong tea is partly oxidised.</p>"
        f"<p>{collection}</p><script>var hidden = 'never indexed';</script></body></html>",
    )
    return tmp_path


def test_ingest_then_search_finds_the_right_document(pipeline, collection, corpus):
    from ingestflow import ingest, search

    result = ingest(corpus, collection=collection)

    assert [o.status for o in result.outcomes] == [INDEXED] * 3, result.outcomes
    hits = search("which animal holds hands while sleeping?", collection=collection, k=3)
    assert hits[0].source_uri.endswith("otters.md")
    assert hits[0].provenance.get("heading") == "Otters"
    assert all(
        "never indexed" not in h.content for h in search("hidden var", collection=collection)
    )
    volcano = next(o for o in result.outcomes if o.source_uri.endswith("volcano.txt"))
    assert volcano.chunk_count >= 3  # 3,000 characters in 1,000-character chunks


def test_second_run_is_unchanged_and_embeds_nothing(pipeline, collection, corpus):
    from ingestflow import ingest

    first = ingest(corpus, collection=collection)
    chunks_before = chunk_rows(collection)
    embedded_before = pipeline.stats().texts_embedded

    second = ingest(corpus, collection=collection)

    assert sum(o.embedded_chunks for o in first.outcomes) > 0
    assert [o.status for o in second.outcomes] == [UNCHANGED] * 3
    assert pipeline.stats().texts_embedded == embedded_before
    assert chunk_rows(collection) == chunks_before


def test_changed_file_replaces_its_chunks_and_embeds_only_new_text(pipeline, collection, corpus):
    from ingestflow import ingest

    ingest(corpus, collection=collection)
    volcano = corpus / "volcano.txt"
    old_text = volcano.read_text()
    volcano.write_text(old_text + "\n\nPumice is so porous that it floats on water.")

    result = ingest(volcano, collection=collection)

    outcome = result.outcomes[0]
    assert outcome.status is INDEXED
    # Earlier chunks are identical, so only the chunk holding the new sentence is embedded.
    assert 1 <= outcome.embedded_chunks < outcome.chunk_count
    contents = [
        r["content"] for r in chunk_rows(collection) if r["source_uri"].endswith("volcano.txt")
    ]
    assert any("Pumice" in c for c in contents)
    assert len(contents) == outcome.chunk_count
    doc = document_rows(collection)[volcano.resolve().as_uri()]
    assert doc["chunk_count"] == outcome.chunk_count and doc["attempts"] == 2


def test_force_reindexes_identical_bytes_from_the_cache(pipeline, collection, corpus):
    from ingestflow import ingest

    ingest(corpus, collection=collection)
    embedded_before = pipeline.stats().texts_embedded

    result = ingest(corpus, collection=collection, force=True)

    assert [o.status for o in result.outcomes] == [INDEXED] * 3
    assert pipeline.stats().texts_embedded == embedded_before


def test_bad_documents_fail_with_reasons_and_do_not_sink_the_batch(pipeline, collection, corpus):
    from ingestflow import ingest

    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage")
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "noise.bin").write_bytes(bytes(range(256)) * 64)
    missing = str(corpus / "does-not-exist.txt")

    result = ingest([corpus, missing], collection=collection)

    by_name = {o.source_uri.rsplit("/", 1)[-1]: o for o in result.outcomes}
    assert {n for n, o in by_name.items() if o.status is INDEXED} == {
        "otters.md",
        "volcano.txt",
        "tea.html",
    }
    for name in ("broken.pdf", "empty.txt", "noise.bin", "does-not-exist.txt"):
        assert by_name[name].status is FAILED, name
        assert len(by_name[name].error or "") > 10, by_name[name]
    assert "not found" in by_name["does-not-exist.txt"].error
    rows = document_rows(collection)
    assert rows[(corpus / "noise.bin").resolve().as_uri()]["status"] == "failed"
    assert rows[(corpus / "noise.bin").resolve().as_uri()]["error"] == by_name["noise.bin"].error


def test_oversized_document_is_refused_while_streaming(pipeline, collection, tmp_path, monkeypatch):
    import tempfile

    from ingestflow import ingest
    from tests.conftest import reset_caches

    monkeypatch.setenv("INGESTFLOW_MAX_DOCUMENT_BYTES", "4096")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    reset_caches()
    big = write(tmp_path, "big.txt", "word " * 5000)

    result = ingest(big, collection=collection)

    assert result.outcomes[0].status is FAILED
    assert "larger than the limit of 4,096 bytes" in result.outcomes[0].error
    assert list(scratch.rglob("*")) == []  # the partial copy is gone


def test_collection_keeps_its_embedding_model(pipeline, collection, corpus, monkeypatch):
    from ingestflow import ingest
    from tests.conftest import reset_caches

    ingest(corpus / "otters.md", collection=collection)
    monkeypatch.setenv("INGESTFLOW_EMBED_MODEL", "another-model")
    reset_caches()

    with pytest.raises(
        CollectionMismatchError, match="cannot be ingested with openai:another-model"
    ):
        ingest(corpus / "tea.html", collection=collection)


def test_embedding_provider_faults_are_retried(pipeline, collection, corpus):
    from ingestflow import ingest

    pipeline.configure(rate_429=0.3, rate_500=0.1, retry_after=0.2, seed=3)
    for i in range(12):
        write(corpus, f"note-{i}.txt", f"Note {i} about retries and backoff in {collection}.")

    result = ingest(corpus, collection=collection, batch_size=4)

    assert all(o.status is INDEXED for o in result.outcomes), result.failed
    stats = pipeline.stats()
    assert stats.by_status.get(429, 0) + stats.by_status.get(500, 0) > 0


def test_flow_runs_are_recorded_on_the_documents(pipeline, collection, corpus):
    from ingestflow import ingest

    result = ingest(corpus, collection=collection)

    assert result.flow_run_id
    assert {r["flow_run_id"] for r in document_rows(collection).values()} == {result.flow_run_id}


def test_new_chunking_settings_reindex_unchanged_bytes(pipeline, collection, corpus, monkeypatch):
    from ingestflow import ingest
    from tests.conftest import reset_caches

    first = ingest(corpus / "volcano.txt", collection=collection)
    monkeypatch.setenv("INGESTFLOW_CHUNK_SIZE", "400")
    monkeypatch.setenv("INGESTFLOW_CHUNK_OVERLAP", "50")
    reset_caches()

    second = ingest(corpus / "volcano.txt", collection=collection)

    assert second.outcomes[0].status is INDEXED
    assert second.outcomes[0].chunk_count > first.outcomes[0].chunk_count
    assert max(len(r["content"]) for r in chunk_rows(collection)) <= 400


def test_ingest_document_is_the_collection_task_and_seven_stage_task_runs(
    pipeline, collection, corpus
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows import ingest_document

    result = ingest_document(str(corpus / "otters.md"), collection=collection)

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result.flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
    names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
    stages = ["fetch", "hash", "dedupe", "parse", "chunk", "embed", "upsert"]
    assert names == sorted(["collection", *stages])
    assert all(r.state.is_completed() for r in runs)


def test_same_bytes_under_another_name_are_unchanged_and_searchable(pipeline, collection, corpus):
    from ingestflow import ingest, search

    ingest(corpus / "otters.md", collection=collection)
    copy = corpus / "otters-copy.md"
    copy.write_bytes((corpus / "otters.md").read_bytes())
    embedded_before = pipeline.stats().texts_embedded

    result = ingest(copy, collection=collection)

    assert result.outcomes[0].status is UNCHANGED
    assert pipeline.stats().texts_embedded == embedded_before
    sources = {h.source_uri.rsplit("/", 1)[-1] for h in search("otters", collection=collection)}
    assert sources == {"otters.md", "otters-copy.md"}
    assert consistency_problems(collection) == []


def test_documents_fingerprinted_in_the_old_spelling_stay_unchanged(pipeline, collection, corpus):
    """Migration 0007 respells stored fingerprints ("parse-v1;chunk=chars:1000/200") as the
    typed configuration derives them, so an upgrade re-indexes nothing."""
    from importlib import resources

    from ingestflow import ingest
    from storage.db import connection

    ingest(corpus / "volcano.txt", collection=collection)
    with connection() as conn:
        conn.execute(
            "UPDATE documents SET pipeline = 'parse-v1;chunk=chars:1000/200' WHERE collection_id"
            " = (SELECT id FROM collections WHERE name = %s)",
            (collection,),
        )
        migration = resources.files("storage.migrations") / "0007_pipeline_fingerprint.sql"
        conn.execute(migration.read_text().encode())
    embedded_before = pipeline.stats().texts_embedded

    again = ingest(corpus / "volcano.txt", collection=collection)

    assert again.outcomes[0].status is UNCHANGED
    assert pipeline.stats().texts_embedded == embedded_before
