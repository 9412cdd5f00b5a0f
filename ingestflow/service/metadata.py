"""What a caller may store on a document as metadata: a JSON object of bounded depth and size
that carries no secret.

Metadata is stored on the document row and returned by every read of the document and every
search hit, so a password in it would be kept and echoed: a document's password is a field
of its own (``password``), used for that run and dropped.
"""

from __future__ import annotations

import json
from typing import Any

from ingestflow.core.errors import InvalidRequestError

MAX_DEPTH = 16
MAX_BYTES = 64 * 1024
# Keys that name a secret, in any letter case and anywhere in the object.
_SECRET_WORDS = ("password", "passwd", "secret")


def parse_metadata(text: str) -> dict[str, Any]:
    """A form field's metadata: a JSON object (empty text is an empty one)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequestError("the metadata field is not valid JSON") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(value, dict):
        raise InvalidRequestError("the metadata field must be a JSON object")
    return check_metadata(value)


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` if it may be stored; otherwise ``InvalidRequestError`` saying why."""
    _walk(value, depth=1)
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_BYTES:
        raise InvalidRequestError(f"metadata is larger than {MAX_BYTES // 1024} KiB as JSON")
    return value


def _walk(value: Any, *, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _too_deep()
    if isinstance(value, dict):
        for key, item in value.items():
            if any(word in str(key).lower() for word in _SECRET_WORDS):
                raise InvalidRequestError(
                    f"metadata cannot carry a secret (key {str(key)[:40]!r}); send a"
                    " document's password in the `password` field, which is never stored"
                )
            _walk(item, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, depth=depth + 1)


def _too_deep() -> InvalidRequestError:
    return InvalidRequestError(f"metadata is nested more than {MAX_DEPTH} levels deep")
