"""Heading-scoped sections, shared by the DOCX, HTML and Markdown parsers."""

from __future__ import annotations

from ingestflow.core.types import Segment

HEADING_SEPARATOR = " > "


class SectionBuilder:
    """Collects text blocks under the current heading trail ("H1 > H2") into segments.

    Each heading starts a new segment whose text begins with the heading itself, so the
    heading words stay searchable. A heading directly followed by a deeper heading does not
    become a segment of its own: the deeper segment's provenance already names it.
    """

    def __init__(self) -> None:
        self._trail: list[tuple[int, str]] = []
        self._blocks: list[str] = []
        self._segments: list[Segment] = []

    def heading(self, level: int, title: str) -> None:
        """Start a section for a heading of ``level`` (smaller is more important)."""
        title = " ".join(title.split())
        if not title:
            return
        only_title = self._trail and self._blocks == [self._trail[-1][1]]
        if only_title and level > self._trail[-1][0]:
            self._blocks = []
        self._flush()
        while self._trail and self._trail[-1][0] >= level:
            self._trail.pop()
        self._trail.append((level, title))
        self._blocks.append(title)

    def add(self, text: str) -> None:
        """Append one block of body text to the current section."""
        if text and text.strip():
            # Keep leading spaces: the first line of a code block may be indented.
            self._blocks.append(text.rstrip().lstrip("\r\n"))

    def segments(self) -> list[Segment]:
        """All segments, in document order."""
        self._flush()
        return self._segments

    def _flush(self) -> None:
        if self._blocks:
            trail = HEADING_SEPARATOR.join(title for _, title in self._trail)
            provenance = {"heading": trail} if trail else {}
            self._segments.append(Segment("\n".join(self._blocks), provenance))
        self._blocks = []
