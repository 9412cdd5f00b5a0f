"""A Postgres + pgvector server of a test's own (pgserver in a temp dir) that the test may
restart, stop and start, without touching the session's database.

    with run_restartable_postgres() as pg:
        pg.url            # DATABASE_URL for the processes under test
        pg.restart()      # pg_ctl restart -m fast: every connection is cut
        pg.stop("immediate"); ...; pg.start()   # a crash, an outage, crash recovery on start
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from subprocess import CalledProcessError
from typing import Any, Literal

StopMode = Literal["smart", "fast", "immediate"]


class RestartablePostgres:
    """pgserver's Postgres 16 + pgvector, driven with its own ``pg_ctl``.

    ``pg_ctl restart`` (also used to start a stopped server) reads the options the server
    last ran with from ``postmaster.opts``, so it comes back on the same unix socket and
    ``url`` stays valid.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self.pgdata: Path = server.pgdata
        self.url: str = server.get_uri()

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", *args], pgdata=self.pgdata, user=self._server.system_user, timeout=60)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop (cutting every connection) and start again."""
        self._pg_ctl("-m", mode, "restart")

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server; ``immediate`` is a crash (the next start recovers from the WAL)."""
        self._pg_ctl("-m", mode, "stop")

    def start(self) -> None:
        """Start a stopped server with the options it last ran with."""
        self._pg_ctl("restart")  # on a stopped server: "trying to start server anyway"

    def close(self) -> None:
        """Stop the server and delete its data directory."""
        with suppress(CalledProcessError):  # already stopped
            self.stop("fast")
        # pgserver would try to stop (and then kill) the postmaster it started, which a
        # restart has replaced; it is stopped above, so let it only delete the data.
        self._server._postmaster_info = None
        self._server.cleanup()


@contextmanager
def run_restartable_postgres() -> Iterator[RestartablePostgres]:
    """A fresh server in a temp dir for the block; stopped and deleted afterwards."""
    import pgserver

    # Not under pytest's 0700 temp dirs: as root, pgserver runs Postgres as its own user.
    parent = Path(tempfile.mkdtemp(prefix="ingestflow-test-pg-restart-"))
    parent.chmod(0o755)
    server = pgserver.get_server(parent / "data", cleanup_mode="delete")
    pg = RestartablePostgres(server)
    try:
        yield pg
    finally:
        pg.close()
        shutil.rmtree(parent, ignore_errors=True)
