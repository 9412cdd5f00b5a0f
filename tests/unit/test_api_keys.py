"""API key format and hashing (no database)."""

from __future__ import annotations

import hashlib

from storage.api_keys import KEY_PREFIX, ApiKey, NewApiKey, generate_key, hash_key


def test_keys_are_prefixed_random_urlsafe_tokens():
    a, b = generate_key(), generate_key()
    assert a != b
    assert a.startswith(KEY_PREFIX)
    body = a[len(KEY_PREFIX) :]
    assert len(body) == 43  # 32 bytes, base64url without padding
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_the_stored_form_is_the_sha256_hex_and_never_the_key():
    key = generate_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert key not in hash_key(key)


def test_a_new_key_does_not_show_its_secret_in_repr():
    from datetime import UTC, datetime

    new = NewApiKey(ApiKey(1, "t", "n", "tenant", datetime.now(UTC), None), "ifk_secret-value")
    assert "ifk_secret-value" not in repr(new)
