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

from ingestflow.core.types import DocumentOutcome, DocumentStatus
from tests.support.db import chunk_rows, consistency_problems, document_rows

# Every file of the evaluation set through the whole pipeline.
pytestmark = pytest.mark.slow

INDEXED, UNCHANGED, FAILED = DocumentStatus.INDEXED, DocumentStatus.UNCHANGED, DocumentStatus.FAILED

INDEXED_OK = None  # indexed, with at least one chunk
NO_TEXT = "PDF has no text layer"  # image-only pages, OCR not enabled

# The expected outcome of every file in the corpus (path relative to eval-data): indexed, or
# failed with a reason containing the given text. Encrypted PDFs are ingested with the
# password from pdfs/MANIFEST.tsv; pdfjs-empty_protected.pdf has an empty user password.
EXPECTED: dict[str, str | None] = {
    "pdfs/docling-2206.01062_pg3-password.pdf": INDEXED_OK,
    "pdfs/docling-2305.03393v1-pg9.pdf": INDEXED_OK,
    "pdfs/docling-code_and_formula.pdf": INDEXED_OK,
    "pdfs/docling-multi_page.pdf": INDEXED_OK,
    "pdfs/docling-ocr_test.pdf": NO_TEXT,
    "pdfs/docling-redp5110_sampled.pdf": INDEXED_OK,
    "pdfs/docling-right_to_left_01.pdf": INDEXED_OK,
    "pdfs/pdfjs-TAMReview.pdf": INDEXED_OK,
    "pdfs/pdfjs-empty_protected.pdf": NO_TEXT,
    "pdfs/pdfjs-noembed-eucjp.pdf": INDEXED_OK,
    "pdfs/pdfjs-scan-bad.pdf": INDEXED_OK,
    "pdfs/pdfjs-tracemonkey.pdf": INDEXED_OK,
    "pdfs/pdfjs-vertical.pdf": INDEXED_OK,
    "pdfs/pdfjs-xfa_issue14315.pdf": INDEXED_OK,
    "pdfs/pdfjs-xref_command_missing.pdf": INDEXED_OK,
    "pdfs/pdfminer-aes-256-r6.pdf": INDEXED_OK,
    "pdfs/pdfminer-i1040nr.pdf": INDEXED_OK,
    "pdfs/pdfminer-issue-791-non-unicode-cmap.pdf": INDEXED_OK,
    "pdfs/pdfminer-issue_566_test_1.pdf": INDEXED_OK,
    "pdfs/pdfminer-issue_566_test_2.pdf": INDEXED_OK,
    "pdfs/pdfminer-jo.pdf": INDEXED_OK,
    "pdfs/pdfminer-zen_of_python_corrupted.pdf": INDEXED_OK,
    "pdfs/pdfplumber-federal-register-2020-17221.pdf": INDEXED_OK,
    "pdfs/pdfplumber-malformed-from-issue-932.pdf": INDEXED_OK,
    "pdfs/pdfplumber-nics-background-checks-2015-11.pdf": INDEXED_OK,
    "pdfs/pdfplumber-password-example.pdf": INDEXED_OK,
    "pdfs/pdfplumber-scotus-transcript-p1.pdf": INDEXED_OK,
    "pdfs/pypdf-SF424_page2.pdf": INDEXED_OK,
    "pdfs/pypdf-Seige_of_Vicksburg_Sample_OCR.pdf": INDEXED_OK,
    "pdfs/pypdf-crazyones.pdf": INDEXED_OK,
    "pdfs/pypdf-r6-user-password.pdf": INDEXED_OK,
    "pdfs/sf-GeoTopo-komprimiert.pdf": INDEXED_OK,
    "pdfs/sf-crazyones-pdfa.pdf": INDEXED_OK,
    "pdfs/sf-google-doc-document.pdf": INDEXED_OK,
    "pdfs/sf-habibi-arabic.pdf": INDEXED_OK,
    "pdfs/sf-imagemagick-CCITTFaxDecode.pdf": NO_TEXT,
    "pdfs/sf-libreoffice-writer-password.pdf": INDEXED_OK,
    "pdfs/sf-minimal-document.pdf": INDEXED_OK,
    "pdfs/sf-multicolumn.pdf": INDEXED_OK,
    "pdfs/sf-pdflatex-4-pages.pdf": INDEXED_OK,
    "pdfs/sf-pdflatex-forms.pdf": INDEXED_OK,
    "pdfs/sf-pdflatex-outline.pdf": INDEXED_OK,
    "pdfs/sf-unreadable-metadata.pdf": INDEXED_OK,
    "docs/csv/docling-csv-comma-in-cell.csv": INDEXED_OK,
    "docs/csv/docling-csv-inconsistent-header.csv": INDEXED_OK,
    "docs/csv/docling-csv-semicolon.csv": INDEXED_OK,
    "docs/csv/docling-csv-tab.csv": INDEXED_OK,
    "docs/csv/seaborn-penguins.csv": INDEXED_OK,
    "docs/csv/seaborn-taxis.csv": INDEXED_OK,
    "docs/docx/docling-lorem_ipsum.docx": INDEXED_OK,
    "docs/docx/docling-textbox.docx": INDEXED_OK,
    "docs/docx/docling-unit_test_headers_numbered.docx": INDEXED_OK,
    "docs/docx/docling-word_sample.docx": INDEXED_OK,
    "docs/docx/docling-word_tables.docx": INDEXED_OK,
    "docs/docx/python-docx-hdr-header-footer.docx": INDEXED_OK,
    "docs/html/chardet-SHIFT_JIS-no-encoding.html": INDEXED_OK,
    "docs/html/docling-example_03.html": INDEXED_OK,
    "docs/html/docling-html_code_snippets.html": INDEXED_OK,
    "docs/html/docling-kvp_data_example.html": INDEXED_OK,
    "docs/html/docling-table_06.html": INDEXED_OK,
    "docs/html/docling-wiki_duck.html": INDEXED_OK,
    "docs/json/jsontestsuite-i_string_UTF-16LE_with_BOM.json": INDEXED_OK,
    "docs/json/jsontestsuite-n_structure_unclosed_array.json": INDEXED_OK,
    "docs/json/jsontestsuite-y_object_duplicated_key.json": INDEXED_OK,
    "docs/json/jsontestsuite-y_string_unicode_2.json": INDEXED_OK,
    "docs/json/mteb-all-MiniLM-L6-v2-SciFact.json": INDEXED_OK,
    "docs/json/pdfjs-test_manifest.json": INDEXED_OK,
    "docs/markdown/docling-ending_with_table.md": INDEXED_OK,
    "docs/markdown/docling-escaped_characters.md": INDEXED_OK,
    "docs/markdown/docling-nested.md": INDEXED_OK,
    "docs/markdown/docling-wiki.md": INDEXED_OK,
    "docs/markdown/pypdf-benchmarks-README.md": INDEXED_OK,
    "docs/pptx/docling-powerpoint_bad_text.pptx": INDEXED_OK,
    "docs/pptx/docling-powerpoint_comments.pptx": INDEXED_OK,
    "docs/pptx/docling-powerpoint_sample.pptx": INDEXED_OK,
    "docs/pptx/docling-powerpoint_with_image.pptx": INDEXED_OK,
    "docs/pptx/docling-pptx_chart.pptx": INDEXED_OK,
    "docs/txt/arxiv-1707.09725.txt": INDEXED_OK,
    "docs/txt/chardet-SHIFT_JIS-ude_1.txt": INDEXED_OK,
    "docs/txt/chardet-UTF-16LE-nobom.txt": INDEXED_OK,
    "docs/txt/chardet-windows-1252-ude_2.txt": INDEXED_OK,
    "docs/txt/uspto-pftaps057006474.txt": INDEXED_OK,
    "docs/xlsx/docling-xlsx_01.xlsx": INDEXED_OK,
    "docs/xlsx/docling-xlsx_02_sample_sales_data.xlsm": INDEXED_OK,
    "docs/xlsx/docling-xlsx_06_edge_cases.xlsx": INDEXED_OK,
    "docs/xlsx/docling-xlsx_07_gap_tolerance.xlsx": INDEXED_OK,
    "docs/xlsx/docling-xlsx_comments.xlsx": INDEXED_OK,
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
    assert {str(p.relative_to(eval_data)) for p in files} == set(EXPECTED)
    assert len(passwords) == 5

    outcomes = ingest_corpus(eval_data, collection)

    table = outcome_table(eval_data, outcomes)
    print("\n".join(f"{s:9} {n}  {e}" for n, (s, e) in sorted(table.items())))
    assert len(outcomes) == len(files)
    wrong = {}
    for name, (status, error) in table.items():
        expected = EXPECTED[name]
        if expected is None:
            ok = status == "indexed" and not error
        else:
            ok = status == "failed" and expected in error
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

    assert_no_password_stored(eval_data, collection, passwords)

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
    assert_no_password_stored(eval_data, collection, passwords)


def assert_no_password_stored(root: Path, collection: str, passwords: dict[str, str]) -> None:
    """documents.metadata keeps the other keys but never the password; no error quotes it."""
    rows = document_rows(collection)
    stored = json.dumps([(r["metadata"], r["error"]) for r in rows.values()], default=str)
    for name, password in passwords.items():
        assert rows[(root / "pdfs" / name).resolve().as_uri()]["metadata"] == {"corpus": "eval"}
        assert password not in stored, name


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
    assert outcome.status is FAILED and outcome.error_code == "password_required"
    row = document_rows(collection)[path.resolve().as_uri()]
    assert (row["status"], row["error"]) == ("failed", "PDF is encrypted and no password was given")
    # Python's own way to give it: the front door says so.
    assert outcome.error == f"{row['error']}; give its password as ingest(..., password=...)"
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


def test_password_is_not_stored_on_the_prefect_server(pipeline, collection, encrypted_pdf):
    from prefect.client.orchestration import get_client

    from ingestflow import ingest

    path, password = encrypted_pdf

    result = ingest(path, collection=collection, metadata={"password": password})

    assert result.outcomes[0].status is INDEXED
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result.flow_run_id)
    assert password not in json.dumps([run.name, run.parameters], default=str)
