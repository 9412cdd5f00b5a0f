"""The parts of a fanned-out run (``flows.fan_out``): the parent's row, its parts, and
claiming one part at a time.

A part is claimed with ``FOR UPDATE SKIP LOCKED``, so two workers never take the same part
at once; the claimant keeps the part's heartbeat fresh, and a part whose heartbeat is older
than the stale limit (its worker died) may be claimed again. Completing a part needs the
claim it was taken with: a claimant that lost its part to another leaves the outcomes to it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from storage.db import Conn

MAX_ATTEMPTS = 3  # a part that failed this many times fails its run


@dataclass(frozen=True)
class FanOutRun:
    id: str
    collection_id: int
    dimension: int
    tenant: str
    force: bool
    metadata: dict[str, Any]
    chunking: dict[str, Any] | None
    job_ids: list[str]


@dataclass(frozen=True)
class ClaimedPart:
    run_id: str
    part: int
    claim: str
    sources: list[tuple[str, str | None]]  # each source with its job, as the run was given it
    attempts: int


@dataclass(frozen=True)
class PartsState:
    total: int
    waiting: int
    running: int
    done: int
    failed: int
    documents_done: int  # documents of the parts done
    error: str | None  # a failed part's error


def create_run(conn: Conn, run: FanOutRun) -> None:
    """The parent's row (a second call for the same run keeps the first)."""
    conn.execute(
        "INSERT INTO fan_out_runs (id, collection_id, dimension, tenant, force, metadata,"
        " chunking, job_ids) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        (
            run.id,
            run.collection_id,
            run.dimension,
            run.tenant,
            run.force,
            Jsonb(run.metadata),
            Jsonb(run.chunking) if run.chunking is not None else None,
            run.job_ids,
        ),
    )


def find_run(conn: Conn, *, run_id: str) -> FanOutRun | None:
    row = conn.execute(
        "SELECT id, collection_id, dimension, tenant, force, metadata, chunking, job_ids"
        " FROM fan_out_runs WHERE id = %s",
        (run_id,),
    ).fetchone()
    return FanOutRun(**row) if row else None


def add_part(conn: Conn, *, run_id: str, part: int, sources: list[tuple[str, str | None]]) -> None:
    conn.execute(
        "INSERT INTO fan_out_parts (run_id, part, sources) VALUES (%s, %s, %s)"
        " ON CONFLICT (run_id, part) DO NOTHING",
        (run_id, part, Jsonb([list(s) for s in sources])),
    )


def claim_part(
    conn: Conn, *, run_id: str, claimed_by: str | None, stale_seconds: float
) -> ClaimedPart | None:
    """The next part to do, now claimed: a waiting one, or one whose claimant went silent for
    ``stale_seconds``. None when no part is left to claim, when the parent itself went
    silent (it died: nobody would gather the outcomes), or when every job of the run has
    ended (it was cancelled)."""
    claim = str(uuid.uuid4())
    row = conn.execute(
        "UPDATE fan_out_parts p SET state = 'running', claim = %(claim)s,"
        " claimed_by = %(by)s, attempts = p.attempts + 1, heartbeat_at = now()"
        " WHERE (p.run_id, p.part) = ("
        "   SELECT q.run_id, q.part FROM fan_out_parts q JOIN fan_out_runs r ON r.id = q.run_id"
        "   WHERE q.run_id = %(run)s"
        "     AND r.heartbeat_at >= now() - make_interval(secs => %(stale)s)"
        "     AND (cardinality(r.job_ids) = 0 OR EXISTS (SELECT 1 FROM jobs j"
        "          WHERE j.id = ANY(r.job_ids) AND j.state IN ('queued', 'running')))"
        "     AND (q.state = 'waiting' OR (q.state = 'running'"
        "          AND q.heartbeat_at < now() - make_interval(secs => %(stale)s)))"
        "   ORDER BY q.part LIMIT 1 FOR UPDATE OF q SKIP LOCKED)"
        " RETURNING p.part, p.sources, p.attempts",
        {"claim": claim, "by": claimed_by, "run": run_id, "stale": stale_seconds},
    ).fetchone()
    if row is None:
        return None
    sources = [(s, job) for s, job in row["sources"]]
    return ClaimedPart(run_id, row["part"], claim, sources, row["attempts"])


def beat(conn: Conn, *, run_id: str, claims: list[str]) -> None:
    """The parent (``claims`` empty) or a claimant is alive."""
    if claims:
        conn.execute(
            "UPDATE fan_out_parts SET heartbeat_at = now()"
            " WHERE run_id = %s AND claim = ANY(%s::uuid[]) AND state = 'running'",
            (run_id, claims),
        )
    else:
        conn.execute("UPDATE fan_out_runs SET heartbeat_at = now() WHERE id = %s", (run_id,))


def complete_part(conn: Conn, *, part: ClaimedPart, outcomes: list[dict[str, Any]]) -> bool:
    """The part's outcomes, stored; False when another run has claimed it since."""
    return bool(
        conn.execute(
            "UPDATE fan_out_parts SET state = 'done', outcomes = %s, heartbeat_at = now()"
            " WHERE run_id = %s AND part = %s AND claim = %s AND state = 'running'",
            (Jsonb(outcomes), part.run_id, part.part, part.claim),
        ).rowcount
    )


def release_part(conn: Conn, *, part: ClaimedPart, error: str) -> None:
    """The claimant failed: the part waits for another attempt, or fails after
    ``MAX_ATTEMPTS``."""
    conn.execute(
        "UPDATE fan_out_parts SET state = CASE WHEN attempts >= %s THEN 'failed'"
        " ELSE 'waiting' END, claim = NULL, error = %s"
        " WHERE run_id = %s AND part = %s AND claim = %s",
        (MAX_ATTEMPTS, error, part.run_id, part.part, part.claim),
    )


def parts_state(conn: Conn, *, run_id: str) -> PartsState:
    row = conn.execute(
        "SELECT count(*) AS total,"
        " count(*) FILTER (WHERE state = 'waiting') AS waiting,"
        " count(*) FILTER (WHERE state = 'running') AS running,"
        " count(*) FILTER (WHERE state = 'done') AS done,"
        " count(*) FILTER (WHERE state = 'failed') AS failed,"
        " coalesce(sum(jsonb_array_length(outcomes)) FILTER (WHERE state = 'done'), 0)"
        "   AS documents_done,"
        " min(error) FILTER (WHERE state = 'failed') AS error"
        " FROM fan_out_parts WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert row is not None
    return PartsState(**row)


def part_outcomes(conn: Conn, *, run_id: str) -> list[dict[str, Any]]:
    """Every outcome of the run's parts, in part order (parts not done give none)."""
    rows = conn.execute(
        "SELECT outcomes FROM fan_out_parts WHERE run_id = %s AND state = 'done' ORDER BY part",
        (run_id,),
    ).fetchall()
    return [o for row in rows for o in row["outcomes"]]


def drop_run(conn: Conn, *, run_id: str) -> None:
    """The run and its parts, once its parent has gathered them (or given up)."""
    conn.execute("DELETE FROM fan_out_runs WHERE id = %s", (run_id,))


def drop_abandoned(conn: Conn, *, older_than_seconds: float) -> int:
    """Runs whose parent has been silent this long (it died): nobody will gather them."""
    return conn.execute(
        "DELETE FROM fan_out_runs WHERE heartbeat_at < now() - make_interval(secs => %s)",
        (older_than_seconds,),
    ).rowcount
