"""The parse step as a plain library: bytes on disk to text segments with provenance.

    from tasks.parsers import parse_file
    document = parse_file(path, filename="report.pdf", password=None)

Parsers plug in through the ``Parser`` protocol: the ``ingestflow.parsers`` entry points
(the built-ins are declared there too) or ``register_parser`` at run time.
"""

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

__all__ = [
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
