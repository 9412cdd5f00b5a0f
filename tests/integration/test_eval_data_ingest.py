"""Every file of the shared eval corpus through the real ingest flow, with expected outcomes.

The corpus (../shared/eval-data: 43 PDFs, 44 office/web/text documents) is full of traps:
encrypted PDFs, image-only scans, broken xrefs, odd encodings, invalid JSON. Each file must
end either ``indexed`` or ``failed`` with a specific reason, exactly as listed below.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ingestflow.types import DocumentOutcome, DocumentStatus
from tests.support.db import chunk_rows, consistency_problems, document_rows

INDEXED, UNCHANGED, FAILED = DocumentStatus.INDEXED, DocumentStatus.UNCHANGED, DocumentStatus.FAILED

# Files expected to fail, by name (relative to eval-data), with a substring of the reason.
# Every other file must be indexed with at least one chunk.
EXPECTED_FAILURES = {
    "pdfs/docling-ocr_test.pdf": "no text layer",
    "pdfs/sf-imagemagick-CCITTFaxDecode.pdf": "no text layer",
    "pdfs/pdfjs-empty_protected.pdf": "no text layer",
}


def eval_files(root: Path) -> list[Path]:
    pdfs = sorted((root / "pdfs").glob("*.pdf"))
    docs = sorted(p for p in (root / "docs").rglob("*") if p.is_file() and p.name != "MANIFEST.tsv")
    return pdfs + docs


def pdf_passwords(root: Path) -> dict[str, str]:
    """File name -> user password, from the ``password`` column of pdfs/MANIFEST.tsv."""
    with (root / "pdfs" / "MANIFEST.tsv").open(encoding="utf-8", newline="") as fh:
        rows = csv.DictReader(fh, delimiter="\t")
        return {r["filename"]: r["password"] for r in rows if r.get("password")}


def outcome_table(root: Path, outcomes: list[DocumentOutcome]) -> dict[str, tuple[str, str]]:
    """Relative name -> (status, error) for a list of outcomes."""
    by_uri = {o.source_uri: o for o in outcomes}
    table = {}
    for path in eval_files(root):
        o = by_uri.get(path.resolve().as_uri())
        key = str(path.relative_to(root))
        table[key] = ("missing", "") if o is None else (o.status.value, o.error or "")
    return table


def ingest_corpus(root: Path, collection: str) -> list[DocumentOutcome]:
    """One flow run for the files without a password, one per encrypted file (each needs its
    own metadata)."""
    from ingestflow import ingest

    passwords = pdf_passwords(root)
    files = eval_files(root)
    plain = [str(p) for p in files if p.name not in passwords]
    outcomes = list(ingest(plain, collection=collection, batch_size=16).outcomes)
    for path in files:
        if path.name in passwords:
            meta = {"password": passwords[path.name], "corpus": "eval"}
            outcomes += ingest(path, collection=collection, metadata=meta).outcomes
    return outcomes


def test_every_eval_file_is_indexed_or_fails_with_its_expected_reason(
    pipeline, collection, eval_data
):
    files = eval_files(eval_data)
    passwords = pdf_passwords(eval_data)
    assert len(files) >= 85 and len(passwords) >= 5  # the whole corpus is here

    outcomes = ingest_corpus(eval_data, collection)

    table = outcome_table(eval_data, outcomes)
    print("\n".join(f"{s:9} {n}  {e}" for n, (s, e) in sorted(table.items())))
    assert len(outcomes) == len(files)
    wrong = {}
    for name, (status, error) in table.items():
        expected = EXPECTED_FAILURES.get(name)
        ok = (
            status == "failed" and expected in error
            if expected
            else status == "indexed" and not error
        )
        if not ok:
            wrong[name] = (status, error, f"expected {expected or 'indexed'!r}")
    assert not wrong, json.dumps(wrong, indent=1)
    for o in outcomes:
        assert (o.chunk_count > 0) == (o.status is INDEXED), o

    # The database agrees with the outcomes, row by row.
    rows = document_rows(collection)
    assert set(rows) == {p.resolve().as_uri() for p in files}
    for o in outcomes:
        row = rows[o.source_uri]
        assert (row["status"], row["error"]) == (o.status.value, o.error), o.source_uri
        assert row["chunk_count"] == o.chunk_count, o.source_uri
    assert consistency_problems(collection) == []
    per_doc: dict[str, int] = {}
    for c in chunk_rows(collection):
        per_doc[c["source_uri"]] = per_doc.get(c["source_uri"], 0) + 1
    assert per_doc == {o.source_uri: o.chunk_count for o in outcomes if o.status is INDEXED}

    # No password is stored anywhere in the documents' metadata, errors or chunks.
    stored = json.dumps([(r["metadata"], r["error"]) for r in rows.values()], default=str)
    for name, password in passwords.items():
        row = rows[(eval_data / "pdfs" / name).resolve().as_uri()]
        assert row["metadata"] == {"corpus": "eval"}, name
        assert password not in stored, name

    # A second run of the same bytes: indexed documents are unchanged and nothing is embedded;
    # documents that failed are tried again and fail the same way.
    before = pipeline.stats()
    chunks_before = chunk_rows(collection)

    again = ingest_corpus(eval_data, collection)

    after = pipeline.stats()
    assert (after.requests, after.texts_embedded) == (before.requests, before.texts_embedded)
    second = outcome_table(eval_data, again)
    expected_second = {
        n: (("failed", e) if s == "failed" else ("unchanged", "")) for n, (s, e) in table.items()
    }
    assert second == expected_second
    assert all(o.embedded_chunks == 0 for o in again)
    assert chunk_rows(collection) == chunks_before
    assert consistency_problems(collection) == []


@pytest.fixture
def encrypted_pdf(eval_data: Path) -> tuple[Path, str]:
    name, password = next(iter(sorted(pdf_passwords(eval_data).items())))
    return eval_data / "pdfs" / name, password


def test_encrypted_pdf_without_password_fails_naming_the_password(
    pipeline, collection, encrypted_pdf
):
    from ingestflow import ingest

    path, password = encrypted_pdf

    result = ingest(path, collection=collection)

    outcome = result.outcomes[0]
    assert outcome.status is FAILED
    assert "password" in (outcome.error or "").lower(), outcome.error
    row = document_rows(collection)[path.resolve().as_uri()]
    assert (row["status"], row["error"]) == ("failed", outcome.error)
    assert password not in json.dumps([row["metadata"], row["error"]], default=str)
    assert consistency_problems(collection) == []


def test_encrypted_pdf_with_wrong_password_fails_without_leaking_it(
    pipeline, collection, encrypted_pdf
):
    from ingestflow import ingest

    path, _ = encrypted_pdf
    wrong = "not-the-password-7f3a"

    result = ingest(path, collection=collection, metadata={"password": wrong, "team": "qa"})

    outcome = result.outcomes[0]
    assert outcome.status is FAILED
    assert "password" in (outcome.error or "").lower(), outcome.error
    assert wrong not in (outcome.error or "")
    row = document_rows(collection)[path.resolve().as_uri()]
    assert row["metadata"] == {"team": "qa"}
    assert wrong not in json.dumps([row["metadata"], row["error"]], default=str)
