"""Which Prefect server this process talks to, and the links into its UI.

Chosen before Prefect is imported, once per front door (the CLI, the API, a worker): a
running server beats ephemeral mode, which starts a temporary server in every process
(20-30 s here). When ``PREFECT_API_URL`` is unset and a local server answers (``prefect
server start`` or ``ingestflow up``), runs go there instead and show in its UI.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from ingestflow.core.errors import BackendUnavailableError
from ingestflow.core.settings import get_settings

LOCAL_API = "http://127.0.0.1:4200/api"


def use_running_server(api_url: str = LOCAL_API, timeout: float = 0.5) -> str | None:
    """Point Prefect at ``api_url`` if nothing else is configured and it is healthy."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect" in sys.modules:
        # Already imported (a notebook, a test): its settings may name a server already.
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return str(PREFECT_API_URL.value())
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:  # noqa: S310
            healthy = resp.status == 200
    except OSError:
        _quiet_ephemeral_server()
        return None
    if healthy:
        os.environ["PREFECT_API_URL"] = api_url
        return api_url
    _quiet_ephemeral_server()
    return None


def _quiet_ephemeral_server() -> None:
    # The throwaway server's telemetry write races its own SQLite start-up and logs a
    # "database is locked" traceback; it reports nothing useful for a temporary server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def api_url() -> str:
    """The Prefect API this process talks to: ``PREFECT_API_URL`` (environment or Prefect
    profile), else a server answering on 127.0.0.1:4200. Never Prefect's ephemeral server:
    nothing would serve the deployments there."""
    url = use_running_server()
    if not url:
        raise BackendUnavailableError(
            "no Prefect server: set PREFECT_API_URL or start one with `ingestflow up`"
        )
    return url


def flow_run_url(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI, or None when no UI address is known.

    The UI is ``INGESTFLOW_QUEUE_PREFECT_UI_URL``, else ``PREFECT_API_URL`` without its
    ``/api`` suffix (and without credentials).
    """
    if not flow_run_id:
        return None
    base = _ui_base()
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


def _ui_base() -> str | None:
    configured = get_settings().queue.prefect_ui_url
    if configured:
        return configured.rstrip("/")
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api.endswith("/api"):
        return None
    return _without_credentials(api.removesuffix("/api"))


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
