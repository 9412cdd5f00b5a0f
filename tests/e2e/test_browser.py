"""The pages a person opens, rendered by headless Chromium: the Prefect UI's page for a flow
run that an upload through the API started, and the API's Swagger UI at /docs. Screenshots
go to the test-artifacts folder (``$INGESTFLOW_TEST_ARTIFACTS`` or ``test-artifacts/``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from tests.conftest import REPO
from tests.support.browser import (
    artifacts_dir,
    chromium_path,
    dump_dom,
    render_until,
    screenshot,
    visible_text,
)
from tests.support.processes import free_port, stop_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium; its absence fails under CI (scripts/setup.sh installs it)."""
    path = chromium_path()
    if path is None:
        reason = "chromium is not installed (scripts/setup.sh installs Debian's chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def report(capsys: pytest.CaptureFixture[str], shot: Path) -> None:
    """Print a screenshot's path past pytest's capture, so a person can open it."""
    with capsys.disabled():
        print(f"\nscreenshot: {shot}")


def read_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def prefect_ui_url(api_url: str) -> str:
    """The UI's base URL for a server's API URL, after checking that the server serves its UI
    and that the UI talks to that same API (the UI reads its API address from /ui-settings)."""
    ui = api_url.removesuffix("/api")
    settings = read_json(f"{ui}/ui-settings")
    assert isinstance(settings, dict), settings
    problems = []
    if settings.get("v1_base_url") != "/":
        problems.append("serves no UI at / (it was started with PREFECT_UI_ENABLED=false)")
    if settings.get("api_url") != api_url:
        problems.append(
            f"would point its UI at {settings.get('api_url')} (start it with "
            f"PREFECT_UI_API_URL={api_url})"
        )
    if problems:
        pytest.fail(f"the Prefect server at {ui} " + " and ".join(problems))
    return ui


def flow_run_name(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).name


def test_prefect_ui_shows_the_run_an_upload_started(chromium, api, collection, capsys):
    from tests.integration.test_api import make_key
    from tests.support.service import wait_until

    key = make_key("browser")
    text = f"# Lighthouses\n\nA Fresnel lens bends light. {collection}\n"
    resp = api.post(
        f"/v1/collections/{collection}/documents",
        headers=key,
        files={"file": ("lighthouse.md", text.encode(), "text/markdown")},
    )
    assert resp.status_code == 202, resp.text
    job_url = resp.json()["status_url"]

    def completed():
        job = api.get(job_url, headers=key).json()
        return job if job["state"] == "completed" else None

    job = wait_until(completed, timeout=120, what="the upload's job to complete")
    name = flow_run_name(job["flow_run_id"])
    url = job["flow_run_url"]
    assert url.startswith(prefect_ui_url(os.environ["PREFECT_API_URL"]))
    dom = render_until(url, lambda d: name in visible_text(d), what=f"the run name {name!r}")
    assert "Completed" in visible_text(dom)
    report(capsys, screenshot(url, artifacts_dir() / "prefect-ui-flow-run.png"))


@pytest.fixture
def api_server(database_url, tmp_path) -> Iterator[str]:
    """``uvicorn api.app:app`` on a free port against the test database; yields its URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url}
    log_path = tmp_path / "uvicorn.log"
    uvicorn = str(Path(sys.executable).with_name("uvicorn"))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [uvicorn, "api.app:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{base}/healthz", proc, log_path)
            yield base
        finally:
            stop_process(proc)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"uvicorn exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"uvicorn not healthy at {url} after {timeout:.0f} s: {log.read_text()[-2000:]}")


def test_api_docs_render_swagger_ui(chromium, api_server, capsys):
    url = f"{api_server}/docs"
    shot = screenshot(url, artifacts_dir() / "api-docs.png")
    report(capsys, shot)
    dom = dump_dom(url)
    # Swagger UI builds .information-container and the title from /openapi.json; the static
    # page FastAPI serves has neither, only the <title> in its head. Its assets come from the
    # app itself (fastapi-offline), so this renders without internet.
    rendered = "information-container" in dom and "ingestflow" in visible_text(dom)
    assert rendered, f"/docs did not render Swagger UI; it showed: {visible_text(dom)[:1000]!r}"
    assert "Upload Document" in visible_text(dom)  # the upload route's operation
