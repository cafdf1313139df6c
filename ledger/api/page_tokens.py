"""Opaque page tokens: where the last page ended, bound to the query that made it, so a token
is refused for another member, filter or time range instead of silently paging elsewhere.

A token is url-safe base64 of `{"after": ..., "query": fingerprint}`; `after` is one
position (ListTransactions) or a (position, seq) pair (ListPostings).
"""

from __future__ import annotations

import base64
import hashlib
import json

from ledger.application.validation import Violations

MAX_TOKEN = 512


def fingerprint(*parts: object) -> str:
    """What a token is bound to: the query's parts that select its rows."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def encode(after: tuple[int, ...], query: str) -> str:
    payload = {"after": after[0] if len(after) == 1 else list(after), "query": query}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(
    v: Violations, token: str, query: str, size: int, changed: str
) -> tuple[int, ...] | None:
    """The `size` positions a token carries, or None with a violation on `page_token`.
    `changed`: what the caller may have changed, for the message."""
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError("too long")
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = payload["after"]
        values = tuple(after) if isinstance(after, list) else (after,)
        if len(values) != size or not all(type(x) is int and 0 <= x < 2**63 for x in values):
            raise ValueError("bad position")
    except (ValueError, KeyError, TypeError):
        v.add("page_token", "not a page token this server issued")
        return None
    if payload.get("query") != query:
        v.add("page_token", f"belongs to a different query ({changed} changed)")
        return None
    return values


def encode_keyed(after: tuple[int, ...], key: str, query: str) -> str:
    """A token that also carries a text key: the last row's id where rows are ordered by
    one (ListSegmentMembers: a member id)."""
    payload = {"after": after[0] if len(after) == 1 else list(after), "key": key, "query": query}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_keyed(
    v: Violations, token: str, query: str, size: int, changed: str
) -> tuple[tuple[int, ...], str] | None:
    """As `decode`, and the text key of an `encode_keyed` token."""
    values = decode(v, token, query, size, changed)
    if values is None:
        return None
    key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))).get("key")
    if not isinstance(key, str) or not key:
        v.add("page_token", "not a page token this server issued")
        return None
    return values, key
