"""Process-wide set-up, done once by each front door: the CLI's callback, the API's startup,
the notebook functions. (A worker does its own: the Celery worker's init, a flow's entry.)"""

from __future__ import annotations

from deployments.prefect_server import use_running_server
from storage.migrate import Migration, current_version, ensure_schema, upgrade


def prepare(*, schema: bool = True, prefect: bool = True) -> None:
    """Bring the database schema up to date and choose the Prefect server (a running one
    beats ephemeral mode); each only once per process."""
    if prefect:
        use_running_server()
    if schema:
        ensure_schema()


def upgrade_schema() -> tuple[list[Migration], int]:
    """Apply pending schema migrations: those applied now, and the version reached."""
    applied = upgrade()
    return applied, current_version()
