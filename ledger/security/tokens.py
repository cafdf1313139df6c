"""Bearer tokens: 256 random bits with a recognisable prefix, kept only as SHA-256.

A fast hash is right here and a slow KDF (scrypt, argon2) is not: a KDF's cost protects
low-entropy secrets that people choose, against guessing from a stolen hash. A token of 256
random bits cannot be guessed whatever the hash costs, so the stolen file gives nothing,
and a fast hash lets every request be checked without spending milliseconds of CPU
(decision 22)."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "tally_"  # so a leaked token is recognisable (secret scanners, logs)


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Lowercase hex SHA-256 of the token's UTF-8 bytes: what the credentials file keeps."""
    return hashlib.sha256(token.encode()).hexdigest()
