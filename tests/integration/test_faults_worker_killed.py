"""Worker killed: a process running ``ingest_batch`` over 100 small documents is SIGKILLed at
a random point, the ingest is run again, and the final state is exactly a clean ingest's.

Fourteen trials. Seven kill from outside at a random moment: once a random number of
documents is indexed, plus a random delay under half a second (the stage the worker was in
is read from its ``--trace-stages`` log). Seven make the worker kill itself at a chosen
point of a random micro-batch (``crash_worker --die-at``): fetching, claims committed,
parsed, chunked, vectors cached but not written, inside the upsert's transaction (old chunks
deleted, new ones copied, nothing committed), and just after the commit.

The workers are forked from one process that imported Prefect once (``crash_worker
--zygote``), and the trials share one corpus and one clean reference ingest; each trial
embeds under a model name of its own, so its vector cache starts cold and the kill can land
on real embedding requests.

The seed is printed and named in every failure; ``INGESTFLOW_FAULT_SEED=<seed>`` replays the
same choices (the outside kills still land wherever the clock puts them).
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import reset_caches
from tests.support.db import document_rows
from tests.support.faults import (
    Zygote,
    clean_ingest,
    exact_state_problems,
    fault_seed,
    make_corpus,
    status_counts,
    wait_for,
    zygote_env,
)

pytestmark = pytest.mark.slow

DOCUMENTS = 100
MAX_KILL_DELAY_SECONDS = 0.5
# The embedding server's latency during a timed kill: longer than the delay, with room to spare.
KILL_WINDOW_SECONDS = MAX_KILL_DELAY_SECONDS + 0.25
BATCH_SIZE = 20
WORKER_TIMEOUT = 120.0  # a guard against a stalled worker, not an expectation
SEED = fault_seed()
STAGED_POINTS = (
    "fetch:start",
    "dedupe:end",
    "parse:end",
    "chunk:end",
    "embed:end",
    "upsert:in-transaction",
    "upsert:end",
)


@dataclass(frozen=True)
class Trial:
    """One kill: ``timed`` from outside, or at ``point`` of micro-batch ``nth``."""

    name: str
    point: str | None = None  # None: an outside kill at a random moment

    def rng(self) -> random.Random:
        return random.Random(f"{SEED}:{self.name}")


TRIALS = [Trial(f"timed-{i}") for i in range(1, 8)] + [Trial(p, point=p) for p in STAGED_POINTS]


def test_seed_is_reported():
    print(f"fault seed: {SEED} (replay with INGESTFLOW_FAULT_SEED={SEED})")


@pytest.fixture(scope="module")
def zygote(prefect_server, database_url) -> Iterator[Zygote]:
    """Forks the crash workers (one import of Prefect for all the trials)."""
    forker = Zygote(zygote_env(prefect_server))
    yield forker
    forker.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """The trials' documents, written once."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), uuid.uuid4().hex[:12], count=DOCUMENTS)


_references: dict[tuple[Path, ...], str] = {}


def reference(paths: list[Path]) -> str:
    """A clean ingest of ``paths`` (once per module): the state every trial must reach."""
    key = tuple(paths)
    if key not in _references:
        name = f"clean_{uuid.uuid4().hex[:12]}"
        clean_ingest(paths, collection=name, batch_size=BATCH_SIZE)
        _references[key] = name
    return _references[key]


@pytest.mark.parametrize("trial", TRIALS, ids=lambda t: t.name)
def test_killed_worker_then_rerun_ends_exact(
    pipeline, zygote, tmp_path, monkeypatch, corpus, trial
):
    from ingestflow import ingest

    clean = reference(corpus)
    # Every trial embeds under a model name of its own (the test server ignores the name), so
    # its vector cache starts cold even though the trials share their documents.
    nonce = uuid.uuid4().hex[:12]
    monkeypatch.setenv("INGESTFLOW_EMBED_MODEL", f"hash-64-{nonce}")
    reset_caches()
    crashed = f"crash_{nonce}"
    rng = trial.rng()
    where = f"seed {SEED}, trial {trial.name}"

    started = time.monotonic()
    if trial.point is None:
        # Each micro-batch's embedding request takes longer than the longest random delay, so
        # a kill timed after N documents lands before the last micro-batch is written.
        pipeline.configure(latency=KILL_WINDOW_SECONDS)
    at_kill, stage = kill_worker(zygote, tmp_path, corpus, crashed, trial, rng)
    pipeline.configure(latency=0.0)
    killed_after = time.monotonic() - started
    assert at_kill.get("indexed", 0) < DOCUMENTS, f"the worker finished before the kill ({where})"

    result = ingest(corpus, collection=crashed, batch_size=BATCH_SIZE)  # the re-run

    print(
        f"{where}: killed {stage} after {killed_after:.1f} s with {at_kill};"
        f" re-run {result.count('indexed')} indexed, {result.count('unchanged')} unchanged"
    )
    assert exact_state_problems(crashed, reference=clean) == [], where
    assert len(document_rows(crashed)) == DOCUMENTS
    # What was committed before the kill is kept (not embedded or written again).
    assert result.count("unchanged") == at_kill.get("indexed", 0), where


def kill_worker(
    zygote: Zygote,
    tmp_path: Path,
    paths: list[Path],
    collection: str,
    trial: Trial,
    rng: random.Random,
) -> tuple[dict[str, int], str]:
    """Run the crash worker and see it killed; returns the documents by status after its
    death and where it died."""
    from storage.db import database_url

    log = tmp_path / f"{collection}.log"
    options = ["--trace-stages"]
    if trial.point is not None:
        batch = rng.randint(1, DOCUMENTS // BATCH_SIZE - 1)  # never the last: it must die
        options += ["--die-at", f"{trial.point}:{batch}"]
    proc = zygote.spawn(
        folder=tmp_path,
        collection=collection,
        paths=paths,
        batch_size=BATCH_SIZE,
        log=log,
        options=options,
    )
    try:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            if trial.point is None:
                _kill_at_random_moment(conn, proc, collection, rng)
            proc.wait(timeout=WORKER_TIMEOUT)
            assert proc.returncode == -signal.SIGKILL, log.read_text()
            return status_counts(conn, collection), _last_stage(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _kill_at_random_moment(conn, proc, collection: str, rng: random.Random) -> None:
    target = rng.randint(0, DOCUMENTS - 2 * BATCH_SIZE)
    delay = rng.uniform(0.0, MAX_KILL_DELAY_SECONDS)

    def reached() -> bool:
        counts = status_counts(conn, collection)
        return sum(counts.values()) > 0 and counts.get("indexed", 0) >= target

    wait_for(
        reached,
        timeout=WORKER_TIMEOUT,
        what=f"{target} documents indexed",
        alive=lambda: proc.poll() is None,
    )
    time.sleep(delay)
    proc.kill()


def _last_stage(log: Path) -> str:
    """Where the worker was when it died, from its ``--trace-stages`` lines."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("dying at "):
            return "at " + line.removeprefix("dying at ")
        if line.startswith(("start ", "end ")):
            word, stage = line.split(" ", 1)
            return f"in {stage}" if word == "start" else f"after {stage}"
    return "before the first stage"
