"""Choosing the Prefect API before Prefect is imported: a running server beats ephemeral mode.

Ephemeral mode starts a temporary server in every process (20-30 s here). When
``PREFECT_API_URL`` is unset and a local server answers (``prefect server start`` or
``ingestflow up``), runs go there instead and show in its UI.
"""

from __future__ import annotations

import os
import sys
import urllib.request

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
