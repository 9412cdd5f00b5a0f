"""CSV and TSV: sniffed delimiter, first row as header, rows as ``column: value`` lines."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from ingestflow.core.types import Segment
from tasks.parsers.base import CSV, TSV, ParseInput, group_lines, parser, row_range
from tasks.parsers.encoding import decode_text

_DELIMITERS = ",;\t|"
# csv.Sniffer's quote regexes backtrack quadratically: on 64 KB of unclosed quotes they
# took 23 s of CPU, on 16 KB about 1 s. A few hundred lines are plenty to tell the delimiter.
_SNIFF_CHARS = 16 * 1024


@parser(CSV, TSV, label="CSV")
def parse_csv(source: ParseInput) -> Iterator[Segment]:
    """Each data row becomes ``header1: value1 | header2: value2`` (empty values left out), so
    every chunk reads on its own; rows are grouped into segments with ``{"rows": "2-40"}``.

    Rows count records, the header being row 1 (what a spreadsheet shows, even when a quoted
    value spans lines). Extra cells beyond the header get ``column N`` names.
    """
    text = decode_text(source.path.read_bytes())
    delimiter = sniff_delimiter(text, default="\t" if source.media_type == TSV else ",")
    records = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    lines: list[tuple[int, str]] = []
    for number, row in enumerate(records, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [" ".join(cell.split()) for cell in row]
            lines.append((number, " | ".join(c for c in header if c)))
        else:
            lines.append((number, _row_text(header, row)))
    if len(lines) > 1:
        lines = lines[1:]  # the header is in every row line already
    yield from group_lines(lines, lambda first, last: {"rows": row_range(first, last)})


def sniff_delimiter(text: str, *, default: str) -> str:
    """The delimiter that splits the first lines most consistently, else ``default``."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # a cut line would mislead the sniffer
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:  # one column, or too irregular to tell
        return default


def _row_text(header: list[str], row: list[str]) -> str:
    pairs = []
    for index, value in enumerate(row):
        value = " ".join(value.split())
        if value:
            name = header[index] if index < len(header) and header[index] else f"column {index + 1}"
            pairs.append(f"{name}: {value}")
    return " | ".join(pairs)
