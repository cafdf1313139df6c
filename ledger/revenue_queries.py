"""Reads of the revenue read model (projections/revenue.py): IFRS 15 deferred revenue for
points and breakage per earn cohort. Called by ReportService and `ledger report`; the
arithmetic is the domain's (ledger/domain/deferred_revenue.py, breakage.py).

Deferred revenue as of t adds the per-day sums of the local days before t's day and the
entries of t's own part-day, so a report reads a row per day, not a row per earn. The
per-day allocation is a sum of nano floors with its error bound; when the bound straddles a
rounding boundary (about one report in a million entries summed per thousand), the entries
up to t are summed exactly instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from fractions import Fraction
from zoneinfo import ZoneInfo

from ledger.domain import breakage
from ledger.domain.deferred_revenue import (
    NANOS,
    Allocated,
    DeferredRevenue,
    Undecided,
    recognise,
)
from ledger.infrastructure.database import Cursor, Database
from ledger.periods import Period, period_label, period_start
from projections.journal import local_day
from projections.points import micros
from projections.revenue import NAME


@dataclass(frozen=True)
class DeferredRevenueReport:
    points_issued: int
    points_redeemed: int
    purchases_minor: int
    allocated_minor: int
    revenue_recognised_minor: int
    contract_liability_minor: int
    expected_redemption_rate_ppm: int
    points_expected_to_be_redeemed: int
    currency: str
    position: int


@dataclass(frozen=True)
class BreakageRow:
    cohort_start: datetime
    cohort_label: str
    issued: int
    redeemed: int
    expired: int
    reversed: int
    outstanding: int
    closed: bool
    observed_redemption_rate_ppm: int
    projected_redemption_rate_ppm: int


@dataclass(frozen=True)
class BreakageReport:
    rows: list[BreakageRow]
    closed_redeemed_share_ppm: int
    position: int


class RevenueQueries:
    def __init__(self, database: Database) -> None:
        self.database = database

    def deferred_revenue(
        self, program_id: str, as_of: datetime | None, rate_ppm: int | None
    ) -> DeferredRevenueReport:
        """The figures cumulative to `as_of` (recorded, inclusive; None: everything), with
        `rate_ppm` as the estimate (None: the programme's in force at as_of)."""
        with self.database.read() as cur:
            position, program = _program(cur, program_id)
            if program is None:  # the read model has not seen the programme yet
                return _nothing(rate_ppm or 1_000_000, position)
            currency, zone = program
            if rate_ppm is None:
                rate_ppm = _rate_at(cur, program_id, as_of)
            whole_days = " AND day < ?" if as_of is not None else ""
            cur.execute(
                "SELECT COALESCE(SUM(issued), 0), COALESCE(SUM(redeemed), 0),"
                " COALESCE(SUM(purchases_minor), 0), COALESCE(SUM(allocated_whole), 0),"
                " COALESCE(SUM(allocated_nanos), 0), COALESCE(SUM(entries), 0)"
                f" FROM rm_revenue_daily WHERE program_id = ?{whole_days}",
                [program_id, *([local_day(as_of, zone)] if as_of else [])],
            )
            row = cur.fetchone()
            assert row is not None
            issued, redeemed, purchases, whole, nanos, entries = (int(v) for v in row)
            allocated = Fraction(whole) + Fraction(nanos, NANOS)
            if as_of is not None:
                part = _entries(cur, program_id, local_day(as_of, zone), micros(as_of))
                issued += sum(e[0] for e in part)
                redeemed += sum(e[1] for e in part)
                purchases += sum(e[2] for e in part)
                allocated += sum((e[3] for e in part), Fraction(0))
            try:
                figures = recognise(
                    Allocated(allocated, Fraction(entries, NANOS)), issued, redeemed, rate_ppm
                )
            except Undecided:
                exact = _entries(cur, program_id, None, micros(as_of) if as_of else None)
                total = sum((e[3] for e in exact), Fraction(0))
                figures = recognise(Allocated(total), issued, redeemed, rate_ppm)
        return _report(figures, purchases, rate_ppm, currency, position)

    def breakage(
        self,
        program_id: str,
        cohort: Period,
        since: datetime | None,
        until: datetime | None,
        fallback_rate_ppm: int,
    ) -> BreakageReport:
        """Per earn cohort starting in [since, until), and the share of closed cohorts'
        points that ended redeemed (all closed cohorts: the projection's basis)."""
        with self.database.read() as cur:
            position, program = _program(cur, program_id)
            if program is None:
                return BreakageReport([], fallback_rate_ppm, position)
            zone = program[1]
            cur.execute(
                "SELECT day, issued, reversed, redeemed, expired FROM rm_breakage_daily"
                " WHERE program_id = ?",
                (program_id,),
            )
            days = cur.fetchall()
        cohorts: dict[date, breakage.CohortFigures] = {}
        for day, issued, reversed_points, redeemed, expired in days:
            start = period_start(cohort, datetime.fromtimestamp(int(day) / 1e6, zone).date())
            figures = breakage.CohortFigures(
                int(issued), int(reversed_points), int(redeemed), int(expired)
            )
            cohorts[start] = cohorts.get(start, breakage.CohortFigures()) + figures
        share = breakage.redeemed_share_ppm(
            [c for c in cohorts.values() if c.closed], fallback_rate_ppm
        )
        rows = []
        for start in sorted(cohorts):
            moment = datetime(start.year, start.month, start.day, tzinfo=zone)
            if (since is not None and moment < since) or (until is not None and moment >= until):
                continue
            c = cohorts[start]
            rates = breakage.rates(c, share)
            rows.append(
                BreakageRow(
                    cohort_start=moment,
                    cohort_label=period_label(cohort, start),
                    issued=c.issued,
                    redeemed=c.redeemed,
                    expired=c.expired,
                    reversed=c.reversed,
                    outstanding=c.outstanding,
                    closed=c.closed,
                    observed_redemption_rate_ppm=rates.observed_ppm,
                    projected_redemption_rate_ppm=rates.projected_ppm,
                )
            )
        return BreakageReport(rows, share, position)


def _program(cur: Cursor, program_id: str) -> tuple[int, tuple[str, ZoneInfo] | None]:
    """The read model's position, and the programme's currency and zone if it has it."""
    cur.execute(
        "SELECT t.position, p.currency, p.time_zone FROM projection_tracking t"
        " LEFT JOIN rm_revenue_programs p ON p.program_id = ? WHERE t.name = ?",
        (program_id, NAME),
    )
    found = cur.fetchone()
    if found is None:
        return 0, None
    if found[1] is None:
        return int(found[0]), None
    return int(found[0]), (str(found[1]), ZoneInfo(str(found[2])))


def _rate_at(cur: Cursor, program_id: str, as_of: datetime | None) -> int:
    """The programme's expected redemption rate in force at `as_of` (None: now)."""
    sql = "SELECT rate_ppm FROM rm_revenue_rates WHERE program_id = ?"
    params: list[object] = [program_id]
    if as_of is not None:
        sql += " AND recorded_at <= ?"
        params.append(micros(as_of))
    cur.execute(sql + " ORDER BY position DESC LIMIT 1", params)
    row = cur.fetchone()
    if row is None:  # before the programme was created: its first estimate
        cur.execute(
            "SELECT rate_ppm FROM rm_revenue_rates WHERE program_id = ? ORDER BY position LIMIT 1",
            (program_id,),
        )
        row = cur.fetchone()
    return int(row[0]) if row else 1_000_000


def _entries(
    cur: Cursor, program_id: str, since: int | None, until: int | None
) -> list[tuple[int, int, int, Fraction]]:
    """Entries recorded in [since, until] (microseconds; None: unbounded), exactly."""
    sql = (
        "SELECT issued, redeemed, purchases_minor, allocated_num, allocated_den"
        " FROM rm_revenue_entries WHERE program_id = ?"
    )
    params: list[object] = [program_id]
    if since is not None:
        sql += " AND recorded_at >= ?"
        params.append(since)
    if until is not None:
        sql += " AND recorded_at <= ?"
        params.append(until)
    cur.execute(sql, params)
    return [(int(i), int(r), int(p), Fraction(int(n), int(d))) for i, r, p, n, d in cur.fetchall()]


def _report(
    figures: DeferredRevenue, purchases: int, rate_ppm: int, currency: str, position: int
) -> DeferredRevenueReport:
    return DeferredRevenueReport(
        points_issued=figures.points_issued,
        points_redeemed=figures.points_redeemed,
        purchases_minor=purchases,
        allocated_minor=figures.allocated_minor,
        revenue_recognised_minor=figures.revenue_recognised_minor,
        contract_liability_minor=figures.contract_liability_minor,
        expected_redemption_rate_ppm=rate_ppm,
        points_expected_to_be_redeemed=figures.points_expected_to_be_redeemed,
        currency=currency,
        position=position,
    )


def _nothing(rate_ppm: int, position: int) -> DeferredRevenueReport:
    return _report(recognise(Allocated(Fraction(0)), 0, 0, rate_ppm), 0, rate_ppm, "", position)
