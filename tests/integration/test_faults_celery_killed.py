"""Celery worker killed: an ingest job of 100 small documents, its worker SIGKILLed at a random
point, ends exactly like a clean ingest once the task is delivered again.

Six trials on real ``celery worker`` processes (prefork, one child) and the session's Redis:

- three kill only the pool child running the task. The worker's main process sees the child
  lost and, because tasks are acknowledged late and rejected on a lost worker, puts the task
  back; its new child runs it again;
- three kill the whole worker (main process and child, as a lost machine). The message stays
  unacknowledged in Redis; the next worker, started with a one-second visibility timeout,
  restores it when it starts and runs it. That worker then takes the next trial's job and is
  killed in turn, so four workers serve the three trials.

Each kill comes once a random number of documents is indexed, plus a random delay under half
a second. The seed is printed and named in failures (``INGESTFLOW_FAULT_SEED`` replays it).
"""

from __future__ import annotations

import contextvars
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from deployments.queue import JobRequest
from ingestflow.core.types import JobState
from tests.conftest import reset_caches
from tests.support.celery_worker import CeleryWorker, run_celery_worker, worker_env
from tests.support.faults import (
    clean_ingest,
    exact_state_problems,
    fault_seed,
    make_corpus,
    status_counts,
    wait_for,
)

pytestmark = pytest.mark.slow

DOCUMENTS = 100
MAX_KILL_DELAY_SECONDS = 0.5
# The embedding server's latency during a timed kill: longer than the delay, with room to spare.
KILL_WINDOW_SECONDS = MAX_KILL_DELAY_SECONDS + 0.25
BATCH_SIZE = 20
JOB_TIMEOUT = 240.0  # a guard against hanging, not an expectation
SEED = fault_seed()


@pytest.fixture
def backend(celery_redis):
    from deployments.celery_backend import celery_backend

    return celery_backend()


@dataclass
class Harness:
    """What the trials share: the workers' environment, and a thread that runs each trial's
    clean ingest in this process while the workers do the job."""

    worker_env: dict[str, str]
    references: ThreadPoolExecutor
    backend: Any
    tmp_path: Path
    embeddings: Any  # the embedding server: slowed while a kill is timed

    def start_worker(self) -> AbstractContextManager[CeleryWorker]:
        return run_celery_worker(env=self.worker_env, log_dir=self.tmp_path)


@pytest.fixture
def harness(celery_redis, pipeline, monkeypatch, tmp_path) -> Iterator[Harness]:
    """The workers' environment is taken first; this process then embeds under another model
    name (the test server ignores it), so the clean ingests never warm the workers' vector
    cache and every job embeds its documents for real."""
    from deployments.celery_backend import celery_backend

    env = worker_env(
        INGESTFLOW_BATCH_SIZE=str(BATCH_SIZE),
        # A starting worker restores a dead one's task at once; jobs here last seconds, well
        # inside kombu's ~100 s periodic restore sweep, so a live job is never handed out twice.
        INGESTFLOW_CELERY_VISIBILITY_TIMEOUT="1",
    )
    monkeypatch.setenv("INGESTFLOW_EMBED_MODEL", "hash-64-reference")
    reset_caches()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference") as pool:
        yield Harness(env, pool, celery_backend(), tmp_path, pipeline)


def test_pool_child_killed_mid_job_is_run_again_by_the_same_worker(harness):
    with harness.start_worker() as worker:
        for n in range(1, 4):
            trial = Trial(f"child-{n}", harness)
            child = wait_for(lambda: _pool_child(worker), timeout=60, what="the pool child")
            trial.kill_at_random_point(lambda child=child: os.kill(child.pid, signal.SIGKILL))
            trial.check(worker)


def test_whole_worker_killed_mid_job_is_redelivered_to_the_next_worker(harness):
    with ExitStack() as workers:  # a killed worker's context only reaps what is left of it
        worker = workers.enter_context(harness.start_worker())
        for n in range(1, 4):
            trial = Trial(f"worker-{n}", harness)
            trial.kill_at_random_point(worker.kill)
            assert trial.state() is JobState.RUNNING  # as the dead worker left it
            # The next worker restores the unacknowledged task, then takes the next job.
            worker = workers.enter_context(harness.start_worker())
            trial.check(worker)


