"""The streaming multipart reader: framing across chunk splits, limits, skipping, filenames."""

from __future__ import annotations

import asyncio
import pickle
import tracemalloc
from collections.abc import AsyncIterator, Iterable

import pytest

from api.multipart import (
    MAX_FILENAME_BYTES,
    MultipartError,
    Part,
    iter_parts,
    safe_filename,
)
from ingestflow.core.errors import InvalidRequestError, is_permanent

BOUNDARY = "----ingestflowTestBoundary7MA4YWxk"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
# File bodies that look like framing: CRLFs, dashes, a boundary missing its last character.
TRICKY = b"\r\n--\r\n" + f"\r\n--{BOUNDARY[:-1]}".encode() + b"\r\n\r\n-- end \r"


def field(name: str, value: str | bytes) -> tuple[bytes, bytes]:
    head = f'Content-Disposition: form-data; name="{name}"\r\n'.encode()
    return head, value.encode() if isinstance(value, str) else value


def file(name: str, filename: str, data: bytes, ctype: str = "application/pdf") -> tuple:
    head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    return (head + f"Content-Type: {ctype}\r\n").encode(), data


def body(*parts: tuple[bytes, bytes], close: bool = True) -> bytes:
    """A multipart body; each part is (header lines, data)."""
    start = f"--{BOUNDARY}\r\n".encode()
    out = b"".join(start + head + b"\r\n" + data + b"\r\n" for head, data in parts)
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


