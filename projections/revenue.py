"""Finance's points read model: what IFRS 15 deferred revenue (ledger/domain/deferred_revenue.py)
and breakage per earn cohort (ledger/domain/breakage.py) are computed from.

Deferred revenue: one entry per event that changes points issued (earns, their reversals),
points redeemed (redemptions, captures, conversions, their reversals) or the allocation, in
`rm_revenue_entries`, summed per local day of recording in `rm_revenue_daily`. An earn's
allocation uses the point value and redemption rate in force when it is recorded: the last
programme change before it in the log (`rm_revenue_rates`).

Breakage: per programme and cohort day (the local day of a lot's earn, business time) the
points issued, reversed, redeemed and expired in `rm_breakage_daily`; each lot's cohort and
each redemption's lots are kept to attribute later events.

Like the journal, it keeps its own account -> programme table, so it depends on no other
read model's progress.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from ledger.domain import events
from ledger.domain.deferred_revenue import NANOS, allocation, nano_floor
from ledger.infrastructure.database import Cursor
from ledger.infrastructure.dialect import Dialect
from projections.journal import local_day
from projections.points import micros

NAME = "revenue"
CHUNK = 400  # keys per lookup statement

_PROGRAM_EVENTS = frozenset({events.ProgramCreated, events.ProgramUpdated})
# Events that move no points (stored value, holds: held points are still outstanding).
_IGNORED = frozenset(
    {
        events.PointsHeld,
        events.HoldReleased,
        events.HoldExpired,
        events.StoredValueToppedUp,
        events.StoredValueSpent,
        events.SpendRefunded,
        events.TopUpCashedOut,
    }
)
_REDEMPTIONS = frozenset({events.PointsRedeemed, events.HoldCaptured, events.PointsConverted})
_UNREDEMPTIONS = frozenset({events.RedemptionReversed, events.ConversionReversed})


@dataclass
class _Earn:
    points: int
    purchase_minor: int
    allocated: Fraction
    reversed_points: int
    new: bool = False
    changed: bool = False


@dataclass
class _Consumed:
    lot_id: str
    consumed: int
    reversed: int
    new: bool = False
    changed: bool = False


@dataclass
class _Batch:
    """What a batch reads once and writes once."""

    accounts: dict[str, str] = field(default_factory=dict)  # account hex -> program
    enrolled: list[tuple[str, str]] = field(default_factory=list)
    earns: dict[tuple[str, str], _Earn] = field(default_factory=dict)
    lots: dict[tuple[str, str], int] = field(default_factory=dict)  # -> cohort day
    new_lots: list[tuple[str, str, int]] = field(default_factory=list)
    redemptions: dict[tuple[str, str], list[_Consumed]] = field(default_factory=dict)
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    revenue_days: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    cohort_days: dict[tuple[str, int], list[int]] = field(default_factory=dict)


class RevenueProjection:
    name: ClassVar[str] = NAME
    tables: ClassVar[dict[str, tuple[str, ...]]] = {
        "rm_revenue_programs": ("program_id",),
        "rm_revenue_rates": ("program_id", "position"),
        "rm_revenue_accounts": ("account_id",),
        "rm_revenue_earns": ("account_id", "earn_id"),
        "rm_revenue_entries": ("program_id", "position"),
        "rm_revenue_daily": ("program_id", "day"),
        "rm_breakage_lots": ("account_id", "lot_id"),
        "rm_breakage_redemptions": ("account_id", "redemption_id", "seq"),
        "rm_breakage_daily": ("program_id", "day"),
    }
    handled: ClassVar[frozenset[type]] = frozenset(events.ALL)
    # Lazy, like the journal: finance reads it seldom.
    poll_interval: ClassVar[float] = 0.25

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # Never change once a programme exists.
        self._zones: dict[str, ZoneInfo] = {}
        self._program_ids: dict[str, str] = {}  # program aggregate id (hex) -> program id
        # program -> (point_value_minor, rate_ppm) in force at the batch's position.
        self._rates: dict[str, tuple[int, int]] = {}

    # ------------------------------------------------------------------ batch

    def process(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]]) -> None:
        b = _Batch()
        self._load(cur, batch_events, b)
        for position, event in batch_events:
            kind = type(event)
            if kind in _PROGRAM_EVENTS:
                self._program_event(cur, position, event)
            elif kind is events.MemberEnrolled:
                continue  # noted by _load
            elif kind in _IGNORED:
                continue
            elif kind not in self.handled:
                raise LookupError(f"the revenue projection has no rule for {kind.__qualname__}")
            else:
                self._account_event(position, event, b)
        self._write(cur, b)

    def _program_event(self, cur: Cursor, position: int, event: Any) -> None:
        key = event.originator_id.hex
        settings = event.settings
        if isinstance(event, events.ProgramCreated):
            program_id: str = event.program_id  # type: ignore[attr-defined]
            cur.execute(
                "INSERT INTO rm_revenue_programs (program_id, program_key, currency, time_zone)"
                " VALUES (?, ?, ?, ?)",
                (program_id, key, settings.currency, settings.time_zone),
            )
            self._program_ids[key] = program_id
            self._zones[program_id] = ZoneInfo(settings.time_zone)
        else:
            program_id = self._program_of(cur, key)
        rates = (settings.point_value_minor, settings.expected_redemption_rate_ppm)
        if self._rates.get(program_id) != rates:
            cur.execute(
                "INSERT INTO rm_revenue_rates (program_id, position, recorded_at,"
                " point_value_minor, rate_ppm) VALUES (?, ?, ?, ?, ?)",
                (program_id, position, micros(event.timestamp), *rates),
            )
            self._rates[program_id] = rates

    def _account_event(self, position: int, event: Any, b: _Batch) -> None:
        account = event.originator_id.hex
        program_id = b.accounts.get(account)
        if program_id is None:
            raise LookupError(f"account {event.originator_id} has events but no enrolment")
        zone = self._zones[program_id]
        p = event.provenance
        kind = type(event)
        issued = redeemed = purchases = 0
        allocated = Fraction(0)
        cohorts: list[tuple[int, int, int, int, int]] = []  # day, issued, rev, red, exp
        if kind is events.PointsEarned:
            issued, purchases = event.points, event.purchase_minor
            value, rate = self._rates[program_id]
            allocated = allocation(purchases, issued, value, rate)
            b.earns[(account, p.transaction_id)] = _Earn(issued, purchases, allocated, 0, new=True)
            day = local_day(p.occurred_at, zone)
            self._new_lot(b, account, p.transaction_id, day)
            cohorts.append((day, issued, 0, 0, 0))
        elif kind is events.PointsAdjusted:
            if event.points > 0:
                day = local_day(p.occurred_at, zone)
                self._new_lot(b, account, p.transaction_id, day)
                cohorts.append((day, event.points, 0, 0, 0))
            else:
                cohorts += [(b.lots[(account, lot)], 0, n, 0, 0) for lot, n in _items(event.taken)]
        elif kind is events.EarnReversed:
            earn = b.earns[(account, p.reverses_transaction_id)]
            before, earn.reversed_points = earn.reversed_points, earn.reversed_points + event.points
            earn.changed = True
            issued = -event.points
            purchases = _share(earn.purchase_minor, earn.reversed_points, earn.points) - _share(
                earn.purchase_minor, before, earn.points
            )
            allocated = -earn.allocated * event.points / earn.points
            # Points that had expired stay expired: nothing of them is taken back.
            reversed_points = event.points - event.from_expired
            day = b.lots[(account, p.reverses_transaction_id)]
            cohorts.append((day, 0, reversed_points, 0, 0))
        elif kind in _REDEMPTIONS:
            consumed = list(_items(event.consumed))
            redeemed = sum(n for _, n in consumed)
            b.redemptions[(account, p.transaction_id)] = [
                _Consumed(lot, n, 0, new=True) for lot, n in consumed
            ]
            cohorts += [(b.lots[(account, lot)], 0, 0, n, 0) for lot, n in consumed]
        elif kind in _UNREDEMPTIONS:
            redeemed = -event.points
            cohorts += [
                (b.lots[(account, lot)], 0, 0, -n, 0)
                for lot, n in _give_back(
                    b.redemptions[(account, p.reverses_transaction_id)], event.points
                )
            ]
        elif kind is events.LotsExpired:
            cohorts += [(b.lots[(account, lot)], 0, 0, 0, n) for lot, n in _items(event.lots)]
        if issued or redeemed or purchases or allocated:
            b.entries.append(
                (
                    program_id,
                    position,
                    micros(event.timestamp),
                    issued,
                    redeemed,
                    purchases,
                    str(allocated.numerator),
                    str(allocated.denominator),
                )
            )
            sums = b.revenue_days.setdefault(
                (program_id, local_day(event.timestamp, zone)), [0, 0, 0, 0, 0, 0]
            )
            nanos = nano_floor(allocated)
            for i, value in enumerate(
                (issued, redeemed, purchases, nanos // NANOS, nanos % NANOS, 1)
            ):
                sums[i] += value
        for day, *figures in cohorts:
            sums = b.cohort_days.setdefault((program_id, day), [0, 0, 0, 0])
            for i, value in enumerate(figures):
                sums[i] += value

    @staticmethod
    def _new_lot(b: _Batch, account: str, lot_id: str, day: int) -> None:
        b.lots[(account, lot_id)] = day
        b.new_lots.append((account, lot_id, day))

    # ------------------------------------------------------------------ reading

    def _program_of(self, cur: Cursor, key: str) -> str:
        found = self._program_ids.get(key)
        if found is None:
            self._load_programs(cur)
            found = self._program_ids[key]
        return found

    def _load_programs(self, cur: Cursor) -> None:
        """Every programme's id, zone and settings in force (after a restart)."""
        cur.execute("SELECT program_id, program_key, time_zone FROM rm_revenue_programs")
        for program_id, key, zone in cur.fetchall():
            self._program_ids[str(key)] = str(program_id)
            self._zones[str(program_id)] = ZoneInfo(str(zone))
        cur.execute(
            "SELECT r.program_id, r.point_value_minor, r.rate_ppm FROM rm_revenue_rates r"
            " JOIN (SELECT program_id, MAX(position) AS position FROM rm_revenue_rates"
            " GROUP BY program_id) last"
            " ON last.program_id = r.program_id AND last.position = r.position"
        )
        # Replaced, not updated: a programme whose creation rolled back has no rates yet.
        self._rates = {str(p): (int(v), int(r)) for p, v, r in cur.fetchall()}

    def _load(self, cur: Cursor, batch_events: Sequence[tuple[int, Any]], b: _Batch) -> None:
        """Read, in a few statements, every row the batch's events refer to that an earlier
        batch wrote: accounts, earns, lots' cohorts, redemptions."""
        # The rates in force are read anew each batch: a batch that rolled back must not
        # leave a later programme change behind in memory.
        self._load_programs(cur)
        for _, e in batch_events:
            if isinstance(e, events.MemberEnrolled):
                b.enrolled.append((e.originator_id.hex, e.program_id))  # type: ignore[attr-defined]
        b.accounts.update(b.enrolled)
        accounts: set[str] = set()
        earns: set[tuple[str, str]] = set()
        lots: set[tuple[str, str]] = set()
        redemptions: set[tuple[str, str]] = set()
        for _, e in batch_events:
            kind = type(e)
            if kind in _PROGRAM_EVENTS or kind in _IGNORED or kind is events.MemberEnrolled:
                continue
            account = e.originator_id.hex
            accounts.add(account)
            if kind is events.EarnReversed:
                earns.add((account, e.provenance.reverses_transaction_id))
                lots.add((account, e.provenance.reverses_transaction_id))
            elif kind in _REDEMPTIONS:
                lots.update((account, lot) for lot in e.consumed)
            elif kind in _UNREDEMPTIONS:
                redemptions.add((account, e.provenance.reverses_transaction_id))
            elif kind is events.LotsExpired:
                lots.update((account, lot) for lot in e.lots)
            elif kind is events.PointsAdjusted and e.points < 0:
                lots.update((account, lot) for lot in e.taken)
        for chunk in _chunks(sorted(accounts - b.accounts.keys())):
            cur.execute(
                "SELECT account_id, program_id FROM rm_revenue_accounts"
                f" WHERE account_id IN ({self.dialect.placeholders(len(chunk))})",
                chunk,
            )
            b.accounts.update((str(a), str(p)) for a, p in cur.fetchall())
        for a, earn_id, points, purchase, num, den, reversed_points in self._select_pairs(
            cur,
            "SELECT account_id, earn_id, points, purchase_minor, allocated_num, allocated_den,"
            " reversed_points FROM rm_revenue_earns",
            ("account_id", "earn_id"),
            earns,
        ):
            b.earns[(str(a), str(earn_id))] = _Earn(
                int(points), int(purchase), Fraction(int(num), int(den)), int(reversed_points)
            )
        for a, lot_id, day in self._select_pairs(
            cur,
            "SELECT account_id, lot_id, day FROM rm_breakage_lots",
            ("account_id", "lot_id"),
            lots,
        ):
            b.lots[(str(a), str(lot_id))] = int(day)
        rows = self._select_pairs(
            cur,
            "SELECT account_id, redemption_id, seq, lot_id, consumed, reversed"
            " FROM rm_breakage_redemptions",
            ("account_id", "redemption_id"),
            redemptions,
        )
        for a, redemption_id, _seq, lot_id, consumed, reversed_points in sorted(
            rows, key=lambda r: (str(r[0]), str(r[1]), int(r[2]))
        ):
            b.redemptions.setdefault((str(a), str(redemption_id)), []).append(
                _Consumed(str(lot_id), int(consumed), int(reversed_points))
            )
        # Lots their redemptions' reversals give back to.
        more = {
            (account, c.lot_id)
            for (account, _), consumed in b.redemptions.items()
            for c in consumed
        } - lots
        for a, lot_id, day in self._select_pairs(
            cur,
            "SELECT account_id, lot_id, day FROM rm_breakage_lots",
            ("account_id", "lot_id"),
            more,
        ):
            b.lots[(str(a), str(lot_id))] = int(day)

    def _select_pairs(
        self, cur: Cursor, select: str, columns: tuple[str, str], keys: set[tuple[str, str]]
    ) -> list[Any]:
        rows: list[Any] = []
        for chunk in _chunks(sorted(keys)):
            condition = " OR ".join(f"({columns[0]} = ? AND {columns[1]} = ?)" for _ in chunk)
            cur.execute(f"{select} WHERE {condition}", [v for pair in chunk for v in pair])
            rows += cur.fetchall()
        return rows

    # ------------------------------------------------------------------ writing

    def _write(self, cur: Cursor, b: _Batch) -> None:
        d = self.dialect
        d.insert_rows(
            cur, "INSERT INTO rm_revenue_accounts (account_id, program_id) {rows}", b.enrolled
        )
        d.insert_rows(
            cur,
            "INSERT INTO rm_revenue_earns (account_id, earn_id, points, purchase_minor,"
            " allocated_num, allocated_den, reversed_points) {rows}",
            [
                (
                    a,
                    earn_id,
                    e.points,
                    e.purchase_minor,
                    str(e.allocated.numerator),
                    str(e.allocated.denominator),
                    e.reversed_points,
                )
                for (a, earn_id), e in b.earns.items()
                if e.new
            ],
        )
        cur.executemany(
            "UPDATE rm_revenue_earns SET reversed_points = ? WHERE account_id = ? AND earn_id = ?",
            [
                (e.reversed_points, a, earn_id)
                for (a, earn_id), e in b.earns.items()
                if e.changed and not e.new
            ],
        )
        d.insert_rows(
            cur, "INSERT INTO rm_breakage_lots (account_id, lot_id, day) {rows}", b.new_lots
        )
        d.insert_rows(
            cur,
            "INSERT INTO rm_breakage_redemptions (account_id, redemption_id, seq, lot_id,"
            " consumed, reversed) {rows}",
            [
                (a, r, seq, c.lot_id, c.consumed, c.reversed)
                for (a, r), consumed in b.redemptions.items()
                for seq, c in enumerate(consumed)
                if c.new
            ],
        )
        cur.executemany(
            "UPDATE rm_breakage_redemptions SET reversed = ?"
            " WHERE account_id = ? AND redemption_id = ? AND seq = ?",
            [
                (c.reversed, a, r, seq)
                for (a, r), consumed in b.redemptions.items()
                for seq, c in enumerate(consumed)
                if c.changed and not c.new
            ],
        )
        d.insert_rows(
            cur,
            "INSERT INTO rm_revenue_entries (program_id, position, recorded_at, issued,"
            " redeemed, purchases_minor, allocated_num, allocated_den) {rows}",
            b.entries,
        )
        d.insert_rows(
            cur,
            "INSERT INTO rm_revenue_daily (program_id, day, issued, redeemed, purchases_minor,"
            " allocated_whole, allocated_nanos, entries) {rows}"
            " ON CONFLICT (program_id, day) DO UPDATE SET"
            " issued = rm_revenue_daily.issued + excluded.issued,"
            " redeemed = rm_revenue_daily.redeemed + excluded.redeemed,"
            " purchases_minor = rm_revenue_daily.purchases_minor + excluded.purchases_minor,"
            " allocated_whole = rm_revenue_daily.allocated_whole + excluded.allocated_whole,"
            " allocated_nanos = rm_revenue_daily.allocated_nanos + excluded.allocated_nanos,"
            " entries = rm_revenue_daily.entries + excluded.entries",
            [(*key, *sums) for key, sums in b.revenue_days.items()],
        )
        d.insert_rows(
            cur,
            "INSERT INTO rm_breakage_daily (program_id, day, issued, reversed, redeemed,"
            " expired) {rows}"
            " ON CONFLICT (program_id, day) DO UPDATE SET"
            " issued = rm_breakage_daily.issued + excluded.issued,"
            " reversed = rm_breakage_daily.reversed + excluded.reversed,"
            " redeemed = rm_breakage_daily.redeemed + excluded.redeemed,"
            " expired = rm_breakage_daily.expired + excluded.expired",
            [(*key, *sums) for key, sums in b.cohort_days.items()],
        )


def _items(allocation: dict[str, int]) -> Iterable[tuple[str, int]]:
    return ((lot, n) for lot, n in allocation.items() if n)


def _give_back(consumed: list[_Consumed], points: int) -> list[tuple[str, int]]:
    """A redemption's reversal of `points`: last-consumed lots first, each at most what is
    still consumed of it (the account's own rule, including points that repaid debt)."""
    given: list[tuple[str, int]] = []
    for c in reversed(consumed):
        if points == 0:
            break
        take = min(c.consumed - c.reversed, points)
        if take:
            c.reversed += take
            c.changed = True
            given.append((c.lot_id, take))
            points -= take
    return given


def _share(purchase_minor: int, reversed_points: int, points: int) -> int:
    """The purchase left after `reversed_points` of `points` were reversed, rounded half up
    on the cumulative figure, so partial reversals add up to the whole purchase."""
    taken = (2 * purchase_minor * reversed_points + points) // (2 * points)
    return purchase_minor - taken


def _chunks(keys: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(keys), CHUNK):
        yield keys[start : start + CHUNK]
