"""The idempotency records' table (ledger_requests / requests): rows written by our
recorders in the same transaction as a command's events, and the lookups on it."""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

from ledger.infrastructure.database import Database
from ledger.infrastructure.eventlog import events_table, existing_ids, read_id, stored_id


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
    return "requests" if db.config.kind == "sqlite" else "ledger_requests"


def sqlite_row(r: RequestRecord) -> tuple[Any, ...]:
    """A row for the SQLite table, whose ids are hex text like the library's."""
    return (
        r.record_id.hex,
        *r[1:7],
        r.originator_id.hex if r.originator_id else None,
        r.originator_version,
    )


def find_requests(db: Database, record_ids: list[UUID]) -> dict[UUID, tuple[RequestRecord, int]]:
    """The records of these requests that exist, each with the position of its answering
    event (0 if it wrote none). One query."""
    if not record_ids:
        return {}
    table, position = events_table(db)
    marks = ",".join("?" * len(record_ids))
    sql = (
        f"SELECT {', '.join('r.' + c for c in RequestRecord._fields)}, e.{position}"
        f" FROM {requests_table(db)} r LEFT JOIN {table} e"
        " ON e.originator_id = r.originator_id AND e.originator_version = r.originator_version"
        f" WHERE r.record_id IN ({marks})"
    )
    with db.read() as cur:
        cur.execute(sql, [stored_id(db, i) for i in record_ids])
        rows = cur.fetchall()
    found: dict[UUID, tuple[RequestRecord, int]] = {}
    for row in rows:
        values = list(row)
        for i in (0, 7):
            if values[i] is not None:
                values[i] = read_id(values[i])
        values[6] = bytes(values[6])
        record = RequestRecord(*values[:9])
        found[record.record_id] = (record, int(values[9] or 0))
    return found


def existing_requests(db: Database, record_ids: list[UUID]) -> set[UUID]:
    """Which of these requests are recorded."""
    return existing_ids(db, requests_table(db), "record_id", record_ids)
