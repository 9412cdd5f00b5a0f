"""The whole local stack behind ``ingestflow up``: database, the model server (for the
``local`` embedder), Prefect server with its UI, the deployments' runner, optionally a Celery
worker, and the HTTP API, started in that order and stopped in reverse.

Every server is a child process in its own session, so a Ctrl-C at the terminal reaches only
``up``, which then stops the children one by one (API first, database last) and waits for
them. A child that exits on its own stops the whole stack, except the model server, which is
started again (at most ``_MAX_RESTARTS`` times in ``_RESTART_WINDOW`` seconds); runs that were
embedding meanwhile retry their requests, and ``/readyz`` says the model is down until it is
back. On Linux each child also gets SIGTERM if ``up`` itself is killed, so nothing is left
behind.

How runs are started: the served runner (the default) polls every 0.25 s and starts each
run in a warm process forked from a fork server that has imported the flows
(``deployments.warm_pool``); one small upload is searchable in under 2 s
(``bench/latency.py``). ``--runner worker`` is a ``prefect worker start`` on the
``ingestflow-process`` pool, which spawns ``python -m prefect.engine`` for every run:
measured before the warm engine, 8.7 s (7.8-9.4) from trigger to completion of a two-file job
on a quiet machine, against 5.0 s for the served runner of that time.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deployments.background_prefect import console_script, server_command
from deployments.queue import BACKENDS
from ingestflow.core.errors import ConfigError, IngestError, StoreError
from ingestflow.core.settings import get_settings
from storage.db import database_url, reset_engine
from storage.migrate import upgrade

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
CELERY_QUEUES = "ingestflow.high,ingestflow.normal,ingestflow.low"
_STARTUP_TIMEOUT = 240.0  # a first Prefect server start migrates its database: minutes here
_MAX_RESTARTS = 5
_RESTART_WINDOW = 300.0


class StackStopped(IngestError, code="stack_stopped"):
    """A part of the stack exited on its own; the message says which and how."""


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was starting."""


class Runner(enum.StrEnum):
    """What runs the Prefect deployments' flow runs."""

    SERVE = "serve"  # serve() in one process: the fastest start of a run
    WORKER = "worker"  # a process worker on the ingestflow-process pool: job priorities


@dataclass(frozen=True)
class StackOptions:
    """What ``ingestflow up`` starts, and where. A Celery worker is started when the queue
    backend is ``celery``."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    prefect_port: int = 4200
    model_port: int = 8100  # the model server's, when the local embedder needs one
    model_server: bool = True  # False: each run process loads the local model itself
    backend: str = "prefect"
    runner: Runner = Runner.SERVE
    concurrency: int = 2  # flow runs at once (serve's limit, or the worker's --limit)

    def __post_init__(self) -> None:
        BACKENDS.get(self.backend)  # ConfigError naming the known ones
        if self.runner not in tuple(Runner):
            raise ConfigError(f"unknown runner {self.runner!r} (serve or worker)")


@dataclass
class Child:
    """A server process of the stack, logging to its own file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    grace: float = 15.0
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)  # monotonic times, if restartable
    restartable: bool = False

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        """Ask the process to stop, wait up to ``grace`` seconds, then kill it and anything
        it started that is still running (flow runs, for instance)."""
        import psutil

        try:
            leftovers = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            leftovers = []
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid)
                self.proc.kill()
                self.proc.wait()
        _kill_group(self.proc.pid)
        _kill_all(leftovers)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _kill_group(pgid: int) -> None:
    # Each child leads its own process group (start_new_session); kill what is left in it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_all(processes: list[Any]) -> None:
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that makes the child get SIGTERM when ``up`` dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


