"""Fan-out in one process: the parts table's claims, and split runs whose helpers are real
``ingest-parts`` flow runs started in threads (the worker tests, with Celery and Prefect
workers, are in test_fan_out_workers.py)."""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.db import consistency_problems, document_rows

PART = 8  # documents per part
STALE = 1.0  # seconds before a silent claimant's part is taken again


@pytest.fixture
def split(pipeline, monkeypatch) -> Iterator[None]:
    """Small parts and micro-batches, so a few dozen documents make several parts, and
    embedding requests slow enough that the parent cannot do every part before a helper
    has started."""
    from tests.conftest import reset_caches

    pipeline.configure(latency=0.3)
    monkeypatch.setenv("INGESTFLOW_FAN_OUT_PART_DOCUMENTS", str(PART))
    monkeypatch.setenv("INGESTFLOW_FAN_OUT_HELPERS", "2")
    monkeypatch.setenv("INGESTFLOW_FAN_OUT_STALE_SECONDS", str(STALE))
    monkeypatch.setenv("INGESTFLOW_BATCH_SIZE", "4")
    reset_caches()
    yield
    reset_caches()


class ThreadHelpers:
    """Helpers as ``ingest-parts`` flow runs in threads of this process; records what each
    returned (the parts it did)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.parts: list[int] = []
        self.asked: list[tuple[str, int]] = []

    def __call__(self, run_id: str, count: int) -> None:
        from flows import ingest_parts

        self.asked.append((run_id, count))
        for _ in range(count):
            run = contextvars.copy_context().run
            thread = threading.Thread(
                target=run, args=(lambda: self.parts.append(ingest_parts(run_id)),)
            )
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)


def _corpus(folder: Path, count: int, tag: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"doc-{i:03d}.txt"
        path.write_text(f"Document {i} of {tag}: notes on tide pools and anemones number {i}.")
        paths.append(path)
    return paths


def _run(database_url: str, sql: str, *args) -> list[dict]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


# ------------------------------------------------------------------ the parts table's claims


@pytest.fixture
def parts_run(database_url, collection) -> Iterator[str]:
    from storage.db import transaction
    from storage.fan_out import FanOutRun, add_part, create_run, drop_run
    from storage.migrate import ensure_schema

    ensure_schema()
    run_id = str(uuid.uuid4())
    with transaction() as conn:
        cid = conn.execute(
            "INSERT INTO collections (tenant, name, embedding_provider, embedding_model,"
            " dimension) VALUES ('default', %s, 'hash', 'hash-8', 8) RETURNING id",
            (collection,),
        ).fetchone()["id"]
        create_run(conn, FanOutRun(run_id, cid, 8, "default", False, {}, None, []))
        for part in range(3):
            add_part(conn, run_id=run_id, part=part, sources=[(f"s{part}", None)])
    yield run_id
    with transaction() as conn:
        drop_run(conn, run_id=run_id)


def _claim(run_id: str, stale: float = 60.0):
    from storage.db import transaction
    from storage.fan_out import claim_part

    with transaction() as conn:
        return claim_part(conn, run_id=run_id, claimed_by="me", stale_seconds=stale)


def test_each_part_is_claimed_once_in_order(parts_run):
    claimed = [_claim(parts_run) for _ in range(4)]

    assert [c.part if c else None for c in claimed] == [0, 1, 2, None]
    assert claimed[0].sources == [("s0", None)]


def test_a_silent_claimants_part_is_claimed_again_and_its_late_outcomes_are_refused(
    parts_run,
):
    from storage.db import transaction
    from storage.fan_out import beat, complete_part, part_outcomes, parts_state

    first = _claim(parts_run, stale=0.5)
    second, third = _claim(parts_run), _claim(parts_run)
    assert _claim(parts_run, stale=0.5) is None  # part 0's claimant is still fresh
    time.sleep(0.8)
    with transaction() as conn:  # the parent and parts 1 and 2's claimants are alive
        beat(conn, run_id=parts_run, claims=[])
        beat(conn, run_id=parts_run, claims=[second.claim, third.claim])
    again = _claim(parts_run, stale=0.5)

    assert again is not None and (again.part, again.attempts) == (0, 2)
    with transaction() as conn:
        assert not complete_part(conn, part=first, outcomes=[{"late": True}])
        assert complete_part(conn, part=again, outcomes=[{"ok": True}])
        assert part_outcomes(conn, run_id=parts_run) == [{"ok": True}]
        assert parts_state(conn, run_id=parts_run).done == 1


def test_a_part_failing_every_attempt_fails_and_a_silent_parent_stops_all_claims(parts_run):
    from storage.db import transaction
    from storage.fan_out import MAX_ATTEMPTS, parts_state, release_part

    for _ in range(MAX_ATTEMPTS):
        part = _claim(parts_run)
        assert part is not None and part.part == 0
        with transaction() as conn:
            release_part(conn, part=part, error="boom")
    with transaction() as conn:
        state = parts_state(conn, run_id=parts_run)
        assert (state.failed, state.error, state.waiting) == (1, "boom", 2)
        conn.execute(
            "UPDATE fan_out_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
            (parts_run,),
        )
    assert _claim(parts_run) is None  # parts 1 and 2 wait, but their parent has gone


def test_no_part_of_a_cancelled_job_is_claimed(parts_run, collection):
    from storage.db import transaction
    from storage.jobs import create_job, finish_job

    job = str(uuid.uuid4())
    with transaction() as conn:
        create_job(
            conn, job_id=job, tenant="default", collection=collection, kind="ingest",
            backend="prefect",
        )  # fmt: skip
        conn.execute("UPDATE fan_out_runs SET job_ids = %s WHERE id = %s", ([job], parts_run))
    assert _claim(parts_run) is not None  # queued: its parts are handed out
    with transaction() as conn:
        finish_job(conn, job_id=job, state="cancelled", message="cancelled by request")
    assert _claim(parts_run) is None


# ------------------------------------------------------------------------- split runs


def test_a_split_batch_ends_like_an_unsplit_one(split, collection, tmp_path, database_url):
    from flows import ingest_batch
    from flows.fan_out import helped_by

    paths = _corpus(tmp_path / "docs", 40, collection)
    helpers = ThreadHelpers()
    with helped_by(helpers):
        result = ingest_batch([str(p) for p in paths], collection=collection)
    helpers.join()
    plain = ingest_batch([str(p) for p in paths], collection=f"{collection}_plain")

    assert [o.source_uri for o in result.outcomes] == [o.source_uri for o in plain.outcomes]
    assert {str(o.status) for o in result.outcomes} == {"indexed"}
    assert len(helpers.asked) == 1 and helpers.asked[0][1] == 2  # two helpers for five parts
    assert sum(helpers.parts) >= 1, "no helper took a part"
    runs = {row["flow_run_id"] for row in document_rows(collection).values()}
    assert str(result.flow_run_id) in runs and len(runs) >= 2  # parent and helpers took part
    assert consistency_problems(collection) == []
    assert _run(database_url, "SELECT id FROM fan_out_runs WHERE id = %s",
                str(result.flow_run_id)) == []  # fmt: skip


def test_a_small_batch_is_not_split(split, collection, tmp_path):
    from flows import ingest_batch
    from flows.fan_out import helped_by

    paths = _corpus(tmp_path / "docs", PART, collection)
    helpers = ThreadHelpers()
    with helped_by(helpers):
        result = ingest_batch([str(p) for p in paths], collection=collection)

    assert result.count("indexed") == PART and helpers.asked == []


def test_a_part_whose_helper_died_is_done_again_exactly(split, collection, tmp_path, pipeline):
    """A helper that claims a part and dies (its heartbeat stops, nothing is written) leaves
    the part to the parent once it is stale; the run still ends exact."""
    from flows import ingest_batch
    from flows.fan_out import helped_by
    from storage.db import transaction
    from storage.fan_out import claim_part

    paths = _corpus(tmp_path / "docs", 24, collection)
    dead: list[int] = []

    def die_holding_a_part(run_id: str, count: int) -> None:
        with transaction() as conn:
            part = claim_part(conn, run_id=run_id, claimed_by="dead", stale_seconds=STALE)
        assert part is not None
        dead.append(part.part)

    with helped_by(die_holding_a_part):
        result = ingest_batch([str(p) for p in paths], collection=collection)

    assert dead == [0]  # asked for once the second part existed, the helper took the first
    assert result.count("indexed") == 24
    runs = {row["flow_run_id"] for row in document_rows(collection).values()}
    assert runs == {str(result.flow_run_id)}  # the parent did the dead helper's part
    assert consistency_problems(collection) == []


def test_sweep_under_fan_out_keeps_its_deletion_guard(split, collection, tmp_path):
    from flows import sweep_bucket
    from flows.fan_out import helped_by
    from flows.sweep import SweepGuardError

    bucket = tmp_path / "bucket"
    paths = _corpus(bucket, 30, collection)
    helpers = ThreadHelpers()
    with helped_by(helpers):
        first = sweep_bucket(str(bucket), collection=collection)
    helpers.join()
    assert (first.listed, first.added, first.deleted, first.failed) == (30, 30, 0, [])
    assert sum(helpers.parts) >= 1, "no helper took a part"

    for path in paths[:12]:  # 40% of the documents go: more than the guard allows
        path.unlink()
    _corpus(bucket / "new", 10, f"{collection} new")
    with helped_by(ThreadHelpers()), pytest.raises(SweepGuardError, match="refusing to delete"):
        sweep_bucket(str(bucket), collection=collection)
    after = {uri: row["status"] for uri, row in document_rows(collection).items()}
    assert sum(s == "deleted" for s in after.values()) == 0
    assert sum("/new/" in uri and s == "indexed" for uri, s in after.items()) == 10

    with helped_by(ThreadHelpers()):
        allowed = sweep_bucket(str(bucket), collection=collection, max_delete_fraction=0.5)
    assert (allowed.deleted, allowed.unchanged, allowed.added) == (12, 28, 0)
    assert consistency_problems(collection) == []


def test_a_run_whose_helpers_cannot_be_asked_for_does_every_part(
    split, collection, tmp_path, caplog
):
    """No ``ingest-parts`` deployment, or the broker down: the run is not failed for it."""
    from flows import ingest_batch
    from flows.fan_out import helped_by

    def unreachable(run_id: str, count: int) -> None:
        raise ConnectionError("redis://:hunter2@broker:6379/0 refused")

    paths = _corpus(tmp_path / "docs", 20, collection)
    with helped_by(unreachable), caplog.at_level("WARNING", logger="flows.fan_out"):
        result = ingest_batch([str(p) for p in paths], collection=collection)

    assert result.count("indexed") == 20
    assert "could not ask for helpers (ConnectionError)" in caplog.text
    assert "hunter2" not in caplog.text
    runs = {row["flow_run_id"] for row in document_rows(collection).values()}
    assert runs == {str(result.flow_run_id)}
