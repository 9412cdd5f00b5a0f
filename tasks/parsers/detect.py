"""Media-type detection from content: magic bytes, ZIP part names, then text sniffing.

The filename's extension is only a hint, used where content cannot decide: Markdown versus
plain text, CSV versus plain text. A PDF named ``.txt`` is a PDF; a DOCX named ``.pdf`` is a
DOCX.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path, PurePath

from ingestflow.core.errors import (
    EmptyDocumentError,
    EncryptedDocumentError,
    ParseError,
    UnsupportedTypeError,
)
from tasks.parsers.base import (
    CSV,
    DOCX,
    HTML,
    JSON,
    MARKDOWN,
    PDF,
    PPTX,
    TEXT,
    TSV,
    XLSM,
    XLSX,
    claimed_extension,
)
from tasks.parsers.encoding import sniff_text
from tasks.parsers.safety import check_zip

HEAD_BYTES = 64 * 1024
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Main-part content types in [Content_Types].xml; checked in order.
_OOXML_MAIN_PARTS = (
    ("wordprocessingml.document.main+xml", DOCX),
    ("ms-excel.sheet.macroEnabled.main+xml", XLSM),
    ("spreadsheetml.sheet.main+xml", XLSX),
    ("presentationml.presentation.main+xml", PPTX),
)
_OOXML_FALLBACK_PARTS = (
    ("word/document.xml", DOCX),
    ("xl/workbook.xml", XLSX),
    ("ppt/presentation.xml", PPTX),
)
# Signatures of common binary files, to name them in the "unsupported" reason.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x1f\x8b", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "Windows executable"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"ID3", "MP3 audio"),
    (b"OggS", "Ogg media"),
    (b"fLaC", "FLAC audio"),
    (b"\x00asm", "WebAssembly module"),
    (b"\xca\xfe\xba\xbe", "Java class or Mach-O binary"),
)
_HTML_START = re.compile(
    r"^(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html)\b", re.S
)
_HTML_TAGS = re.compile(r"<(?:html|head|body|div|p|table|title|meta)\b[^>]*>")
_HTML_EXT = {".html", ".htm", ".xhtml"}
_MARKDOWN_EXT = {".md", ".markdown", ".mdown", ".mkd", ".mdx"}
_CSV_EXT = {".csv": CSV, ".tsv": TSV, ".tab": TSV}
_JSON_EXT = {".json", ".jsonl", ".ndjson", ".geojson"}
_PLAIN_EXT = {".txt", ".text", ".log", ".md", ".rst", ".csv", ".tsv"}


def detect_media_type(path: Path, filename: str = "") -> str:
    """The media type of the file at ``path``; ``filename`` (or the path's name) is a hint.

    A file whose content names no built-in type (binary data, a ZIP or OLE2 file of another
    kind, plain text) goes to a parser plugin that claims its extension, if one does.

    Raises ``EmptyDocumentError`` for a 0-byte file, ``UnsupportedTypeError`` for binary data
    of no supported type, ``EncryptedDocumentError`` for a password-protected Office file and
    ``ParseError`` for a ZIP that fails the bomb checks.
    """
    extension = PurePath(filename or path.name).suffix.lower()
    try:
        detected = _detect_content(path, extension)
    except UnsupportedTypeError:
        if claimed := claimed_extension(extension):
            return claimed
        raise
    return (claimed_extension(extension) if detected == TEXT else None) or detected


def _detect_content(path: Path, extension: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if not head:
        raise EmptyDocumentError("file is empty (0 bytes)")
    # The PDF spec tolerates junk before the header; readers look within the first 1 KB.
    if b"%PDF-" in head[:1024]:
        return PDF
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _detect_zip(path)
    if head.startswith(_OLE2):
        raise _ole2_error(path)
    text = sniff_text(head)
    if text is None:
        raise UnsupportedTypeError(f"unsupported file type (looks like binary data: {_name(head)})")
    if text.startswith("{\\rtf"):
        raise UnsupportedTypeError("unsupported file type (RTF document; save it as DOCX)")
    return _detect_text(text, extension)


def _name(head: bytes) -> str:
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return f"no known signature, starts with {head[:8].hex(' ')}"


def _detect_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip(archive, "ZIP-based document")
            names = set(archive.namelist())
            types = _read_content_types(archive) if "[Content_Types].xml" in names else ""
    except zipfile.BadZipFile as e:
        raise ParseError(f"ZIP-based document is damaged: {e}") from e
    for marker, media_type in _OOXML_MAIN_PARTS:
        if marker in types:
            return media_type
    for name, media_type in _OOXML_FALLBACK_PARTS:
        if name in names:
            return XLSM if media_type == XLSX and "xl/vbaProject.bin" in names else media_type
    raise UnsupportedTypeError(
        "unsupported file type (a ZIP archive that is not a DOCX, XLSX or PPTX document)"
    )


def _read_content_types(archive: zipfile.ZipFile) -> str:
    with archive.open("[Content_Types].xml") as part:
        return part.read(1024 * 1024).decode("utf-8", errors="replace")


def _ole2_error(path: Path) -> Exception:
    """Password-protected DOCX/XLSX/PPTX are OLE2 containers holding an EncryptedPackage
    stream; other OLE2 files are the legacy binary formats (.doc, .xls, .ppt)."""
    marker = "EncryptedPackage".encode("utf-16-le")
    with open(path, "rb") as handle:
        tail = b""
        while chunk := handle.read(1024 * 1024):
            if marker in tail + chunk:
                return EncryptedDocumentError(
                    "Office document is password-protected; encrypted DOCX/XLSX/PPTX files "
                    "are not supported, save an unprotected copy"
                )
            tail = chunk[-len(marker) :]
    return UnsupportedTypeError(
        "unsupported file type (legacy Microsoft Office binary format .doc/.xls/.ppt; "
        "save it as DOCX/XLSX/PPTX)"
    )


def _detect_text(text: str, ext: str) -> str:
    start = text.lstrip("\ufeff \t\r\n")
    lowered = start[:4096].lower()
    if _HTML_START.match(lowered):
        return HTML
    if ext in _HTML_EXT:
        return HTML
    if ext in _MARKDOWN_EXT:
        return MARKDOWN
    if ext in _CSV_EXT:
        return _CSV_EXT[ext]
    if ext in _JSON_EXT or (start[:1] in ("{", "[") and ext not in _PLAIN_EXT):
        return JSON
    if ext not in _PLAIN_EXT and lowered.startswith("<") and _HTML_TAGS.search(lowered):
        return HTML
    return TEXT