def spawn(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    log_dir: Path,
    stop_signal: int = signal.SIGTERM,
    grace: float = 15.0,
) -> Child:
    """Start ``argv`` in its own session with output to ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # The hook only calls prctl(2), which is safe between fork and exec.
            preexec_fn=_die_with_parent(),
        )
    return Child(name, proc, log_path, stop_signal, grace, argv=argv, env=env)


@dataclass
class LocalStack:
    """Starts, watches and stops the parts of the local stack."""

    options: StackOptions
    stop_requested: threading.Event = field(default_factory=threading.Event)
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    prefect_api: str = ""
    prefect_started: bool = False
    model_server: str = ""  # its URL, when the local embedder uses one
    model_server_started: bool = False
    database: str = ""
    _pgserver: Any = None

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.options.host in ("0.0.0.0", "::") else self.options.host
        return f"http://{host}:{self.options.port}"

    @property
    def ui_url(self) -> str:
        return self.prefect_api.rstrip("/").removesuffix("/api")

    @property
    def log_dir(self) -> Path:
        return self.options.data_dir / "logs"

    def start(self) -> None:
        """Start every part and return once the API is ready; raises ``StackStopped`` if a
        part exits, ``_Interrupted`` on Ctrl-C."""
        self.env = _child_env(self.options)
        self._start_database()
        self._start_model_server()
        self._start_prefect()
        if self.model_server_started:
            self._wait_for(f"{self.model_server}/health", "the model server")
        self._start_runner()
        if self.options.backend == "celery":
            self._start_celery()
        # The API comes last, so it answers /readyz only once jobs can be submitted.
        self._start_api()
        self._wait_for(f"{self.api_url}/readyz", "the API")

    def watch(self) -> None:
        """Return when a stop is requested; raise ``StackStopped`` if a child exits."""
        while not self.stop_requested.wait(0.5):
            self._check_children()

    def stop(self) -> None:
        """Stop the children in reverse order of start, then the embedded database."""
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        reset_engine()
        if self._pgserver is not None:
            self._pgserver.cleanup()  # stops it unless another process still uses it
            self._pgserver = None

    def _start_database(self) -> None:
        settings = get_settings().database
        if settings.url is None:
            self._pgserver = _start_pgserver(settings.data_dir)
            self.database = f"embedded Postgres in {settings.data_dir}"
        else:
            self.database = _describe_url(settings.url.get_secret_value())
        self.env["DATABASE_URL"] = database_url()
        upgrade()

    def _start_model_server(self) -> None:
        """One copy of the local model for every run of this machine (``local`` provider
        only): the configured server, else one started here. Its load overlaps Prefect's."""
        settings = get_settings().embedding
        if settings.provider != "local" or not self.options.model_server:
            self.env.pop("INGESTFLOW_EMBED_MODEL_SERVER_URL", None)
            return
        if settings.model_server_url:
            base = settings.model_server_url.rstrip("/").removesuffix("/v1")
            if not _healthy(f"{base}/health"):
                raise ConfigError(
                    f"INGESTFLOW_EMBED_MODEL_SERVER_URL ({_describe_url(base)}) does not"
                    " answer; unset it to let `ingestflow up` start a model server"
                )
            self.model_server = base
            return
        self.model_server = f"http://127.0.0.1:{self.options.model_port}"
        argv = [console_script("ingestflow"), "model-server"]
        argv += ["--port", str(self.options.model_port)]
        child = spawn("model-server", argv, env=self.env, log_dir=self.log_dir)
        child.restartable = True
        self.children.append(child)
        self.model_server_started = True
        self.env["INGESTFLOW_EMBED_MODEL_SERVER_URL"] = f"{self.model_server}/v1"

    def _start_prefect(self) -> None:
        configured = os.environ.get("PREFECT_API_URL")
        url = configured or f"http://127.0.0.1:{self.options.prefect_port}/api"
        if _healthy(f"{url}/health"):
            self.prefect_api = url
        elif configured:
            raise ConfigError(
                f"PREFECT_API_URL ({_describe_url(configured)}) does not answer;"
                " unset it to let `ingestflow up` start a Prefect server"
            )
        else:
            self._spawn_prefect_server(url)
        self.env["PREFECT_API_URL"] = self.prefect_api

    def _spawn_prefect_server(self, url: str) -> None:
        home = self.options.data_dir / "prefect"
        argv, env = server_command(home, self.options.prefect_port, self.env)
        self.children.append(spawn("prefect-server", argv, env=env, log_dir=self.log_dir))
        self.prefect_api = url
        self.prefect_started = True
        self._wait_for(f"{url}/health", "the Prefect server")

    def _start_runner(self) -> None:
        env = dict(self.env)
        if self.options.runner == "serve":
            code = (
                "from deployments.definitions import serve_deployments;"
                f" serve_deployments(limit={self.options.concurrency})"
            )
            self.children.append(
                spawn("runner", [sys.executable, "-c", code], env=env, log_dir=self.log_dir)
            )
            # serve() registers the deployments before it polls; the API needs them to exist.
            for name in ("ingest-batch/ingest-batch", "delete-documents/delete-documents"):
                self._wait_for(f"{self.prefect_api}/deployments/name/{name}", "the deployments")
            return
        self._deploy_to_work_pool()
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "1")
        argv = [console_script("prefect"), "worker", "start", "--pool", "ingestflow-process"]
        argv += ["--type", "process", "--limit", str(self.options.concurrency)]
        # The worker turns SIGTERM into SIGINT and may still linger: short grace, then kill.
        self.children.append(
            spawn(
                "worker", argv, env=env, log_dir=self.log_dir, stop_signal=signal.SIGINT, grace=10
            )
        )

    def _deploy_to_work_pool(self) -> None:
        code = "from deployments.definitions import deploy_to_work_pool; deploy_to_work_pool()"
        log = self.log_dir / "deploy.log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            done = subprocess.run(
                [sys.executable, "-c", code],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        if done.returncode != 0:
            raise StackStopped(f"deploying to the work pool failed; see {log}")

    def _start_celery(self) -> None:
        import importlib.util

        if importlib.util.find_spec("deployments.celery_app") is None:
            raise ConfigError("the celery backend needs deployments/celery_app.py")
        argv = [console_script("celery"), "-A", "deployments.celery_app"]
        argv += ["worker", "-Q", CELERY_QUEUES]
        argv += ["--concurrency", "1", "--loglevel", "INFO"]
        # SIGTERM is Celery's warm shutdown: it finishes the task at hand, within the grace.
        self.children.append(spawn("celery", argv, env=self.env, log_dir=self.log_dir))

    def _start_api(self) -> None:
        argv = [sys.executable, "-m", "uvicorn", "api.app:app"]
        argv += ["--host", self.options.host, "--port", str(self.options.port)]
        self.children.append(
            spawn("api", argv, env=self.env, log_dir=self.log_dir, stop_signal=signal.SIGINT)
        )

    def _wait_for(self, url: str, what: str) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            self._check_children()
            if _healthy(url):
                return
            if self.stop_requested.wait(0.5):
                raise _Interrupted
        raise StackStopped(f"{what} did not become ready in {_STARTUP_TIMEOUT:.0f} s")

    def _check_children(self) -> None:
        for i, child in enumerate(self.children):
            code = child.exited()
            if code is not None and self._may_restart(child):
                self.children[i] = _restart(child, code, self.log_dir)
            elif code is not None:
                tail = child.log_tail()
                raise StackStopped(
                    f"{child.name} exited with code {code}; its log is {child.log_path}"
                    + (f"\n{tail}" if tail else "")
                )

    def _may_restart(self, child: Child) -> bool:
        if not child.restartable or self.stop_requested.is_set():
            return False
        recent = [t for t in child.restarts if time.monotonic() - t < _RESTART_WINDOW]
        return len(recent) < _MAX_RESTARTS


