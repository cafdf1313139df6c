"""Reads of the journal read model: the trial balance, pages of postings, and finance's
reports (liabilities, movements, settlement; docs/reports.md). Like ledger/queries.py, these
bypass the domain, and know nothing of protobuf (the gRPC servicer and `ledger report` both
call them).

Every report is built from `sums`: per (control account, unit, store_id) the debit and credit
of the postings recorded at or before a moment t. Whole local days before t's day come from
`rm_journal_daily`, only t's own part-day from `rm_postings` (by its recorded-time index), so
a report reads a few rows per day and account and at most one day of postings, never the
whole journal. A period (since, until] is sums(until) - sums(since).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from zoneinfo import ZoneInfo

from ledger.domain import journal
from ledger.domain.errors import InternalFault
from ledger.infrastructure.database import Database
from projections.journal import MEMBERS, NAME, POSTING_COLUMNS, control_account, local_day
from projections.points import micros

log = logging.getLogger(__name__)
INT64_MAX = 2**63 - 1


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


# ---------------------------------------------------------------------- sums


Key = tuple[str, str, str]  # (control account, unit, store_id where it happened)


@dataclass(frozen=True)
class Account:
    """A ledger account's name taken apart: scope (member, store, program), the middle (a
    member's id or `*`, a store's id, which may hold ':'; "" for the programme's) and the
    kind after the last ':' (which never holds one)."""

    scope: str
    owner: str
    kind: str

    @staticmethod
    def parse(name: str) -> Account:
        scope, _, rest = name.partition(":")
        owner, _, kind = rest.rpartition(":")
        return Account(scope, owner, kind)


@dataclass(frozen=True)
class Sums:
    """Debit and credit per (control account, unit, store_id): the journal as of a moment,
    or (the difference of two) over a period."""

    rows: dict[Key, tuple[int, int]] = field(default_factory=dict)

    def minus(self, earlier: Sums) -> Sums:
        keys = self.rows.keys() | earlier.rows.keys()
        rows = {}
        for key in keys:
            d1, c1 = self.rows.get(key, (0, 0))
            d0, c0 = earlier.rows.get(key, (0, 0))
            if (d1 - d0, c1 - c0) != (0, 0):
                rows[key] = (d1 - d0, c1 - c0)
        return Sums(rows)

    @cached_property
    def _by_kind(self) -> dict[tuple[str, str, str], list[tuple[Key, int, int]]]:
        """(unit, scope, kind) -> its rows: each account name parsed once, not once a line."""
        index: dict[tuple[str, str, str], list[tuple[Key, int, int]]] = {}
        for key, (debit, credit) in self.rows.items():
            account = Account.parse(key[0])
            index.setdefault((key[1], account.scope, account.kind), []).append((key, debit, credit))
        return index

    def select(self, unit: str, scope: str, kind: str) -> Iterable[tuple[Key, int, int]]:
        return self._by_kind.get((unit, scope, kind), [])

    def debit(self, unit: str, scope: str, kind: str) -> int:
        return sum(d for _, d, _ in self.select(unit, scope, kind))

    def credit(self, unit: str, scope: str, kind: str) -> int:
        return sum(c for _, _, c in self.select(unit, scope, kind))

    def net(self, unit: str, scope: str, kind: str) -> int:
        """credit - debit: the balance (as of a moment) or its change (over a period)."""
        return self.credit(unit, scope, kind) - self.debit(unit, scope, kind)


# The kinds of account, from journal.py's own names.
MEMBER_KINDS = tuple(
    Account.parse(f("m")).kind
    for f in (
        journal.member_points,
        journal.member_points_held,
        journal.member_points_debt,
        journal.member_cash,
        journal.member_bonus,
    )
)
POINTS_BALANCE = (MEMBER_KINDS[0], MEMBER_KINDS[1])  # available + held
POINTS_DEBT, CASH, BONUS = MEMBER_KINDS[2], MEMBER_KINDS[3], MEMBER_KINDS[4]
STORE_KIND = {
    name: Account.parse(f("s")).kind
    for name, f in (
        ("issued", journal.points_issued),
        ("redeemed", journal.points_redeemed),
        ("converted", journal.points_converted),
    )
}
EXPIRED = Account.parse(journal.POINTS_EXPIRED).kind
ADJUSTED = Account.parse(journal.POINTS_ADJUSTED).kind


def _collapsed_sql() -> str:
    """SQL for control_account(ledger_account) over a part-day's postings, for the member
    kinds the journal writes (a kind this does not know stays as it is, and Python collapses
    it after). Exact suffix comparison: LIKE's `_` is a wildcard, and SQLite's LIKE ignores
    case."""
    branches = []
    for kind in MEMBER_KINDS:
        assert kind.replace("_", "").isalpha(), kind  # safe inside a SQL literal
        suffix = f":{kind}"
        branches.append(
            f"WHEN length(ledger_account) > {len(suffix)} AND substr(ledger_account,"
            f" length(ledger_account) - {len(suffix) - 1}) = '{suffix}' THEN '{MEMBERS}{kind}'"
        )
    return (
        "CASE WHEN substr(ledger_account, 1, 7) = 'member:' THEN CASE "
        + " ".join(branches)
        + " ELSE ledger_account END ELSE ledger_account END"
    )


COLLAPSED = _collapsed_sql()
_BY_KEY = " GROUP BY ledger_account, unit, store_id"


class JournalDoesNotTie(InternalFault):
    """A report's own check failed (opening + movements != closing, stores that do not add
    up to the total): the journal disagrees with itself, a bug to report (logged here; the
    caller is answered INTERNAL), never a report with figures that do not add up."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        log.error("journal report refused: %s", message)


