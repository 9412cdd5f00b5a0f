"""Re-indexing a document swaps its chunks atomically: readers see the old set or the new one.

A reader thread polls one document's chunks (one autocommit connection, so each poll is its
own snapshot) while the main thread re-indexes the document again and again, alternating
between two versions with different numbers of chunks. Every poll must return exactly the
full chunk list of one version: never empty, never a mix, never a partial list.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from ingestflow.core.types import DocumentStatus
from tests.support.db import consistency_problems

# A reader polls thousands of times through six re-indexes.
pytestmark = pytest.mark.slow

REINDEXES = 6
MIN_POLLS = 50

ChunkList = tuple[tuple[int, str], ...]  # (ordinal, content hash), in ordinal order


def version_text(name: str, paragraphs: int, collection: str) -> str:
    # ~900 characters a paragraph, so roughly one chunk each.
    return "\n\n".join(
        f"Version {name}, paragraph {i}, {collection}. " + f"{name} text for paragraph {i}. " * 30
        for i in range(paragraphs)
    )


class ChunkPoller(threading.Thread):
    """Reads one document's (ordinal, content hash) list as fast as it can until stopped."""

    QUERY = (
        "SELECT k.ordinal, k.content_hash FROM chunks k JOIN documents d ON d.id = k.document_id"
        " JOIN collections c ON c.id = d.collection_id"
        " WHERE c.name = %s AND d.source_uri = %s ORDER BY k.ordinal"
    )

    def __init__(self, url: str, collection: str, source_uri: str) -> None:
        super().__init__(name="chunk-poller", daemon=True)
        self.url, self.args = url, (collection, source_uri)
        self.seen: dict[ChunkList, int] = {}
        self.polls = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.stop.is_set():
                    rows = conn.execute(self.QUERY, self.args).fetchall()
                    observed = tuple((r[0], r[1]) for r in rows)
                    self.seen[observed] = self.seen.get(observed, 0) + 1
                    self.polls += 1
                    time.sleep(0.001)  # leave the CPU to the writer (2 shared cores)
        except BaseException as exc:  # reported by the test
            self.error = exc


def chunk_list(url: str, collection: str, source_uri: str) -> ChunkList:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(ChunkPoller.QUERY, (collection, source_uri)).fetchall()
    return tuple((r[0], r[1]) for r in rows)


def test_readers_see_the_old_or_the_new_chunk_set_never_a_mix(pipeline, collection, tmp_path):
    from ingestflow import ingest
    from storage.db import database_url

    url = database_url()
    doc = tmp_path / "manual.txt"
    uri = doc.resolve().as_uri()
    texts = {"A": version_text("A", 24, collection), "B": version_text("B", 9, collection)}
    versions: dict[str, ChunkList] = {}
    for name in ("B", "A"):  # index both once; A stays indexed when the reader starts
        doc.write_text(texts[name], encoding="utf-8")
        assert ingest(doc, collection=collection).outcomes[0].status is DocumentStatus.INDEXED
        versions[name] = chunk_list(url, collection, uri)
    a, b = versions["A"], versions["B"]
    assert len(a) >= 20 and 5 <= len(b) <= 12 and not set(a) & set(b), (len(a), len(b))

    poller = ChunkPoller(url, collection, uri)
    poller.start()
    started = time.monotonic()
    try:
        for i in range(REINDEXES):
            name = "B" if i % 2 == 0 else "A"
            doc.write_text(texts[name], encoding="utf-8")
            outcome = ingest(doc, collection=collection).outcomes[0]
            assert outcome.status is DocumentStatus.INDEXED, outcome
            assert outcome.chunk_count == len(versions[name])
    finally:
        poller.stop.set()
        poller.join(timeout=30)
    elapsed = time.monotonic() - started

    assert poller.error is None, poller.error
    seen_a, seen_b = poller.seen.get(a, 0), poller.seen.get(b, 0)
    print(f"{poller.polls} polls in {elapsed:.1f} s: A seen {seen_a} times, B {seen_b}")
    wrong = {len(seen): n for seen, n in poller.seen.items() if seen not in (a, b)}
    assert not wrong, f"readers saw partial or mixed chunk sets (size: polls): {wrong}"
    assert poller.polls >= MIN_POLLS
    assert seen_a > 0 and seen_b > 0
    assert chunk_list(url, collection, uri) == versions["A" if REINDEXES % 2 == 0 else "B"]
    assert consistency_problems(collection) == []
