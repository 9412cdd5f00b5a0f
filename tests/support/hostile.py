"""Crafted hostile and broken input files, each with the outcome ingestion must reach.

    from tests.support.hostile import CASES, build_cases
    built = build_cases(tmp_path)            # {name: path}, every case written to tmp_path
    for case in CASES: case.expected ...

Everything is generated here, at test time, with no download: ZIP and XML bombs inside
DOCX/XLSX, PDFs with cyclic or lying page trees, truncated and encrypted PDFs, empty files,
wrong extensions, broken encodings, huge lines, deep nesting, absurd widths and counts.
The whole set takes a few seconds to build and about 60 MB of disk.

An expected outcome is ``indexed`` or ``failed`` with the stable error code stored in
``documents.error_code`` and a fragment of the human reason, under the parse limits of
``LIMITS`` (set them in the environment of the process that parses): tighter than the
defaults, so that the CPU hog stops after seconds rather than minutes and the two giants
(30 MiB on one line, a million columns) fail on the text limit instead of costing a minute
of embedding each. Under the default limits those two are indexed.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024

# Parse limits the expectations assume (environment variables of tasks.sandbox).
LIMITS = {
    "INGESTFLOW_PARSE_CPU_SECONDS": "10",  # the slowest honest case takes ~3 s of CPU
    "INGESTFLOW_PARSE_TIMEOUT_SECONDS": "120",  # a busy CI box: CPU time lags wall time
    "INGESTFLOW_PARSE_MEMORY_MB": "1024",
    "INGESTFLOW_PARSE_MAX_CHARS": "10000000",  # eval-data's largest (SciFact) has 8.1 M
}


@dataclass(frozen=True)
class Expected:
    """``indexed``, or ``failed`` with ``code`` and a ``reason`` fragment (case-insensitive)."""

    status: str
    code: str | None = None
    reason: str = ""

    def matches(self, status: str, code: str | None, reason: str | None) -> bool:
        if status != self.status:
            return False
        if self.status != "failed":
            return True
        return code == self.code and self.reason.lower() in (reason or "").lower()


INDEXED = Expected("indexed")


def failed(code: str, reason: str) -> Expected:
    return Expected("failed", code, reason)


@dataclass(frozen=True)
class HostileCase:
    """One crafted file: its name on disk, how to write it, what ingesting it must give."""

    name: str
    build: Callable[[Path], None]
    expected: Expected
    why: str


# ---------------------------------------------------------------------------- PDF helpers


def pdf_bytes(objects: list[bytes], *, root: int = 1, trailer_extra: bytes = b"") -> bytes:
    """A PDF file of numbered ``objects`` (1-based) with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        root,
        trailer_extra,
        xref,
    )
    return bytes(out)


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def _text_ops(text: str) -> bytes:
    return f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()


def text_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one line of text per page."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages))).encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages)),
        _FONT,
    ]
    for i, text in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        objects.append(_stream(_text_ops(text)))
    return pdf_bytes(objects)


def _page(contents: int, resources: bytes = b"/Font << /F1 3 0 R >>", parent: int = 2) -> bytes:
    return (
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] "
        b"/Resources << %s >> /Contents %d 0 R >>" % (parent, resources, contents)
    )


def _write(data: bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(data)

    return build


def _pdf_page_tree_points_at_itself(path: Path) -> None:
    path.write_bytes(
        pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",  # its own child
                _FONT,
            ]
        )
    )


def _pdf_page_tree_cycle_with_a_page(path: Path) -> None:
    # 2 -> 3 -> 2, beside a real page: the page is still worth indexing.
    path.write_bytes(
        pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>",
                b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R] /Count 1 >>",
                _page(6),
                _FONT.replace(b">>", b">>"),
                _stream(_text_ops("cycle survivor page text")),
            ]
        ).replace(b"/F1 3 0 R", b"/F1 5 0 R")
    )


