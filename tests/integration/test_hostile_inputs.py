"""Hostile and broken input through the real pipeline: every crafted file of
tests.support.hostile plus every file of ../shared/eval-data in ONE ``ingest_batch`` (real
Postgres, real Prefect server), and a handful of crafted files through the HTTP upload
route and a served deployment.

Each document must end ``indexed`` or ``failed`` with its specific reason and error code,
never an "unexpected ..." internal error; nothing is left ``processing``; the documents and
chunks tables agree; the good documents of the same batch are indexed; the process running
the flow survives with bounded memory (parsing happens in limited worker processes).
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from storage.objectstore import canonical_uri
from tasks.sandbox import close_shared_sandbox
from tests.conftest import reset_caches
from tests.integration.test_eval_data_ingest import EXPECTED as EVAL_EXPECTED
from tests.integration.test_eval_data_ingest import pdf_passwords
from tests.support.db import consistency_problems, document_rows
from tests.support.hostile import CASES, INDEXED, LIMITS, Expected, build_cases, case, failed

# Every hostile file and every evaluation file, through the whole pipeline.
pytestmark = pytest.mark.slow

GIB = 1024**3


def eval_expectations(root: Path) -> dict[Path, Expected]:
    """Every file of eval-data with its outcome in a batch without passwords: the files
    test_eval_data_ingest knows, except that the five with a password now fail with
    ``password_required``; the rest (README, checksums, ground truth, SciFact, tools) is text."""
    passwords = pdf_passwords(root)
    expected: dict[Path, Expected] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if path.name in passwords:
            expected[path] = failed("password_required", "password")
        elif name in EVAL_EXPECTED and EVAL_EXPECTED[name] is not None:
            expected[path] = failed("empty_document", str(EVAL_EXPECTED[name]))
        else:
            expected[path] = INDEXED
    return expected


def twin_files(paths: Iterable[Path]) -> dict[Path, tuple[Path, ...]]:
    """Files whose bytes another of ``paths`` also has -> their group. A twin may end
    ``unchanged``: dedupe copies the chunks of the one indexed first (eval-data has two
    such pairs: a ground-truth file equal to its source, a SciFact score file copied)."""
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    return {p: tuple(g) for g in groups.values() if len(g) > 1 for p in g}


@contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Samples this process's resident memory every 50 ms; yields {"before", "peak"}."""
    me = psutil.Process()
    seen = {"before": me.memory_info().rss, "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen["peak"] = max(seen["peak"], me.memory_info().rss)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()


def outcome_of(row: dict) -> tuple[str, str | None, str | None]:
    return row["status"], row["error_code"], row["error"]


@pytest.fixture
def test_limits(monkeypatch):
    for name, value in LIMITS.items():
        monkeypatch.setenv(name, value)
    yield
    close_shared_sandbox()  # the next user starts workers with its own limits


def test_hostile_set_and_all_eval_data_in_one_batch(
    pipeline, collection, eval_data, tmp_path, test_limits
):
    from flows.ingest import ingest_batch

    hostile = build_cases(tmp_path / "hostile")
    canary = tmp_path / "canary.txt"
    canary.write_text(f"A good document next to hostile ones, about otters. {collection}")
    expected: dict[Path, Expected] = {path: case(name).expected for name, path in hostile.items()}
    expected.update(eval_expectations(eval_data))
    expected[canary] = INDEXED
    assert len(hostile) == len(CASES) >= 30

    with peak_rss() as rss:
        result = ingest_batch([str(p) for p in expected], collection=collection, batch_size=16)

    rows = document_rows(collection)
    got = {path: outcome_of(rows[canonical_uri(str(path))]) for path in expected}
    print("\n".join(f"{s:9} {c or '':20} {p.name!r}: {e or ''}" for p, (s, c, e) in got.items()))
    twins = twin_files(p for p, want in expected.items() if want == INDEXED)
    wrong = {
        p.name: (got[p], want)
        for p, want in expected.items()
        if not (want.matches(*got[p]) or (p in twins and got[p][0] == "unchanged"))
    }
    assert wrong == {}
    # Of identical files, at least one was parsed and indexed; the others may copy its chunks.
    for group in set(twins.values()):
        assert "indexed" in {got[p][0] for p in group}
    assert len(rows) == len(expected) == len(result.outcomes)
    assert not [r for r in rows.values() if r["error_code"] == "internal_error"]
    assert not [r for r in rows.values() if (r["error"] or "").startswith("unexpected")]
    assert all(r["chunk_count"] > 0 for r in rows.values() if r["status"] != "failed")
    assert consistency_problems(collection) == []
    growth = rss["peak"] - rss["before"]
    print(f"RSS before {rss['before'] / 2**20:.0f} MiB, peak growth {growth / 2**20:.0f} MiB")
    assert growth < 1.5 * GIB


# Crafted files for the HTTP route: each resolves quickly under the default limits (the
# served deployment runs with them), and they cover bombs, broken PDFs, wrong types.
API_CASES = [
    "zip-bomb.docx",
    "billion-laughs.docx",
    "xml-memory-bomb.docx",
    "page-tree-self.pdf",
    "truncated-tiny.pdf",
    "encrypted.pdf",
    "png-named.pdf",
    "empty.pdf",
    "deep-arrays.json",
    "huge-field.csv",
]


def test_hostile_uploads_through_the_api(api, served, collection, tmp_path, monkeypatch):
    from tests.integration.test_api import make_key
    from tests.integration.test_api_service import _finished_job

    key = make_key(f"tenant-{uuid.uuid4().hex[:8]}")
    built = build_cases(tmp_path, [*API_CASES, "huge-single-line.txt", "truncated-header.pdf"])
    monkeypatch.setenv("INGESTFLOW_API_MAX_UPLOAD_BYTES", str(30 * 1024 * 1024))
    reset_caches()
    url = f"/v1/collections/{collection}/documents"

    too_big = built["huge-single-line.txt"]
    with too_big.open("rb") as body:
        resp = api.post(url, headers=key, files={"file": (too_big.name, body, "text/plain")})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"

    files = [
        ("files", (name, built[name].read_bytes(), "application/octet-stream"))
        for name in API_CASES
    ]
    canary = f"The otter canary document. {collection}".encode()
    files.append(("files", ("canary.txt", canary, "text/plain")))
    resp = api.post(f"{url}:bulk", headers=key, files=files)
    assert resp.status_code == 202, resp.text
    assert resp.json()["rejected"] == []
    job = _finished_job(api, key, resp.json()["operation_id"], timeout=300)

    docs = {}
    for doc in resp.json()["documents"]:
        detail = api.get(f"{url}/{doc['document']['id']}", headers=key)
        assert detail.status_code == 200
        docs[detail.json()["metadata"]["filename"]] = detail.json()
    codes = {e["source_uri"].rsplit("/", 1)[-1]: e["code"] for e in job["errors"]}
    for name in API_CASES:
        want = case(name).expected
        status, code = docs[name]["status"], codes.get(name)
        assert want.matches(status, code, docs[name]["error"]), (name, status, code, docs[name])
    assert docs["canary.txt"]["status"] == "indexed"
    assert job["progress"]["documents_failed"] == len(API_CASES)
    assert consistency_problems(collection) == []
    assert served.poll() is None  # the served worker process is still up

    # One through the single-file route, under a name that tries to climb out of the
    # upload folder with control characters in it.
    name = "../../etc/pass\x01wd\x1b[31m.pdf"
    resp = api.post(
        url, headers=key, files={"file": (name, built["truncated-header.pdf"].read_bytes())}
    )
    assert resp.status_code == 202, resp.text
    assert ".." not in resp.json()["document"]["source_uri"]
    job = _finished_job(api, key, resp.json()["job_id"])
    [error] = job["errors"]
    assert case("truncated-header.pdf").expected.matches("failed", error["code"], error["message"])

    # ... and still works: an ordinary upload after the hostile ones is indexed.
    after = api.post(
        url,
        headers=key,
        files={"file": ("after.txt", io.BytesIO(f"After the storm. {collection}".encode()))},
    )
    assert after.status_code == 202
    job = _finished_job(api, key, after.json()["job_id"])
    assert job["progress"]["documents_done"] == 1
