"""API key format: ``cp-`` + 32 random bytes (URL-safe base64). Only a hash is stored."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "cp-"
VISIBLE_CHARS = 12  # the start of the key shown in listings, e.g. "cp-AbCdEfGh"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_CHARS]


def hash_key(key: str) -> str:
    """SHA-256 hex of the whole key.

    A fast hash is the standard choice here (unlike passwords): the key carries 256 bits from a CSPRNG, so brute
    force over the hash is hopeless, and a deterministic hash allows an indexed lookup on every request.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX)
