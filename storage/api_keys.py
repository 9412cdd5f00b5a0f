"""API keys: random bearer tokens bound to a tenant, stored only as their sha256.

A key looks like ``ifk_<43 urlsafe characters>`` (32 random bytes). The prefix lets people
and secret scanners recognise one; the database holds only ``sha256(key)``, so a leaked
table does not leak keys. The plain key exists once, in what ``create_key`` returns.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from storage.db import Conn

KEY_PREFIX = "ifk_"
_COLUMNS = "id, tenant, name, created_at, revoked_at"


@dataclass(frozen=True)
class ApiKey:
    """A key's public record: never the key, never its hash."""

    id: int
    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class NewApiKey:
    """A freshly created key: ``secret`` is the only copy of the plain key."""

    record: ApiKey
    secret: str = field(repr=False)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(conn: Conn, *, tenant: str, name: str = "") -> NewApiKey:
    if not tenant.strip():
        raise ValueError("a key needs a tenant")
    secret = generate_key()
    row = conn.execute(
        f"INSERT INTO api_keys (tenant, name, key_hash) VALUES (%s, %s, %s) RETURNING {_COLUMNS}",
        (tenant, name, hash_key(secret)),
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING always returns its row
    return NewApiKey(ApiKey(**row), secret)


def verify_key(conn: Conn, *, key: str) -> ApiKey | None:
    """The active key matching ``key``, or None (unknown, malformed or revoked).

    The lookup is by hash, so nothing secret is compared byte by byte.
    """
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
        (hash_key(key),),
    ).fetchone()
    return ApiKey(**row) if row else None


def revoke_key(conn: Conn, *, key_id: int) -> ApiKey | None:
    """Revoke a key (idempotent: an already revoked key keeps its first revocation time).

    Returns the key's record, or None when no key has this id.
    """
    row = conn.execute(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s"
        f" RETURNING {_COLUMNS}",
        (key_id,),
    ).fetchone()
    return ApiKey(**row) if row else None


def list_keys(conn: Conn, *, tenant: str | None = None) -> list[ApiKey]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE %(t)s::text IS NULL OR tenant = %(t)s ORDER BY id",
        {"t": tenant},
    ).fetchall()
    return [ApiKey(**r) for r in rows]