# ---------------------------------------------------------------------- reports


@dataclass(frozen=True)
class TrialBalance:
    rows: list[BalanceRow]
    position: int


@dataclass(frozen=True)
class StoreLiability:
    store_id: str  # the store of issue
    stored_value_cash_minor: int
    stored_value_bonus_minor: int


@dataclass(frozen=True)
class Liabilities:
    points_outstanding: int
    points_debt: int
    points_value_minor: int
    point_value_minor: int
    stored_value_cash_minor: int
    stored_value_bonus_minor: int
    currency: str
    rows: list[StoreLiability]  # per store of issue
    position: int


LINES = (
    "opening",
    "issued",
    "reversed",
    "redeemed",
    "converted",
    "expired",
    "adjusted",
    "debt_settled",
    "refunded",
    "cashed_out",
    "withheld",
    "forfeited",
    "closing",
)


@dataclass(frozen=True)
class Movements:
    """One balance over a period: each line signed as it changes the balance."""

    opening: int = 0
    issued: int = 0
    reversed: int = 0
    redeemed: int = 0
    converted: int = 0
    expired: int = 0
    adjusted: int = 0
    debt_settled: int = 0
    refunded: int = 0
    cashed_out: int = 0
    withheld: int = 0
    forfeited: int = 0
    closing: int = 0

    def movements(self) -> int:
        return sum(getattr(self, line) for line in LINES[1:-1])

    def check(self, what: str) -> None:
        if self.opening + self.movements() != self.closing:
            raise JournalDoesNotTie(
                f"the {what} movements do not tie: opening {self.opening} + movements "
                f"{self.movements()} != closing {self.closing}"
            )


@dataclass(frozen=True)
class MovementsReport:
    points: Movements
    cash: Movements
    bonus: Movements
    currency: str
    position: int


@dataclass(frozen=True)
class SettlementRow:
    issuing_store_id: str
    redeeming_store_id: str
    cash_minor: int
    bonus_minor: int


@dataclass(frozen=True)
class SettlementNet:
    debtor_store_id: str  # the issuer that holds the money
    creditor_store_id: str
    cash_minor: int
    bonus_minor: int


@dataclass(frozen=True)
class Settlement:
    rows: list[SettlementRow]
    net: list[SettlementNet]
    total_cash_minor: int  # the rows' sums
    total_bonus_minor: int
    spent_cash_minor: int  # stored value spent net of refunds in the period, at any store
    spent_bonus_minor: int
    currency: str
    position: int


