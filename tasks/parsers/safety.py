"""Cheap checks against hostile containers, run before any parser opens them.

Only the obvious parts: a ZIP's declared sizes are checked before anything is inflated.
zipfile stops inflating a member at its declared size, so a lying header yields a CRC
error, not an unbounded expansion; checking the declared sizes is therefore meaningful.
"""

from __future__ import annotations

import zipfile

from ingestflow.core.errors import ParseError

MAX_ZIP_MEMBERS = 10_000
# OOXML parsers hold whole parts in memory, so the total must stay far below RAM.
MAX_ZIP_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
# Office XML compresses about 5-30x; a bomb compresses thousands of times. Small parts are
# allowed any ratio (a 2 KB run of spaces is harmless), so the ratio applies above a floor.
MAX_ZIP_RATIO = 200
ZIP_RATIO_FLOOR_BYTES = 8 * 1024 * 1024


def check_zip(archive: zipfile.ZipFile, label: str) -> None:
    """Raise ``ParseError`` when the archive declares too much data or a bomb-like ratio."""
    members = archive.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise ParseError(
            f"{label} rejected: the ZIP container has {len(members)} parts "
            f"(limit {MAX_ZIP_MEMBERS})"
        )
    total = sum(m.file_size for m in members)
    packed = sum(m.compress_size for m in members)
    if total > MAX_ZIP_UNCOMPRESSED_BYTES:
        raise ParseError(
            f"{label} rejected: it would expand to {total / 2**20:.0f} MiB "
            f"(limit {MAX_ZIP_UNCOMPRESSED_BYTES / 2**20:.0f} MiB); possible ZIP bomb"
        )
    for member in members:
        _check_ratio(member.file_size, member.compress_size, label)
    _check_ratio(total, packed, label)


def _check_ratio(size: int, packed: int, label: str) -> None:
    if size > ZIP_RATIO_FLOOR_BYTES and size / max(packed, 1) > MAX_ZIP_RATIO:
        raise ParseError(
            f"{label} rejected: compression ratio {size / max(packed, 1):.0f}:1 is beyond "
            f"{MAX_ZIP_RATIO}:1; possible ZIP bomb"
        )
