"""The expiry forecast (from the points read model's lots) and the prepaid custody report
(from the journal's per-day sums): their SQL and their rules (docs/reports.md, decision 19).
Like journal_queries.py, protobuf-free: ReportService and `ledger report` both call them.

Expiry forecast. A lot's `remaining` points expire at its `expires_at` unless they are
spent first: that is what an expiry run takes (MemberAccount.expire_lots). Its `held` points
are not counted: they are at a checkout, which captures them (redeemed) or gives them back;
only given back after the lot's expiry do they expire, at that moment, which no forecast by
expiry date can place. A bucket is the programme's local day of the LAST microsecond the
points can be used, the local date of expires_at - 1 us: points expiring at exactly local
midnight (END_OF_YEAR_AFTER_YEARS: 1 January 00:00) belong to the day that ends then
(31 December), so a year-end clearing is one bucket on 31 December.

Prepaid custody. At each period end (the local midnight after a month's, quarter's or
year's last day), the stored-value cash each store of issue still owes its members, as
GetLiabilities gives it as of that instant, and the share to hold in custody at ratio_ppm,
rounded up per store (the custody must be at least the share).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from ledger.application.validation import MAX_TIME, Violations
from ledger.infrastructure.database import Database
from ledger.journal_queries import COLLAPSED, Sums, liabilities_from_sums
from projections.journal import NAME as JOURNAL
from projections.journal import control_account
from projections.points import NAME as POINTS
from projections.points import micros

DAY_US = 86_400_000_000
MICROSECOND = timedelta(microseconds=1)
MAX_WINDOW = timedelta(days=366)
PPM = 1_000_000
EPOCH = date(1970, 1, 1)
# Added before the integer division that gives a local day, so that the dividend is never
# negative (1970-01-01 west of UTC), where SQL's division truncates toward zero.
_SHIFT_DAYS = 2


# ---------------------------------------------------------------------- expiry forecast


@dataclass(frozen=True)
class ExpiryBucket:
    date: date  # the local date of the last microsecond the points can be used
    expires_at: int  # the earliest expiry instant in the bucket (microseconds)
    points: int
    members: int


@dataclass(frozen=True)
class ExpiringMember:
    member_id: str
    points: int  # expiring in the window
    expires_at: int  # the first of them (microseconds)


@dataclass(frozen=True)
class ExpiryForecast:
    buckets: list[ExpiryBucket]  # by date
    members: list[ExpiringMember]  # this page: most points first, then member_id
    after: tuple[int, str] | None  # (points, member_id) of the page's last, when more follow
    total_points: int  # the whole window's
    total_members: int
    position: int  # the points read model's


def expiry_window(
    v: Violations, since: datetime, until: datetime | None, field: str = "until"
) -> tuple[datetime, datetime] | None:
    """The forecast's window [since, until), checked (None, with a violation on `field`):
    until after since and at most 366 days later; unset, since + 366 days (at most the
    API's last instant)."""
    if until is None:  # (since + 366 days would overflow datetime past MAX_TIME)
        return since, MAX_TIME if since > MAX_TIME - MAX_WINDOW else since + MAX_WINDOW
    if since >= until:
        v.add(field, "must be after since (unset: now)")
        return None
    if until - since > MAX_WINDOW:
        v.add(field, f"at most {MAX_WINDOW.days} days after since")
        return None
    return since, until


def bucket_date(expires_at: datetime, zone: ZoneInfo) -> date:
    """The bucket of points expiring at `expires_at`: the local date of the last microsecond
    they can be used."""
    return (expires_at - MICROSECOND).astimezone(zone).date()


def offset_segments(zone: ZoneInfo, since: datetime, until: datetime) -> list[tuple[int, int]]:
    """The zone's UTC offsets over [since, until] as (last instant, offset), both in
    microseconds: offset k holds for every instant u <= last instant k (and after the one
    before); the last segment's bound is `until`. Found by stepping 6 hours and bisecting
    each change to the microsecond (no zone changes its offset twice within 6 hours)."""

    def offset(moment_us: int) -> int:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=moment_us)
        delta = moment.astimezone(zone).utcoffset()
        assert delta is not None
        return delta // MICROSECOND

    step = 6 * 3600 * 1_000_000
    start, end = micros(since), micros(until)
    segments: list[tuple[int, int]] = []
    current, t = offset(start), start
    while t < end:
        following = min(t + step, end)
        if offset(following) != current:
            low, high = t, following  # offset(low) == current != offset(high)
            while high - low > 1:
                middle = (low + high) // 2
                if offset(middle) == current:
                    low = middle
                else:
                    high = middle
            segments.append((low, current))
            current = offset(high)
            t = high
        else:
            t = following
    segments.append((end, current))
    return segments


