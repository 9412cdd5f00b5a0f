"""JSON and JSON Lines: flattened to ``$.path: value`` lines, grouped into segments.

Invalid JSON is indexed as plain text rather than rejected. The extension is only a hint
everywhere else in detection, and the same holds here: a ``.json`` file that does not parse
is still readable text (JSON with comments or trailing commas, JSON5, a truncated export, a
log), and a user who uploads it expects its words to be searchable. The document's media
type then says ``text/plain``, so the fallback is visible on the document row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from ingestflow.core.errors import ParseError
from ingestflow.core.types import Segment
from tasks.parsers.base import JSON, TEXT, ParseInput, Reroute, group_lines, parser
from tasks.parsers.encoding import decode_text

# Deeper values are written as one compact JSON line instead of more path levels: paths
# that long help nobody, and the cap bounds the work per value.
MAX_JSON_DEPTH = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Pairs(list):
    """An object's key/value pairs in order; a dict would drop duplicated keys."""


@parser(JSON, label="JSON")
def parse_json(source: ParseInput) -> Iterator[Segment]:
    """Lines like ``$.results[0].name: foo`` in document order, grouped into segments whose
    provenance is the path of their first line (``{"path": "$.results[0].name"}``).

    JSON Lines (one value per line) reads as an array. Raises ``Reroute`` to plain text when
    the content is neither, and ``ParseError`` when nesting is too deep for the decoder.
    """
    text = decode_text(source.path.read_bytes())
    value = _load(text)
    yield from group_lines(_flatten(value), lambda first, last: {"path": first})


def _load(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_Pairs)
    except RecursionError as e:
        raise ParseError("JSON is nested too deeply to read") from e
    except ValueError:
        pass
    try:
        return [
            json.loads(line, object_pairs_hook=_Pairs) for line in text.splitlines() if line.strip()
        ]
    except RecursionError as e:
        raise ParseError("JSON is nested too deeply to read") from e
    except ValueError:
        raise Reroute(TEXT) from None


def _flatten(root: Any) -> Iterator[tuple[str, str]]:
    """``(path, "path: value")`` for every leaf, iteratively (no recursion on deep input)."""
    stack: list[tuple[str, Any, int]] = [("$", root, 0)]
    while stack:
        path, value, depth = stack.pop()
        if isinstance(value, _Pairs | list) and value and depth < MAX_JSON_DEPTH:
            items = value if isinstance(value, _Pairs) else enumerate(value)
            children = [(_child(path, key), child, depth + 1) for key, child in items]
            stack.extend(reversed(children))
        else:
            yield path, f"{path}: {_scalar(value)}"


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, _Pairs) and not value:
        return "{}"
    try:
        # Containers reach here only past MAX_JSON_DEPTH; _Pairs dumps as [[key, value]],
        # which keeps duplicated keys and every word.
        return json.dumps(value, ensure_ascii=False)
    except RecursionError as e:
        raise ParseError("JSON is nested too deeply to read") from e