def _pdf_claims_millions_of_pages(path: Path) -> None:
    path.write_bytes(
        pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [4 0 R] /Count 5000000 >>",
                _FONT,
                _page(5),
                _stream(_text_ops("one real page among five million claimed")),
            ]
        )
    )


def _pdf_many_kids_to_one_page(path: Path) -> None:
    # 200,000 references to the same page object: a "huge" document from a 2 MB file.
    kids = b" ".join([b"4 0 R"] * 200_000)
    path.write_bytes(
        pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [%s] /Count 200000 >>" % kids,
                _FONT,
                _page(5),
                _stream(_text_ops("the same page referenced many times")),
            ]
        )
    )


def _pdf_recursive_form_xobject(path: Path) -> None:
    # A form XObject that draws itself: naive text extraction recurses forever.
    form = _stream(
        b"/X0 Do " + _text_ops("recursive form"),
        b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] "
        b"/Resources << /XObject << /X0 4 0 R >> /Font << /F1 3 0 R >> >> ",
    )
    path.write_bytes(
        pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [5 0 R] /Count 1 >>",
                _FONT,
                form,
                _page(6, b"/Font << /F1 3 0 R >> /XObject << /X0 4 0 R >>"),
                _stream(b"/X0 Do"),
            ]
        )
    )


def _pdf_flate_bomb(path: Path) -> None:
    # A page whose content stream inflates to 400 MiB (from about 400 KB).
    compressor = zlib.compressobj(9)
    block = compressor.compress(b"(bomb) Tj " * (MIB // 10)) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(b"(bomb) Tj " * (MIB // 10)) + compressor.flush(zlib.Z_FULL_FLUSH)
    packed = block + again * 399 + compressor.flush()
    path.write_bytes(
        pdf_bytes(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
                _FONT,
                _page(5),
                _stream(packed, b"/Filter /FlateDecode "),
            ]
        )
    )


def _pdf_truncated(fraction: float) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        data = text_pdf([f"truncated page {i} text" for i in range(20)])
        path.write_bytes(data[: int(len(data) * fraction)])

    return build


def _pdf_encrypted(path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf(["secret text"]))))
    writer.encrypt(user_password="hostile-user-pw", owner_password="hostile-owner-pw")
    out = io.BytesIO()
    writer.write(out)
    path.write_bytes(out.getvalue())


def _pdf_garbage_xref(path: Path) -> None:
    data = text_pdf(["text behind a broken xref"])
    start = data.rindex(b"startxref")
    path.write_bytes(data[:start] + b"startxref\n999999999\n%%EOF\n")


def _pdf_huge_object_count(path: Path) -> None:
    # The trailer and an xref stream header claim 50 million objects.
    data = text_pdf(["claims fifty million objects"])
    path.write_bytes(data.replace(b"/Size 6", b"/Size 50000000"))


# --------------------------------------------------------------------------- OOXML helpers


def _docx_template() -> bytes:
    import docx

    document = docx.Document()
    document.add_paragraph("template paragraph")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _xlsx_template() -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "template cell"
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def _pptx_template() -> bytes:
    from pptx import Presentation

    presentation = Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = "hostile slide title"
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


@dataclass(frozen=True)
class Repeated:
    """A ZIP member made of ``head``, ``count`` copies of ``block`` and ``tail``, compressed
    in well under a second however large it is: each block is deflated once after a full
    flush (which resets the compressor's window), so its compressed form simply repeats.
    ``declared`` overrides the uncompressed size written in the headers (a lying member)."""

    head: bytes
    block: bytes
    count: int
    tail: bytes
    declared: int | None = None

    def deflate(self) -> tuple[bytes, int, int]:
        """(raw deflate data, crc32, uncompressed size)."""
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        parts = [compressor.compress(self.head) + compressor.flush(zlib.Z_FULL_FLUSH)]
        if self.count:
            first = compressor.compress(self.block) + compressor.flush(zlib.Z_FULL_FLUSH)
            again = compressor.compress(self.block) + compressor.flush(zlib.Z_FULL_FLUSH)
            parts += [first, again * (self.count - 1)]
        parts.append(compressor.compress(self.tail) + compressor.flush())
        crc = zlib.crc32(self.head)
        for _ in range(self.count):
            crc = zlib.crc32(self.block, crc)
        crc = zlib.crc32(self.tail, crc)
        size = len(self.head) + self.count * len(self.block) + len(self.tail)
        return b"".join(parts), crc, size


