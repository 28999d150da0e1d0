"""API keys: how they are made and hashed. Only the hash is ever stored; the key is shown once."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "ckpt_"


def generate_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The sha256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
