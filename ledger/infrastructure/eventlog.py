"""Questions about the event log that the library's recorders do not answer."""

from __future__ import annotations

from uuid import UUID

from ledger.infrastructure.database import Database


def position_of(db: Database, originator_id: UUID, version: int) -> int:
    """The notification id (global position) of one stored event, or 0 if absent."""
    if db.config.kind == "sqlite":
        sql = "SELECT rowid FROM stored_events WHERE originator_id = ? AND originator_version = ?"
        key: object = originator_id.hex
    else:
        sql = (
            "SELECT notification_id FROM ledger_events"
            " WHERE originator_id = ? AND originator_version = ?"
        )
        key = originator_id
    with db.read() as cur:
        cur.execute(sql, (key, version))
        row = cur.fetchone()
    return int(row[0]) if row else 0


def existing_originators(db: Database, originator_ids: list[UUID]) -> set[UUID]:
    """Which of these aggregates have events at all (one indexed query)."""
    if not originator_ids:
        return set()
    marks = ",".join("?" * len(originator_ids))
    if db.config.kind == "sqlite":
        sql = f"SELECT DISTINCT originator_id FROM stored_events WHERE originator_id IN ({marks})"
        keys: list[object] = [i.hex for i in originator_ids]
    else:
        sql = f"SELECT DISTINCT originator_id FROM ledger_events WHERE originator_id IN ({marks})"
        keys = list(originator_ids)
    with db.read() as cur:
        cur.execute(sql, keys)
        rows = cur.fetchall()
    return {r[0] if isinstance(r[0], UUID) else UUID(str(r[0])) for r in rows}