Member = bytes | Repeated | None


def write_zip(path: Path, members: dict[str, bytes | Repeated]) -> None:
    """A deflated ZIP archive (no zip64: members stay under 4 GiB), written by hand so that
    members can be pre-compressed bombs or declare sizes they do not have."""
    out = bytearray()
    central = bytearray()
    for name, member in members.items():
        if isinstance(member, bytes):
            member = Repeated(member, b"", 0, b"")
        data, crc, size = member.deflate()
        declared = size if member.declared is None else member.declared
        encoded = name.encode()
        fields = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), declared)
        offset = len(out)
        out += b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded + data
        # name length, extra, comment, disk, internal and external attributes, offset
        tail = struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, offset)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + tail + encoded
    count = len(members)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def rezip(template: bytes, path: Path, members: dict[str, Member]) -> None:
    """Copy the ZIP ``template`` to ``path``, replacing or dropping (``None``) the named
    members and adding new ones."""
    with zipfile.ZipFile(io.BytesIO(template)) as source:
        kept: dict[str, bytes | Repeated] = {
            name: source.read(name) for name in source.namelist() if name not in members
        }
    kept.update({name: m for name, m in members.items() if m is not None})
    write_zip(path, kept)


_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def _docx_body(text: str, doctype: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>{doctype}'
        f'<w:document xmlns:w="{_W}"><w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p>'
        "</w:body></w:document>"
    ).encode()


_DOC_HEAD = f'<?xml version="1.0"?><w:document xmlns:w="{_W}"><w:body>'.encode()
_DOC_TAIL = b"</w:body></w:document>"


def _spaces(mib: int, declared: int | None = None) -> Repeated:
    """word/document.xml with ``mib`` MiB of spaces inside one text run."""
    return Repeated(
        _DOC_HEAD + b"<w:p><w:r><w:t>",
        b" " * MIB,
        mib,
        b"bomb</w:t></w:r></w:p>" + _DOC_TAIL,
        declared,
    )


def _docx_zip_bomb(path: Path) -> None:
    # 1 GiB of spaces in word/document.xml, about 1 MB on disk (deflate's ~1000:1).
    rezip(_docx_template(), path, {"word/document.xml": _spaces(1024)})


def _xlsx_zip_bomb(path: Path) -> None:
    # Under the total cap (64 MiB) but a ratio no office file has.
    strings = Repeated(
        b'<?xml version="1.0"?><sst xmlns="http://schemas.openxmlformats.org/'
        b'spreadsheetml/2006/main" count="1" uniqueCount="1"><si><t>',
        b"A" * MIB,
        64,
        b"</t></si></sst>",
    )
    rezip(_xlsx_template(), path, {"xl/sharedStrings.xml": strings})


def _docx_lying_sizes(path: Path) -> None:
    """word/document.xml declares 10 KB while its data inflates to 256 MiB: the size checks
    pass, and a reader that trusted the data instead of the header would inflate it all."""
    rezip(_docx_template(), path, {"word/document.xml": _spaces(256, declared=10_000)})


