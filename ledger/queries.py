"""Reads that bypass the domain: straight from the read models built by projections/."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from ledger.application.views import AccountView
from ledger.domain.program import ProgramSettings
from ledger.infrastructure.database import Database
from projections.points import AccountRow, LotRow, TransactionRow, micros


def from_micros(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


@dataclass(frozen=True)
class TransactionPage:
    rows: list[TransactionRow]
    # Position of the last row when more may follow, else None.
    last_position: int | None


TRANSACTION_COLUMNS = ", ".join(f.name for f in fields(TransactionRow))
LOT_COLUMNS = ", ".join(f.name for f in fields(LotRow))


class LedgerQueries:
    def __init__(self, database: Database) -> None:
        self.database = database

    def account(
        self, program_id: str, member_id: str, settings: ProgramSettings, now: datetime
    ) -> AccountView | None:
        """The account as the read models have it; its tier from the qualifying points that
        count at `now` (each earn for the window in force when it was recorded, as
        `MemberAccount.qualifying_points` counts them) and the program's ladder now."""
        with self.database.read() as cur:
            cur.execute(
                "SELECT account_id, program_id, member_id, points_available, points_held,"
                " points_debt, cash_minor, bonus_minor, enrolled_at, version, position"
                " FROM rm_accounts WHERE program_id = ? AND member_id = ?",
                (program_id, member_id),
            )
            found = cur.fetchone()
            if found is None:
                return None
            row = AccountRow(*found)
            cur.execute(
                "SELECT COALESCE(SUM(qualifying_delta), 0) FROM rm_transactions"
                " WHERE program_id = ? AND member_id = ? AND qualifying_delta <> 0"
                " AND qualifies_until >= ?",
                (program_id, member_id, micros(now)),
            )
            qualifying_row = cur.fetchone()
        qualifying = int(qualifying_row[0]) if qualifying_row else 0
        standing = settings.standing(qualifying)
        return AccountView(
            program_id=row.program_id,
            member_id=row.member_id,
            points_available=row.points_available,
            points_held=row.points_held,
            points_debt=row.points_debt,
            stored_value_cash_minor=row.cash_minor,
            stored_value_bonus_minor=row.bonus_minor,
            tier_code=standing.tier_code,
            qualifying_points=qualifying,
            next_tier_code=standing.next_tier_code,
            points_to_next_tier=standing.points_to_next_tier,
            enrolled_at=from_micros(row.enrolled_at),
            version=row.version,
        )

    def account_as_of(
        self, program_id: str, member_id: str, settings: ProgramSettings, as_of: datetime
    ) -> AccountView | None:
        """The account as the ledger knew it at the recorded instant `as_of` (inclusive):
        the balances and version after its last row recorded then or before, the qualifying
        points that counted at `as_of` among the rows recorded by then, and the ladder of
        `settings` (the programme as recorded at `as_of`). None: no row recorded by then
        (not enrolled yet). Two indexed reads, whatever the length of the history."""
        at = micros(as_of)
        with self.database.read() as cur:
            cur.execute(
                "SELECT t.points_after, t.held_after, t.debt_after, t.cash_after_minor,"
                " t.bonus_after_minor, t.version, a.enrolled_at"
                " FROM rm_transactions t JOIN rm_accounts a"
                " ON a.program_id = t.program_id AND a.member_id = t.member_id"
                " WHERE t.program_id = ? AND t.member_id = ? AND t.recorded_at <= ?"
                " ORDER BY t.recorded_at DESC, t.position DESC LIMIT 1",
                (program_id, member_id, at),
            )
            found = cur.fetchone()
            if found is None:
                return None
            cur.execute(
                "SELECT COALESCE(SUM(qualifying_delta), 0) FROM rm_transactions"
                " WHERE program_id = ? AND member_id = ? AND qualifying_delta <> 0"
                " AND qualifies_until >= ? AND recorded_at <= ?",
                (program_id, member_id, at, at),
            )
            qualifying_row = cur.fetchone()
        points, held, debt, cash, bonus, version, enrolled_at = (int(x) for x in found)
        qualifying = int(qualifying_row[0]) if qualifying_row else 0
        standing = settings.standing(qualifying)
        return AccountView(
            program_id=program_id,
            member_id=member_id,
            points_available=points,
            points_held=held,
            points_debt=debt,
            stored_value_cash_minor=cash,
            stored_value_bonus_minor=bonus,
            tier_code=standing.tier_code,
            qualifying_points=qualifying,
            next_tier_code=standing.next_tier_code,
            points_to_next_tier=standing.points_to_next_tier,
            enrolled_at=from_micros(enrolled_at),
            version=version,
        )

    def member_recorded_by(self, program_id: str, member_id: str, as_of: datetime) -> bool:
        """Whether the member's enrolment was recorded at or before `as_of`."""
        with self.database.read() as cur:
            cur.execute(
                "SELECT 1 FROM rm_transactions WHERE program_id = ? AND member_id = ?"
                " AND recorded_at <= ? LIMIT 1",
                (program_id, member_id, micros(as_of)),
            )
            return cur.fetchone() is not None

    def member_exists(self, program_id: str, member_id: str) -> bool:
        with self.database.read() as cur:
            cur.execute(
                "SELECT 1 FROM rm_accounts WHERE program_id = ? AND member_id = ?",
                (program_id, member_id),
            )
            return cur.fetchone() is not None

    def transactions(
        self,
        program_id: str,
        member_id: str,
        page_size: int,
        after_position: int,
        since: datetime | None,
        until: datetime | None,
        as_of: datetime | None = None,
    ) -> TransactionPage:
        """A page in log order; `since`/`until` on business time (occurred_at), `as_of` on
        recorded time (only rows recorded at or before it)."""
        sql = (
            f"SELECT {TRANSACTION_COLUMNS} FROM rm_transactions"
            " WHERE program_id = ? AND member_id = ? AND position > ?"
        )
        params: list[object] = [program_id, member_id, after_position]
        if since is not None:
            sql += " AND occurred_at >= ?"
            params.append(micros(since))
        if until is not None:
            sql += " AND occurred_at < ?"
            params.append(micros(until))
        if as_of is not None:
            sql += " AND recorded_at <= ?"
            params.append(micros(as_of))
        sql += " ORDER BY position LIMIT ?"
        params.append(page_size + 1)
        with self.database.read() as cur:
            cur.execute(sql, params)
            rows = [TransactionRow(*r) for r in cur.fetchall()]
        more = len(rows) > page_size
        rows = rows[:page_size]
        return TransactionPage(rows, rows[-1].position if more and rows else None)

    def lots(self, program_id: str, member_id: str, include_closed: bool) -> list[LotRow]:
        sql = f"SELECT {LOT_COLUMNS} FROM rm_lots WHERE program_id = ? AND member_id = ?"
        if not include_closed:
            sql += " AND (remaining > 0 OR held > 0)"
        # Spend order: earliest expiry first (never-expiring last), then oldest earn.
        sql += (
            " ORDER BY CASE WHEN expires_at IS NULL THEN 1 ELSE 0 END, expires_at,"
            " earned_at, lot_id"
        )
        with self.database.read() as cur:
            cur.execute(sql, (program_id, member_id))
            return [LotRow(*r) for r in cur.fetchall()]

    def lots_as_of(
        self, program_id: str, member_id: str, include_closed: bool, as_of: datetime
    ) -> list[LotRow]:
        """The lots recorded at or before `as_of`, each as its last history row then or
        before left it (remaining, held, expired); spend order as `lots`."""
        # Per lot, its last history row by then: one short index range each (a lot has a
        # row per event that changed it), so the cost follows the lots, not the history.
        sql = (
            "SELECT l.program_id, l.member_id, l.lot_id, l.earned_at, l.expires_at, l.points,"
            " h.remaining, h.held, h.expired, l.qualifying, l.qualifies_until"
            " FROM rm_lots l JOIN rm_lot_history h ON h.program_id = l.program_id"
            " AND h.member_id = l.member_id AND h.lot_id = l.lot_id AND h.position = ("
            "SELECT MAX(p.position) FROM rm_lot_history p WHERE p.program_id = l.program_id"
            " AND p.member_id = l.member_id AND p.lot_id = l.lot_id AND p.recorded_at <= ?)"
            " WHERE l.program_id = ? AND l.member_id = ?"
        )
        if not include_closed:
            sql += " AND (h.remaining > 0 OR h.held > 0)"
        sql += (
            " ORDER BY CASE WHEN l.expires_at IS NULL THEN 1 ELSE 0 END, l.expires_at,"
            " l.earned_at, l.lot_id"
        )
        with self.database.read() as cur:
            cur.execute(sql, (micros(as_of), program_id, member_id))
            return [LotRow(*r) for r in cur.fetchall()]

    def members_with_due_lots(self, program_id: str, as_of: datetime) -> list[str]:
        with self.database.read() as cur:
            cur.execute(
                "SELECT DISTINCT member_id FROM rm_lots WHERE program_id = ?"
                " AND remaining > 0 AND expires_at IS NOT NULL AND expires_at <= ?"
                " ORDER BY member_id",
                (program_id, micros(as_of)),
            )
            return [str(r[0]) for r in cur.fetchall()]

    def accounts_with_expired_holds(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        with self.database.read() as cur:
            cur.execute(
                "SELECT DISTINCT program_id, member_id FROM rm_holds"
                " WHERE status = 'ACTIVE' AND expires_at <= ? LIMIT ?",
                (micros(now), limit),
            )
            return [(str(r[0]), str(r[1])) for r in cur.fetchall()]

    def program_ids(self) -> list[str]:
        with self.database.read() as cur:
            cur.execute("SELECT program_id FROM rm_programs ORDER BY program_id")
            return [str(r[0]) for r in cur.fetchall()]