class Trial:
    """One job of 100 fresh documents, killed once, checked against a clean ingest."""

    def __init__(self, name: str, harness: Harness) -> None:
        """Write the documents and submit the job; its clean twin starts alongside."""
        self.name, self.backend, self.embeddings = name, harness.backend, harness.embeddings
        self.rng = random.Random(f"{SEED}:{name}")
        nonce = uuid.uuid4().hex[:12]
        self.paths = make_corpus(harness.tmp_path / name, nonce, count=DOCUMENTS)
        self.collection, self.clean = f"celery_{nonce}", f"clean_{nonce}"
        self.where = f"seed {SEED}, trial {name}"
        self.at_kill: dict[str, int] = {}
        request = JobRequest.ingest(
            tenant="default", collection=self.collection, sources=[str(p) for p in self.paths]
        )
        self.job = self.backend.submit(request)
        self.submitted = time.monotonic()
        # In a copy of this context: Prefect's settings (the test server's URL) live there.
        self.reference = harness.references.submit(
            contextvars.copy_context().run,
            clean_ingest,
            self.paths,
            collection=self.clean,
            batch_size=BATCH_SIZE,
        )

    def state(self) -> JobState:
        return self.backend.status([self.job])[self.job].state

    def kill_at_random_point(self, kill) -> None:
        """Kill once a random number of documents is indexed, after a random short delay."""
        from storage.db import database_url

        target = self.rng.randint(0, DOCUMENTS - 2 * BATCH_SIZE)
        delay = self.rng.uniform(0.0, MAX_KILL_DELAY_SECONDS)
        # Each micro-batch's embedding request takes longer than the longest delay, so a kill
        # timed after N documents lands before the last micro-batch is written.
        self.embeddings.configure(latency=KILL_WINDOW_SECONDS)
        with psycopg.connect(database_url(), autocommit=True) as conn:

            def reached() -> bool:
                counts = status_counts(conn, self.collection)
                return sum(counts.values()) > 0 and counts.get("indexed", 0) >= target

            wait_for(
                reached, timeout=JOB_TIMEOUT, what=f"{target} documents indexed ({self.where})"
            )
            time.sleep(delay)
            kill()
            self.killed_after = time.monotonic() - self.submitted
            self.at_kill = status_counts(conn, self.collection)
        self.embeddings.configure(latency=0.0)
        assert self.at_kill.get("indexed", 0) < DOCUMENTS, f"the job ended first ({self.where})"

    def check(self, worker: CeleryWorker) -> None:
        """Wait for the job to complete, then compare with a clean ingest of the same files."""
        from deployments.celery_app import app

        try:
            info = wait_for(
                lambda: (i := self.backend.status([self.job])[self.job]).state.terminal and i,
                timeout=JOB_TIMEOUT,
                what=f"job {self.job} to finish ({self.where})",
                interval=0.2,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{worker.log()[-3000:]}") from None
        recovered_after = time.monotonic() - self.submitted
        assert info.state is JobState.COMPLETED, (self.where, info)
        summary = app.AsyncResult(self.job).result
        self.reference.result(timeout=JOB_TIMEOUT)
        print(
            f"{self.where}: killed after {self.killed_after:.1f} s with {self.at_kill},"
            f" completed after {recovered_after:.1f} s with {summary['counts']}"
        )
        assert exact_state_problems(self.collection, reference=self.clean) == [], self.where
        # The re-run kept what was committed before the kill and indexed the rest.
        expected = {"unchanged": self.at_kill.get("indexed", 0)}
        expected["indexed"] = DOCUMENTS - expected["unchanged"]
        assert summary["counts"] == {k: v for k, v in expected.items() if v}, self.where


def _pool_child(worker: CeleryWorker) -> psutil.Process | None:
    children = psutil.Process(worker.proc.pid).children()
    return children[0] if len(children) == 1 else None