class JournalQueries:
    def __init__(self, database: Database) -> None:
        self.database = database

    # ------------------------------------------------------------------ sums

    def sums(self, program_id: str, *moments: datetime | None) -> tuple[int, list[Sums]]:
        """The journal's sums as of each moment (None: everything), all read in one
        statement (one snapshot, on PostgreSQL as well), with the journal's position in that
        snapshot."""
        with self.database.read() as cur:
            cur.execute(
                "SELECT t.position, p.time_zone FROM projection_tracking t"
                " LEFT JOIN rm_journal_programs p ON p.program_id = ? WHERE t.name = ?",
                (program_id, NAME),
            )
            found = cur.fetchone()
            if found is None or found[1] is None:
                # The journal has not seen the programme (nor, so, any of its postings).
                return (int(found[0]) if found else 0), [Sums() for _ in moments]
            zone = ZoneInfo(str(found[1]))
            selects: list[tuple[str, list[object]]] = []  # each with its own parameters
            for tag, moment in enumerate(moments):
                daily = (
                    f"SELECT {tag}, ledger_account, unit, store_id, SUM(debit), SUM(credit)"
                    " FROM rm_journal_daily WHERE program_id = ?"
                )
                if moment is None:
                    selects.append((daily + _BY_KEY, [program_id]))
                    continue
                day = local_day(moment, zone)
                selects.append((daily + " AND day < ?" + _BY_KEY, [program_id, day]))
                selects.append(
                    (
                        f"SELECT {tag}, {COLLAPSED}, unit, store_id,"
                        " SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END),"
                        " SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END)"
                        " FROM rm_postings WHERE program_id = ?"
                        " AND recorded_at >= ? AND recorded_at <= ? GROUP BY 2, 3, 4",
                        [program_id, day, micros(moment)],
                    )
                )
            selects.append(
                (
                    "SELECT -1, '', '', '', position, 0 FROM projection_tracking WHERE name = ?",
                    [NAME],
                )
            )
            sql = " UNION ALL ".join(select for select, _ in selects)
            params = [p for _, ps in selects for p in ps]
            cur.execute(sql, params)
            fetched = cur.fetchall()
        position = 0
        rows: list[dict[Key, tuple[int, int]]] = [{} for _ in moments]
        for tag, account, unit, store_id, debit, credit in fetched:
            if int(tag) < 0:
                position = int(debit)
                continue
            key = (control_account(str(account)), str(unit), str(store_id))
            d, c = rows[int(tag)].get(key, (0, 0))
            rows[int(tag)][key] = (d + int(debit), c + int(credit))
        return position, [Sums(r) for r in rows]

    # ------------------------------------------------------------------ reports

    def trial_balance(self, program_id: str, as_of: datetime | None) -> TrialBalance:
        """Every control account (members collapsed into member:*:<kind>) and every contra
        account, with its debit, credit and balance as of `as_of` (recorded, inclusive)."""
        position, (sums,) = self.sums(program_id, as_of)
        by_account: dict[tuple[str, str], tuple[int, int]] = {}
        for (account, unit, _store), (debit, credit) in sums.rows.items():
            d, c = by_account.get((account, unit), (0, 0))
            by_account[(account, unit)] = (d + debit, c + credit)
        rows = [
            BalanceRow(account, unit, d, c, c - d)
            for (account, unit), (d, c) in sorted(by_account.items(), key=lambda i: i[0][::-1])
        ]
        return TrialBalance(rows, position)

    def liabilities(
        self, program_id: str, currency: str, point_value_minor: int, as_of: datetime | None
    ) -> Liabilities:
        position, (sums,) = self.sums(program_id, as_of)
        return liabilities_from_sums(sums, currency, point_value_minor, position)

    def movements(
        self, program_id: str, currency: str, since: datetime | None, until: datetime | None
    ) -> MovementsReport:
        """The period (since, until] in recorded time: since None = the beginning, until None
        = everything recorded so far."""
        if since is None:
            position, (closing,) = self.sums(program_id, until)
            opening = Sums()
        else:
            position, (opening, closing) = self.sums(program_id, since, until)
        return _movements(opening, closing, currency, position)

    def settlement(
        self, program_id: str, currency: str, since: datetime | None, until: datetime | None
    ) -> Settlement:
        if since is None:
            position, (closing,) = self.sums(program_id, until)
            period = closing
        else:
            position, (opening, closing) = self.sums(program_id, since, until)
            period = closing.minus(opening)
        return _settlement(period, currency, position)

    # ------------------------------------------------------------------ postings

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


# ---------------------------------------------------------------------- the reports' rules


def liabilities_from_sums(
    sums: Sums, currency: str, point_value_minor: int, position: int
) -> Liabilities:
    points = sum(sums.net(journal.POINTS, "member", kind) for kind in POINTS_BALANCE)
    cash = sums.net(currency, "member", CASH)
    bonus = sums.net(currency, "member", BONUS)
    value = points * point_value_minor
    if not -INT64_MAX <= value <= INT64_MAX:
        raise JournalDoesNotTie(f"the points' value ({points} x {point_value_minor}) exceeds int64")
    by_store: dict[str, list[int]] = {}
    for (account, unit, _where), (debit, credit) in sums.rows.items():
        parsed = Account.parse(account)
        if unit != currency or parsed.scope != "store":
            continue
        if parsed.kind in journal.CASH_ACCOUNTS:
            by_store.setdefault(parsed.owner, [0, 0])[0] -= credit - debit
        elif parsed.kind in journal.BONUS_ACCOUNTS:
            by_store.setdefault(parsed.owner, [0, 0])[1] -= credit - debit
    stores = [StoreLiability(s, c, b) for s, (c, b) in sorted(by_store.items()) if (c, b) != (0, 0)]
    if (
        sum(s.stored_value_cash_minor for s in stores),
        sum(s.stored_value_bonus_minor for s in stores),
    ) != (cash, bonus):
        raise JournalDoesNotTie(
            f"the stores' stored value does not add up to the members' ({cash} cash, {bonus} bonus)"
        )
    return Liabilities(
        points_outstanding=points,
        points_debt=-sums.net(journal.POINTS, "member", POINTS_DEBT),
        points_value_minor=value,
        point_value_minor=point_value_minor,
        stored_value_cash_minor=cash,
        stored_value_bonus_minor=bonus,
        currency=currency,
        rows=stores,
        position=position,
    )


