"""Plain text (any common encoding) and Markdown (split by heading)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

from ingestflow.core.types import Segment
from tasks.parsers.base import MARKDOWN, TEXT, ParseInput, parser
from tasks.parsers.encoding import decode_text
from tasks.parsers.sections import SectionBuilder

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# Lines that cannot be the text of a setext heading (list items, quotes, tables, rules).
_NOT_SETEXT_TEXT = re.compile(r"^\s*(?:[-*+>|#]|\d+[.)]\s|$)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"[*`]+")  # not "_": snake_case words are common in headings


@parser(TEXT, label="text file")
def parse_text(source: ParseInput) -> Iterator[Segment]:
    """The whole decoded text as one segment (no provenance): the chunker splits it with
    overlap, which segment boundaries would prevent."""
    yield Segment(decode_text(source.path.read_bytes()), {})


@parser(MARKDOWN, label="Markdown")
def parse_markdown(source: ParseInput) -> Iterator[Segment]:
    """One segment per heading section, ``{"heading": "H1 > H2"}``; the Markdown itself is
    kept (tables, lists, code). ATX (``#``) and setext (underlined) headings count, except
    inside fenced code blocks and YAML front matter."""
    lines = decode_text(source.path.read_bytes()).split("\n")
    sections = SectionBuilder()
    buffer: list[str] = []
    start = _front_matter_end(lines)
    buffer.extend(lines[:start])
    fence: str | None = None
    for line in lines[start:]:
        fence_match = _FENCE.match(line)
        if fence is not None:
            if (
                fence_match
                and fence_match.group(1)[0] == fence[0]
                and len(fence_match.group(1)) >= len(fence)
            ):
                fence = None
            buffer.append(line)
        elif fence_match:
            fence = fence_match.group(1)
            buffer.append(line)
        elif atx := _ATX.match(line):
            _emit(sections, buffer)
            sections.heading(len(atx.group(1)), _plain(atx.group(2) or ""))
        elif _is_setext(line, buffer):
            title = buffer.pop()
            _emit(sections, buffer)
            sections.heading(1 if line.strip()[0] == "=" else 2, _plain(title))
        else:
            buffer.append(line)
    _emit(sections, buffer)
    yield from sections.segments()


def _front_matter_end(lines: list[str]) -> int:
    if lines and lines[0].strip() == "---":
        for index in range(1, len(lines)):
            if lines[index].strip() in ("---", "..."):
                return index + 1
    return 0


def _is_setext(line: str, buffer: list[str]) -> bool:
    if not _SETEXT.match(line) or not buffer:
        return False
    previous = buffer[-1]
    # A paragraph of one line only: "text\n---" after a longer paragraph is rare, and
    # treating "---" after a list or a table as a heading would be wrong.
    before = buffer[-2] if len(buffer) > 1 else ""
    return not _NOT_SETEXT_TEXT.match(previous) and not before.strip()


def _emit(sections: SectionBuilder, buffer: list[str]) -> None:
    sections.add("\n".join(buffer))
    buffer.clear()


def _plain(title: str) -> str:
    """Heading text without inline Markdown: ``**Intro** to [x](u)`` -> ``Intro to x``."""
    return html.unescape(_EMPHASIS.sub("", _LINK.sub(r"\1", title))).strip()
