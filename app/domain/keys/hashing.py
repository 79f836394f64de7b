from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "aak_"


def generate_key() -> str:
    """A new API key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 hex digest; the only form in which a key is stored or cached."""
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(key_hash: str) -> str:
    """What `keys list` shows of a key: `printf %s "$KEY" | sha256sum | cut -c1-12` gives the same."""
    return key_hash[:12]
