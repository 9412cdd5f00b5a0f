"""Bytes to text for the text-based formats: BOMs, UTF-16 without BOM, UTF-8, then detection."""

from __future__ import annotations

import codecs
import unicodedata

from charset_normalizer import from_bytes

from ingestflow.core.errors import UnsupportedTypeError

# Longest first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Control bytes that never occur in real text (tab, newlines, form feed and ESC do).
_CONTROL = frozenset(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D, 0x1B}
# WHATWG: browsers decode these declared labels as windows-1252, and so do we.
_WINDOWS_1252_ALIASES = frozenset({"ascii", "us-ascii", "iso-8859-1", "latin-1", "latin1"})
_SAMPLE = 64 * 1024
# What Western European text uses beyond ASCII: Latin-1 letters and typographic marks.
_WESTERN_CHARS = frozenset(
    [chr(c) for c in range(0xC0, 0x100)] + list("ŒœŠšŽžŸƒ“”‘’‚„–—…•€«»°·±§©®™¡¿¢£¥\xa0")
)
# Languages whose usual single-byte encoding is windows-1252 (charset-normalizer's names).
# fmt: off
_WESTERN_LANGUAGES = frozenset({
    "English", "French", "German", "Spanish", "Portuguese", "Italian", "Dutch", "Danish",
    "Swedish", "Norwegian", "Finnish", "Indonesian", "Catalan",
})
# fmt: on
_UNPRINTABLE = frozenset({"Cc", "Co", "Cn", "Cs"})
_SPACES = frozenset("\t\n\r\f\x1b")


def bom_encoding(data: bytes) -> str | None:
    """The codec named by a byte-order mark at the start of ``data``, if any."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec
    return None


def utf16_without_bom(data: bytes) -> str | None:
    """``utf-16-le``/``-be`` when the NUL pattern says so.

    Mostly-ASCII UTF-16 has a NUL in every other byte. Such bytes also "decode" as UTF-8
    (NUL is valid UTF-8), so this must be checked before trying UTF-8.
    """
    sample = data[: _SAMPLE & ~1]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    even_nul, odd_nul = even.count(0) / len(even), odd.count(0) / len(odd)
    if odd_nul > 0.3 and even_nul < 0.02:
        return "utf-16-le"
    if even_nul > 0.3 and odd_nul < 0.02:
        return "utf-16-be"
    return None


def looks_binary(data: bytes) -> bool:
    """True when ``data`` (a sample) is not text in any common encoding."""
    if bom_encoding(data) or utf16_without_bom(data):
        return False
    sample = data[:_SAMPLE]
    if not sample:
        return False
    controls = sum(1 for byte in sample if byte in _CONTROL)
    return controls / len(sample) > 0.01


def sniff_text(head: bytes) -> str | None:
    """A rough decoding of the first bytes, good enough to look at the structure, or
    ``None`` when they look binary. Structural characters (``<``, ``{``, ``#``) are ASCII
    in every encoding we accept except UTF-16/32, which are handled by their BOM/pattern."""
    codec = bom_encoding(head) or utf16_without_bom(head)
    if codec:
        return head.decode(codec, errors="replace")
    if looks_binary(head):
        return None
    return head.decode("utf-8", errors="replace")


def decode_text(data: bytes, *, declared: str | None = None) -> str:
    """Decode ``data`` to ``str`` with universal newlines.

    Order: byte-order mark, UTF-16 without BOM, strict UTF-8, the ``declared`` charset (from
    an HTML ``<meta>``), then detection. Valid UTF-8 goes before the declaration because
    non-ASCII text in another encoding is almost never valid UTF-8, while pages that declare
    ISO-8859-1 but hold UTF-8 are common.
    """
    codec = bom_encoding(data) or utf16_without_bom(data)
    if codec:
        text = data.decode(codec, errors="replace")
    else:
        strict = _decode_strict(data, declared)
        text = strict if strict is not None else _decode_guess(data)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_strict(data: bytes, declared: str | None) -> str | None:
    candidates = ["utf-8"]
    if declared:
        label = declared.strip().lower()
        candidates.append("cp1252" if label in _WINDOWS_1252_ALIASES else label)
    for codec in candidates:
        try:
            return data.decode(codec)
        except (LookupError, UnicodeDecodeError):
            continue
    return None


def _decode_guess(data: bytes) -> str:
    if looks_binary(data):
        raise UnsupportedTypeError("unsupported file type (looks like binary data, not text)")
    matches = from_bytes(data)
    best = matches.best()
    western = _western(data)
    if western is not None and _prefer_western(best):
        return western
    if best is None:
        raise UnsupportedTypeError(
            "unsupported file type (looks like binary data: no text encoding fits)"
        )
    text = str(best)
    if _unprintable_ratio(text[:_SAMPLE]) > 0.05:
        raise UnsupportedTypeError(
            f"unsupported file type (looks like binary data; best text guess {best.encoding} "
            "is mostly unprintable)"
        )
    return text


def _western(data: bytes) -> str | None:
    """The windows-1252 reading of ``data`` if it looks like Western European text.

    charset-normalizer is weak on short single-byte text: French in windows-1252 comes back
    as Baltic cp1257 and "Hello café" as Urdu cp1006. Western text has few non-ASCII letters,
    in short runs, all from Latin-1 or typographic punctuation; Cyrillic or CJK bytes read
    as windows-1252 give long runs or characters outside that set.
    """
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:  # bytes 81, 8D, 8F, 90, 9D are undefined in windows-1252
        return None
    run = longest = letters = foreign = 0
    for ch in text[:_SAMPLE]:
        if ch < "\x80":
            run = 0
            letters += ch.isalpha()
            continue
        if ch not in _WESTERN_CHARS:
            return None
        run += 1
        longest = max(longest, run)
        letters += ch.isalpha()
        foreign += ch.isalpha()
    return text if longest <= 3 and foreign <= 0.35 * max(letters, 1) else None


def _prefer_western(best) -> bool:
    # The Western reading wins unless the detector found evidence of another language:
    # Czech in windows-1250, say, reads as plausible Latin-1 too, and there the detector's
    # language model is right.
    return best is None or best.coherence < 0.2 or best.language in _WESTERN_LANGUAGES


def _unprintable_ratio(text: str) -> float:
    if not text:
        return 0.0
    bad = sum(1 for ch in text if unicodedata.category(ch) in _UNPRINTABLE and ch not in _SPACES)
    return bad / len(text)
