"""Reads of the journal read model (rm_postings): the trial balance and pages of postings.
Like ledger/queries.py, these bypass the domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.infrastructure.database import Database
from projections.journal import POSTING_COLUMNS
from projections.points import micros


@dataclass(frozen=True)
class BalanceRow:
    ledger_account: str
    unit: str
    debit: int  # the sum of negative postings, as a positive number
    credit: int  # the sum of positive postings
    balance: int  # credit - debit


@dataclass(frozen=True)
class PostingRow:
    program_id: str
    position: int
    seq: int
    transaction_id: str
    ledger_account: str
    unit: str
    amount: int
    occurred_at: int
    recorded_at: int
    store_id: str


@dataclass(frozen=True)
class PostingsFilter:
    program_id: str
    transaction_id: str = ""
    ledger_account: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> tuple[str, list[object]]:
        sql, params = "program_id = ?", list[object]([self.program_id])
        for column, value in (
            ("transaction_id", self.transaction_id),
            ("ledger_account", self.ledger_account),
        ):
            if value:
                sql += f" AND {column} = ?"
                params.append(value)
        if self.since is not None:
            sql += " AND recorded_at >= ?"
            params.append(micros(self.since))
        if self.until is not None:
            sql += " AND recorded_at < ?"
            params.append(micros(self.until))
        return sql, params


@dataclass(frozen=True)
class PostingsPage:
    rows: list[PostingRow]
    after: tuple[int, int] | None  # (position, seq) of the last row when more follow
    total_count: int
    total_amount: int


class JournalQueries:
    def __init__(self, database: Database) -> None:
        self.database = database

    def trial_balance(self, program_id: str, as_of: datetime | None) -> list[BalanceRow]:
        sql = (
            "SELECT ledger_account, unit,"
            " SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END),"
            " SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END), SUM(amount)"
            " FROM rm_postings WHERE program_id = ?"
        )
        params: list[object] = [program_id]
        if as_of is not None:
            sql += " AND recorded_at <= ?"
            params.append(micros(as_of))
        sql += " GROUP BY ledger_account, unit ORDER BY unit, ledger_account"
        with self.database.read() as cur:
            cur.execute(sql, params)
            return [
                BalanceRow(str(a), str(u), int(d), int(c), int(b))
                for a, u, d, c, b in cur.fetchall()
            ]

    def postings(
        self, chosen: PostingsFilter, after: tuple[int, int], page_size: int
    ) -> PostingsPage:
        where, params = chosen.where()
        with self.database.read() as cur:
            cur.execute(
                f"SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM rm_postings WHERE {where}", params
            )
            totals = cur.fetchone()
            cur.execute(
                f"SELECT {POSTING_COLUMNS} FROM rm_postings WHERE {where}"
                " AND (position > ? OR (position = ? AND seq > ?))"
                " ORDER BY position, seq LIMIT ?",
                [*params, after[0], after[0], after[1], page_size + 1],
            )
            rows = [PostingRow(*r) for r in cur.fetchall()]
        more = len(rows) > page_size
        rows = rows[:page_size]
        last = (rows[-1].position, rows[-1].seq) if more and rows else None
        count, amount = (int(totals[0]), int(totals[1])) if totals else (0, 0)
        return PostingsPage(rows, last, count, amount)
