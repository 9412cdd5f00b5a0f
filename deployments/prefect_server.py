"""Which Prefect server this process talks to, and the links into its UI.

Chosen before Prefect is imported, once per front door (the CLI, the API, a worker): a
running server beats ephemeral mode, which starts a temporary server in every process
(20-30 s here). When ``PREFECT_API_URL`` is unset and a local server answers on
``INGESTFLOW_QUEUE_PREFECT_PORT`` (``prefect server start``, ``ingestflow up``, or the
background server), runs go there and show in its UI. When none answers, one is started in
the background and kept (``deployments.background_prefect``), unless
``INGESTFLOW_QUEUE_PREFECT_SERVER=ephemeral``.
"""

from __future__ import annotations

import logging
import os
import sys
from urllib.parse import urlsplit, urlunsplit

from deployments import background_prefect
from ingestflow.core.errors import BackendUnavailableError
from ingestflow.core.settings import get_settings

log = logging.getLogger(__name__)


def use_running_server() -> str | None:
    """Point Prefect at a server if nothing else is configured: the local one answering on
    the configured port, else one started there in the background. None means ephemeral
    mode (chosen in settings, or the background server could not start: logged)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect" in sys.modules:
        # Already imported (a notebook, a test): its settings may name a server already.
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return str(PREFECT_API_URL.value())
    queue = get_settings().queue
    api_url = f"http://127.0.0.1:{queue.prefect_port}/api"
    if not background_prefect.healthy(api_url):
        if queue.prefect_server != "background":
            _quiet_ephemeral_server()
            return None
        try:
            api_url = background_prefect.start(queue.prefect_port)
        except BackendUnavailableError as e:
            log.warning("%s; using Prefect's ephemeral mode instead", e)
            _quiet_ephemeral_server()
            return None
    os.environ["PREFECT_API_URL"] = api_url
    if "prefect" in sys.modules:
        # Prefect read its settings from the environment when it was imported.
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return api_url


def _quiet_ephemeral_server() -> None:
    # The throwaway server's telemetry write races its own SQLite start-up and logs a
    # "database is locked" traceback; it reports nothing useful for a temporary server.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def api_url() -> str:
    """The Prefect API this process talks to: ``PREFECT_API_URL`` (environment or Prefect
    profile), else the local server (see ``use_running_server``). Never Prefect's ephemeral
    server: nothing would serve the deployments there."""
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