def _restart(child: Child, code: int, log_dir: Path) -> Child:
    """The same process again; its log keeps the last run's under ``<name>.log.1``."""
    log.warning(
        "%s exited with code %s; starting it again (log: %s)", child.name, code, child.log_path
    )
    with contextlib.suppress(OSError):
        child.log_path.replace(child.log_path.with_name(f"{child.log_path.name}.1"))
    again = spawn(child.name, child.argv, env=child.env, log_dir=log_dir)
    again.restartable = True
    again.restarts = [*child.restarts, time.monotonic()]
    return again


def _child_env(options: StackOptions) -> dict[str, str]:
    env = dict(os.environ)
    # QUEUE_BACKEND is read before INGESTFLOW_QUEUE_BACKEND: drop it so --backend wins.
    env.pop("QUEUE_BACKEND", None)
    env["INGESTFLOW_QUEUE_BACKEND"] = options.backend
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _start_pgserver(data_dir: Path) -> Any:
    """The embedded Postgres, stopped when ``up`` stops unless another process uses it.

    storage.db starts the same server later in this process and gets this handle back.
    """
    import pgserver

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        return pgserver.get_server(data_dir, cleanup_mode="stop")
    except Exception as e:
        raise StoreError(f"could not start the embedded Postgres in {data_dir}: {e}") from e


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (our URLs)
            return 200 <= resp.status < 300
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _describe_url(url: str) -> str:
    """scheme://host:port/path with no credentials or query (it may hold a password)."""
    from urllib.parse import parse_qs

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    where = f" (socket in {socket_dir})" if not host and socket_dir.startswith("/") else ""
    return f"{parts.scheme}://{host}{parts.path}{where}"


def run_stack(options: StackOptions, say: Callable[[LocalStack], None]) -> int:
    """Start the stack, call ``say`` once it is ready, run until SIGINT or SIGTERM, stop
    everything; returns the exit code (0 on a requested stop, 1 when a part died)."""
    stack = LocalStack(options)
    previous = _on_stop_signals(lambda: stack.stop_requested.set())
    try:
        stack.start()
        say(stack)
        stack.watch()
        return 0
    except _Interrupted:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        _on_stop_signals(lambda: None)
        try:
            stack.stop()
        finally:
            _restore(previous)


def _on_stop_signals(handler: Callable[[], None]) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda _signum, _frame: handler())
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
