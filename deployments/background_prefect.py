"""A Prefect server started on first use and kept: what a notebook, the CLI or a worker gets
when no Prefect server is configured or running.

Prefect's alternative, ephemeral mode, starts a temporary server inside every process on a
SQLite database (15-30 s per command here, and "database is locked" tracebacks under a
notebook's concurrent writes). One ``prefect server start`` shared by every process writes to
its database from one place: measured with 500 SciFact documents from a notebook, 7.5-10.5 s
against 18-27 s in ephemeral mode, and no lock errors with two notebooks ingesting at once.

The server is detached (its own session), so it outlives the process that started it;
``ingestflow prefect stop`` stops it. Its home, database and log are in
``<data dir>/prefect`` (the same home ``ingestflow up`` gives the server it starts).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from platformdirs import user_data_dir

from ingestflow.core.errors import BackendUnavailableError

START_TIMEOUT = 180.0  # the first start migrates a new database: about 15 s here
STOP_TIMEOUT = 20.0

# The server started by this process; kept so Python does not warn that it is still running.
_started: subprocess.Popen[bytes] | None = None


def prefect_home() -> Path:
    return Path(user_data_dir("ingestflow")) / "prefect"


def server_command(
    home: Path, port: int, base_env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment (``base_env``, else this process's, with Prefect's home set)
    of a local ``prefect server start`` on ``port``."""
    base = os.environ if base_env is None else base_env
    env = {k: v for k, v in base.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(home)
    # The UI asks this URL for its data; left to Prefect it names port 4200 whatever
    # --port says, and shows "Can't connect to Server API" (or another server's runs).
    env["PREFECT_SERVER_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    argv = [console_script("prefect"), "server", "start", "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    return argv, env


def healthy(api_url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:  # noqa: S310
            return resp.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def start(port: int) -> str:
    """Start the background server on ``port`` unless one answers there; return its API URL.

    Processes starting at the same moment agree through a lock file: one starts it, the
    others wait for it. Raises BackendUnavailableError, with the log's place, when it does
    not come up.
    """
    global _started
    api_url = f"http://127.0.0.1:{port}/api"
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with _lock(home / "server.lock"):
        if healthy(api_url):
            return api_url
        argv, env = server_command(home, port)
        log_path = home / "server.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own argv
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _started = proc
        (home / "server.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT
        while not healthy(api_url):
            code = proc.poll()
            if code is not None:
                raise BackendUnavailableError(
                    f"the background Prefect server exited with status {code} before it"
                    f" answered on port {port}; its log is {log_path}"
                )
            if time.monotonic() > deadline:
                _terminate(proc.pid)
                raise BackendUnavailableError(
                    f"the background Prefect server did not answer on port {port} within"
                    f" {START_TIMEOUT:.0f} s; its log is {log_path}"
                )
            time.sleep(0.25)
        print(
            f"ingestflow: started a Prefect server in the background at"
            f" http://127.0.0.1:{port} (its UI; it keeps running for later calls,"
            " `ingestflow prefect stop` stops it)",
            file=sys.stderr,
        )
        return api_url


def stop() -> int | None:
    """Stop the background server this data directory started; its pid, or None if none
    was running."""
    pid_file = prefect_home() / "server.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _is_prefect_server(pid):
        pid_file.unlink(missing_ok=True)
        return None
    _terminate(pid)
    pid_file.unlink(missing_ok=True)
    return pid


def _terminate(pid: int) -> None:
    # The server leads its own session: its workers are in its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if _started is not None and _started.pid == pid:
        _started.wait(timeout=5)


def _alive(pid: int) -> bool:
    if _started is not None and _started.pid == pid:
        return _started.poll() is None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"


def _is_prefect_server(pid: int) -> bool:
    """Whether ``pid`` is still a ``prefect server start`` (not a pid reused since)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid)  # no /proc (macOS): trust the pid file while the pid lives
    return b"server" in argv and any(a.endswith(b"prefect") for a in argv)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def console_script(name: str) -> str:
    """A console script installed beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name
