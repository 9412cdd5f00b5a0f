"""The parse step as a plain library: bytes on disk to text segments with provenance.

    from tasks.parsers import parse_file
    document = parse_file(path, filename="report.pdf", password=None)

Parsers plug in through the ``Parser`` protocol and ``register_parser`` (or the ``parser``
decorator); the built-ins below register themselves that way on import.
"""

from tasks.parsers import (  # noqa: F401 - imported to register the built-in parsers
    jsondoc,
    pdf,
    slides,
    spreadsheet,
    tabular,
    text,
    webpage,
    word,
)
from tasks.parsers.base import (
    SEGMENT_CHARS,
    FunctionParser,
    ParseInput,
    Parser,
    parser,
    register_parser,
    registered_media_types,
    unregister_parser,
)
from tasks.parsers.core import parse_file
from tasks.parsers.detect import detect_media_type
from tasks.parsers.pdf import MAX_PDF_PAGES

__all__ = [
    "MAX_PDF_PAGES",
    "SEGMENT_CHARS",
    "FunctionParser",
    "ParseInput",
    "Parser",
    "detect_media_type",
    "parse_file",
    "parser",
    "register_parser",
    "registered_media_types",
    "unregister_parser",
]
