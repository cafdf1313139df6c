"""The idempotency records' table (ledger_requests / requests): rows written by our
recorders in the same transaction as a command's events, and the lookups on it."""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from ledger.infrastructure.database import Database
from ledger.infrastructure.eventlog import events_table, existing_ids, read_id, stored_id


class StoredRequest(NamedTuple):
    record_id: UUID
    program_id: str
    request_id: str
    command: str
    request_hash: str
    member_id: str
    response: bytes  # encoded by the application's transcoder
    originator_id: UUID | None  # the event whose position the response reports, if any
    originator_version: int | None


COLUMNS = ", ".join(StoredRequest._fields)


def requests_table(db: Database) -> str:
    return "requests" if db.config.kind == "sqlite" else "ledger_requests"


def sqlite_row(r: StoredRequest) -> tuple[Any, ...]:
    """A row for the SQLite table, whose ids are hex text like the library's."""
    return (
        r.record_id.hex,
        *r[1:7],
        r.originator_id.hex if r.originator_id else None,
        r.originator_version,
    )


def find_request(db: Database, record_id: UUID) -> tuple[StoredRequest, int] | None:
    """The record of one request and the position of its answering event (0 if none)."""
    table, position = events_table(db)
    sql = (
        f"SELECT {', '.join('r.' + c for c in StoredRequest._fields)}, e.{position}"
        f" FROM {requests_table(db)} r LEFT JOIN {table} e"
        " ON e.originator_id = r.originator_id AND e.originator_version = r.originator_version"
        " WHERE r.record_id = ?"
    )
    with db.read() as cur:
        cur.execute(sql, (stored_id(db, record_id),))
        row = cur.fetchone()
    if row is None:
        return None
    values = list(row)
    for i in (0, 7):
        if values[i] is not None:
            values[i] = read_id(values[i])
    values[6] = bytes(values[6])
    return StoredRequest(*values[:9]), int(values[9] or 0)


def existing_requests(db: Database, record_ids: list[UUID]) -> set[UUID]:
    """Which of these requests are recorded."""
    return existing_ids(db, requests_table(db), "record_id", record_ids)
