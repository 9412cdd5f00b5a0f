"""The ``ingestflow`` command as a user runs it: real MiniLM model, real Postgres, Prefect."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("ingestflow"))


@pytest.fixture(scope="module")
def cli_env(database_url, prefect_server) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "INGESTFLOW_"))}
    env.update(
        DATABASE_URL=database_url,
        PREFECT_API_URL=PREFECT_API_URL.value(),
        INGESTFLOW_EMBED_PROVIDER="local",
        HF_HUB_OFFLINE="1",
    )
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def ingested(cli_env) -> tuple[str, subprocess.CompletedProcess[str]]:
    collection = f"e2e_{uuid.uuid4().hex[:8]}"
    return collection, run(cli_env, "ingest", str(SAMPLES), "--collection", collection)


def test_ingest_samples_indexes_every_file(ingested):
    _, proc = ingested
    assert proc.returncode == 0, proc.stderr
    assert f"{len(list(SAMPLES.iterdir()))} indexed" in proc.stdout


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("how long should a client wait after HTTP 429?", "retries-and-backoff.md"),
        ("my starter smells like nail polish remover", "sourdough.txt"),
        ("which moons can I see with binoculars?", "night-sky.html"),
        ("lights needed to ride a bike at night", "cycling-safety.pdf"),
        ("tidal range at Saint-Malo", "tides.csv"),
    ],
)
def test_search_ranks_the_right_sample_first(cli_env, ingested, query, expected):
    collection, _ = ingested
    proc = run(cli_env, "search", query, "--collection", collection, "-k", "3")
    assert proc.returncode == 0, proc.stderr
    first = next(line for line in proc.stdout.splitlines() if line.startswith("1."))
    assert expected in first, proc.stdout


def test_pdf_hits_carry_their_pages(cli_env, ingested):
    # The two short pages share one chunk, whose provenance spans both.
    collection, _ = ingested
    proc = run(cli_env, "search", "reflective ankle bands", "--collection", collection, "-k", "1")
    assert "cycling-safety.pdf  page=1, page_end=2" in proc.stdout


def test_second_ingest_is_unchanged(cli_env, ingested):
    collection, _ = ingested
    proc = run(cli_env, "ingest", str(SAMPLES), "--collection", collection)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(list(SAMPLES.iterdir()))} unchanged" in proc.stdout


def test_status_counts_documents(cli_env, ingested):
    collection, _ = ingested
    proc = run(cli_env, "status", "--collection", collection)
    assert proc.returncode == 0, proc.stderr
    assert "indexed" in proc.stdout or "unchanged" in proc.stdout


def test_errors_are_one_line_without_traceback(cli_env):
    proc = run(cli_env, "search", "anything", "--collection", "no-such-collection")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: collection 'no-such-collection' does not exist"


def test_ingesting_only_missing_files_fails_with_the_reason(cli_env, tmp_path):
    missing = tmp_path / "nowhere.pdf"
    proc = run(cli_env, "ingest", str(missing), "--collection", f"e2e_{uuid.uuid4().hex[:8]}")
    assert proc.returncode == 1
    assert "1 failed" in proc.stdout and "file not found" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_python_api_matches_the_cli(cli_env, ingested, monkeypatch):
    """The notebook functions and the CLI are the same service: same ranking, same scores."""
    from ingestflow import search
    from tests.conftest import reset_caches

    collection, _ = ingested
    monkeypatch.setenv("INGESTFLOW_EMBED_PROVIDER", "local")
    reset_caches()
    hits = search("which moons can I see with binoculars?", collection=collection, k=1)
    proc = run(
        cli_env, "search", "which moons can I see with binoculars?", "-c", collection, "-k", "1"
    )
    assert hits[0].source_uri.endswith("night-sky.html")
    assert f"{hits[0].score:.3f}" in proc.stdout
