"""The journal read model: every event's balanced postings (ledger/domain/journal.py), one
row each in `rm_postings`.

An account's events name only the account's id; the member is known from its enrolment,
which this projection keeps in a table of its own (`rm_journal_accounts`,
projections/accounts.py), so that it depends on no other read model's progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from ledger.domain import events, journal
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect
from projections.accounts import members_of
from projections.points import micros

NAME = "journal"
POSTING_COLUMNS = (
    "program_id, position, seq, transaction_id, ledger_account, unit, amount, occurred_at,"
    " recorded_at, store_id"
)

MEMBERS = "member:*:"


def control_account(ledger_account: str) -> str:
    """The account a posting sums into by day: a member's accounts into one control account
    per kind (member:*:cash for every member:<m>:cash), so a report adds days, not members.
    (A member id may hold ':'; the kind after the last one never does.)"""
    if ledger_account.startswith("member:"):
        return MEMBERS + ledger_account.rsplit(":", 1)[1]
    return ledger_account


def local_day(moment: datetime, zone: ZoneInfo) -> int:
    """The first instant (integer microseconds) of the programme's local day holding
    `moment`: the day a report's bounds fall on, in its time zone."""
    local = moment.astimezone(zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    return micros(midnight)


def next_day(day: int, zone: ZoneInfo) -> int:
    """The first instant of the local day after the one starting at `day`."""
    start = datetime.fromtimestamp(day / 1_000_000, zone)
    following = (start + timedelta(days=1, hours=2)).date()  # past any DST change
    return micros(datetime(following.year, following.month, following.day, tzinfo=zone))


class JournalProjection:
    name: ClassVar[str] = NAME
    tables: ClassVar[dict[str, tuple[str, ...]]] = {
        "rm_postings": ("program_id", "position", "seq"),
        "rm_journal_accounts": ("account_id",),
        "rm_journal_programs": ("program_id",),
        "rm_journal_daily": ("program_id", "day", "ledger_account", "unit", "store_id"),
    }
    handled: ClassVar[frozenset[type]] = journal.HANDLED
    # Lazy: finance reads it seldom, and batches of a few hundred events cost it a fraction
    # of what one transaction per commit does (docs/performance.md).
    poll_interval: ClassVar[float] = 0.25

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # program -> (currency, zone): they never change once the program exists.
        self._programs: dict[str, tuple[str, ZoneInfo]] = {}

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        self._note_programs(cur, batch_events)
        members = members_of(
            cur,
            self.dialect,
            "rm_journal_accounts",
            batch_events,
            {e.originator_id.hex for _, e in batch_events if type(e) not in journal.NO_POSTINGS},
        )
        rows: list[tuple[Any, ...]] = []
        daily: dict[tuple[str, int, str, str, str], list[int]] = {}
        for position, event in batch_events:
            if type(event) in journal.NO_POSTINGS:
                continue
            account = members.get(event.originator_id.hex)
            if account is None:
                raise LookupError(f"account {event.originator_id} has events but no enrolment")
            program_id, member_id = account
            currency, zone = self._program(cur, program_id)
            p = event.provenance
            recorded_at = micros(event.timestamp)
            day = local_day(event.timestamp, zone)
            # Raises for an event type the journal has no rule for: never skipped.
            for seq, posting in enumerate(journal.postings(event, member_id, currency)):
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
                        recorded_at,
                        p.store_id,
                    )
                )
                key = (program_id, day, control_account(posting.ledger_account), posting.unit)
                sums = daily.setdefault((*key, p.store_id), [0, 0, 0])
                if posting.amount < 0:
                    sums[0] -= posting.amount
                else:
                    sums[1] += posting.amount
                sums[2] += 1
        if rows:
            self.dialect.insert_rows(
                cur, f"INSERT INTO rm_postings ({POSTING_COLUMNS}) {{rows}}", rows
            )
        if daily:
            self.dialect.insert_rows(
                cur,
                "INSERT INTO rm_journal_daily (program_id, day, ledger_account, unit, store_id,"
                " debit, credit, postings) {rows}"
                " ON CONFLICT (program_id, day, ledger_account, unit, store_id) DO UPDATE SET"
                " debit = rm_journal_daily.debit + excluded.debit,"
                " credit = rm_journal_daily.credit + excluded.credit,"
                " postings = rm_journal_daily.postings + excluded.postings",
                [(*key, *sums) for key, sums in daily.items()],
            )

    def _note_programs(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        created = [
            (e.program_id, e.settings.currency, e.settings.time_zone)  # type: ignore[attr-defined]
            for _, e in batch_events
            if isinstance(e, events.ProgramCreated)
        ]
        if created:
            self.dialect.insert_rows(
                cur,
                "INSERT INTO rm_journal_programs (program_id, currency, time_zone) {rows}",
                created,
            )
            for program_id, currency, zone in created:
                self._programs[program_id] = (currency, ZoneInfo(zone))

    def _program(self, cur: Cursor, program_id: str) -> tuple[str, ZoneInfo]:
        found = self._programs.get(program_id)
        if found is None:
            cur.execute(
                "SELECT currency, time_zone FROM rm_journal_programs WHERE program_id = ?",
                (program_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise LookupError(f"program {program_id} has accounts but no ProgramCreated")
            found = self._programs[program_id] = (str(row[0]), ZoneInfo(str(row[1])))
        return found
