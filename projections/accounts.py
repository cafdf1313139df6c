"""Which member each account is: an account's events name only its aggregate id, so the
read models that need the member learn it from the enrolment. Each keeps its own copy (a
table of account_id, program_id, member_id), so that none depends on another's progress."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.domain import events
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect


def members_of(
    cur: Cursor,
    dialect: Dialect,
    table: str,
    batch_events: Sequence[tuple[int, Any]],
    wanted: set[str],
) -> dict[str, tuple[str, str]]:
    """account id (hex) -> (program, member) for the accounts in `wanted`, from this batch's
    enrolments and `table`; records this batch's enrolments in `table`."""
    members: dict[str, tuple[str, str]] = {}
    enrolled: list[tuple[str, str, str]] = []
    for _, e in batch_events:
        if isinstance(e, events.MemberEnrolled):
            account = (e.originator_id.hex, e.program_id, e.member_id)  # type: ignore[attr-defined]
            enrolled.append(account)
            members[account[0]] = account[1:]
    missing = wanted - members.keys()
    if missing:
        cur.execute(
            f"SELECT account_id, program_id, member_id FROM {table}"
            f" WHERE account_id IN ({dialect.placeholders(len(missing))})",
            [*missing],
        )
        for account_id, program_id, member_id in cur.fetchall():
            members[str(account_id)] = (str(program_id), str(member_id))
    if enrolled:
        dialect.insert_rows(
            cur, f"INSERT INTO {table} (account_id, program_id, member_id) {{rows}}", enrolled
        )
    return members
