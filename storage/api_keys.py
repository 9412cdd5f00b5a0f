"""API keys: random bearer tokens bound to a tenant, stored only as their sha256, and the
request rate each may spend.

A key looks like ``ifk_<43 urlsafe characters>`` (32 random bytes). The prefix lets people
and secret scanners recognise one; the database holds only ``sha256(key)``, so a leaked
table does not leak keys. The plain key exists once, in what ``create_key`` returns.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from storage.db import Conn

KEY_PREFIX = "ifk_"
_COLUMNS = "id, tenant, name, role, created_at, revoked_at"
# A tenant key reads and writes its tenant's collections; an operator key may also see the
# operators' views (workers, queues, every tenant's job statistics).
ROLES = ("tenant", "operator")


@dataclass(frozen=True)
class ApiKey:
    """A key's public record: never the key, never its hash."""

    id: int
    tenant: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def operator(self) -> bool:
        return self.role == "operator"


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


def create_key(conn: Conn, *, tenant: str, name: str = "", role: str = "tenant") -> NewApiKey:
    if not tenant.strip():
        raise ValueError("a key needs a tenant")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    secret = generate_key()
    row = conn.execute(
        "INSERT INTO api_keys (tenant, name, role, key_hash) VALUES (%s, %s, %s, %s)"
        f" RETURNING {_COLUMNS}",
        (tenant, name, role, hash_key(secret)),
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


@dataclass(frozen=True)
class RateDecision:
    """One request against a key's bucket: let through or not, and when to come back."""

    allowed: bool
    tokens: float  # left in the bucket after this request
    retry_after: int  # whole seconds until a token is there again; 0 when allowed


_TAKE_TOKEN = """
INSERT INTO api_rate_buckets AS b (key_id, tokens, allowed, updated_at)
VALUES (%(key)s, %(burst)s - 1, true, now())
ON CONFLICT (key_id) DO UPDATE SET
    tokens = CASE WHEN {level} >= 1 THEN {level} - 1 ELSE {level} END,
    allowed = {level} >= 1,
    updated_at = now()
RETURNING tokens, allowed
""".format(
    # The bucket refilled for the time since the last request, capped at the burst.
    level="least(%(burst)s::float8, b.tokens"
    " + extract(epoch FROM now() - b.updated_at)::float8 * %(per_second)s)"
)


def take_token(conn: Conn, *, key_id: int, per_minute: int, burst: int) -> RateDecision:
    """Refill the key's bucket for the time passed and take one token from it, in one
    statement. A refused request takes nothing, so retrying after ``retry_after`` works."""
    per_second = per_minute / 60.0
    row = conn.execute(
        _TAKE_TOKEN, {"key": key_id, "burst": burst, "per_second": per_second}
    ).fetchone()
    assert row is not None  # an upsert with RETURNING always returns its row
    tokens, allowed = float(row["tokens"]), bool(row["allowed"])
    wait = 0 if allowed else max(1, math.ceil((1.0 - tokens) / per_second))
    return RateDecision(allowed, tokens, wait)
