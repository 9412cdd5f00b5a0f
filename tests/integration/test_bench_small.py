"""The bench harness end to end on a tiny corpus: ingestflow alone, the hash embedder.

``python -m bench run`` runs as a subprocess on the session's database and Prefect server,
and its JSON result must show the properties the bench exists to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

DOCS = 40


@pytest.fixture(scope="module")
def bench_result(database_url, prefect_server, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench-results")
    command = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--docs",
        str(DOCS),
        "--embedder",
        "hash",
        "--systems",
        "ingestflow",
        "--no-micro",
        "--no-mixed",
        "--out",
        str(out),
        "--prefect-api-url",
        prefect_server,
    ]
    env = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "latest.json").read_text())
    result["_stdout"] = done.stdout
    return result


def test_phases_embed_only_what_changed(bench_result) -> None:
    run = bench_result["runs"]["hash"]["ingestflow"]
    assert run["error"] is None
    phases = run["phases"]
    changed = len(bench_result["corpus"]["changed"])
    deleted = len(bench_result["corpus"]["deleted"])

    assert phases["first"]["docs"] == DOCS
    assert phases["first"]["report"]["added"] == DOCS
    assert phases["first"]["embedded_chunks"] >= DOCS  # every document has a chunk
    assert phases["unchanged"]["embedded_chunks"] == 0
    assert phases["unchanged"]["report"]["unchanged"] == DOCS
    assert phases["change"]["report"]["updated"] == changed
    assert 0 < phases["change"]["embedded_chunks"] < phases["first"]["embedded_chunks"]
    assert phases["delete"]["report"]["deleted"] == deleted
    assert phases["delete"]["embedded_chunks"] == 0

    accounting = run["change"]
    # Only texts the change made new are embedded; the edit keeps some chunks as they were.
    assert phases["change"]["embedded_chunks"] <= accounting["new_chunk_texts"]
    assert accounting["kept_chunk_texts"] > 0


def test_final_state_is_exact(bench_result) -> None:
    final = bench_result["runs"]["hash"]["ingestflow"]["final"]
    first = bench_result["runs"]["hash"]["ingestflow"]["phases"]["first"]

    assert final["chunks"] > 0
    assert final["duplicates"] == 0
    assert final["stale"] == 0
    assert final["files_without_chunks"] == 0
    assert final["sources"] == DOCS - len(bench_result["corpus"]["deleted"])
    assert final["chunks_of_retired_documents"] == 0
    assert first["stage_documents"] == DOCS
    assert first["stage_seconds"]["embed"] > 0


def test_outputs_are_written(bench_result) -> None:
    rows = {r["measure"]: r for r in bench_result["ratios"]["hash"]}
    change = next(r for m, r in rows.items() if m.startswith("after 5% change"))
    final = next(r for m, r in rows.items() if m.startswith("final state"))

    assert change["met"] is True
    assert final["met"] is True
    assert bench_result["machine"]["cores"] == os.cpu_count()
    assert [Path(p).suffix for p in bench_result["plots"]] == [".png", ".png"]
    assert all(Path(p).stat().st_size > 0 for p in bench_result["plots"])
    assert "ratios (hash):" in bench_result["_stdout"]