def _docx_memory_bomb(path: Path) -> None:
    """A 160 MiB document.xml of tiny paragraphs with random words: below the ZIP checks'
    ratio and total limits, but python-docx holds the whole XML tree (several GiB)."""
    rnd = random.Random(7)
    words = [f"w{rnd.randrange(10**6)}" for _ in range(40_000)]
    block = "".join(f"<w:p><w:r><w:t>{w}</w:t></w:r></w:p>" for w in words).encode()
    member = Repeated(_DOC_HEAD, block, 160 * MIB // len(block), _DOC_TAIL)
    rezip(_docx_template(), path, {"word/document.xml": member})


def _laughs_doctype(root: str) -> str:
    entities = ['<!ENTITY lol0 "lol">']
    entities += [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    return f"<!DOCTYPE {root} [{''.join(entities)}]>"


def _docx_billion_laughs(path: Path) -> None:
    body = _docx_body("&lol9;", _laughs_doctype("w:document"))
    rezip(_docx_template(), path, {"word/document.xml": body})


def _xlsx_billion_laughs(path: Path) -> None:
    strings = (
        '<?xml version="1.0"?>'
        + _laughs_doctype("sst")
        + '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" '
        'uniqueCount="1"><si><t>&lol9;</t></si></sst>'
    ).encode()
    rezip(_xlsx_template(), path, {"xl/sharedStrings.xml": strings})


def _xlsx_laughs_in_sheet(path: Path) -> None:
    sheet = (
        '<?xml version="1.0"?>'
        + _laughs_doctype("worksheet")
        + '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        '<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>&lol9;</t></is></c></row>'
        "</sheetData></worksheet>"
    ).encode()
    rezip(_xlsx_template(), path, {"xl/worksheets/sheet1.xml": sheet})


def _docx_without_document_xml(path: Path) -> None:
    rezip(_docx_template(), path, {"word/document.xml": None})


def _docx_many_members(path: Path) -> None:
    members: dict[str, Member] = {f"word/media/m{i}.bin": b"" for i in range(12_000)}
    rezip(_docx_template(), path, members)


def _pptx_huge_slide_count(path: Path) -> None:
    """presentation.xml lists 500,000 slides, all the same slide part: python-pptx spends
    about 0.6 ms of CPU on each, some 5 minutes in all."""
    template = _pptx_template()
    with zipfile.ZipFile(io.BytesIO(template)) as archive:
        xml = archive.read("ppt/presentation.xml").decode()
    start = xml.index("<p:sldIdLst>") + len("<p:sldIdLst>")
    end = xml.index("</p:sldIdLst>")
    one = xml[start:end]  # <p:sldId id="256" r:id="rIdN"/>
    rid = one[one.index('r:id="') + 6 :].split('"', 1)[0]
    many = "".join(f'<p:sldId id="{256 + i}" r:id="{rid}"/>' for i in range(500_000))
    rezip(template, path, {"ppt/presentation.xml": (xml[:start] + many + xml[end:]).encode()})


def _xlsx_far_cell(path: Path) -> None:
    # One cell on the last row and column, and a dimension claiming the whole grid.
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet["A1"] = "first cell"
    sheet["XFD1048576"] = "far away cell"
    workbook.save(path)


def _plain_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "just a zip archive with a text file")


def _docx_named_pdf(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_paragraph("a real word document wearing a pdf extension")
    document.save(path)


# ------------------------------------------------------------------------------ text input


def _words(rnd: random.Random, count: int) -> str:
    vocabulary = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    return " ".join(f"{rnd.choice(vocabulary)}{rnd.randrange(1000)}" for _ in range(count))


def _huge_single_line(path: Path) -> None:
    rnd = random.Random(3)
    block = _words(rnd, 20_000).encode() + b" "
    with path.open("wb") as out:
        while out.tell() < 30 * MIB:
            out.write(block)


def _invalid_utf8(path: Path) -> None:
    good = "valid words before the broken bytes, café naïve résumé ".encode()
    path.write_bytes((good + b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc ") * 200)


def _mixed_encodings(path: Path) -> None:
    parts = [
        "UTF-8 line: naïve café, Grüße, 東京 ".encode(),
        "windows-1252 line: naïve café, Grüße ".encode("cp1252"),
        "Shift_JIS line: 東京都の天気 ".encode("shift_jis"),
    ]
    path.write_bytes(b"\n".join(parts * 50))


def _utf16_odd_length(path: Path) -> None:
    path.write_bytes(("odd length utf-16 text " * 50).encode("utf-16") + b"\x41")


def _lone_surrogates(path: Path) -> None:
    # CESU-style encoded surrogates (ED A0 80): invalid in UTF-8, common in broken exports.
    path.write_bytes(b"text with a lone surrogate \xed\xa0\x80 inside, repeated. " * 100)


def _nul_filled(size: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(b"\x00" * size)

    return build


def _text_with_nuls(path: Path) -> None:
    # A few NUL bytes in readable text (below the binary threshold): dropped, not stored.
    line = b"readable text around the occasional stray byte.\n"
    path.write_bytes((line * 9 + b"a stray nul \x00 byte in this line.\n") * 100)


def _deep_json_arrays(path: Path) -> None:
    path.write_bytes(b"[" * 100_000 + b"1" + b"]" * 100_000)


def _deep_json_objects(path: Path) -> None:
    path.write_bytes(b'{"a":' * 100_000 + b'"deep"' + b"}" * 100_000)


def _million_column_csv(path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(1_000_000))
    row = ",".join(str(i % 10) for i in range(1_000_000))
    path.write_text(header + "\n" + row + "\n")


def _csv_sniffer_quotes(path: Path) -> None:
    # Many quote/delimiter pairs that never close: csv.Sniffer's quote regex backtracks
    # quadratically over its 64 KB sample.
    path.write_text(',"a' * 300_000 + "\n")


def _csv_huge_field(path: Path) -> None:
    path.write_text('name,notes\nx,"' + "long field " * 200_000 + '"\n')


def _nested_html(path: Path) -> None:
    depth = 100_000
    path.write_text(
        "<html><body>"
        + "<div>" * depth
        + "deeply nested words"
        + "</div>" * depth
        + "</body></html>"
    )


def _html_unclosed_tags(path: Path) -> None:
    path.write_text("<html><body>" + "<p><b><i>unclosed " * 20_000)


def _html_bogus_charset(path: Path) -> None:
    path.write_bytes(
        b'<html><head><meta charset="x-no-such-charset-\xff"></head>'
        b"<body><p>text under a bogus charset declaration</p></body></html>"
    )


def _markdown_deep_quotes(path: Path) -> None:
    path.write_text("# Title\n" + ">" * 50_000 + " quoted deep\n" + "- " * 20_000 + "item\n")


def _json_huge_string(path: Path) -> None:
    path.write_text(json.dumps({"payload": "x" * (5 * MIB), "note": "hostile json"}))


def _png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 4 for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _random_bytes(size: int, seed: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        path.write_bytes(random.Random(seed).randbytes(size))

    return build


# ------------------------------------------------------------------------------ the cases

DAMAGED = "parse_error"
CASES: list[HostileCase] = [
    # ZIP and XML bombs inside OOXML
    HostileCase(
        "zip-bomb.docx",
        _docx_zip_bomb,
        failed(DAMAGED, "possible ZIP bomb"),
        "1 GiB of spaces in word/document.xml (1 MB file)",
    ),
    HostileCase(
        "zip-bomb.xlsx",
        _xlsx_zip_bomb,
        failed(DAMAGED, "possible ZIP bomb"),
        "64 MiB shared-strings part at ~1000:1",
    ),
    HostileCase(
        "zip-lying-sizes.docx",
        _docx_lying_sizes,
        failed(DAMAGED, "DOCX is damaged"),
        "headers declare 10 KB, the data inflates to 256 MiB",
    ),
    HostileCase(
        "zip-many-members.docx",
        _docx_many_members,
        failed(DAMAGED, "parts (limit"),
        "12,000 ZIP members",
    ),
    HostileCase(
        "xml-memory-bomb.docx",
        _docx_memory_bomb,
        failed("parse_memory_limit", "memory limit"),
        "160 MiB of tiny paragraphs at a normal ratio: the XML tree outgrows the memory limit",
    ),
    HostileCase(
        "billion-laughs.docx",
        _docx_billion_laughs,
        failed(DAMAGED, "entity amplification"),
        "entity expansion in word/document.xml",
    ),
    HostileCase(
        "billion-laughs.xlsx",
        _xlsx_billion_laughs,
        INDEXED,
        "entity expansion in xl/sharedStrings.xml",
    ),
    HostileCase(
        "billion-laughs-sheet.xlsx",
        _xlsx_laughs_in_sheet,
        failed(DAMAGED, "could not read worksheets"),
        "entity expansion in a worksheet",
    ),
    HostileCase(
        "missing-document-xml.docx",
        _docx_without_document_xml,
        failed(DAMAGED, "DOCX is damaged"),
        "a DOCX package without word/document.xml",
    ),
    HostileCase(
        "huge-slide-count.pptx",
        _pptx_huge_slide_count,
        failed("parse_time_limit", "time limit"),
        "presentation.xml lists 500,000 slides (minutes of CPU)",
    ),
    HostileCase(
        "far-cell.xlsx",
        _xlsx_far_cell,
        INDEXED,
        "a cell at XFD1048576",
    ),
    # PDFs
    HostileCase(
        "page-tree-self.pdf",
        _pdf_page_tree_points_at_itself,
        failed(DAMAGED, "PDF is damaged"),
        "/Pages whose /Kids is itself",
    ),
    HostileCase(
        "page-tree-cycle.pdf",
        _pdf_page_tree_cycle_with_a_page,
        INDEXED,
        "a /Pages cycle beside a real page",
    ),
    HostileCase(
        "claims-5m-pages.pdf",
        _pdf_claims_millions_of_pages,
        INDEXED,
        "/Count 5000000 with one page",
    ),
    HostileCase(
        "200k-kids.pdf",
        _pdf_many_kids_to_one_page,
        INDEXED,
        "200,000 /Kids entries, all the same page",
    ),
    HostileCase(
        "recursive-xobject.pdf",
        _pdf_recursive_form_xobject,
        INDEXED,
        "a form XObject that draws itself",
    ),
    HostileCase(
        "flate-bomb.pdf",
        _pdf_flate_bomb,
        failed(DAMAGED, "limit reached while decompressing"),
        "a content stream inflating to 400 MiB",
    ),
    HostileCase(
        "truncated-half.pdf",
        _pdf_truncated(0.5),
        failed(DAMAGED, "PDF is damaged"),
        "the second half of a 20-page PDF cut off",
    ),
    HostileCase(
        "truncated-header.pdf",
        _write(b"%PDF-1.7\n"),
        failed(DAMAGED, "PDF is damaged"),
        "nothing after the header",
    ),
    HostileCase(
        "truncated-tiny.pdf",
        _pdf_truncated(0.05),
        failed(DAMAGED, "PDF is damaged"),
        "the first 5% of a PDF",
    ),
    HostileCase(
        "encrypted.pdf",
        _pdf_encrypted,
        failed("password_required", "password"),
        "AES-encrypted, no password given",
    ),
    HostileCase(
        "garbage-startxref.pdf",
        _pdf_garbage_xref,
        INDEXED,
        "startxref points past the end",
    ),
    HostileCase(
        "claims-50m-objects.pdf",
        _pdf_huge_object_count,
        INDEXED,
        "trailer /Size 50000000",
    ),
    # empty files
    *(
        HostileCase(f"empty.{ext}", _write(b""), failed("empty_document", "0 bytes"), "0 bytes")
        for ext in ("pdf", "docx", "xlsx", "txt", "json", "csv", "html")
    ),
    # wrong extensions
    HostileCase(
        "png-named.pdf",
        _write(_png_bytes()),
        failed("unsupported_type", "PNG image"),
        "a PNG image named .pdf",
    ),
    HostileCase(
        "pdf-named.txt", _write(text_pdf(["pdf in disguise"])), INDEXED, "a PDF named .txt"
    ),
    HostileCase(
        "zip-named.docx",
        _plain_zip,
        failed("unsupported_type", "ZIP archive"),
        "a plain ZIP named .docx",
    ),
    HostileCase("docx-named.pdf", _docx_named_pdf, INDEXED, "a DOCX named .pdf"),
    HostileCase(
        "random-bytes.docx",
        _random_bytes(64 * 1024, 11),
        failed("unsupported_type", "binary data"),
        "64 KB of random bytes named .docx",
    ),
    # encodings and text shapes
    HostileCase("invalid-utf8.txt", _invalid_utf8, INDEXED, "invalid UTF-8 sequences"),
    HostileCase("mixed-encodings.txt", _mixed_encodings, INDEXED, "UTF-8, cp1252, Shift_JIS"),
    HostileCase("utf16-odd-length.txt", _utf16_odd_length, INDEXED, "UTF-16 with an odd byte"),
    HostileCase("lone-surrogate.txt", _lone_surrogates, INDEXED, "encoded lone surrogates"),
    HostileCase(
        "nul-filled.txt",
        _nul_filled(MIB),
        failed("unsupported_type", "binary data"),
        "1 MiB of NUL bytes",
    ),
    HostileCase(
        "nul-filled.pdf",
        _nul_filled(4096),
        failed("unsupported_type", "binary data"),
        "NUL bytes named .pdf",
    ),
    HostileCase("stray-nul.txt", _text_with_nuls, INDEXED, "text with NUL bytes inside"),
    HostileCase(
        "huge-single-line.txt",
        _huge_single_line,
        failed("parse_output_limit", "exceeds the limit of 10,000,000 characters"),
        "30 MiB of words and no newline",
    ),
    HostileCase(
        "deep-arrays.json",
        _deep_json_arrays,
        failed(DAMAGED, "nested too deeply"),
        "100,000 nested arrays",
    ),
    HostileCase(
        "deep-objects.json",
        _deep_json_objects,
        failed(DAMAGED, "nested too deeply"),
        "100,000 nested objects",
    ),
    HostileCase("huge-string.json", _json_huge_string, INDEXED, "one 5 MiB string value"),
    HostileCase(
        "million-columns.csv",
        _million_column_csv,
        failed("parse_output_limit", "exceeds the limit of 10,000,000 characters"),
        "1,000,000 columns (12.9 M characters of text)",
    ),
    HostileCase("sniffer-quotes.csv", _csv_sniffer_quotes, INDEXED, "unclosed quotes everywhere"),
    HostileCase(
        "huge-field.csv",
        _csv_huge_field,
        failed(DAMAGED, "field larger than field limit"),
        "a 2 MiB quoted field",
    ),
    HostileCase("nested-100k.html", _nested_html, INDEXED, "100,000 nested <div>s"),
    HostileCase("unclosed-tags.html", _html_unclosed_tags, INDEXED, "60,000 unclosed tags"),
    HostileCase("bogus-charset.html", _html_bogus_charset, INDEXED, "an unknown declared charset"),
    HostileCase("deep-quotes.md", _markdown_deep_quotes, INDEXED, "50,000 nested quote markers"),
    # names (the source URI escapes them; the content is ordinary)
    HostileCase(
        "control\x01\x1b[31mchars.txt",
        _write(b"a file whose name holds control characters"),
        INDEXED,
        "control characters and an ANSI escape in the name",
    ),
    HostileCase(
        "new\nline ..%2f..%2fname.txt",
        _write(b"a file whose name holds a newline and encoded dots"),
        INDEXED,
        "a newline and %2f-encoded ../ in the name",
    ),
]


def case(name: str) -> HostileCase:
    """The case called ``name``."""
    for item in CASES:
        if item.name == name:
            return item
    raise KeyError(name)


def build_cases(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the cases (all, or those ``names``) under ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    built = {}
    for item in CASES:
        if names is not None and item.name not in names:
            continue
        path = folder / item.name
        item.build(path)
        built[item.name] = path
    return built