def _day_sql(zone: ZoneInfo, since: datetime, until: datetime) -> tuple[str, list[object]]:
    """SQL for the bucket day of `expires_at` (local days since 1970-01-01, plus
    _SHIFT_DAYS): the local date of expires_at - 1 us, with the offset in force at that
    instant, over the few offsets of the window."""
    # The instant that matters is u = expires_at - 1, and u <= last <=> expires_at <= last + 1.
    segments = offset_segments(zone, since - MICROSECOND, until)
    params: list[object] = []
    branches = []
    for last, offset in segments[:-1]:
        branches.append(
            "WHEN expires_at <= CAST(? AS BIGINT) THEN (expires_at + CAST(? AS BIGINT))"
        )
        params += [last + 1, offset - 1 + _SHIFT_DAYS * DAY_US]
    params.append(segments[-1][1] - 1 + _SHIFT_DAYS * DAY_US)
    inner = "(expires_at + CAST(? AS BIGINT))"
    if branches:
        inner = f"(CASE {' '.join(branches)} ELSE {inner} END)"
    return f"{inner} / {DAY_US}", params


class ForecastQueries:
    def __init__(self, database: Database) -> None:
        self.database = database

    def expiry_forecast(
        self,
        program_id: str,
        zone: ZoneInfo,
        since: datetime,
        until: datetime,
        member_id: str = "",
        after: tuple[int, str] | None = None,
        page_size: int = 100,
    ) -> ExpiryForecast:
        """Points of lots expiring in [since, until) that are still `remaining`, per bucket
        day, with a page of members (most points first, then member_id) after `after`, the
        window's totals and the points read model's position, all from one statement (one
        snapshot)."""
        day, day_params = _day_sql(zone, since, until)
        where = "program_id = ? AND remaining > 0 AND expires_at >= ? AND expires_at < ?"
        where_params: list[object] = [program_id, micros(since), micros(until)]
        if member_id:
            where += " AND member_id = ?"
            where_params.append(member_id)
        page_where, page_params = "", list[object]()
        if after is not None:
            page_where = " WHERE points < ? OR (points = ? AND member_id > ?)"
            page_params = [after[0], after[0], after[1]]
        sql = (
            # Per member and day first: buckets count members, pages sum days.
            f"WITH pairs AS (SELECT {day} AS day, member_id, SUM(remaining) AS points,"
            f" MIN(expires_at) AS first FROM rm_lots WHERE {where} GROUP BY 1, member_id),"
            " members AS (SELECT member_id, SUM(points) AS points, MIN(first) AS first"
            " FROM pairs GROUP BY member_id)"
            " SELECT 0, '', day, SUM(points), COUNT(*), MIN(first) FROM pairs GROUP BY day"
            " UNION ALL SELECT 1, '', 0, COALESCE(SUM(points), 0), COUNT(*), 0 FROM members"
            " UNION ALL SELECT * FROM (SELECT 2, member_id, 0, points, 0, first FROM members"
            f"{page_where} ORDER BY points DESC, member_id LIMIT ?) AS page"
            " UNION ALL SELECT 3, '', 0, position, 0, 0 FROM projection_tracking WHERE name = ?"
        )
        params = [*day_params, *where_params, *page_params, page_size + 1, POINTS]
        with self.database.read() as cur:
            cur.execute(sql, params)
            fetched = cur.fetchall()
        buckets: list[ExpiryBucket] = []
        members: list[ExpiringMember] = []
        total_points = total_members = position = 0
        for tag, member, day_number, points, count, first in fetched:
            if tag == 0:
                local = EPOCH + timedelta(days=int(day_number) - _SHIFT_DAYS)
                buckets.append(ExpiryBucket(local, int(first), int(points), int(count)))
            elif tag == 1:
                total_points, total_members = int(points), int(count)
            elif tag == 2:
                members.append(ExpiringMember(str(member), int(points), int(first)))
            else:
                position = int(points)
        buckets.sort(key=lambda b: b.date)
        members.sort(key=lambda m: (-m.points, m.member_id))
        more = len(members) > page_size
        members = members[:page_size]
        last = (members[-1].points, members[-1].member_id) if more else None
        return ExpiryForecast(buckets, members, last, total_points, total_members, position)

    # ------------------------------------------------------------------ custody

    def prepaid_custody(
        self,
        program_id: str,
        currency: str,
        zone: ZoneInfo,
        ends: list[tuple[str, datetime]],
        ratio_ppm: int,
    ) -> PrepaidCustody:
        """The stored-value cash per store of issue as of each period end (recorded time,
        inclusive, as GetLiabilities as of that instant) and its custody share.

        One statement, one snapshot: the journal's per-day sums of each period's days (a
        range join on the daily table's (program_id, day) key, so the days are read once,
        not once per period) added up period after period, and the postings recorded
        exactly at a period end (its own part-day: ends are local midnights)."""
        if not ends:
            return PrepaidCustody([], ratio_ppm, currency, self._journal_position())
        bounds = [micros(end) for _, end in ends]
        values = ", ".join(
            f"({k}, CAST(? AS BIGINT), CAST(? AS BIGINT))" for k in range(len(bounds))
        )
        params: list[object] = []
        for k, hi in enumerate(bounds):
            params += [bounds[k - 1] if k else -(2**62), hi]
        sql = (
            f"WITH periods (k, lo, hi) AS (VALUES {values})"
            " SELECT 0, p.k, d.ledger_account, d.unit, d.store_id, SUM(d.debit), SUM(d.credit)"
            " FROM periods p JOIN rm_journal_daily d ON d.program_id = ?"
            " AND d.day >= p.lo AND d.day < p.hi"
            " GROUP BY p.k, d.ledger_account, d.unit, d.store_id"
            f" UNION ALL SELECT 1, p.k, {COLLAPSED}, unit, store_id,"
            " SUM(CASE WHEN amount < 0 THEN -amount ELSE 0 END),"
            " SUM(CASE WHEN amount > 0 THEN amount ELSE 0 END)"
            " FROM periods p JOIN rm_postings ON program_id = ? AND recorded_at = p.hi"
            " GROUP BY p.k, 3, unit, store_id"
            " UNION ALL SELECT 2, 0, '', '', '', position, 0 FROM projection_tracking"
            " WHERE name = ?"
        )
        params += [program_id, program_id, JOURNAL]
        with self.database.read() as cur:
            cur.execute(sql, params)
            fetched = cur.fetchall()
        days: list[dict[tuple[str, str, str], tuple[int, int]]] = [{} for _ in bounds]
        exact: list[dict[tuple[str, str, str], tuple[int, int]]] = [{} for _ in bounds]
        position = 0
        for part, k, account, unit, store_id, debit, credit in fetched:
            if part == 2:
                position = int(debit)
                continue
            target = (days if part == 0 else exact)[int(k)]
            key = (control_account(str(account)), str(unit), str(store_id))
            d, c = target.get(key, (0, 0))
            target[key] = (d + int(debit), c + int(credit))
        rows: list[CustodyPeriodRow] = []
        running: dict[tuple[str, str, str], tuple[int, int]] = {}
        for k, (label, end) in enumerate(ends):
            for key, (debit, credit) in days[k].items():
                d, c = running.get(key, (0, 0))
                running[key] = (d + debit, c + credit)
            as_of = dict(running)
            for key, (debit, credit) in exact[k].items():
                d, c = as_of.get(key, (0, 0))
                as_of[key] = (d + debit, c + credit)
            found = liabilities_from_sums(Sums(as_of), currency, 0, position)
            stores = [
                CustodyStore(
                    s.store_id,
                    s.stored_value_cash_minor,
                    custody_share(s.stored_value_cash_minor, ratio_ppm),
                )
                for s in found.rows
                if s.stored_value_cash_minor
            ]
            rows.append(
                CustodyPeriodRow(
                    end,
                    label,
                    found.stored_value_cash_minor,
                    sum(s.custody_minor for s in stores),
                    stores,
                )
            )
        return PrepaidCustody(rows, ratio_ppm, currency, position)

    def _journal_position(self) -> int:
        with self.database.read() as cur:
            cur.execute("SELECT position FROM projection_tracking WHERE name = ?", (JOURNAL,))
            found = cur.fetchone()
        return int(found[0]) if found else 0


# ---------------------------------------------------------------------- custody's rules


@dataclass(frozen=True)
class CustodyStore:
    store_id: str  # the store of issue
    cash_balance_minor: int
    custody_minor: int


@dataclass(frozen=True)
class CustodyPeriodRow:
    period_end: datetime  # the local midnight after the period's last day
    period_label: str  # 2024-05, 2024-Q2, 2024
    cash_balance_minor: int  # stored-value cash outstanding at period_end
    custody_minor: int  # the sum of the stores'
    stores: list[CustodyStore]


@dataclass(frozen=True)
class PrepaidCustody:
    periods: list[CustodyPeriodRow]
    ratio_ppm: int
    currency: str
    position: int  # the journal's


def custody_share(cash_minor: int, ratio_ppm: int) -> int:
    """ratio_ppm of the cash, rounded up (the custody must be at least the share); nothing
    for a balance that is not positive."""
    if cash_minor <= 0:
        return 0
    return -(-cash_minor * ratio_ppm // PPM)
