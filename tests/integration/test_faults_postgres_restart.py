"""Postgres restarts mid-batch: a worker ingesting 100 documents sees its database restarted
twice (a fast restart, then a crash with the server down for a while) and still completes,
every document indexed, in exactly the state of a clean ingest.

The database is a pgserver of this test's own (the session's is never restarted). The stage
tasks retry with backoff, and the connection pool (``pool_pre_ping``) replaces the
connections the restarts cut. Where and how long is drawn from a seeded generator; the seed
is printed and named in failures.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import reset_caches
from tests.support.faults import (
    clean_ingest,
    exact_state_problems,
    fault_seed,
    make_corpus,
    stage_retries,
    start_crash_worker,
    wait_for,
    worker_env,
)
from tests.support.pg_server import RestartablePostgres, run_restartable_postgres

pytestmark = pytest.mark.slow

DOCUMENTS = 100
BATCH_SIZE = 10
WORKER_TIMEOUT = 300.0  # a guard against a stalled worker, not an expectation
SEED = fault_seed()


@pytest.fixture
def own_database(pipeline) -> Iterator[RestartablePostgres]:
    """A restartable server; this process (and the workers it starts) use it for the test."""
    from storage.migrate import upgrade

    with run_restartable_postgres() as pg, pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", pg.url)
        reset_caches()
        upgrade()
        try:
            yield pg
        finally:
            reset_caches()  # back to the session's database (the patch is undone next)
    reset_caches()


def indexed_count(url: str, collection: str) -> int | None:
    """Indexed documents of ``collection``, or None while the server is down."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id"
                " WHERE c.name = %s AND d.status = 'indexed'",
                (collection,),
            ).fetchone()
    except psycopg.OperationalError:
        return None
    return int(row[0]) if row else 0


def test_postgres_restarted_twice_mid_batch_the_run_retries_and_completes(own_database, tmp_path):
    pg = own_database
    rng = random.Random(f"{SEED}:postgres")
    nonce = uuid.uuid4().hex[:12]
    paths = make_corpus(tmp_path / "docs", nonce, count=DOCUMENTS)
    collection, clean = f"pgrestart_{nonce}", f"clean_{nonce}"
    first, second = rng.randint(1, 30), rng.randint(40, 70)
    down = rng.uniform(1.0, 3.0)
    where = f"seed {SEED}"

    log = tmp_path / "worker.log"
    started = time.monotonic()
    proc = start_crash_worker(
        folder=tmp_path,
        collection=collection,
        paths=paths,
        batch_size=BATCH_SIZE,
        log=log,
        options=["--trace-stages"],
        env=worker_env(DATABASE_URL=pg.url),
    )
    alive = lambda: proc.poll() is None  # noqa: E731
    try:
        at = []
        for target in (first, second):
            wait_for(
                lambda t=target: (indexed_count(pg.url, collection) or 0) >= t,
                timeout=WORKER_TIMEOUT,
                what=f"{target} documents indexed ({where})",
                alive=alive,
            )
            time.sleep(rng.uniform(0.0, 0.5))
            at.append((indexed_count(pg.url, collection), time.monotonic() - started))
            if target == first:
                pg.restart("fast")  # every connection cut, back at once
            else:
                pg.stop("immediate")  # a crash: the server is gone, recovery on start
                time.sleep(down)
                pg.start()
        code = proc.wait(timeout=WORKER_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    output = log.read_text(errors="replace")
    assert code == 0, f"{where}\n{output[-4000:]}"
    assert f"finished {DOCUMENTS} documents" in output
    retries = stage_retries(collection, task_runs=7 * DOCUMENTS // BATCH_SIZE + 1)
    print(
        f"{where}: restarted at {at[0][0]} indexed ({at[0][1]:.1f} s), crashed at {at[1][0]}"
        f" indexed ({at[1][1]:.1f} s) and down {down:.1f} s; the run completed in"
        f" {elapsed:.1f} s after task retries {retries}"
    )
    assert retries, f"no stage task had to retry: the outage missed the run ({where})"

    clean_ingest(paths, collection=clean, batch_size=BATCH_SIZE)
    assert exact_state_problems(collection, reference=clean) == [], where
