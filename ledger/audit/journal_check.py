"""`ledger audit journal`: the journal's invariants, checked against the other read models.

At the position both the journal and the points read model have reached, on one consistent
snapshot of the database:

- UNBALANCED: the postings of every event sum to zero in each unit (so every programme's
  journal does, at every position);
- MEMBER_BALANCE: each member's ledger accounts equal the account's balances as the points
  read model had them at that position (its history rows carry the balances after each
  event): points, held, minus debt, stored-value cash and bonus. The liability the reports
  give is the sum of these, so this is "member balances equal the liability accounts";
- DAILY_SUMS: the per-day sums the reports read (rm_journal_daily) equal the postings summed
  again by local day, account, unit and store: "opening + movements = closing" for every
  period then follows from the first check, for any bounds.

It reads and never writes. A finding is a bug report about a read model (replay it with
`ledger audit replay` to see which), never something to fix by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ledger.infrastructure.database import DatabaseConfig
from ledger.infrastructure.dialect import POSTGRES
from ledger.journal_queries import Account
from projections.journal import NAME as JOURNAL
from projections.journal import control_account, local_day
from projections.points import NAME as POINTS

# What it reads: the journal's tables, the points history, the projections' positions.
TABLES = (
    "rm_postings",
    "rm_journal_daily",
    "rm_journal_programs",
    "rm_transactions",
    "projection_tracking",
)

# Ledger account kind of a member -> the column of rm_transactions with its balance, and
# the sign the journal gives it (debt is posted as a negative balance).
_MEMBER_KINDS = {
    "points": ("points_after", 1),
    "points_held": ("held_after", 1),
    "points_debt": ("debt_after", -1),
    "cash": ("cash_after_minor", 1),
    "bonus": ("bonus_after_minor", 1),
}


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str


@dataclass
class JournalReport:
    position: int = 0
    postings: int = 0
    members: int = 0
    day_rows: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def check_journal(config: DatabaseConfig, program_id: str = "") -> JournalReport:
    report = JournalReport()
    with config.dialect.snapshot_cursor(config) as raw:
        cur = _Placeholders(raw, "%s" if config.dialect is POSTGRES else "?")
        cur.execute("SELECT name, position FROM projection_tracking")
        tracked = {str(name): int(position) for name, position in cur.fetchall()}
        journal_at = tracked.get(JOURNAL, 0)
        report.position = min(journal_at, tracked.get(POINTS, 0))
        where = "program_id = ? AND " if program_id else ""
        params: list[object] = [program_id] if program_id else []
        _balanced(cur, where, params, report)
        _members(cur, where, params, report)
        # The daily sums hold everything the journal has processed: compare at its position.
        _daily(cur, where, params, journal_at, report)
    return report


def _balanced(cur: Any, where: str, params: list[object], report: JournalReport) -> None:
    cur.execute(
        "SELECT program_id, position, unit, SUM(amount), COUNT(*) FROM rm_postings"
        f" WHERE {where}position <= ? GROUP BY program_id, position, unit",
        [*params, report.position],
    )
    for program, position, unit, total, count in cur.fetchall():
        report.postings += int(count)
        if int(total) != 0:
            report.findings.append(
                Finding(
                    "UNBALANCED",
                    f"program {program} position {position}: {unit} postings sum to {total}",
                )
            )


def _members(cur: Any, where: str, params: list[object], report: JournalReport) -> None:
    cur.execute(
        "SELECT program_id, ledger_account, SUM(amount) FROM rm_postings"
        f" WHERE {where}ledger_account LIKE ? AND position <= ?"
        " GROUP BY program_id, ledger_account",
        [*params, "member:%", report.position],
    )
    journal: dict[tuple[str, str, str], int] = {}
    for program, account, total in cur.fetchall():
        name = Account.parse(str(account))
        journal[(str(program), name.owner, name.kind)] = int(total)
    columns = ", ".join(column for column, _ in _MEMBER_KINDS.values())
    t_where = where.replace("program_id", "t.program_id")
    cur.execute(
        f"SELECT t.program_id, t.member_id, {columns} FROM rm_transactions t JOIN"
        " (SELECT program_id, member_id, MAX(position) AS last FROM rm_transactions"
        f" WHERE {where}position <= ? GROUP BY program_id, member_id) latest"
        " ON t.program_id = latest.program_id AND t.member_id = latest.member_id"
        f" AND t.position = latest.last WHERE {t_where}1 = 1",
        [*params, report.position, *params],
    )
    accounts: dict[tuple[str, str, str], int] = {}
    for program, member, *balances in cur.fetchall():
        report.members += 1
        for (kind, (_, sign)), balance in zip(_MEMBER_KINDS.items(), balances, strict=True):
            accounts[(str(program), str(member), kind)] = sign * int(balance)
    for key in sorted(journal.keys() | accounts.keys()):
        posted, held = journal.get(key, 0), accounts.get(key, 0)
        if posted != held:
            program, member, kind = key
            report.findings.append(
                Finding(
                    "MEMBER_BALANCE",
                    f"program {program} member {member}: ledger account {kind} is {posted},"
                    f" the account's balance {held}",
                )
            )


def _daily(
    cur: Any, where: str, params: list[object], position: int, report: JournalReport
) -> None:
    cur.execute(f"SELECT program_id, time_zone FROM rm_journal_programs WHERE {where}1 = 1", params)
    zones = {str(p): ZoneInfo(str(z)) for p, z in cur.fetchall()}
    cur.execute(
        "SELECT program_id, recorded_at, ledger_account, unit, store_id, amount FROM rm_postings"
        f" WHERE {where}position <= ?",
        [*params, position],
    )
    recomputed: dict[tuple[str, int, str, str, str], list[int]] = {}
    for program, recorded_at, account, unit, store, amount in _rows(cur):
        moment = datetime.fromtimestamp(int(recorded_at) / 1_000_000, zones[str(program)])
        day = local_day(moment, zones[str(program)])
        sums = recomputed.setdefault(
            (str(program), day, control_account(str(account)), str(unit), str(store)), [0, 0, 0]
        )
        sums[0 if int(amount) < 0 else 1] += abs(int(amount))
        sums[2] += 1
    cur.execute(
        "SELECT program_id, day, ledger_account, unit, store_id, debit, credit, postings"
        f" FROM rm_journal_daily WHERE {where}1 = 1",
        params,
    )
    stored = {
        (str(p), int(d), str(a), str(u), str(s)): [int(debit), int(credit), int(n)]
        for p, d, a, u, s, debit, credit, n in cur.fetchall()
    }
    report.day_rows = len(stored)
    for key in sorted(recomputed.keys() | stored.keys()):
        if recomputed.get(key) != stored.get(key):
            report.findings.append(
                Finding(
                    "DAILY_SUMS",
                    f"{key}: the day's postings give {recomputed.get(key)} (debit, credit,"
                    f" count), rm_journal_daily holds {stored.get(key)}",
                )
            )


def _rows(cur: Any) -> Iterable[tuple[Any, ...]]:
    while batch := cur.fetchmany(10_000):
        yield from batch


class _Placeholders:
    """The snapshot cursor (the backend's own placeholders) taking our `?`."""

    def __init__(self, cursor: Any, placeholder: str) -> None:
        self._cursor = cursor
        self._placeholder = placeholder

    def execute(self, sql: str, params: Any = ()) -> None:
        self._cursor.execute(sql.replace("?", self._placeholder), params)

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    def fetchmany(self, size: int) -> list[Any]:
        return list(self._cursor.fetchmany(size))
