"""A batch ingest killed with SIGKILL part-way, then re-run, ends with exactly the right chunks.

Each trial starts ``ingest_batch`` (micro-batches of 5 documents, so one upsert transaction
per 5 documents) in a worker process, kills it once a chosen number of documents is indexed,
re-runs the same ingest in this process, and compares the result with a clean ingest of the
same files into a fresh collection: same chunks (by file, ordinal, content hash and vector),
every document indexed, no duplicates, no orphans.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from ingestflow.core.types import DocumentStatus
from tests.support.db import consistency_problems, document_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = 60
BATCH_SIZE = 5
WORKER_TIMEOUT = 90.0

_VOCABULARY = (
    "river stone lantern copper harbor meadow signal thunder velvet orbit glacier ember"
    " compass willow falcon quartz saddle beacon prism canyon ledger mosaic tundra cobalt"
)


def make_corpus(folder: Path, nonce: str) -> list[Path]:
    """Text files of 2,500-5,500 characters (3-7 chunks each), all different."""
    rng = random.Random(nonce)
    vocabulary = _VOCABULARY.split()
    folder.mkdir(parents=True)
    paths = []
    for i in range(DOCUMENTS):
        paragraphs = []
        while sum(map(len, paragraphs)) < rng.randint(2500, 5500):
            words = [rng.choice(vocabulary) for _ in range(rng.randint(20, 60))]
            paragraphs.append(f"Doc {i} {nonce}: " + " ".join(words) + ".")
        path = folder / f"doc-{i:02d}.txt"
        path.write_text("\n\n".join(paragraphs), encoding="utf-8")
        paths.append(path)
    return paths


def worker_env() -> dict[str, str]:
    """This process's environment (DATABASE_URL, the embedder settings set by the ``pipeline``
    fixture, PREFECT_HOME) plus the harness's Prefect API and the repository on the path."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    assert api_url, "the Prefect test harness is not running"
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    for name in ("DATABASE_URL", "PREFECT_HOME", "INGESTFLOW_EMBED_PROVIDER", "OPENAI_BASE_URL"):
        assert env.get(name), f"{name} is not set"
    return env


def sources_by_status(conn: psycopg.Connection, collection: str) -> dict[str, set[str]]:
    rows = conn.execute(
        "SELECT d.status, d.source_uri FROM documents d JOIN collections c"
        " ON c.id = d.collection_id WHERE c.name = %s",
        (collection,),
    ).fetchall()
    out: dict[str, set[str]] = {}
    for status, uri in rows:
        out.setdefault(status, set()).add(uri)
    return out


class KillPoint:
    """When to kill the worker, judged from the database (and the embeddings server).

    ``between`` kills as soon as ``indexed`` documents are committed, so the worker is
    starting its next micro-batch. ``claimed`` waits until the next micro-batch's documents
    are claimed (``processing``) but not yet written. ``embedding`` slows the embeddings
    server down and kills while one of the worker's requests is in flight.
    """

    def __init__(self, stage: str, indexed: int) -> None:
        self.stage, self.indexed = stage, indexed
        self._requests: int | None = None

    def __repr__(self) -> str:
        return f"{self.stage}-{self.indexed}"

    def reached(self, by_status: dict[str, set[str]], server) -> bool:
        if len(by_status.get("indexed", ())) < self.indexed:
            return False
        if self.stage == "claimed":
            return bool(by_status.get("processing"))
        if self.stage == "embedding":
            if self._requests is None:
                server.configure(latency=2.0)
                self._requests = server.stats().requests
            return server.stats().requests > self._requests
        return True


KILL_POINTS = [KillPoint("between", 1), KillPoint("claimed", 25), KillPoint("embedding", 45)]


def chunk_snapshot(collection: str) -> list[tuple[str, int, str, str]]:
    """(file name, ordinal, content hash, vector as text) of every chunk in ``collection``."""
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT d.source_uri, k.ordinal, k.content_hash, k.embedding::text AS vector"
            " FROM chunks k JOIN documents d ON d.id = k.document_id"
            " JOIN collections c ON c.id = k.collection_id WHERE c.name = %s",
            (collection,),
        ).fetchall()
    return sorted(
        (r["source_uri"].rsplit("/", 1)[-1], r["ordinal"], r["content_hash"], r["vector"])
        for r in rows
    )


def run_and_kill(
    tmp_path: Path, paths: list[Path], collection: str, point: KillPoint, server
) -> dict[str, set[str]]:
    """Start the worker, SIGKILL it at ``point``; return the sources by status after it died."""
    from storage.db import database_url

    listing = tmp_path / f"{collection}.sources"
    listing.write_text("\n".join(str(p) for p in paths), encoding="utf-8")
    log = tmp_path / f"{collection}.log"
    command = [sys.executable, "-m", "tests.support.crash_worker", "--collection", collection]
    command += ["--batch-size", str(BATCH_SIZE), "--sources", str(listing)]
    with psycopg.connect(database_url(), autocommit=True) as conn, log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=worker_env(), stdout=out, stderr=out)
        deadline = time.monotonic() + WORKER_TIMEOUT
        try:
            while not point.reached(sources_by_status(conn, collection), server):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the worker ended or stalled before {point!r}:\n{log.read_text()}")
                time.sleep(0.01)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            server.configure(latency=0.0)
        assert proc.returncode == -signal.SIGKILL
        return sources_by_status(conn, collection)


@pytest.mark.parametrize("point", KILL_POINTS, ids=repr)
def test_killed_batch_recovers_to_exactly_a_clean_ingest(pipeline, tmp_path, point):
    from ingestflow import ingest

    nonce = uuid.uuid4().hex[:12]  # fresh text: the vector cache starts cold for the worker
    paths = make_corpus(tmp_path / "docs", nonce)
    crashed, clean = f"crash_{nonce}", f"clean_{nonce}"
    uris = {p.resolve().as_uri() for p in paths}

    at_kill = run_and_kill(tmp_path, paths, crashed, point, pipeline)

    print(f"killed at {point!r}: { {k: len(v) for k, v in at_kill.items()} }")
    survived = at_kill.get("indexed", set())
    assert point.indexed <= len(survived) < DOCUMENTS
    if point.stage != "between":
        assert at_kill.get("processing"), "the kill should leave claimed documents behind"
    result = ingest(paths, collection=crashed, batch_size=BATCH_SIZE)

    # Documents indexed before the kill are unchanged; all others are (re)indexed now.
    expected = {
        u: DocumentStatus.UNCHANGED if u in survived else DocumentStatus.INDEXED for u in uris
    }
    assert {o.source_uri: o.status for o in result.outcomes} == expected
    assert consistency_problems(crashed) == []
    rows = document_rows(crashed)
    assert set(rows) == uris
    assert all(r["status"] in ("indexed", "unchanged") and not r["error"] for r in rows.values())
    assert all(r["chunk_count"] >= 3 for r in rows.values())

    reference = ingest(paths, collection=clean, batch_size=BATCH_SIZE)
    assert {o.status for o in reference.outcomes} == {DocumentStatus.INDEXED}
    recovered, wanted = chunk_snapshot(crashed), chunk_snapshot(clean)
    assert len(set(recovered)) == len(recovered)  # no duplicate chunks
    assert recovered == wanted
    assert len(wanted) == sum(r["chunk_count"] for r in rows.values())
