"""Headless Chromium (Debian's ``chromium`` package) for tests that look at a page as a person
would: the DOM after JavaScript ran, and a PNG screenshot.

Each call starts one ``chromium --headless`` (the new headless mode) with a throwaway profile
and ``--virtual-time-budget``. Under a virtual-time budget Chromium pauses its clock while any
network fetch is pending, and fires timers without waiting for the wall clock, so a single-page
app's bundle and API calls finish before the DOM is dumped however slow the machine is; only
the bounded ``timeout`` is wall-clock time. ``render_until`` loads the page again until the
text a test expects is there, for data that may reach the server just after the first load.

This was enough for the Prefect UI (a Vue app) and FastAPI's Swagger UI: the DevTools
protocol was not needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
WINDOW_SIZE = (1400, 1000)
# Virtual milliseconds: long enough for an SPA's first render and its polling to settle.
VIRTUAL_TIME_BUDGET_MS = 10_000


class BrowserError(RuntimeError):
    """Chromium failed, timed out, or the page never showed what was expected."""


def chromium_path() -> str | None:
    """The Chromium binary (``$CHROMIUM``, else Debian's /usr/bin/chromium), or None."""
    path = os.environ.get("CHROMIUM", CHROMIUM)
    return path if os.access(path, os.X_OK) else None


def _run(url: str, extra: list[str], *, budget_ms: int, timeout: float) -> str:
    binary = chromium_path()
    if binary is None:
        raise BrowserError(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="ingestflow-chromium-")
    args = [
        binary,
        "--headless",  # the new headless mode, the default for --headless since Chrome 112
        "--no-sandbox",  # Chromium refuses to start as root (as in containers) with its sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--mute-audio",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
        f"--virtual-time-budget={budget_ms}",
        *extra,
        url,
    ]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrowserError(f"chromium did not finish {url} within {timeout:.0f} s") from exc
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode} on {url}: {proc.stderr[-2000:]}")
    return proc.stdout


def dump_dom(url: str, *, budget_ms: int = VIRTUAL_TIME_BUDGET_MS, timeout: float = 90) -> str:
    """The page's serialized DOM after its scripts ran for ``budget_ms`` of virtual time."""
    return _run(url, ["--dump-dom"], budget_ms=budget_ms, timeout=timeout)


def screenshot(
    url: str, path: Path, *, budget_ms: int = VIRTUAL_TIME_BUDGET_MS, timeout: float = 90
) -> Path:
    """Save a PNG of the page (1400x1000) after ``budget_ms`` of virtual time; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _run(url, [f"--screenshot={path}"], budget_ms=budget_ms, timeout=timeout)
    if not path.is_file() or path.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot of {url} to {path}")
    return path


def render_until(
    url: str, predicate: Callable[[str], bool], *, timeout: float = 120, what: str = "content"
) -> str:
    """Dump ``url`` again until ``predicate(dom)`` holds; returns that DOM. Raises
    BrowserError with the page's visible text when ``timeout`` seconds pass without it."""
    deadline = time.monotonic() + timeout
    while True:
        dom = dump_dom(url, timeout=max(deadline - time.monotonic(), 30))
        if predicate(dom):
            return dom
        if time.monotonic() >= deadline:
            raise BrowserError(
                f"{url} never showed {what} within {timeout:.0f} s; "
                f"the page said: {visible_text(dom)[:1500]!r}"
            )
        time.sleep(1)


class _TextExtractor(HTMLParser):
    """Collects the text a person would see: the body, less scripts, styles and templates."""

    _HIDDEN = frozenset({"head", "script", "style", "noscript", "template", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden_depth:
            self._hidden_depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth and data.strip():
            self.parts.append(data.strip())


def visible_text(dom: str) -> str:
    """The rendered page's text, whitespace-collapsed, without <head>, scripts or styles."""
    parser = _TextExtractor()
    parser.feed(dom)
    parser.close()
    return " ".join(" ".join(parser.parts).split())


def artifacts_dir() -> Path:
    """Where tests save screenshots: ``$INGESTFLOW_TEST_ARTIFACTS``, else ``test-artifacts/``
    at the repository root (git-ignored)."""
    configured = os.environ.get("INGESTFLOW_TEST_ARTIFACTS")
    repo = Path(__file__).resolve().parents[2]
    root = Path(configured) if configured else repo / "test-artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root
