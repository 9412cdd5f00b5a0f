"""The Parser extension point: one small protocol and a registry, looked up by media type.

A parser turns one local file of a known media type into text segments. A function becomes
one with the ``parser`` decorator; a class with state implements the protocol::

    @parser("application/x-my-format", label="MYFMT")
    def parse_my_format(source: ParseInput) -> Iterator[Segment]: ...

The ``ingestflow.parsers`` entry points name the parsers, the built-ins exactly as a plugin
package would (``my-format = "my_package.parsers:parse_my_format"``).
``register_parser(my_parser)`` adds one at run time; it takes over the media types it names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ingestflow.core import registry
from ingestflow.core.errors import ConfigError, UnsupportedTypeError
from ingestflow.core.registry import Registry
from ingestflow.core.types import Segment

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
XLSM = "application/vnd.ms-excel.sheet.macroEnabled.12"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
HTML = "text/html"
CSV = "text/csv"
TSV = "text/tab-separated-values"
JSON = "application/json"
MARKDOWN = "text/markdown"
TEXT = "text/plain"

# Rows (CSV, sheets, JSON lines) are grouped into segments of about this many characters:
# big enough to keep context together, small enough that provenance stays precise. The
# chunker splits further.
SEGMENT_CHARS = 4000


@dataclass(frozen=True)
class ParseInput:
    """What a parser gets: the local file, its detected media type and the caller's hints."""

    path: Path
    media_type: str
    filename: str = ""
    # repr=False: this object may end up in logs or tracebacks; the password must not.
    password: str | None = field(default=None, repr=False)


@runtime_checkable
class Parser(Protocol):
    """Turns files of ``media_types`` into ordered text segments.

    ``label`` is the short human name used in error reasons ("PDF", "DOCX"). ``parse`` may
    raise any exception for broken input: ``parse_file`` turns unknown ones into
    ``ParseError`` with the label and a short cause. A parser may also list ``extensions``
    (".logbook"): a file whose content the built-in detection cannot name goes to the parser
    that claims its extension.
    """

    @property
    def media_types(self) -> tuple[str, ...]: ...

    @property
    def label(self) -> str: ...

    def parse(self, source: ParseInput) -> Iterable[Segment]: ...


class Reroute(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a parser, before yielding anything, when the content turns out to be another
    type (for example invalid JSON that is still readable text)."""

    def __init__(self, media_type: str) -> None:
        super().__init__(media_type)
        self.media_type = media_type


PARSERS: Registry[Parser] = Registry(registry.PARSERS, "parser")
_by_type: dict[str, Parser] | None = None  # media type -> parser, built on first lookup
_index_lock = threading.Lock()


def _index() -> dict[str, Parser]:
    """Every parser by media type: the declared ones, then those registered at run time."""
    global _by_type
    with _index_lock:
        if _by_type is None:
            index: dict[str, Parser] = {}
            for name, found in PARSERS.all().items():
                for media_type in found.media_types:
                    if media_type in index:
                        raise ConfigError(f"parser {name!r} claims {media_type}, which has one")
                    index[media_type] = found
            _by_type = index
        return _by_type


def register_parser(parser: Parser, *, replace: bool = False) -> Parser:
    """Register ``parser`` for each of its media types; a clash is an error unless ``replace``."""
    index = _index()
    for media_type in parser.media_types:
        if media_type in index and not replace and index[media_type] is not parser:
            raise ValueError(f"a parser for {media_type} is already registered")
    PARSERS.register(parser.label, parser, replace=True)
    for media_type in parser.media_types:
        index[media_type] = parser
    return parser


def unregister_parser(media_type: str) -> None:
    """Forget the parser for ``media_type`` (mainly for tests and plugin overrides)."""
    _index().pop(media_type, None)


def get_parser(media_type: str) -> Parser:
    """The parser registered for ``media_type``, or ``UnsupportedTypeError``."""
    try:
        return _index()[media_type]
    except KeyError:
        raise UnsupportedTypeError(f"unsupported file type ({media_type})") from None


def registered_media_types() -> list[str]:
    """Every media type that currently has a parser."""
    return sorted(_index())


def claimed_extension(extension: str) -> str | None:
    """The media type of the parser that lists ``extension`` (".logbook"), if one does."""
    for media_type, found in _index().items():
        if extension in getattr(found, "extensions", ()):
            return media_type
    return None


ParseFunc = Callable[[ParseInput], Iterable[Segment]]


@dataclass(frozen=True)
class FunctionParser:
    """Adapts a plain function to the ``Parser`` protocol."""

    media_types: tuple[str, ...]
    label: str
    func: ParseFunc
    extensions: tuple[str, ...] = ()

    def parse(self, source: ParseInput) -> Iterable[Segment]:
        return self.func(source)


def parser(
    *media_types: str, label: str, extensions: tuple[str, ...] = ()
) -> Callable[[ParseFunc], FunctionParser]:
    """Decorator: the function as a ``Parser`` of ``media_types``, named ``label`` in errors;
    ``extensions`` name files its content detection would not recognise."""

    def wrap(func: ParseFunc) -> FunctionParser:
        return FunctionParser(media_types, label, func, extensions)

    return wrap


def group_lines(
    items: Iterable[tuple[Any, str]],
    provenance: Callable[[Any, Any], dict[str, Any]],
    max_chars: int = SEGMENT_CHARS,
) -> Iterator[Segment]:
    """Group ``(key, line)`` pairs into segments of about ``max_chars``.

    ``provenance(first_key, last_key)`` describes each group, e.g. a row range. Used for rows
    so that a spreadsheet never becomes one segment per cell or row.
    """
    lines: list[str] = []
    first = last = None
    size = 0
    for key, line in items:
        if lines and size + len(line) > max_chars:
            yield Segment("\n".join(lines), provenance(first, last))
            lines, size = [], 0
        if not lines:
            first = key
        lines.append(line)
        last = key
        size += len(line) + 1
    if lines:
        yield Segment("\n".join(lines), provenance(first, last))


def row_range(first: int, last: int) -> str:
    """``"2-40"``: the row provenance format (always a range, ``"7-7"`` for one row, so that
    readers can split it without special cases)."""
    return f"{first}-{last}"
