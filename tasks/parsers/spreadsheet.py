"""XLSX and XLSM: openpyxl in read-only, cached-values mode, rows grouped per segment."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from ingestflow.core.types import Segment
from tasks.parsers.base import XLSM, XLSX, ParseInput, group_lines, parser, row_range


@parser(XLSX, XLSM, label="XLSX")
def parse_xlsx(source: ParseInput) -> Iterator[Segment]:
    """Non-empty rows as ``a | b | c`` lines, grouped into segments with
    ``{"sheet": name, "rows": "2-40"}`` (sheet row numbers, 1-based).

    ``data_only=True`` reads the values Excel cached for formulas, not the formulas; a file
    never opened in Excel may have no cached values, and those cells read as empty.
    Macros in XLSM files are never run (openpyxl cannot run them).
    """
    import openpyxl  # here, not at module level: keeps `import tasks.parsers` fast

    # A file object, not the path: openpyxl refuses paths whose extension is not .xlsx/.xlsm,
    # and the type was decided from the content already.
    with open(source.path, "rb") as handle:
        workbook = openpyxl.load_workbook(handle, read_only=True, data_only=True)
        try:
            for sheet in workbook.worksheets:
                # Some writers store a wrong <dimension>; read-only mode would trust it and
                # cut rows off. Resetting makes openpyxl read every row actually there.
                sheet.reset_dimensions()
                yield from group_lines(_rows(sheet), _provenance(sheet.title))
        finally:
            workbook.close()  # read-only workbooks keep the archive open until closed


def _provenance(title: str):
    return lambda first, last: {"sheet": title, "rows": row_range(first, last)}


def _rows(sheet) -> Iterator[tuple[int, str]]:
    # Read-only sheets yield a row for every row number from 1, filling gaps with empties,
    # so the enumeration index is the sheet's row number.
    for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
        cells = [_cell_text(value) for value in values]
        while cells and not cells[-1]:
            cells.pop()
        if any(cells):
            yield number, " | ".join(cells)


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.15g}"  # 0.1 + 0.2 reads 0.3, not 0.30000000000000004
    if isinstance(value, dt.datetime) and value.time() == dt.time():
        return value.date().isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return " ".join(str(value).split())
