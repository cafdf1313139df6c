"""What the relay publishes for one event of the log: its subject, its headers and its JSON
body, the same fields AuditService.StreamEvents carries (ledger/api/audit_service.py).

Subjects are `<prefix>.<program>.<event_type>`, so that NATS permissions can give a consumer
one programme (docs/relay.md). A programme id may contain `.` and `:`, which would split or
blur a subject token (`tally.coffee.club.X` would be programme `coffee` to a wildcard), so
every character outside `A-Za-z0-9_-` is written as `%XX` (its UTF-8 bytes in hex);
identifiers never contain `%`, so the token reads back to exactly one programme.
"""

from __future__ import annotations

import json
import re

from ledger.audit.events import AuditEvent

MESSAGE_ID_PREFIX = "tally-"
# Headers a consumer can route or filter on without parsing the body.
POSITION_HEADER = "Tally-Position"
PROGRAM_HEADER = "Tally-Program"
EVENT_TYPE_HEADER = "Tally-Event-Type"
TRANSACTION_HEADER = "Tally-Transaction-Id"
# An event whose programme cannot be read (an undecodable row: the auditors' UNDECODABLE)
# still goes out, under this token, which no encoded programme id can be.
NO_PROGRAM_TOKEN = "%"

_SAFE = re.compile(r"[A-Za-z0-9_-]")


def subject_token(text: str) -> str:
    """`text` as one subject token: characters outside A-Za-z0-9_- as %XX."""
    if not text:
        return NO_PROGRAM_TOKEN
    return "".join(
        ch if _SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in text
    )


def program_subjects(prefix: str, program_id: str) -> str:
    """The wildcard subject of every event of one programme."""
    return f"{prefix}.{subject_token(program_id)}.>"


def subject(prefix: str, event: AuditEvent) -> str:
    return f"{prefix}.{subject_token(event.program_id)}.{subject_token(event.event_type)}"


def message_id(position: int) -> str:
    """JetStream's deduplication key: one per log position."""
    return f"{MESSAGE_ID_PREFIX}{position}"


def headers(event: AuditEvent) -> dict[str, str]:
    return {
        "Nats-Msg-Id": message_id(event.position),
        POSITION_HEADER: str(event.position),
        PROGRAM_HEADER: event.program_id,
        EVENT_TYPE_HEADER: event.event_type,
        TRANSACTION_HEADER: event.transaction_id,
        "Content-Type": "application/json",
    }


def body(event: AuditEvent) -> bytes:
    """StreamEvents' fields as JSON; `payload_json` is the stored state, byte for byte."""
    return json.dumps(
        {
            "position": event.position,
            "program_id": event.program_id,
            "member_id": event.member_id,
            "event_type": event.event_type,
            "transaction_id": event.transaction_id,
            "aggregate_id": event.aggregate_id,
            "version": event.version,
            "payload_json": event.payload_json,
            "hash": event.hash,
            "prev_hash": event.prev_hash,
            "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
            "recorded_at": event.recorded_at.isoformat() if event.recorded_at else None,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def position_of(message_headers: dict[str, str] | None) -> int | None:
    """The log position a published message carries, or None if it is not the relay's."""
    value = (message_headers or {}).get(POSITION_HEADER, "")
    return int(value) if value.isdigit() else None
