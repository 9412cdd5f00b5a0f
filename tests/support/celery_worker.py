"""Real Celery workers for tests: ``celery -A deployments.celery_app worker`` subprocesses.

    with run_celery_worker(env=worker_env(), log_dir=tmp_path) as worker:
        ...                                          # submit jobs; worker.kill() for crashes

Each test session has a Redis server of its own (the ``redis_server`` fixture), so
concurrent sessions never take each other's tasks. The worker runs in its own process
group with prefork concurrency 1 (``revoke(terminate=True)`` needs a pool that can kill a
child), consuming the three priority queues in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUEUES = "ingestflow.high,ingestflow.normal,ingestflow.low"
# What a worker needs besides the inherited environment; the embedder settings are set by the
# ``pipeline`` fixture with monkeypatch, so they are read when the worker starts.
REQUIRED_ENV = ("DATABASE_URL", "PREFECT_API_URL", "REDIS_URL", "INGESTFLOW_EMBED_PROVIDER")
EMBEDDER_ENV = (
    "INGESTFLOW_EMBED_PROVIDER",
    "INGESTFLOW_EMBED_MODEL",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "INGESTFLOW_EMBED_MAX_RETRY_WAIT",
)


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment for a worker: the test database, Prefect server, Redis and
    embedder settings (read now, after the fixtures set them), the repository on the path."""
    env = dict(os.environ)
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    assert not missing, f"a worker needs {missing}; use the pipeline and celery fixtures"
    env.update({name: os.environ[name] for name in EMBEDDER_ENV if name in os.environ})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env.update(extra)
    return env


class CeleryWorker:
    """A running worker process; ``kill()`` it mid-task, or let the context manager stop it."""

    def __init__(self, proc: subprocess.Popen[bytes], hostname: str, log: Path) -> None:
        self.proc, self.hostname, self.log_path = proc, hostname, log

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as a lost machine would."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM to the main process); SIGKILL the group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        if self.proc.poll() is None:
            self.kill()
        else:
            # Pool children normally exit with the main process; make sure of it.
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


@contextmanager
def run_celery_worker(
    *, env: dict[str, str], log_dir: Path, ready_timeout: float = 120.0
) -> Iterator[CeleryWorker]:
    """Start ``celery -A deployments.celery_app worker`` (prefork, one child, the three
    queues in priority order) and wait until it answers a ping; stop it afterwards."""
    hostname = f"test-{uuid.uuid4().hex[:8]}@%h"
    command = [
        sys.executable, "-m", "celery", "-A", "deployments.celery_app", "worker",
        "-Q", QUEUES, "-P", "prefork", "-c", "1", "-n", hostname,
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
    ]  # fmt: skip
    log = log_dir / f"celery-worker-{hostname.split('@')[0]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() reaches the children
        )  # fmt: skip
    worker = CeleryWorker(proc, hostname.replace("%h", _nodename()), log)
    try:
        _wait_ready(worker, ready_timeout)
        yield worker
    finally:
        worker.stop()


def _nodename() -> str:
    import socket

    return socket.gethostname()


def _wait_ready(worker: CeleryWorker, timeout: float) -> None:
    """Until the worker answers a ping (its task consumer is up before its control one)."""
    import kombu.exceptions
    import redis.exceptions

    from deployments.celery_app import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the Celery worker exited:\n{worker.log()}")
        try:
            if app.control.ping(destination=[worker.hostname], timeout=1.0):
                return
        except (redis.exceptions.ConnectionError, kombu.exceptions.OperationalError):
            time.sleep(0.5)  # a pooled connection went stale when Redis restarted; retry
    raise RuntimeError(f"the Celery worker did not answer within {timeout} s:\n{worker.log()}")
