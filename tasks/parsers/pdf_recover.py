"""Salvage pages from a PDF whose page tree is broken.

pdfminer-style readers find pages by walking every object; pypdf only walks the tree. When
the tree is unreadable (a dangling reference in /Pages, say), scanning the cross-reference
table for ``/Type /Page`` objects still finds pages that are themselves intact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pypdf import PageObject, PdfReader

# Bound the scan: a hostile file can declare millions of objects.
MAX_RECOVERY_OBJECTS = 200_000


def recover_pages(reader: PdfReader, *, limit: int) -> list[PageObject]:
    """Page objects found by object scan, in object-number order (usually page order, but
    not guaranteed), at most ``limit``."""
    from pypdf import PageObject
    from pypdf.generic import DictionaryObject, IndirectObject

    pages: list[PageObject] = []
    for number, generation in _object_ids(reader):
        if len(pages) >= limit:
            break
        try:
            obj = reader.get_object(IndirectObject(number, generation, reader))
        except Exception:  # unreadable objects are exactly what we expect to skip here
            continue
        if isinstance(obj, DictionaryObject) and obj.get("/Type") == "/Page":
            page = PageObject(reader, IndirectObject(number, generation, reader))
            page.update(obj)
            pages.append(page)
    return pages


def _object_ids(reader: PdfReader) -> list[tuple[int, int]]:
    ids = {(num, gen) for gen, table in reader.xref.items() for num in table}
    ids |= {(num, 0) for num in reader.xref_objStm}
    return sorted(ids)[:MAX_RECOVERY_OBJECTS]
