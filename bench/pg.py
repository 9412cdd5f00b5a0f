"""The Postgres every system in a bench run shares: DATABASE_URL, or an embedded one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def database() -> Iterator[str]:
    """DATABASE_URL, or an embedded pgserver Postgres (with pgvector) for the length of the
    bench, deleted afterwards."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    # As root, pgserver runs Postgres as its own user, which must reach the data folder.
    parent = Path(tempfile.mkdtemp(prefix="ingestflow-bench-pg-"))
    parent.chmod(0o755)
    server = pgserver.get_server(parent / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)
