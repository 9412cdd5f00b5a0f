"""DOCX: python-docx opens the package; the body XML is walked directly.

Walking the XML rather than ``document.paragraphs`` keeps text that python-docx's API skips:
content controls (``w:sdt``: cover pages, tables of contents), tracked insertions and text
boxes. Merged table cells appear once, not once per spanned column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from lxml import etree

from ingestflow.core.types import Segment
from tasks.parsers.base import DOCX, ParseInput, parser
from tasks.parsers.sections import SectionBuilder

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_NS = {"w": _W, "mc": "http://schemas.openxmlformats.org/markup-compatibility/2006"}
_P, _TBL, _SDT, _SDT_CONTENT = (f"{{{_W}}}{t}" for t in ("p", "tbl", "sdt", "sdtContent"))
# Text-bearing nodes of a paragraph, minus text boxes (handled as their own blocks) and the
# mc:Fallback copies that Word writes next to every text box for old readers.
_RUN_TEXT = (
    ".//*[(self::w:t or self::w:tab or self::w:br or self::w:cr)"
    " and not(ancestor::w:txbxContent) and not(ancestor::mc:Fallback)]"
)
_TEXTBOX_PARAGRAPHS = ".//w:txbxContent[not(ancestor::mc:Fallback)]//w:p"
_run_text = etree.XPath(_RUN_TEXT, namespaces=_NS)
# Inside a text box every text node counts (except the fallback copy).
_box_run_text = etree.XPath(
    ".//*[(self::w:t or self::w:tab or self::w:br or self::w:cr) and not(ancestor::mc:Fallback)]",
    namespaces=_NS,
)
_textbox_paragraphs = etree.XPath(_TEXTBOX_PARAGRAPHS, namespaces=_NS)
_outline_level = etree.XPath("./w:pPr/w:outlineLvl/@w:val", namespaces=_NS)
_style_id = etree.XPath("./w:pPr/w:pStyle/@w:val", namespaces=_NS)
_HEADING_NAME = re.compile(r"heading\s*(\d)", re.I)
_MAX_STYLE_DEPTH = 10  # style inheritance chains are short; cycles exist in broken files


@parser(DOCX, label="DOCX")
def parse_docx(source: ParseInput) -> Iterator[Segment]:
    """Segments per heading section (``{"heading": "H1 > H2"}``), tables rendered as
    ``a | b`` rows, then headers and footers (``{"part": "header"}``), each distinct text once.
    """
    import docx  # here, not at module level: keeps `import tasks.parsers` fast

    document = docx.Document(str(source.path))
    levels = _heading_levels(document)
    sections = SectionBuilder()
    for element in _blocks(document.element.body):
        if element.tag == _TBL:
            sections.add(_table_text(element))
            continue
        text = _paragraph_text(element)
        level = _paragraph_level(element, levels)
        if level is not None:
            sections.heading(level, text)
        else:
            sections.add(text)
        for box in _textbox_paragraphs(element):
            sections.add(_paragraph_text(box, _box_run_text))
    yield from sections.segments()
    yield from _headers_and_footers(document)


def _blocks(body) -> Iterator:
    """Paragraphs and tables in document order, looking inside content controls."""
    stack = [iter(body)]
    while stack:
        element = next(stack[-1], None)
        if element is None:
            stack.pop()
        elif element.tag in (_P, _TBL):
            yield element
        elif element.tag == _SDT:
            content = element.find(_SDT_CONTENT)
            if content is not None:
                stack.append(iter(content))


def _paragraph_text(paragraph, nodes=_run_text) -> str:
    parts = []
    for node in nodes(paragraph):
        name = node.tag.rsplit("}", 1)[-1]
        parts.append((node.text or "") if name == "t" else "\t" if name == "tab" else "\n")
    return "".join(parts).strip()


def _table_text(table) -> str:
    rows = []
    for row in table.iterfind(f"{{{_W}}}tr"):
        cells = []
        for cell in row.iterfind(f"{{{_W}}}tc"):
            # A vertically merged continuation cell is empty; skipping empties drops it.
            text = " ".join(t for t in map(_paragraph_text, cell.iter(_P)) if t)
            if text:
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def _heading_levels(document) -> dict[str, int]:
    """style id -> heading level, following ``basedOn`` so custom heading styles count.
    "Title" is level 0, above Heading 1."""
    from docx.enum.style import WD_STYLE_TYPE

    levels: dict[str, int] = {}
    for style in document.styles:
        if style.type != WD_STYLE_TYPE.PARAGRAPH:
            continue
        level = _style_level(style)
        if level is not None:
            levels[style.style_id] = level
    return levels


def _style_level(style) -> int | None:
    for _ in range(_MAX_STYLE_DEPTH):
        if style is None:
            return None
        name = style.name or ""
        if name == "Title":
            return 0
        match = _HEADING_NAME.fullmatch(name)
        if match:
            return int(match.group(1))
        outline = _outline_level(style.element)
        if outline and outline[0].isdigit() and int(outline[0]) < 9:
            return int(outline[0]) + 1
        style = style.base_style
    return None


def _paragraph_level(paragraph, levels: dict[str, int]) -> int | None:
    outline = _outline_level(paragraph)
    if outline and outline[0].isdigit() and int(outline[0]) < 9:  # 9 means body text
        return int(outline[0]) + 1
    style_id = _style_id(paragraph)
    return levels.get(style_id[0]) if style_id else None


def _headers_and_footers(document) -> Iterator[Segment]:
    seen: set[str] = set()
    for section in document.sections:
        for part, kinds in (
            ("header", ("header", "first_page_header", "even_page_header")),
            ("footer", ("footer", "first_page_footer", "even_page_footer")),
        ):
            for kind in kinds:
                story = getattr(section, kind)
                if story.is_linked_to_previous:
                    continue
                # Checked above: reading .part of an unlinked story never adds a definition.
                text = "\n".join(_story_lines(story.part.element))
                if text and text not in seen:
                    seen.add(text)
                    yield Segment(text, {"part": part})


def _story_lines(element) -> Iterator[str]:
    for block in _blocks(element):
        text = _table_text(block) if block.tag == _TBL else _paragraph_text(block)
        if text:
            yield text
