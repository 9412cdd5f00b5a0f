"""PDF: pypdf, page by page, with password handling and page-tree recovery."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ingestflow.core.errors import (
    EmptyDocumentError,
    EncryptedDocumentError,
    ParseError,
    PasswordRequiredError,
)
from ingestflow.core.types import Segment
from tasks.parsers.base import PDF, ParseInput, parser
from tasks.parsers.pdf_recover import recover_pages

if TYPE_CHECKING:  # pypdf is imported when a PDF is parsed, so `import tasks.parsers` is fast
    from pypdf import PageObject, PasswordType, PdfReader

log = logging.getLogger(__name__)

# Pages beyond this are not read: a sane cap against hostile or absurd files. The cut is
# logged; a real document this long is better split before ingestion.
MAX_PDF_PAGES = 5000
# Failed pages are skipped while others work; this many failures in a row with nothing
# extracted means the file is broken rather than one odd page.
_MAX_FAILED_PAGES_BEFORE_TEXT = 50


@parser(PDF, label="PDF")
def parse_pdf(source: ParseInput) -> Iterator[Segment]:
    """One segment per page with text: ``{"page": n}`` (1-based).

    Pages come from a page-tree walk; if the tree is broken, from a scan of the objects
    (then provenance also says ``"recovered": True`` since page numbers are a best guess).
    Raises ``EncryptedDocumentError`` when no password opens the file and
    ``EmptyDocumentError`` when no page has text (a scan without OCR).
    """
    from pypdf import PdfReader

    # strict=False: pypdf repairs what it can (bad xref offsets, missing keywords).
    reader = PdfReader(source.path, strict=False)
    _unlock(reader, source.password)
    found = failed = 0
    last_error: Exception | None = None
    for number, page, recovered in _pages(reader):
        try:
            text = _page_text(page)
        except Exception as e:  # one broken page must not lose the others
            failed, last_error = failed + 1, e
            log.warning("PDF page %d skipped: %s", number, type(e).__name__)
            if not found and failed >= _MAX_FAILED_PAGES_BEFORE_TEXT:
                break
            continue
        if text:
            found += 1
            provenance = {"page": number, "recovered": True} if recovered else {"page": number}
            yield Segment(text, provenance)
    if not found and last_error is not None:
        reason = f"PDF is damaged: text extraction failed ({_cause(last_error)})"
        raise ParseError(reason) from last_error
    if not found:
        raise EmptyDocumentError("PDF has no text layer (scanned image?); OCR is not enabled")


def _unlock(reader: PdfReader, password: str | None) -> None:
    from pypdf import PasswordType

    if not reader.is_encrypted:
        return
    if password and _decrypt(reader, password) != PasswordType.NOT_DECRYPTED:
        return  # the user or the owner password
    # Many PDFs have an empty user password and open without a prompt. An empty *owner*
    # password also decrypts, but a viewer would still ask for the user password, so that
    # does not count: the author meant the file to be protected.
    if _decrypt(reader, "") == PasswordType.USER_PASSWORD:
        return
    if password:
        raise EncryptedDocumentError("PDF is encrypted and the supplied password is wrong")
    raise PasswordRequiredError("PDF is encrypted and no password was given")


def _decrypt(reader: PdfReader, candidate: str) -> PasswordType:
    from pypdf.errors import DependencyError

    try:
        return reader.decrypt(candidate)
    except (DependencyError, NotImplementedError) as e:
        raise EncryptedDocumentError(
            f"PDF uses an encryption method that cannot be opened here ({type(e).__name__})"
        ) from None  # the cause may quote the password attempt; do not chain it


def _pages(reader: PdfReader) -> Iterator[tuple[int, PageObject, bool]]:
    try:
        count = len(reader.pages)
    except Exception as e:  # a broken page tree; the pages themselves may be fine
        pages = recover_pages(reader, limit=MAX_PDF_PAGES)
        if not pages:
            raise ParseError(f"PDF is damaged: {_cause(e)}") from e
        log.warning("PDF page tree is broken (%s); recovered %d pages", _cause(e), len(pages))
        for number, page in enumerate(pages, start=1):
            yield number, page, True
        return
    if count > MAX_PDF_PAGES:
        log.warning("PDF has %d pages; only the first %d are read", count, MAX_PDF_PAGES)
    for index in range(min(count, MAX_PDF_PAGES)):
        yield index + 1, reader.pages[index], False


def _page_text(page: PageObject) -> str:
    # U+FFFD is what pypdf emits for glyphs it cannot map; a page of them carries nothing.
    return (page.extract_text() or "").replace("\ufffd", "").strip()


def _cause(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
