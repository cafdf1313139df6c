"""The idempotency records' table (ledger_requests / requests): rows written by our
recorders in the same transaction as a command's events, and the lookups on it."""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from ledger.infrastructure.database import Database
from ledger.infrastructure.dialect import Dialect
from ledger.infrastructure.eventlog import existing_ids


class RequestRecord(NamedTuple):
    """The durable idempotency record of one applied command (docs/decisions/0007). Its id
    is uuid5(program, request_id) and doubles as the command's transaction id."""

    record_id: UUID
    program_id: str
    request_id: str
    command: str
    request_hash: str
    member_id: str
    response: bytes  # encoded by the application's transcoder
    originator_id: UUID | None  # the event whose position the response reports, if any
    originator_version: int | None


COLUMNS = ", ".join(RequestRecord._fields)


def requests_table(db: Database) -> str:
    return db.dialect.requests_table


def stored_row(dialect: Dialect, r: RequestRecord) -> tuple[Any, ...]:
    """A row of the requests table, its ids encoded as this backend stores them."""
    return (
        dialect.stored_id(r.record_id),
        *r[1:7],
        dialect.stored_id(r.originator_id) if r.originator_id else None,
        r.originator_version,
    )


def find_requests(db: Database, record_ids: list[UUID]) -> dict[UUID, tuple[RequestRecord, int]]:
    """The records of these requests that exist, each with the position of its answering
    event (0 if it wrote none). One query."""
    if not record_ids:
        return {}
    dialect = db.dialect
    marks = dialect.placeholders(len(record_ids))
    sql = (
        f"SELECT {', '.join('r.' + c for c in RequestRecord._fields)}, e.{dialect.position_column}"
        f" FROM {dialect.requests_table} r LEFT JOIN {dialect.events_table} e"
        " ON e.originator_id = r.originator_id AND e.originator_version = r.originator_version"
        f" WHERE r.record_id IN ({marks})"
    )
    with db.read() as cur:
        cur.execute(sql, [dialect.stored_id(i) for i in record_ids])
        rows = cur.fetchall()
    found: dict[UUID, tuple[RequestRecord, int]] = {}
    for row in rows:
        values = list(row)
        for i in (0, 7):
            if values[i] is not None:
                values[i] = dialect.read_id(values[i])
        values[6] = bytes(values[6])
        record = RequestRecord(*values[:9])
        found[record.record_id] = (record, int(values[9] or 0))
    return found


def existing_requests(db: Database, record_ids: list[UUID]) -> set[UUID]:
    """Which of these requests are recorded."""
    return existing_ids(db, db.dialect.requests_table, "record_id", record_ids)
