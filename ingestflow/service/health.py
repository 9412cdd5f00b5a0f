"""Readiness: what the service needs, each ``"ok"`` or the reason it is not ready."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

from deployments.queue import get_backend
from ingestflow.core.errors import EmbedError
from ingestflow.core.settings import get_settings
from storage.db import connection
from storage.migrate import ensure_schema
from storage.objectstore import local_path, scheme_of, store_for


def readiness() -> dict[str, str]:
    """The database (its schema brought up to date, if it was not reachable at start-up),
    the upload store, the queue backend, and the model server when runs embed through one."""
    checks = {
        "database": _check(_database_ready),
        "upload_store": _check(_upload_store_ready),
        "queue": _check(lambda: get_backend().ping()),
    }
    model_server = get_settings().embedding.model_server_url
    if model_server:
        checks["model_server"] = _check(lambda: _model_server_ready(model_server))
    return checks


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with a reason
        return getattr(exc, "reason", None) or type(exc).__name__  # never a URL or secret
    return "ok"


def _database_ready() -> None:
    ensure_schema()  # a no-op once it has succeeded in this process
    with connection() as conn:
        conn.execute("SELECT 1")


def _model_server_ready(url: str) -> None:
    import urllib.request

    health = url.rstrip("/").removesuffix("/v1") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=2.0):  # noqa: S310 - a configured URL
            pass
    except OSError as exc:
        raise EmbedError("the model server does not answer (it may be restarting)") from exc


def _upload_store_ready() -> None:
    """The upload prefix can be listed (a local folder is created if missing)."""
    uri = get_settings().api.upload_uri
    if scheme_of(uri) == "file":
        local_path(uri).mkdir(parents=True, exist_ok=True)
    list(islice(store_for(uri).list_objects(uri, page_size=1), 1))