def _movements(opening: Sums, closing: Sums, currency: str, position: int) -> MovementsReport:
    period = closing.minus(opening)
    pts = journal.POINTS

    def balance(sums: Sums, unit: str, kinds: Iterable[str]) -> int:
        return sum(sums.net(unit, "member", kind) for kind in kinds)

    points = Movements(
        opening=balance(opening, pts, POINTS_BALANCE),
        issued=period.debit(pts, "store", STORE_KIND["issued"]),
        reversed=-period.credit(pts, "store", STORE_KIND["issued"]),
        redeemed=-period.net(pts, "store", STORE_KIND["redeemed"]),
        converted=-period.net(pts, "store", STORE_KIND["converted"]),
        expired=-period.net(pts, "program", EXPIRED),
        adjusted=-period.net(pts, "program", ADJUSTED),
        debt_settled=-period.net(pts, "member", POINTS_DEBT),
        closing=balance(closing, pts, POINTS_BALANCE),
    )
    cash = Movements(
        opening=balance(opening, currency, [CASH]),
        issued=-period.net(currency, "store", journal.CASH_RECEIVED),
        redeemed=-period.credit(currency, "store", journal.CASH_SPENT),
        refunded=period.debit(currency, "store", journal.CASH_SPENT),
        cashed_out=-period.net(currency, "store", journal.CASH_PAID_OUT),
        withheld=-period.net(currency, "store", journal.CASH_WITHHELD),
        closing=balance(closing, currency, [CASH]),
    )
    bonus = Movements(
        opening=balance(opening, currency, [BONUS]),
        issued=-period.net(currency, "store", journal.BONUS_GRANTED),
        converted=-period.net(currency, "store", journal.BONUS_CONVERTED),
        redeemed=-period.credit(currency, "store", journal.BONUS_SPENT),
        refunded=period.debit(currency, "store", journal.BONUS_SPENT),
        forfeited=-period.net(currency, "store", journal.BONUS_FORFEITED),
        closing=balance(closing, currency, [BONUS]),
    )
    for what, lines in (("points", points), ("cash", cash), ("bonus", bonus)):
        lines.check(what)
    return MovementsReport(points, cash, bonus, currency, position)


def _settlement(period: Sums, currency: str, position: int) -> Settlement:
    gross: dict[tuple[str, str], list[int]] = {}
    spent = [0, 0]
    for column, kind in enumerate((journal.CASH_SPENT, journal.BONUS_SPENT)):
        for (account, _unit, where), debit, credit in period.select(currency, "store", kind):
            issuer, redeemer = Account.parse(account).owner, where or "-"
            spent[column] += credit - debit
            if issuer != redeemer:
                gross.setdefault((issuer, redeemer), [0, 0])[column] += credit - debit
    rows = [
        SettlementRow(i, r, c, b) for (i, r), (c, b) in sorted(gross.items()) if (c, b) != (0, 0)
    ]
    net: list[SettlementNet] = []
    for a, b in sorted({tuple(sorted(pair)) for pair in gross}):
        ab, ba = gross.get((a, b), [0, 0]), gross.get((b, a), [0, 0])
        cash, bonus = ab[0] - ba[0], ab[1] - ba[1]
        if (cash, bonus) == (0, 0):
            continue
        if cash + bonus < 0:  # b holds the money: b owes a
            net.append(SettlementNet(b, a, -cash, -bonus))
        else:
            net.append(SettlementNet(a, b, cash, bonus))
    return Settlement(
        rows=rows,
        net=net,
        total_cash_minor=sum(r.cash_minor for r in rows),
        total_bonus_minor=sum(r.bonus_minor for r in rows),
        spent_cash_minor=spent[0],
        spent_bonus_minor=spent[1],
        currency=currency,
        position=position,
    )
