"""Unit tests of tasks.parsers on small inputs generated at runtime, one format at a time."""

from __future__ import annotations

import io
import json
import pickle
import random
import zipfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import docx
import openpyxl
import pytest
from pptx import Presentation
from pptx.util import Inches
from pypdf import PageObject, PasswordType, PdfReader, PdfWriter

from ingestflow.core.errors import (
    EmptyDocumentError,
    EncryptedDocumentError,
    IngestError,
    ParseError,
    PasswordRequiredError,
    UnsupportedTypeError,
)
from ingestflow.core.types import Segment
from tasks.parsers import (
    FunctionParser,
    ParseInput,
    Parser,
    base,
    detect_media_type,
    parse_file,
    pdf,
    register_parser,
    registered_media_types,
    safety,
    unregister_parser,
)
from tasks.parsers.encoding import decode_text

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"


# ---------------------------------------------------------------------------- builders


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[str], *, pages_ref: str = "2 0 R") -> bytes:
    """A minimal valid PDF, one Helvetica text line per input line ('' = page without text)."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        f"<< /Type /Catalog /Pages {pages_ref} >>".encode(),
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        ops = " ".join(f"({_pdf_string(line)}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 14 TL 72 720 Td {ops} ET".encode() if text else b""
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def encrypt_pdf(data: bytes, user: str, owner: str, algorithm: str = "AES-256") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user, owner_password=owner, algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(path: Path) -> Path:
    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "ACME confidential header"
    document.add_heading("Annual Report", level=0)  # the Title style
    document.add_paragraph("Opening words before any section.")
    document.add_heading("Introduction", level=1)
    document.add_paragraph("The introduction talks about ducks.")
    document.add_heading("Details", level=2)
    document.add_paragraph("Details mention geese.")
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            cell.text = f"r{r}c{c}"
    table.cell(0, 0).merge(table.cell(0, 1)).text = "merged header"
    document.add_heading("Summary", level=1)
    document.add_paragraph("Summary of swans.")
    document.save(path)
    return path


def make_xlsx(path: Path, rows: int = 300) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sales"
    sheet.append(["Product", "Date", "Price"])
    for i in range(rows):
        sheet.append([f"widget-{i}", date(2024, 1, 1 + i % 28), 0.1 + 0.2 + i])
    second = workbook.create_sheet("Notes")
    second["B2"] = "note in B2"
    second["A5"] = "after a gap"
    workbook.create_sheet("Empty")
    workbook.save(path)
    return path


def make_pptx(path: Path) -> Path:
    presentation = Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = "Quarterly Ducks"
    slide.placeholders[1].text_frame.text = "Ducks went up"
    slide.notes_slide.notes_text_frame.text = "Speaker says: mention the geese."
    slide = presentation.slides.add_slide(presentation.slide_layouts[5])
    slide.shapes.title.text = "Numbers"
    table = slide.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for r in range(2):
        for c in range(2):
            table.cell(r, c).text = f"t{r}{c}"
    box = slide.shapes.add_textbox(Inches(1), Inches(4), Inches(2), Inches(1))
    box.text_frame.text = "free text box"
    presentation.slides.add_slide(presentation.slide_layouts[6])  # blank: no segment
    presentation.save(path)
    return path


def write(tmp_path: Path, name: str, data: bytes | str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def all_text(document) -> str:
    return "\n".join(segment.text for segment in document.segments)


def assert_clean_reason(error: IngestError, *secrets: str) -> None:
    assert len(error.reason) >= 15, error.reason
    assert "Traceback" not in error.reason
    for secret in secrets:
        assert secret not in error.reason
        assert secret not in str(error)


# ---------------------------------------------------------------------------------- PDF


def test_pdf_pages_have_page_provenance(tmp_path):
    path = write(tmp_path, "a.pdf", make_pdf(["Hello world\nsecond line", "", "Page (three)"]))
    document = parse_file(path)
    assert document.media_type == "application/pdf"
    assert [s.provenance for s in document.segments] == [{"page": 1}, {"page": 3}]
    assert document.segments[0].text == "Hello world\nsecond line"
    assert document.segments[1].text == "Page (three)"


def test_pdf_without_text_is_empty_with_ocr_reason(tmp_path):
    path = write(tmp_path, "scan.pdf", make_pdf(["", ""]))
    with pytest.raises(EmptyDocumentError, match="no text layer.*OCR"):
        parse_file(path)


def test_encrypted_pdf_needs_the_password(tmp_path):
    path = write(tmp_path, "e.pdf", encrypt_pdf(make_pdf(["top secret text"]), "s3cr3t-pw", "own"))
    with pytest.raises(PasswordRequiredError, match="PDF is encrypted and no password was given"):
        parse_file(path)
    with pytest.raises(EncryptedDocumentError, match="wrong") as wrong:
        parse_file(path, password="guessed-pw")
    assert_clean_reason(wrong.value, "guessed-pw", "s3cr3t-pw")
    assert all_text(parse_file(path, password="s3cr3t-pw")) == "top secret text"
    assert all_text(parse_file(path, password="own")) == "top secret text"  # owner opens too


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128", "AES-256"])
def test_empty_user_password_opens_without_being_asked(tmp_path, algorithm):
    data = encrypt_pdf(make_pdf(["opens freely"]), "", "owner-only", algorithm)
    path = write(tmp_path, "e.pdf", data)
    assert all_text(parse_file(path)) == "opens freely"
    # A wrong password must not stop the empty one from being tried.
    assert all_text(parse_file(path, password="something-else")) == "opens freely"


def test_parse_input_repr_hides_password(tmp_path):
    assert "hunter2" not in repr(ParseInput(tmp_path, "application/pdf", "x.pdf", "hunter2"))


def test_damaged_pdf_is_a_parse_error_with_a_reason(tmp_path):
    path = write(tmp_path, "bad.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog")
    with pytest.raises(ParseError, match="^PDF is damaged") as caught:
        parse_file(path)
    assert type(caught.value) is ParseError
    assert_clean_reason(caught.value)
    assert caught.value.__cause__ is not None  # the library error stays chained for logs


def test_broken_page_tree_is_recovered_by_object_scan(tmp_path):
    data = make_pdf(["first page", "second page"], pages_ref="77 0 R")  # dangling /Pages
    document = parse_file(write(tmp_path, "tree.pdf", data))
    assert [s.text for s in document.segments] == ["first page", "second page"]
    assert document.segments[0].provenance == {"page": 1, "recovered": True}


def test_pdf_page_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf, "MAX_PDF_PAGES", 2)
    document = parse_file(write(tmp_path, "long.pdf", make_pdf(["one", "two", "three"])))
    assert [s.provenance["page"] for s in document.segments] == [1, 2]


def test_pdf_text_is_cleaned_of_nul_and_replacement_chars(tmp_path, monkeypatch):
    path = write(tmp_path, "n.pdf", make_pdf(["abc"]))
    monkeypatch.setattr(PageObject, "extract_text", lambda self: " a\x00b\ufffdc ")
    assert all_text(parse_file(path)) == "abc"


def test_a_broken_page_does_not_lose_the_others(tmp_path, monkeypatch):
    path = write(tmp_path, "p.pdf", make_pdf(["bad page", "good page"]))
    real = PageObject.extract_text

    def extract_text(self, *args, **kwargs):
        text = real(self, *args, **kwargs)
        if "bad" in text:
            raise ValueError("unsupported filter")
        return text

    monkeypatch.setattr(PageObject, "extract_text", extract_text)
    assert parse_file(path).segments == [Segment("good page", {"page": 2})]


def test_every_page_failing_is_a_parse_error(tmp_path, monkeypatch):
    path = write(tmp_path, "p.pdf", make_pdf(["bad", "bad too"]))

    def extract_text(self, *args, **kwargs):
        raise ValueError("unsupported filter /Foo")

    monkeypatch.setattr(PageObject, "extract_text", extract_text)
    with pytest.raises(ParseError, match=r"text extraction failed \(unsupported filter /Foo\)"):
        parse_file(path)


# --------------------------------------------------------------------------------- DOCX


def test_docx_sections_tables_and_header(tmp_path):
    document = parse_file(make_docx(tmp_path / "r.docx"))
    assert document.media_type == DOCX
    by_heading = {s.provenance.get("heading", ""): s.text for s in document.segments}
    assert by_heading["Annual Report"] == "Annual Report\nOpening words before any section."
    assert "ducks" in by_heading["Annual Report > Introduction"]
    details = by_heading["Annual Report > Introduction > Details"]
    assert details.startswith("Details\nDetails mention geese.")
    # The merged cell appears once, not once per spanned column.
    assert "merged header | r0c2\nr1c0 | r1c1 | r1c2" in details
    assert by_heading["Annual Report > Summary"] == "Summary\nSummary of swans."
    assert document.segments[-1] == Segment("ACME confidential header", {"part": "header"})


def test_docx_named_pdf_is_parsed_as_docx(tmp_path):
    path = make_docx(tmp_path / "report.pdf")
    document = parse_file(path, filename="report.pdf")
    assert document.media_type == DOCX
    assert "swans" in all_text(document)


def test_truncated_docx_is_a_parse_error(tmp_path):
    data = make_docx(tmp_path / "r.docx").read_bytes()
    path = write(tmp_path, "cut.docx", data[: len(data) // 2])
    with pytest.raises(ParseError, match="damaged") as caught:
        parse_file(path)
    assert_clean_reason(caught.value)


def test_docx_with_broken_xml_names_the_type(tmp_path):
    source = make_docx(tmp_path / "r.docx")
    path = tmp_path / "broken.docx"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(
                item, b"<w:document><unclosed" if item.filename == "word/document.xml" else data
            )
    with pytest.raises(ParseError, match="^DOCX is damaged or unreadable: ") as caught:
        parse_file(path)
    assert_clean_reason(caught.value)


# --------------------------------------------------------------------------------- XLSX


def test_xlsx_rows_are_grouped_with_sheet_and_row_provenance(tmp_path):
    document = parse_file(make_xlsx(tmp_path / "s.xlsx"))
    assert document.media_type == XLSX
    sales = [s for s in document.segments if s.provenance["sheet"] == "Sales"]
    assert 1 < len(sales) < 60  # grouped: neither one segment per row nor one giant segment
    ranges = [tuple(map(int, s.provenance["rows"].split("-"))) for s in sales]
    assert ranges[0][0] == 1 and ranges[-1][1] == 301
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    assert sales[0].text.startswith("Product | Date | Price\nwidget-0 | 2024-01-01 | 0.3\n")
    notes = [s for s in document.segments if s.provenance["sheet"] == "Notes"]
    assert notes == [Segment("| note in B2\nafter a gap", {"sheet": "Notes", "rows": "2-5"})]
    assert not any(s.provenance["sheet"] == "Empty" for s in document.segments)


def test_xlsx_named_docx_is_parsed_as_xlsx(tmp_path):
    path = make_xlsx(tmp_path / "wrong.docx", rows=2)
    assert parse_file(path).media_type == XLSX


def test_empty_workbook_is_empty_document(tmp_path):
    path = tmp_path / "e.xlsx"
    openpyxl.Workbook().save(path)
    with pytest.raises(EmptyDocumentError, match="XLSX"):
        parse_file(path)


# --------------------------------------------------------------------------------- PPTX


def test_pptx_slides_tables_and_notes(tmp_path):
    document = parse_file(make_pptx(tmp_path / "d.pptx"))
    assert document.media_type == PPTX
    assert [s.provenance for s in document.segments] == [{"slide": 1}, {"slide": 2}]
    first, second = (s.text for s in document.segments)
    assert first == "Quarterly Ducks\nDucks went up\nNotes:\nSpeaker says: mention the geese."
    assert second.startswith("Numbers\n")  # the title comes first
    assert "t00 | t01\nt10 | t11" in second
    assert "free text box" in second


# --------------------------------------------------------------------------------- HTML


def test_html_declared_charset_headings_and_dropped_scripts(tmp_path):
    page = (
        '<html><head><meta charset="windows-1252"><title>Café page</title>'
        "<style>body{color:red}</style></head><body>"
        "<nav><a href='/'>Home</a> <a href='/x'>Menu item</a></nav>"
        "<p>Intro “quoted” naïve.</p><script>var secret = 1;</script>"
        "<h1>Main</h1><p>Under main.</p><h2>Sub</h2><p>Under sub.</p>"
        "<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>"
        "<pre>  keep\n    layout</pre><!-- a comment --></body></html>"
    ).encode("cp1252")
    document = parse_file(write(tmp_path, "p.html", page))
    assert document.media_type == "text/html"
    text = all_text(document)
    assert "Café page\nIntro “quoted” naïve." in text
    for absent in ("secret", "color:red", "a comment", "Menu item"):
        assert absent not in text
    by_heading = {s.provenance.get("heading", ""): s.text for s in document.segments}
    assert by_heading["Main"] == "Main\nUnder main."
    assert by_heading["Main > Sub"].startswith("Sub\nUnder sub.\nk | v\na | 1\n")
    assert "  keep\n    layout" in by_heading["Main > Sub"]


@pytest.mark.parametrize(
    ("declared", "data"),
    [
        ("iso-8859-15", "Un cœur à 5 €, très cher.".encode("iso-8859-15")),  # ¤ and ½ in 1252
        ("iso-8859-1", "Un cœur à 5 €, très cher.".encode()),  # mislabelled UTF-8
        ("no-such-charset", "Un cœur à 5 €, très cher.".encode()),
        # Too short for detection, which would read them as Western text:
        ("iso-8859-7", "Ζωή".encode("iso-8859-7")),
        ("iso-8859-2", "Dobrý den, světe".encode("iso-8859-2")),
    ],
)
def test_html_declared_charset_versus_content(tmp_path, declared, data):
    page = f'<html><head><meta http-equiv="Content-Type" content="text/html; charset={declared}">'
    path = write(tmp_path, "p.html", page.encode() + b"<body><p>" + data + b"</p></body></html>")
    expected = data.decode("utf-8" if declared in ("iso-8859-1", "no-such-charset") else declared)
    assert all_text(parse_file(path)) == expected


def test_html_without_charset_is_detected(tmp_path):
    words = "日本語のテキストです。文字コードの判定を試します。"
    body = f"<html><body><p>{words * 20}</p></body></html>"
    document = parse_file(write(tmp_path, "p.htm", body, encoding="shift_jis"))
    assert "日本語のテキストです" in all_text(document)


def test_html_content_wins_over_txt_extension(tmp_path):
    path = write(tmp_path, "page.txt", "<!DOCTYPE html><html><body><p>Hi <b>there</b></p></body>")
    document = parse_file(path)
    assert (document.media_type, all_text(document)) == ("text/html", "Hi there")


# ---------------------------------------------------------------------------------- CSV


def test_csv_semicolon_header_aware_rows(tmp_path):
    rows = 'name;city;note\nAda;London;"semi; colon"\n\nBob;Paris;\nCy;Rome;x;extra\n'
    document = parse_file(write(tmp_path, "people.csv", rows))
    assert document.media_type == "text/csv"
    assert document.segments == [
        Segment(
            "name: Ada | city: London | note: semi; colon\n"
            "name: Bob | city: Paris\n"
            "name: Cy | city: Rome | note: x | column 4: extra",
            {"rows": "2-5"},
        )
    ]


def test_tsv_and_many_rows_are_grouped(tmp_path):
    lines = ["id\tword"] + [f"{i}\tword{i}" for i in range(2000)]
    document = parse_file(write(tmp_path, "t.tsv", "\n".join(lines)))
    assert document.media_type == "text/tab-separated-values"
    assert 1 < len(document.segments) < 100
    assert document.segments[0].text.startswith("id: 0 | word: word0\n")
    assert document.segments[0].provenance["rows"].startswith("2-")
    assert document.segments[-1].provenance["rows"].endswith("-2001")


def test_header_only_csv_keeps_the_header(tmp_path):
    document = parse_file(write(tmp_path, "h.csv", "alpha,beta\n"))
    assert document.segments == [Segment("alpha | beta", {"rows": "1-1"})]


# --------------------------------------------------------------------------------- JSON


def test_json_is_flattened_to_paths(tmp_path):
    data = {"a": {"b": 1, "weird key": [True, None, "x"]}, "dup": "first"}
    raw = json.dumps(data)[:-1] + ', "dup": "second"}'  # a duplicated key keeps both values
    document = parse_file(write(tmp_path, "d.json", raw))
    assert document.media_type == "application/json"
    assert all_text(document) == (
        '$.a.b: 1\n$.a["weird key"][0]: true\n$.a["weird key"][1]: null\n'
        '$.a["weird key"][2]: x\n$.dup: first\n$.dup: second'
    )
    assert document.segments[0].provenance == {"path": "$.a.b"}


def test_json_lines(tmp_path):
    document = parse_file(write(tmp_path, "d.jsonl", '{"q": "one"}\n{"q": "two"}\n'))
    assert all_text(document) == "$[0].q: one\n$[1].q: two"


def test_invalid_json_is_indexed_as_text(tmp_path):
    document = parse_file(write(tmp_path, "bad.json", '{"a": 1, // a comment\n "b": 2,}'))
    assert document.media_type == "text/plain"
    assert "a comment" in all_text(document)


def test_deep_json_is_bounded(tmp_path):
    deep = parse_file(write(tmp_path, "deep.json", "[" * 200 + "1" + "]" * 200))
    assert all_text(deep).endswith(": " + "[" * 136 + "1" + "]" * 136)  # past the depth cap
    with pytest.raises(ParseError, match="nested too deeply"):
        parse_file(write(tmp_path, "deeper.json", "[" * 100_000 + "]" * 100_000))


# ------------------------------------------------------------------------ Markdown, TXT


def test_markdown_segments_by_heading(tmp_path):
    text = (
        "---\ntitle: front\n---\nPreamble.\n\n# Top *level*\nIntro.\n\n"
        "```\n# not a heading\n```\n\nSetext child\n------------\nChild text.\n\n"
        "## Second\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    document = parse_file(write(tmp_path, "n.md", text))
    assert document.media_type == "text/markdown"
    assert [s.provenance for s in document.segments] == [
        {},
        {"heading": "Top level"},
        {"heading": "Top level > Setext child"},
        {"heading": "Top level > Second"},
    ]
    assert "title: front" in document.segments[0].text
    assert "# not a heading" in document.segments[1].text
    assert document.segments[3].text == "Second\n| a | b |\n|---|---|\n| 1 | 2 |"


def test_markdown_needs_the_extension_hint(tmp_path):
    assert parse_file(write(tmp_path, "notes.txt", "# Title\nbody")).media_type == "text/plain"


PROSE = (
    "Le café était plein de naïfs « garçons » — l’été, où l’on mangeait des crêpes. "
    "Les élèves préféraient la bibliothèque à la cantine, déjà bondée à midi. "
)


JAPANESE = (
    "羅生門　芥川龍之介\nある日の暮方の事である。一人の下人が、羅生門の下で雨やみを待っていた。\n"
)
LATIN1_PROSE = PROSE.replace("’", "'").replace("—", "-").replace("«", '"').replace("»", '"')


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("utf-8", PROSE * 3),
        ("utf-8-sig", PROSE),
        ("utf-16", PROSE),  # with BOM
        ("utf-16-le", "DateTime,Bid,Ask\n07/19/2015 21:00:15,1.083,1.08332\n" * 20),
        ("utf-16-be", "plain ASCII words in big endian UTF-16, no BOM\n" * 10),
        ("cp1252", PROSE.replace("«", "“").replace("»", "”") * 3),
        ("shift_jis", JAPANESE * 5),
        ("latin-1", LATIN1_PROSE * 3),
    ],
)
def test_text_encodings(tmp_path, encoding, text):
    document = parse_file(write(tmp_path, "t.txt", text, encoding=encoding))
    assert document.media_type == "text/plain"
    assert document.segments == [Segment(text.strip(), {})]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_ascii_utf16_without_bom_is_not_read_as_utf8(codec):
    # NUL is valid UTF-8, so a naive decode "succeeds" with a NUL after every letter.
    data = "DateTime,Bid,Ask\n07/19/2015 21:00:15,1.083\n".encode(codec) * 5
    assert decode_text(data) == "DateTime,Bid,Ask\n07/19/2015 21:00:15,1.083\n" * 5


def test_newlines_are_normalised_and_nul_dropped(tmp_path):
    data = ("line one\r\nline two\rline three " * 200 + "\x00tail").encode()
    text = all_text(parse_file(write(tmp_path, "n.txt", data)))
    assert "\r" not in text and "\x00" not in text
    assert text.startswith("line one\nline two\nline three") and text.endswith("tail")


# ------------------------------------------------------------------ detection, failures


def test_pdf_named_txt_is_a_pdf(tmp_path):
    document = parse_file(write(tmp_path, "x.txt", make_pdf(["real pdf"])), filename="x.txt")
    assert (document.media_type, all_text(document)) == ("application/pdf", "real pdf")


def test_zero_byte_file(tmp_path):
    with pytest.raises(EmptyDocumentError, match="empty"):
        parse_file(write(tmp_path, "empty.pdf", b""))


def test_whitespace_only_text(tmp_path):
    with pytest.raises(EmptyDocumentError, match="text file contains no text"):
        parse_file(write(tmp_path, "blank.txt", " \n\t\n "))


def test_binary_garbage_is_unsupported(tmp_path):
    data = random.Random(7).randbytes(4096)
    with pytest.raises(UnsupportedTypeError, match="looks like binary data") as caught:
        parse_file(write(tmp_path, "garbage.txt", data))
    assert_clean_reason(caught.value)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "PNG image"),
        (b"\x1f\x8b\x08\x00" + bytes(200), "gzip archive"),
        (b"\x7fELF\x02\x01\x01" + bytes(200), "ELF executable"),
    ],
)
def test_known_binaries_are_named(tmp_path, data, name):
    with pytest.raises(UnsupportedTypeError, match=name):
        parse_file(write(tmp_path, "file.pdf", data))


def test_rtf_is_unsupported(tmp_path):
    with pytest.raises(UnsupportedTypeError, match="RTF"):
        parse_file(write(tmp_path, "a.doc", r"{\rtf1\ansi Hello}"))


def test_plain_zip_is_unsupported(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedTypeError, match="ZIP archive that is not a DOCX"):
        parse_file(path)


def _ole2(body: bytes) -> bytes:
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + body


def test_legacy_office_and_encrypted_ooxml(tmp_path):
    with pytest.raises(UnsupportedTypeError, match="legacy Microsoft Office"):
        parse_file(write(tmp_path, "old.doc", _ole2(bytes(2048))))
    encrypted = _ole2(bytes(100) + "EncryptedPackage".encode("utf-16-le") + bytes(100))
    with pytest.raises(EncryptedDocumentError, match="password-protected"):
        parse_file(write(tmp_path, "locked.docx", encrypted))


def _zip_with(path: Path, member: str, size: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr(member, b"\0" * size)
    return path


def test_zip_bomb_ratio_is_rejected_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "ZIP_RATIO_FLOOR_BYTES", 1024 * 1024)
    path = _zip_with(tmp_path / "bomb.docx", "word/document.xml", 4 * 1024 * 1024)
    with pytest.raises(ParseError, match="possible ZIP bomb") as caught:
        parse_file(path)
    assert "compression ratio" in caught.value.reason


def test_zip_total_size_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(safety, "MAX_ZIP_UNCOMPRESSED_BYTES", 1000)
    path = _zip_with(tmp_path / "big.xlsx", "xl/workbook.xml", 2000)
    with pytest.raises(ParseError, match="would expand to"):
        parse_file(path)


def test_errors_pickle_with_their_reason(tmp_path):
    with pytest.raises(EmptyDocumentError) as caught:
        parse_file(write(tmp_path, "e.txt", b""))
    clone = pickle.loads(pickle.dumps(caught.value))
    assert type(clone) is EmptyDocumentError and clone.reason == caught.value.reason


def test_detection_table(tmp_path):
    cases = {
        "a.md": ("# x", "text/markdown"),
        "a.json": ('{"a": 1}', "application/json"),
        "noext": ('[{"a": 1}]', "application/json"),
        "a.txt": ('{"a": 1}', "text/plain"),
        "a.csv": ("a,b\n1,2", "text/csv"),
        "a.log": ("<div>not a page</div>", "text/plain"),
        "frag": ("<div><p>fragment</p></div>", "text/html"),
        "a.html": ("just words", "text/html"),
    }
    for name, (content, expected) in cases.items():
        assert detect_media_type(write(tmp_path, name, content)) == expected, name


# ----------------------------------------------------------------------------- registry


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry for the test, so plugins registered here do not leak."""
    monkeypatch.setattr(base, "_by_type", dict(base._index()))


