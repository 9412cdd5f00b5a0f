"""Redis restarts under the Celery backend: three jobs, one running and two queued, while the
session's ``redis-server`` (append-only file on) goes away and comes back. No job is lost:
each ends completed, and the documents are exactly a clean ingest's.

- ``stopped``: a clean stop (SIGTERM), three seconds down, while the running job waits in
  its fetch step; the job goes on once Redis is back.
- ``crashed``: a crash (SIGKILL), five seconds down, during which the running job finishes
  its flow. Its worker keeps retrying the result for about a minute, so the job still ends
  completed once Redis is back (it used to stay "running" until the visibility timeout).
- ``crashed-redelivered``: the same with a five-second visibility timeout: the job's message,
  unacknowledged when the connection dropped, is handed out again after the restart, and
  the second run finds every document unchanged (the first run's result is kept).

The running job is held in its fetch step by a named pipe (a "gate") among its sources, so
the outage lands while it runs, by construction rather than by timing.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from deployments.queue import JobRequest
from ingestflow.core.types import JobState
from tests.support.celery_worker import run_celery_worker, worker_env
from tests.support.faults import clean_ingest, exact_state_problems, make_corpus, wait_for

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 240.0  # a guard against hanging, not an expectation
DOCS_PER_JOB = 10


@pytest.fixture
def backend(celery_redis):
    from deployments.celery_backend import celery_backend

    return celery_backend()


def open_gate_writer(path: Path, timeout: float) -> int:
    """Until a job has the named pipe open for reading; returns a write end that keeps it
    waiting (closing it unwritten would hand the job an empty document)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads yet
                raise
        time.sleep(0.05)
    raise AssertionError(f"no job opened {path.name}")


def release_gate(fd: int, path: Path, text: str) -> None:
    """Let the waiting job read ``text``, then leave a plain file with the same text at the
    same path: a job delivered again reads the file instead of waiting on the pipe."""
    os.set_blocking(fd, True)
    with os.fdopen(fd, "wb") as pipe:
        pipe.write(text.encode())
    plain = path.with_name(path.name + ".tmp")
    plain.write_text(text, encoding="utf-8")
    os.replace(plain, path)


def statuses_of(backend, jobs: list[str]) -> dict[str, JobState | None]:
    """Each job's state, or None while Redis does not answer."""
    from ingestflow.core.errors import BackendUnavailableError

    try:
        infos = backend.status(jobs)
    except BackendUnavailableError:
        return dict.fromkeys(jobs)
    return {j: infos[j].state if j in infos else None for j in jobs}


@pytest.mark.parametrize(
    ("outage", "visibility"),
    [("stopped", None), ("crashed", None), ("crashed", 5)],
    ids=["stopped", "crashed", "crashed-redelivered"],
)
def test_jobs_survive_a_redis_restart(
    celery_redis, redis_server, pipeline, backend, tmp_path, outage, visibility
):
    from deployments.celery_app import app

    nonce = uuid.uuid4().hex[:12]
    paths = make_corpus(tmp_path / "docs", nonce, count=3 * DOCS_PER_JOB - 1)
    gate = tmp_path / "docs" / "gate.txt"
    gate_text = f"The gate document of {nonce}: it arrives once Redis is back or gone."
    os.mkfifo(gate)
    groups = [[gate, *paths[: DOCS_PER_JOB - 1]], paths[DOCS_PER_JOB - 1 : 2 * DOCS_PER_JOB - 1]]
    groups.append(paths[2 * DOCS_PER_JOB - 1 :])
    collection, clean = f"redis_{nonce}", f"clean_{nonce}"
    extra = {"INGESTFLOW_CELERY_VISIBILITY_TIMEOUT": str(visibility)} if visibility else {}
    env = worker_env(**extra)

    with run_celery_worker(env=env, log_dir=tmp_path) as worker:
        jobs = [
            backend.submit(
                JobRequest.ingest(
                    tenant="default", collection=collection, sources=[str(p) for p in group]
                )
            )
            for group in groups
        ]
        held = open_gate_writer(gate, JOB_TIMEOUT)  # the first job runs; the others wait
        assert statuses_of(backend, jobs) == {
            jobs[0]: JobState.RUNNING,
            jobs[1]: JobState.QUEUED,
            jobs[2]: JobState.QUEUED,
        }
        started = time.monotonic()
        if outage == "stopped":
            redis_server.stop()
            time.sleep(3)
            redis_server.start()
            release_gate(held, gate, gate_text)
        else:
            assert redis_server.proc is not None
            redis_server.proc.send_signal(signal.SIGKILL)
            redis_server.proc.wait()
            redis_server.proc = None
            release_gate(held, gate, gate_text)  # the job ends its flow while Redis is gone
            time.sleep(5)
            redis_server.start()
        assert worker.proc.poll() is None, worker.log()

        try:
            states = wait_for(
                lambda: (
                    set((s := statuses_of(backend, jobs)).values()) == {JobState.COMPLETED} and s
                ),
                timeout=JOB_TIMEOUT,
                what="every job completed",
                interval=0.5,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {statuses_of(backend, jobs)}\n{worker.log()}") from None
        recovered = time.monotonic() - started
        runs = 2 if visibility else 1  # a short visibility timeout hands the job out again
        finished = f"Task ingestflow.ingest[{jobs[0]}] succeeded"
        wait_for(
            lambda: worker.log().count(finished) >= runs,
            timeout=JOB_TIMEOUT,
            what=f"{runs} run(s) of the first job",
            interval=0.5,
        )
        log = worker.log()

    first_job = app.AsyncResult(jobs[0]).result
    deliveries = log.count(f"Task ingestflow.ingest[{jobs[0]}] received")
    last_run = [line for line in log.splitlines() if finished in line][-1]
    print(
        f"redis {outage}: all {len(states)} jobs completed {recovered:.1f} s after the outage"
        f" began; the running job ran {deliveries} time(s), recorded {first_job['counts']}"
    )
    assert deliveries == runs, log
    assert first_job["counts"] == {"indexed": DOCS_PER_JOB}
    if runs == 2:  # the second run found the first one's work done
        assert f"'counts': {{'unchanged': {DOCS_PER_JOB}}}" in last_run, last_run
    clean_ingest([p for g in groups for p in g], collection=clean, batch_size=32)
    assert exact_state_problems(collection, reference=clean) == []