async def pieces(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split(data: bytes, size: int | None) -> list[bytes]:
    if size is None:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


def collect(chunks: Iterable[bytes], content_type: str = CONTENT_TYPE, **limits: int) -> list:
    """(name, filename, content type, body) of every part, each read in full."""

    async def run() -> list:
        found = []
        stream = iter_parts(pieces(chunks), content_type, **{"max_parts": 10, **limits})
        async for part in stream:
            data = b"".join([chunk async for chunk in part.chunks()])
            found.append((part.name, part.filename, part.content_type, data))
        return found

    return asyncio.run(run())


def error_code(chunks: Iterable[bytes], content_type: str = CONTENT_TYPE, **limits: int) -> str:
    with pytest.raises(MultipartError) as caught:
        collect(chunks, content_type, **limits)
    return caught.value.code


FORM = body(
    field("collection", "reports"),
    file("file", "q3.pdf", b"%PDF-1.7 " + TRICKY * 3),
    field("metadata", '{"team": "finance"}'),
    file("file", "notes.txt", TRICKY, "text/plain"),
    field("empty", ""),
)
EXPECTED = [
    ("collection", None, "text/plain", b"reports"),
    ("file", "q3.pdf", "application/pdf", b"%PDF-1.7 " + TRICKY * 3),
    ("metadata", None, "text/plain", b'{"team": "finance"}'),
    ("file", "notes.txt", "text/plain", TRICKY),
    ("empty", None, "text/plain", b""),
]


@pytest.mark.parametrize("size", [1, 7, None], ids=["1-byte", "7-byte", "whole"])
def test_two_files_and_fields_come_out_in_order_whatever_the_chunking(size: int | None) -> None:
    assert collect(split(FORM, size)) == EXPECTED


def test_every_split_point_of_the_body_gives_the_same_parts() -> None:
    for at in range(len(FORM) + 1):
        assert collect([FORM[:at], FORM[at:]]) == EXPECTED, f"split at byte {at}"


def test_empty_chunks_leading_crlf_and_an_epilogue_are_tolerated() -> None:
    chunks = [b"", b"\r\n", FORM, b"", b"epilogue after the closing boundary"]
    assert collect(chunks) == EXPECTED


def test_a_form_without_parts_yields_nothing() -> None:
    assert collect([f"--{BOUNDARY}--\r\n".encode()]) == []


def test_read_text_and_a_quoted_unicode_filename() -> None:
    data = body(
        field("title", "Über 5 €"),
        (
            'Content-Disposition: form-data; name="f"; filename="résumé \\"v2\\".pdf"\r\n'.encode(),
            b"x",
        ),
    )

    async def run() -> tuple[str, str | None]:
        parts = iter_parts(pieces(split(data, 3)), CONTENT_TYPE, max_parts=2)
        title = await (await anext(parts)).read_text()
        return title, (await anext(parts)).filename

    assert asyncio.run(run()) == ("Über 5 €", 'résumé "v2".pdf')


def test_filename_star_is_ignored_as_rfc_7578_says_and_percent_encoding_is_kept() -> None:
    head = b"Content-Disposition: form-data; name=f; filename=\"a%22b.txt\"; filename*=UTF-8''x.txt"
    assert collect([body((head + b"\r\n", b"1"))]) == [("f", "a%22b.txt", "text/plain", b"1")]


@pytest.mark.parametrize("size", [1, 7, None], ids=["1-byte", "7-byte", "whole"])
def test_parts_the_consumer_skips_or_half_reads_are_discarded(size: int | None) -> None:
    data = body(
        file("skipped", "a.bin", TRICKY * 50),
        file("half", "b.bin", TRICKY * 50),
        field("kept", "value"),
    )

    async def run() -> list[tuple[str, bytes]]:
        seen = []
        async for part in iter_parts(pieces(split(data, size)), CONTENT_TYPE, max_parts=3):
            if part.name == "half":
                chunks = part.chunks()
                seen.append((part.name, await anext(chunks)))
            elif part.name == "kept":
                seen.append((part.name, (await part.read_text()).encode()))
        return seen

    half, kept = asyncio.run(run())
    assert half[0] == "half" and len(half[1]) > 0 and TRICKY.startswith(half[1][: len(TRICKY)])
    assert kept == ("kept", b"value")


def test_reading_a_part_after_moving_on_or_twice_is_a_programming_error() -> None:
    data = body(file("a", "a.bin", b"x" * 100), file("b", "b.bin", b"y"), field("c", "z"))

    async def run() -> None:
        parts = iter_parts(pieces(split(data, 10)), CONTENT_TYPE, max_parts=3)
        first = await anext(parts)
        chunks = first.chunks()
        await anext(chunks)
        second = await anext(parts)
        with pytest.raises(RuntimeError, match="read it first"):
            await anext(chunks)
        assert await second.read_text() == "y"
        with pytest.raises(RuntimeError, match="already read"):
            await second.read_text()
        assert await (await anext(parts)).read_text() == "z"

    asyncio.run(run())


@pytest.mark.parametrize(
    "data",
    [
        FORM[: len(FORM) // 2],  # cut inside a file's data
        FORM[: FORM.index(b"Content-Type")],  # cut inside a part's headers
        FORM[: -len(b"--\r\n")],  # the closing boundary lacks its "--"
        body(field("a", "1"), close=False),  # no closing boundary at all
        b"",  # no body
    ],
    ids=["mid-data", "mid-headers", "unterminated-boundary", "no-closing-boundary", "empty"],
)
@pytest.mark.parametrize("size", [1, 7, None], ids=["1-byte", "7-byte", "whole"])
def test_a_truncated_body_is_malformed(data: bytes, size: int | None) -> None:
    assert error_code(split(data, size)) == "malformed_multipart"


def test_parts_before_a_truncation_are_delivered_first() -> None:
    data = body(field("a", "1"), field("b", "2"), close=False)

    async def run() -> list[str]:
        names = []
        with pytest.raises(MultipartError, match="ended before the closing boundary"):
            async for part in iter_parts(pieces([data]), CONTENT_TYPE, max_parts=5):
                names.append(part.name)
                await part.read_text()
        return names

    assert asyncio.run(run()) == ["a", "b"]


@pytest.mark.parametrize(
    "data",
    [
        b"preamble text\r\n" + FORM,  # junk before the first boundary
        FORM.replace(f"--{BOUNDARY}\r\n".encode(), b"--wrong-boundary\r\n", 1),
        FORM.replace(b"Content-Type: application/pdf\r\n", b"Content Type: x\r\n"),
        body((b"Content-Type: text/plain\r\n", b"no disposition")),
        body((b"Content-Disposition: form-data\r\n", b"no name")),
        body((b'Content-Disposition: attachment; name="a"\r\n', b"not form-data")),
    ],
    ids=["preamble", "wrong-boundary", "bad-header", "no-disposition", "no-name", "attachment"],
)
def test_bad_framing_is_malformed(data: bytes) -> None:
    assert error_code([data]) == "malformed_multipart"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "multipart/form-data",
        'multipart/form-data; boundary=""',
        f"multipart/mixed; boundary={BOUNDARY}",
        "multipart/form-data; boundary=" + "b" * 300,
        "",
    ],
)
def test_anything_but_multipart_form_data_with_a_boundary_is_refused(content_type: str) -> None:
    assert error_code([FORM], content_type) == "not_multipart"


def test_the_content_type_is_matched_case_insensitively_and_may_quote_the_boundary() -> None:
    content_type = f'Multipart/Form-Data; charset=utf-8; boundary="{BOUNDARY}"'
    assert collect([FORM], content_type) == EXPECTED


def test_too_many_parts_after_delivering_the_allowed_ones() -> None:
    assert len(collect([FORM], max_parts=5)) == 5

    async def run() -> list[str]:
        names = []
        with pytest.raises(MultipartError) as caught:
            async for part in iter_parts(pieces([FORM]), CONTENT_TYPE, max_parts=4):
                names.append(part.name)
                await part.read_text()
        assert caught.value.code == "too_many_parts"
        return names

    assert asyncio.run(run()) == [name for name, *_ in EXPECTED[:4]]


def test_a_field_over_max_field_bytes_is_refused_by_read_text() -> None:
    async def read(data: bytes, size: int | None) -> str:
        parts = iter_parts(pieces(split(data, size)), CONTENT_TYPE, max_parts=1, max_field_bytes=10)
        return await (await anext(parts)).read_text()

    assert asyncio.run(read(body(field("a", "0123456789")), 3)) == "0123456789"
    for size in (1, 7, None):
        with pytest.raises(MultipartError) as caught:
            asyncio.run(read(body(field("a", "0123456789X")), size))
        assert caught.value.code == "field_too_large"


