"""A streaming multipart/form-data reader for the upload routes.

Starlette's ``request.form()`` parses the whole body (spooling files to disk) before a route
runs, so a size limit cannot stop an oversized upload early and nothing can be streamed onward.
``iter_parts`` instead feeds ``request.stream()`` through python-multipart's push parser and
hands the route one ``Part`` at a time, while the body is still arriving. A part's body is
streamed with ``Part.chunks()``: each network chunk is parsed and its bytes handed on before
the next chunk is read, so at most one network chunk (plus a boundary's worth of look-behind)
is in flight, however large the upload.

Parts must be read in order. Asking for the next part discards whatever the consumer left
unread of the current one (still streaming, never buffered).

Framing (boundaries split across chunks, CRLF handling, header syntax) is python-multipart's.
Its header rules apply too: the ``filename*=`` extended syntax is ignored because RFC 7578
section 4.2 forbids it in form data, the plain ``filename`` stays authoritative, and filenames
are passed on as sent (browsers send raw UTF-8; any percent-encoding is kept as is), except
that python-multipart cuts a Windows full path (an old Internet Explorer habit) to its basename.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import parse_options_header

from ingestflow.core.errors import InvalidRequestError

MAX_FILENAME_BYTES = 200
# A longer "extension" is not one (a dot inside a long name): the cap then cuts the whole name.
_MAX_EXTENSION_BYTES = 16
FALLBACK_FILENAME = "upload"
# Control, format (bidi overrides that disguise an extension), surrogate (not encodable as
# UTF-8) and line/paragraph separator characters.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class MultipartError(InvalidRequestError, code="malformed_multipart"):
    """The body is not acceptable multipart/form-data: bad framing, a truncated body, a part
    without a name. The subclasses name the other faults; each class has a stable ``code``.
    """


class NotMultipartError(MultipartError, code="not_multipart"):
    """The Content-Type is not multipart/form-data with a usable boundary."""


class TooManyPartsError(MultipartError, code="too_many_parts"): ...


class FieldTooLargeError(MultipartError, code="field_too_large"): ...


class HeaderTooLargeError(MultipartError, code="header_too_large"): ...


@dataclass(eq=False)
class Part:
    """One form part. Read its body with ``chunks()`` or ``read_text()``, before the next part."""

    name: str
    filename: str | None  # raw, as sent; None for a plain field. Clean it with safe_filename().
    content_type: str  # "text/plain" when the part has no Content-Type (RFC 7578 section 4.4)
    _reader: _Reader = field(repr=False)
    _max_field_bytes: int = field(repr=False)
    _drained: bool = field(default=False, repr=False)
    _passed: bool = field(default=False, repr=False)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Stream the part's body: each chunk is a slice of one network chunk, never more.

        A body can be read once, and only until the consumer asks ``iter_parts`` for the next
        part; reading it after that is a programming error (``RuntimeError``).
        """
        if self._drained:
            raise RuntimeError(f"the body of part {self.name!r} was already read")
        while True:
            if self._passed:
                raise RuntimeError(f"part {self.name!r} was left for the next part; read it first")
            kind, value = await self._reader.next_event()
            if kind == "end":
                self._drained = True
                return
            yield value

    async def read_text(self) -> str:
        """The whole body of a small plain field as UTF-8 text, at most ``max_field_bytes``."""
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
            if len(data) > self._max_field_bytes:
                raise FieldTooLargeError(
                    f"form field {self.name!r} is larger than {self._max_field_bytes} bytes"
                )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError(f"form field {self.name!r} is not valid UTF-8") from None


async def iter_parts(
    request_stream: AsyncIterator[bytes],
    content_type: str,
    *,
    max_parts: int,
    max_field_bytes: int = 64 * 1024,
    max_header_bytes: int = 16 * 1024,
) -> AsyncIterator[Part]:
    """Yield the parts of a multipart/form-data body as they arrive, in order.

    ``content_type`` is the request's Content-Type header (the boundary comes from it),
    ``request_stream`` is ``request.stream()``. ``max_header_bytes`` bounds one part's header
    block (and each header line). Errors are ``MultipartError`` and are raised in body order:
    the parts before a fault are yielded (and readable) first.
    """
    reader = _Reader(
        request_stream,
        _boundary(content_type),
        max_parts=max_parts,
        max_header_bytes=max_header_bytes,
    )
    while True:
        kind, value = await reader.next_event()
        if kind == "done":
            return
        # Data and end events of a part the consumer left unread arrive here and are dropped.
        if kind == "headers":
            part = _new_part(value, reader, max_field_bytes)
            yield part
            part._passed = True