def test_builtin_media_types_are_registered():
    assert {
        "application/pdf",
        DOCX,
        XLSX,
        PPTX,
        "text/html",
        "text/csv",
        "application/json",
        "text/markdown",
        "text/plain",
    } <= set(registered_media_types())


def test_a_plugin_registers_like_a_builtin(tmp_path, scratch_registry):
    def shout(source: ParseInput) -> Iterator[Segment]:
        yield Segment(source.path.read_text().upper(), {"line": 1})

    plugin = FunctionParser(("text/plain",), "shouty text", shout)
    assert isinstance(plugin, Parser)
    with pytest.raises(ValueError, match="already registered"):
        register_parser(plugin)
    register_parser(plugin, replace=True)
    assert parse_file(write(tmp_path, "a.txt", "hi")).segments == [Segment("HI", {"line": 1})]


def test_plugin_errors_are_wrapped_at_the_boundary(tmp_path, scratch_registry):
    def broken(source: ParseInput) -> Iterator[Segment]:
        raise KeyError("part 'x' missing")

    register_parser(FunctionParser(("text/plain",), "widget", broken), replace=True)
    with pytest.raises(ParseError, match="^widget is damaged or unreadable: part 'x' missing$"):
        parse_file(write(tmp_path, "a.txt", "hi"))


def test_unregistered_type_is_unsupported(tmp_path, scratch_registry):
    unregister_parser("text/markdown")
    with pytest.raises(UnsupportedTypeError, match="text/markdown"):
        parse_file(write(tmp_path, "a.md", "# hi"))


def test_empty_owner_password_does_not_bypass_the_user_password(tmp_path, monkeypatch):
    # qpdf writes such files (eval-data's pypdf-r6-user-password.pdf is one) and pypdf
    # decrypts them with "" as the owner password, but a viewer asks for the user password,
    # and so do we. pypdf cannot write one, so its answer for "" is faked here.
    path = write(tmp_path, "e.pdf", encrypt_pdf(make_pdf(["guarded"]), "userpw", "ownerpw"))
    real_decrypt = PdfReader.decrypt

    def decrypt(self, candidate):
        return PasswordType.OWNER_PASSWORD if candidate == "" else real_decrypt(self, candidate)

    monkeypatch.setattr(PdfReader, "decrypt", decrypt)
    with pytest.raises(PasswordRequiredError, match="no password was given"):
        parse_file(path)
    assert all_text(parse_file(path, password="userpw")) == "guarded"
