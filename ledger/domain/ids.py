"""Stable aggregate ids: uuid5 of natural keys.

Because creating an aggregate whose id exists fails in the event store, these ids are also
uniqueness guards: one account per (program, member), one request record per
(program, request_id).
"""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID, uuid5

TALLY_NAMESPACE = UUID("5d1f3a57-9d0e-4c61-9a53-7f4f2b0c1e01")

# A group commit asks for the same ids several times per command; uuid5 costs ~10 µs.
_cached = lru_cache(maxsize=65_536)


@_cached
def program_id_key(program_id: str) -> UUID:
    return uuid5(TALLY_NAMESPACE, f"program\x1f{program_id}")


@_cached
def account_id_key(program_id: str, member_id: str) -> UUID:
    return uuid5(TALLY_NAMESPACE, f"account\x1f{program_id}\x1f{member_id}")


@_cached
def request_id_key(program_id: str, request_id: str) -> UUID:
    return uuid5(TALLY_NAMESPACE, f"request\x1f{program_id}\x1f{request_id}")


def derived_transaction_id(transaction_id: str, purpose: str) -> str:
    """A transaction id for a consequence of a transaction (an expiry it triggered)."""
    return str(uuid5(TALLY_NAMESPACE, f"derived\x1f{transaction_id}\x1f{purpose}"))