def safe_filename(raw: str | None) -> str:
    """The basename a client sent, made safe as the last segment of an object-store key.

    Never refuses a name, it cleans it: drops control, format (bidi override), surrogate and
    line-separator characters; keeps only what follows the last ``/`` or ``\\``; normalises
    to NFC; strips surrounding whitespace; caps the name at ``MAX_FILENAME_BYTES`` of UTF-8
    without splitting a character, keeping a short extension. ``"."``, ``".."`` and an empty
    result become ``"upload"``.
    """
    name = "".join(ch for ch in raw or "" if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    name = re.split(r"[/\\]", name)[-1]
    name = _cap_bytes(unicodedata.normalize("NFC", name).strip())
    return FALLBACK_FILENAME if name in ("", ".", "..") else name


def _cap_bytes(name: str) -> str:
    if len(name.encode()) <= MAX_FILENAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    suffix = dot + extension
    if not stem or len(suffix.encode()) > _MAX_EXTENSION_BYTES:
        stem, suffix = name, ""
    # Cutting UTF-8 bytes can split the last character; "ignore" drops only that fragment.
    head = stem.encode()[: MAX_FILENAME_BYTES - len(suffix.encode())].decode("utf-8", "ignore")
    return head + suffix


def _boundary(content_type: str) -> bytes:
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if media_type != b"multipart/form-data" or not boundary:
        raise NotMultipartError("expected Content-Type: multipart/form-data with a boundary")
    return boundary


def _new_part(headers: dict[str, bytes], reader: _Reader, max_field_bytes: int) -> Part:
    disposition, options = parse_options_header(headers.get("content-disposition"))
    if disposition != b"form-data" or b"name" not in options:
        raise MultipartError("every part needs a 'Content-Disposition: form-data; name=...' header")
    filename = options.get(b"filename")
    content_type = headers.get("content-type", b"").decode("latin-1").strip()
    return Part(
        name=options[b"name"].decode("utf-8", "replace"),
        filename=None if filename is None else filename.decode("utf-8", "replace"),
        content_type=content_type or "text/plain",
        _reader=reader,
        _max_field_bytes=max_field_bytes,
    )


class _Reader:
    """Feeds the push parser from the async stream, one network chunk at a time.

    The parser's callbacks queue events: ``("headers", {name: value})`` when a part's headers
    are complete, ``("data", bytes)``, ``("end", None)`` at the end of a part, ``("done",
    None)`` after the closing boundary. A fault is queued after the events before it, so the
    consumer meets it in body order; after it, the reader only raises it again.
    """

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        boundary: bytes,
        *,
        max_parts: int,
        max_header_bytes: int,
    ) -> None:
        self._stream = aiter(stream)
        self._events: deque[tuple[str, Any]] = deque()
        self._error: MultipartError | None = None
        self._max_parts, self._max_header_bytes = max_parts, max_header_bytes
        self._parts = self._header_bytes = 0
        self._headers: dict[str, bytes] = {}
        self._header_field, self._header_value = bytearray(), bytearray()
        try:
            self._parser = MultipartParser(
                boundary,
                callbacks={
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": lambda: self._events.append(("headers", self._headers)),
                    "on_part_data": lambda data, start, end: self._events.append(
                        ("data", data[start:end])
                    ),
                    "on_part_end": lambda: self._events.append(("end", None)),
                    "on_end": lambda: self._events.append(("done", None)),
                },
                max_header_size=max_header_bytes,
            )
        except FormParserError:  # a boundary longer than the parser accepts
            raise NotMultipartError("the multipart boundary is too long") from None

    async def next_event(self) -> tuple[str, Any]:
        """The next parser event, reading more of the body when none is queued."""
        while not self._events:
            if self._error is not None:
                raise self._error
            await self._feed()
        kind, value = self._events.popleft()
        if kind == "error":
            raise value
        return kind, value

    async def _feed(self) -> None:
        try:
            chunk = await anext(self._stream)
        except StopAsyncIteration:
            self._fail(MultipartError("the body ended before the closing boundary"))
            return
        try:
            self._parser.write(chunk)
        except MultipartError as exc:  # raised by our own callbacks
            self._fail(exc)
        except MultipartParseError as exc:
            # python-multipart's own header limits (line size, header count) are header faults.
            if str(exc).startswith("Maximum header"):
                self._fail(HeaderTooLargeError(f"a part's headers are too large: {exc}"))
            else:
                self._fail(MultipartError(f"malformed multipart body: {exc}"))

    def _fail(self, error: MultipartError) -> None:
        self._error = error
        self._events.append(("error", error))

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise TooManyPartsError(f"more than {self._max_parts} form parts")
        self._headers, self._header_bytes = {}, 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._count_header_bytes(4)  # ": " and CRLF, so many empty headers still add up
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._max_header_bytes:
            raise HeaderTooLargeError(
                f"a part's headers are larger than {self._max_header_bytes} bytes"
            )
