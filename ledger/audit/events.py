"""The log as auditors read it: every stored event with its position, account, type, times,
full JSON content and hashes, read straight from the events table (no read model involved).
Used by StreamEvents, GetAccountHistory and `ledger export events`."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.audit.verify import Row, account_rows, decode_state, first_row, read_rows
from ledger.domain.ids import account_id_key
from ledger.infrastructure.database import Database


@dataclass(frozen=True)
class AuditEvent:
    position: int
    aggregate_id: str
    version: int
    program_id: str
    member_id: str  # "" for program events
    event_type: str
    transaction_id: str
    occurred_at: datetime | None
    recorded_at: datetime | None
    payload_json: str  # the stored state, exactly
    hash: str  # hex
    prev_hash: str  # hex
    # Why the stored row cannot be read as Tally wrote it ("" for a sound one): the
    # verifier's UNDECODABLE. Its payload is then null unless the state is still JSON.
    problem: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("occurred_at", "recorded_at"):
            data[key] = data[key].isoformat() if data[key] else None
        text = data.pop("payload_json")
        try:
            data["payload"] = json.loads(text) if text else None
        except (ValueError, RecursionError):
            data["payload"] = None
        if not data["problem"]:
            del data["problem"]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _unwrap(value: Any) -> Any:
    """The library's transcoding wraps custom types as {"_type_": ..., "_data_": ...}."""
    if isinstance(value, dict) and "_type_" in value and "_data_" in value:
        return value["_data_"]
    return value


def _moment(value: Any) -> datetime | None:
    value = _unwrap(value)
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


class EventReader:
    def __init__(self, db: Database, names: int = 100_000) -> None:
        self.db = db
        # aggregate id -> (program_id, member_id), from its first event
        self._names: OrderedDict[UUID, tuple[str, str]] = OrderedDict()
        self._capacity = names

    def scan(self, position: int, limit: int) -> tuple[list[AuditEvent], int]:
        """One batch of `limit` rows after `position`: (their events, last position read)."""
        rows = []
        for row in read_rows(self.db, after=position, batch=limit):
            rows.append(row)
            if len(rows) >= limit:
                break
        return [self.record(r) for r in rows], (rows[-1].position if rows else position)

    def history(self, program_id: str, member_id: str) -> list[AuditEvent]:
        rows = account_rows(self.db, account_id_key(program_id, member_id))
        return [self.record(row) for row in rows]

    def record(self, row: Row) -> AuditEvent:
        text = row.state.decode("utf-8", errors="replace")
        decoded, problems = decode_state(row)
        payload = decoded or {}
        oid = row.originator_id
        if oid is not None and row.version == 1:
            self._remember(
                oid, str(payload.get("program_id", "")), str(payload.get("member_id", ""))
            )
        program_id, member_id = self._name(oid) if oid is not None else ("", "")
        provenance = _unwrap(payload.get("provenance"))
        provenance = provenance if isinstance(provenance, dict) else {}
        transaction_id = provenance.get("transaction_id") or payload.get("transaction_id", "")
        return AuditEvent(
            position=row.position,
            aggregate_id=str(oid) if oid is not None else "",
            version=row.version,
            program_id=program_id,
            member_id=member_id,
            event_type=row.topic.rsplit(".", 1)[-1],
            transaction_id=str(transaction_id or ""),
            occurred_at=_moment(provenance.get("occurred_at")) or _moment(payload.get("timestamp")),
            recorded_at=_moment(payload.get("timestamp")),
            payload_json=text,
            hash=row.hash.hex() if row.hash else "",
            prev_hash=row.prev_hash.hex() if row.prev_hash else "",
            problem="; ".join(problems),
        )

    def _remember(self, oid: UUID, program_id: str, member_id: str) -> None:
        self._names[oid] = (program_id, member_id)
        self._names.move_to_end(oid)
        while len(self._names) > self._capacity:
            self._names.popitem(last=False)

    def _name(self, oid: UUID) -> tuple[str, str]:
        names = self._names.get(oid)
        if names is None:
            first = first_row(self.db, oid)
            payload = (decode_state(first)[0] if first else None) or {}
            names = (str(payload.get("program_id", "")), str(payload.get("member_id", "")))
            self._remember(oid, *names)
        return names
