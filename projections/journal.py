"""The journal read model: every event's balanced postings (ledger/domain/journal.py), one
row each in `rm_postings`.

An account's events name only the account's id; the member is known from its enrolment,
which this projection keeps in a table of its own (`rm_journal_accounts`), so that it
depends on no other read model's progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ledger.domain import events, journal
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect
from projections.points import micros

NAME = "journal"
POSTING_COLUMNS = (
    "program_id, position, seq, transaction_id, ledger_account, unit, amount, occurred_at,"
    " recorded_at, store_id"
)


class JournalProjection:
    name: ClassVar[str] = NAME
    tables: ClassVar[dict[str, tuple[str, ...]]] = {
        "rm_postings": ("program_id", "position", "seq"),
        "rm_journal_accounts": ("account_id",),
    }
    handled: ClassVar[frozenset[type]] = journal.HANDLED
    # Lazy: finance reads it seldom, and batches of a few hundred events cost it a fraction
    # of what one transaction per commit does (docs/performance.md).
    poll_interval: ClassVar[float] = 0.25

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        members = self._members(cur, batch_events)
        rows: list[tuple[Any, ...]] = []
        for position, event in batch_events:
            if type(event) in journal.NO_POSTINGS:
                continue
            account = members.get(event.originator_id.hex)
            if account is None:
                raise LookupError(f"account {event.originator_id} has events but no enrolment")
            program_id, member_id = account
            p = event.provenance
            # Raises for an event type the journal has no rule for: never skipped.
            for seq, posting in enumerate(journal.postings(event, member_id)):
                rows.append(
                    (
                        program_id,
                        position,
                        seq,
                        p.transaction_id,
                        posting.ledger_account,
                        posting.unit,
                        posting.amount,
                        micros(p.occurred_at),
                        micros(event.timestamp),
                        p.store_id,
                    )
                )
        if rows:
            self.dialect.insert_rows(
                cur, f"INSERT INTO rm_postings ({POSTING_COLUMNS}) {{rows}}", rows
            )

    def _members(
        self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]
    ) -> dict[str, tuple[str, str]]:
        """account id (hex) -> (program, member) for the accounts of these events."""
        members: dict[str, tuple[str, str]] = {}
        enrolled: list[tuple[str, str, str]] = []
        for _, e in batch_events:
            if isinstance(e, events.MemberEnrolled):
                account = (e.originator_id.hex, e.program_id, e.member_id)  # type: ignore[attr-defined]
                enrolled.append(account)
                members[account[0]] = account[1:]
        wanted = {
            e.originator_id.hex for _, e in batch_events if type(e) not in journal.NO_POSTINGS
        } - members.keys()
        if wanted:
            marks = self.dialect.placeholders(len(wanted))
            cur.execute(
                "SELECT account_id, program_id, member_id FROM rm_journal_accounts"
                f" WHERE account_id IN ({marks})",
                [*wanted],
            )
            for account_id, program_id, member_id in cur.fetchall():
                members[str(account_id)] = (str(program_id), str(member_id))
        if enrolled:
            self.dialect.insert_rows(
                cur,
                "INSERT INTO rm_journal_accounts (account_id, program_id, member_id) {rows}",
                enrolled,
            )
        return members
