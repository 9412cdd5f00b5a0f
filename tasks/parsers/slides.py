"""PPTX: python-pptx; one segment per slide with its shapes, tables, charts and notes."""

from __future__ import annotations

from collections.abc import Iterator

from lxml import etree

from ingestflow.core.types import Segment
from tasks.parsers.base import PPTX, ParseInput, parser

_C = "http://schemas.openxmlformats.org/drawingml/2006/chart"
_NS = {"c": _C, "a": "http://schemas.openxmlformats.org/drawingml/2006/main"}
_chart_title = etree.XPath("./c:chart/c:title//a:t/text()", namespaces=_NS)
_series = etree.XPath(".//c:plotArea/*/c:ser", namespaces=_NS)
_ser_name = etree.XPath("./c:tx//c:v/text() | ./c:tx//a:t/text()", namespaces=_NS)
_cat_points = etree.XPath("./c:cat//c:pt | ./c:xVal//c:pt", namespaces=_NS)
_val_points = etree.XPath("./c:val//c:pt | ./c:yVal//c:pt", namespaces=_NS)


@parser(PPTX, label="PPTX")
def parse_pptx(source: ParseInput) -> Iterator[Segment]:
    """One segment per slide with text, ``{"slide": n}`` (1-based, hidden slides included):
    the title first, then the other shapes (groups included), tables as ``a | b`` rows,
    chart titles and data, and the speaker notes after a ``Notes:`` line."""
    from pptx import Presentation  # here, not at module level: keeps imports fast

    presentation = Presentation(str(source.path))
    for number, slide in enumerate(presentation.slides, start=1):
        blocks = list(_slide_blocks(slide))
        notes = _notes(slide)
        if notes:
            blocks += ["Notes:", notes]
        if blocks:
            yield Segment("\n".join(blocks), {"slide": number})


def _slide_blocks(slide) -> Iterator[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    title = slide.shapes.title
    if title is not None and title.has_text_frame and _frame_text(title.text_frame):
        yield _frame_text(title.text_frame)
    # Explicit stack: group shapes nest, and a hostile file could nest them deeply.
    stack = list(reversed(list(slide.shapes)))
    while stack:
        shape = stack.pop()
        if title is not None and shape.shape_id == title.shape_id:
            continue
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            stack.extend(reversed(list(shape.shapes)))
            continue
        text = _shape_text(shape)
        if text:
            yield text


def _shape_text(shape) -> str:
    if shape.has_text_frame:
        return _frame_text(shape.text_frame)
    if getattr(shape, "has_table", False) and shape.has_table:
        return _table_text(shape.table)
    if getattr(shape, "has_chart", False) and shape.has_chart:
        return _chart_text(shape.chart)
    return ""


def _table_text(table) -> str:
    rows = []
    for row in table.rows:
        # Merged cells repeat no text in python-pptx (spanned cells are empty), so
        # skipping empty cells keeps each value once.
        cells = [" ".join(cell.text.split()) for cell in row.cells]
        cells = [c for c in cells if c]
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)


def _chart_text(chart) -> str:
    """Title, then one ``category | value | value`` row per category. Read from the chart XML
    caches, because python-pptx's plot API rejects some chart types (3-D bars, for one)."""
    root = chart.element
    lines = [" ".join(_chart_title(root))]
    series = [
        (" ".join(_ser_name(ser)), _points(ser, "cat"), _points(ser, "val"))
        for ser in _series(root)
    ]
    if series:
        lines.append(" | ".join(name for name, _, _ in series))
        categories = series[0][1] or {i: str(i + 1) for i in series[0][2]}
        for index, category in sorted(categories.items()):
            row = [category, *(values.get(index, "") for _, _, values in series)]
            lines.append(" | ".join(row))
    return "\n".join(line for line in lines if line.strip(" |"))


def _points(ser, kind: str) -> dict[int, str]:
    # Scatter and bubble charts name their axes xVal/yVal instead of cat/val.
    path = _cat_points if kind == "cat" else _val_points
    return {int(pt.get("idx", 0)): (pt.findtext(f"{{{_C}}}v") or "") for pt in path(ser)}


def _notes(slide) -> str:
    if not slide.has_notes_slide:
        return ""
    frame = slide.notes_slide.notes_text_frame
    return _frame_text(frame) if frame is not None else ""


def _frame_text(frame) -> str:
    # python-pptx renders a soft line break (<a:br/>) as a vertical tab.
    return frame.text.replace("\v", "\n").strip()