def test_a_field_that_is_not_utf8_is_malformed() -> None:
    async def read() -> str:
        parts = iter_parts(pieces([body(field("a", b"\xff\xfe"))]), CONTENT_TYPE, max_parts=1)
        return await (await anext(parts)).read_text()

    with pytest.raises(MultipartError) as caught:
        asyncio.run(read())
    assert caught.value.code == "malformed_multipart"


@pytest.mark.parametrize(
    "head",
    [
        f'Content-Disposition: form-data; name="{"n" * 300}"\r\n'.encode(),  # one long line
        # two short lines that add up
        b'Content-Disposition: form-data; name="a"\r\n' + b"X-Pad: " + b"p" * 90 + b"\r\n",
        b'Content-Disposition: form-data; name="a"\r\n' + b"X-Pad: pppp\r\n" * 20,  # many headers
    ],
    ids=["long-line", "total-size", "many-headers"],
)
@pytest.mark.parametrize("size", [1, 7, None], ids=["1-byte", "7-byte", "whole"])
def test_oversized_part_headers_are_refused(head: bytes, size: int | None) -> None:
    data = body((head, b"x"))
    assert error_code(split(data, size), max_header_bytes=128) == "header_too_large"


def test_errors_are_permanent_invalid_requests_that_keep_their_code_when_pickled() -> None:
    with pytest.raises(MultipartError) as caught:
        collect([FORM], max_parts=1)
    error = caught.value
    assert isinstance(error, InvalidRequestError) and is_permanent(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.code, copy.reason) == (type(error), "too_many_parts", error.reason)


def test_a_50_mb_part_streams_through_in_network_sized_chunks() -> None:
    """The body is never held whole: each chunk handed on is one network chunk at most."""
    block = bytes(range(256)) * 256  # 64 KiB
    blocks = 800  # 50 MiB
    head, tail = body(file("big", "big.bin", b"")).split(b"\r\n--" + BOUNDARY.encode() + b"--")
    largest = total = 0

    async def network() -> AsyncIterator[bytes]:
        yield head
        for _ in range(blocks):
            yield block
        yield b"\r\n--" + BOUNDARY.encode() + b"--" + tail

    async def run() -> Part:
        nonlocal largest, total
        parts = iter_parts(network(), CONTENT_TYPE, max_parts=1)
        part = await anext(parts)
        async for chunk in part.chunks():
            largest, total = max(largest, len(chunk)), total + len(chunk)
        assert [p async for p in parts] == []
        return part

    tracemalloc.start()
    try:
        part = asyncio.run(run())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (part.name, part.filename, total) == ("big", "big.bin", blocks * len(block))
    assert largest <= len(block) + len(BOUNDARY) + 4 <= 1024 * 1024
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} bytes"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("/abs/path/to/file.txt", "file.txt"),
        ("C:\\Users\\me\\Desktop\\q3.xlsx", "q3.xlsx"),
        ("dir/", "upload"),
        ("..", "upload"),
        (".", "upload"),
        ("a/..", "upload"),
        ("..\x00", "upload"),
        ("evil\x00.pdf", "evil.pdf"),
        ("line\r\nbreak\t.txt", "linebreak.txt"),
        ("bell\x07\x1b[31m.txt", "bell[31m.txt"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # a bidi override disguising .exe
        ("sep\u2028arated.txt", "separated.txt"),
        ("bad\udcff.txt", "bad.txt"),  # a lone surrogate (undecodable byte)
        ("cafe\u0301.txt", "caf\u00e9.txt"),  # NFD -> NFC
        ("日本語の資料.pdf", "日本語の資料.pdf"),
        ("  spaced name .md  ", "spaced name .md"),
        (".env", ".env"),
        ("...", "..."),
        ("", "upload"),
        ("   ", "upload"),
        (None, "upload"),
        ("\x00\x01", "upload"),
    ],
)
def test_safe_filename_cleans_what_clients_send(raw: str | None, expected: str) -> None:
    assert safe_filename(raw) == expected


@pytest.mark.parametrize(
    ("raw", "kept_suffix"),
    [
        ("a" * 1000 + ".pdf", ".pdf"),
        ("é" * 1000 + ".docx", ".docx"),  # 2-byte characters
        ("日" * 1000 + ".txt", ".txt"),  # 3-byte characters: 196 bytes do not divide by 3
        ("😀" * 1000, ""),  # 4-byte characters, no extension
        ("x" * 1000 + "." + "y" * 100, ""),  # a "suffix" too long to be an extension
        ("." + "z" * 1000, ""),  # a dot file: no stem, so no extension
    ],
)
def test_long_filenames_are_capped_in_utf8_bytes_keeping_the_extension(
    raw: str, kept_suffix: str
) -> None:
    name = safe_filename(raw)
    encoded = name.encode("utf-8")
    assert MAX_FILENAME_BYTES - 4 < len(encoded) <= MAX_FILENAME_BYTES
    assert name.endswith(kept_suffix) and raw.startswith(name[: -len(kept_suffix) or None])
