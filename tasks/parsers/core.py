"""``parse_file``: detect the type, run the registered parser, normalise the result and the
errors. This is the only place where a parser's unknown exceptions become ``ParseError``."""

from __future__ import annotations

from pathlib import Path

from ingestflow.core.errors import EmptyDocumentError, IngestError, ParseError
from ingestflow.core.types import ParsedDocument, Segment
from tasks.parsers.base import ParseInput, Parser, Reroute, get_parser
from tasks.parsers.detect import detect_media_type

_MAX_REROUTES = 2  # a parser may hand over to another once or twice, never in a loop
_CAUSE_CHARS = 200


def parse_file(path: Path, *, filename: str = "", password: str | None = None) -> ParsedDocument:
    """Parse the local file at ``path`` into text segments with provenance.

    The type comes from the content; ``filename`` (the original name, default the path's)
    is only a hint for Markdown/CSV/JSON versus plain text. ``password`` opens encrypted
    PDFs. Raises ``UnsupportedTypeError``, ``EncryptedDocumentError``, ``EmptyDocumentError``
    or ``ParseError`` (all permanent) with a short reason that never holds the password.
    """
    path = Path(path)
    media_type = detect_media_type(path, filename)
    for _ in range(_MAX_REROUTES + 1):
        parser = get_parser(media_type)
        source = ParseInput(path, media_type, filename or path.name, password)
        try:
            segments = _collect(parser, source)
        except Reroute as reroute:
            media_type = reroute.media_type
            continue
        if not segments:
            raise EmptyDocumentError(f"{parser.label} contains no text")
        return ParsedDocument(media_type=media_type, segments=segments)
    raise ParseError(f"no parser could settle the type of this file (last tried {media_type})")


def _collect(parser: Parser, source: ParseInput) -> list[Segment]:
    try:
        cleaned = (_clean(segment) for segment in parser.parse(source))
        return [segment for segment in cleaned if segment is not None]
    except (IngestError, Reroute):
        raise
    except Exception as e:  # the boundary: third-party parsers raise anything on bad input
        reason = damaged_reason(parser.label, e, source.password)
        # Some libraries quote the path they opened: a temp file name, noise to the reader.
        reason = reason.replace(str(source.path), source.filename or source.path.name)
        raise ParseError(reason) from e


def _clean(segment: Segment) -> Segment | None:
    # NUL cannot be stored in a Postgres text column, and pypdf/UTF-16 mishaps produce it.
    text = segment.text.replace("\x00", "").strip()
    if not text:
        return None
    return segment if text == segment.text else Segment(text, segment.provenance)


def damaged_reason(label: str, error: BaseException, password: str | None = None) -> str:
    """``"<label> is damaged or unreadable: <first line of the cause>"``, password-free."""
    # KeyError's str() is the repr of its key; its argument reads better.
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    lines = str(message).strip().splitlines()
    cause = lines[0].strip()[:_CAUSE_CHARS] if lines else ""
    if not cause:
        cause = type(error).__name__
    if password and password in cause:
        cause = cause.replace(password, "***")
    return f"{label} is damaged or unreadable: {cause}"
