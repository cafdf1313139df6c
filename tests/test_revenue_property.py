"""The revenue read model (projections/revenue.py, ledger/revenue_queries.py) against a
simple model, over random histories run through the application on SQLite.

A programme with a point value, an expected redemption rate and a conversion rate; a few
members; random earns (with purchases; some expiring in the past, so at once, some a few
hours on), redemptions, holds then captures or releases, reversals of earns (in part or in
full, also after the points were spent: debt), of redemptions and of conversions,
adjustments either way, a stored-value spend now and then, and changes of the programme's
rates part-way. Recorded time is a test clock that moves on by seconds to hours between
commands (both the application's `now` and the events' timestamps), so a history spans
several local days of the programme's time zone.

Checked once the revenue and points projections have caught up:
(a) deferred revenue equals what the test works out from the accepted commands' results
    with Fractions (issued, redeemed, purchases, allocated, recognised, liability), for the
    whole history and as of moments inside it (the estimate then in force, or one given);
(b) breakage: per month cohort issued and redeemed as the model has them, expired as the
    aggregates' lots, reversed at least the cohort's own reversed earns, issued - reversed
    - redeemed - expired = outstanding, and the cohorts add up to the members'
    available + held - debt (the aggregates', and the points read model's).
Refused commands (insufficient points, debt, an expired hold...) change nothing: skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from eventsourcing.domain import CanCreateTimestamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger.application import commands as c
from ledger.application import results as r
from ledger.domain import errors
from ledger.domain.program import PointsConversion, ProgramSettings
from ledger.periods import Period
from ledger.revenue_queries import RevenueQueries
from ledger.runtime import Tally
from projections.points import NAME as POINTS
from projections.revenue import NAME as REVENUE
from tests.support import open_tally

PPM = 1_000_000
ZONES = ["UTC", "Asia/Shanghai", "America/Los_Angeles", "Pacific/Kiritimati"]
START = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)

# The derandomized `ci` profile runs this many (about 8 s); `hunt` its own count.
CI_EXAMPLES = 120
PROFILE = settings.get_current_profile_name()
_loaded = settings.get_profile(PROFILE)
EXAMPLES = min(CI_EXAMPLES, _loaded.max_examples) if _loaded.derandomize else _loaded.max_examples


class Clock:
    """Recorded time and the application's `now`, set and moved on by the test. Each
    example (a programme of its own) starts anew, so recorded time goes back between
    programmes; nothing compares one programme's times with another's."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Shared:
    tally: Tally
    clock: Clock
    programs: int = 0


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    """One SQLite ledger for every example (each its own programme), its events stamped
    by the test clock, on tmpfs (durable=False): the examples' thousands of commits need
    not wait for the disk."""
    clock = Clock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CanCreateTimestamp, "create_timestamp", staticmethod(clock))
        with open_tally("sqlite", durable=False, clock=clock) as tally:
            yield Shared(tally, clock)


# ---------------------------------------------------------------------- the model


def half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


@dataclass(frozen=True)
class Entry:
    """What one accepted command changes of the deferred-revenue figures."""

    at: datetime
    issued: int = 0
    redeemed: int = 0
    purchases: int = 0
    allocated: Fraction = Fraction(0)


@dataclass
class MEarn:
    points: int
    purchase: int
    allocated: Fraction
    cohort: str
    reversed: int = 0


@dataclass
class MRedemption:
    consumed: list[tuple[str, int]]  # (lot, points) in the order consumed
    step: int  # a conversion's rate, in points (1: a redemption or a capture)
    given_back: dict[str, int] = field(default_factory=dict)

    @property
    def reversible(self) -> int:
        return sum(n for _, n in self.consumed) - sum(self.given_back.values())

    def give_back(self, points: int) -> list[tuple[str, int]]:
        """Last-consumed lot first, each at most what is still consumed of it."""
        given = []
        for lot, n in reversed(self.consumed):
            take = min(n - self.given_back.get(lot, 0), points)
            if take:
                self.given_back[lot] = self.given_back.get(lot, 0) + take
                given.append((lot, take))
                points -= take
        assert points == 0
        return given


@dataclass
class Model:
    zone: ZoneInfo
    point_value: int
    rate_ppm: int
    rates: list[tuple[datetime, int]] = field(default_factory=list)  # (recorded, rate)
    entries: list[Entry] = field(default_factory=list)
    lots: dict[str, str] = field(default_factory=dict)  # lot id -> cohort
    earns: dict[str, dict[str, MEarn]] = field(default_factory=dict)  # member -> earn id ->
    redemptions: dict[str, dict[str, MRedemption]] = field(default_factory=dict)
    holds: dict[str, dict[str, int]] = field(default_factory=dict)  # member -> id -> points
    issued: dict[str, int] = field(default_factory=dict)  # cohort -> points
    redeemed: dict[str, int] = field(default_factory=dict)
    adjusted_away: int = 0  # points negative adjustments took

    def cohort(self, occurred_at: datetime) -> str:
        local = occurred_at.astimezone(self.zone)
        return f"{local.year}-{local.month:02d}"

    def count(self, figures: dict[str, int], cohort: str, points: int) -> None:
        figures[cohort] = figures.get(cohort, 0) + points

    def allocation(self, purchase: int, points: int) -> Fraction:
        price = Fraction(points * self.point_value * self.rate_ppm, PPM)
        if purchase <= 0 or price <= 0:
            return Fraction(0)
        return purchase * price / (purchase + price)

    def rate_at(self, moment: datetime | None) -> int:
        in_force = [rate for at, rate in self.rates if moment is None or at <= moment]
        return in_force[-1] if in_force else self.rates[0][1]

    def deferred(self, as_of: datetime | None, rate_ppm: int | None) -> dict[str, int]:
        rate = self.rate_at(as_of) if rate_ppm is None else rate_ppm
        upto = [e for e in self.entries if as_of is None or e.at <= as_of]
        issued = sum(e.issued for e in upto)
        redeemed = sum(e.redeemed for e in upto)
        allocated = sum((e.allocated for e in upto), Fraction(0))
        expected = Fraction(issued * rate, PPM)
        share = min(Fraction(max(redeemed, 0)) / expected, Fraction(1)) if expected > 0 else 0
        allocated_minor = half_up(allocated)
        recognised = half_up(allocated * share)
        return {
            "points_issued": issued,
            "points_redeemed": redeemed,
            "purchases_minor": sum(e.purchases for e in upto),
            "allocated_minor": allocated_minor,
            "revenue_recognised_minor": recognised,
            "contract_liability_minor": allocated_minor - recognised,
            "expected_redemption_rate_ppm": rate,
            "points_expected_to_be_redeemed": half_up(expected),
        }


def purchase_left(purchase: int, reversed_points: int, points: int) -> int:
    return purchase - half_up(Fraction(purchase * reversed_points, points))


# ---------------------------------------------------------------------- the history


@dataclass
class History:
    shared: Shared
    program: str
    model: Model
    members: list[str]
    refused: int = 0
    accepted: int = 0
    moments: list[datetime] = field(default_factory=list)  # each step's recorded time
    n: int = 0

    @property
    def now(self) -> datetime:
        return self.shared.clock.now

    def request(self) -> str:
        self.n += 1
        return f"{self.program}-r{self.n}"

    def run(self, cmd: c.AccountCommand) -> Any:
        try:
            outcome = self.shared.tally.app.execute(cmd)
        except errors.DomainError as refusal:
            self.refused += 1
            event(f"refused {cmd.name}: {type(refusal).__name__}")
            return None
        self.accepted += 1
        event(f"accepted {cmd.name}")
        return outcome

    def entry(self, **figures: Any) -> None:
        self.model.entries.append(Entry(self.now, **figures))

    # -- the commands

    def earn(
        self, member: str, points: int, purchase: int, ago: timedelta, expires_in: timedelta | None
    ) -> None:
        """`expires_in`: from now; None: never; negative: in the past (so at once), between
        when it occurred and now."""
        occurred_at = self.now - ago
        expires_at = None
        if expires_in is not None:
            expires_at = max(self.now + expires_in, occurred_at)
        done = self.run(
            c.EarnPoints(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                occurred_at=occurred_at,
                points=points,
                purchase_minor=purchase,
                expires_at=expires_at,
            )
        )
        if done is None:
            return
        m = self.model
        allocated = m.allocation(purchase, points)
        cohort = m.cohort(occurred_at)
        m.earns[member][done.transaction_id] = MEarn(points, purchase, allocated, cohort)
        m.lots[done.transaction_id] = cohort
        m.count(m.issued, cohort, points)
        self.entry(issued=points, purchases=purchase, allocated=allocated)

    def consumed(self, member: str, tx: str, consumed: dict[str, int], step: int = 1) -> None:
        m = self.model
        m.redemptions[member][tx] = MRedemption(list(consumed.items()), step)
        for lot, n in consumed.items():
            m.count(m.redeemed, m.lots[lot], n)
        self.entry(redeemed=sum(consumed.values()))

    def redeem(self, member: str, points: int, ago: timedelta) -> None:
        done = self.run(
            c.RedeemPoints(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                occurred_at=self.now - ago,
                points=points,
            )
        )
        if done is not None:
            assert isinstance(done.result, r.RedeemResult)
            assert sum(done.result.consumed.values()) == points
            self.consumed(member, done.transaction_id, done.result.consumed)

    def hold(self, member: str, points: int, ttl_seconds: int) -> None:
        done = self.run(
            c.HoldPoints(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                points=points,
                ttl_seconds=ttl_seconds,
            )
        )
        if done is not None:
            self.model.holds[member][done.transaction_id] = points

    def capture(self, member: str, hold: str, points: int) -> None:
        done = self.run(
            c.CaptureHold(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                hold_id=hold,
                points=points,
            )
        )
        if done is not None:
            assert isinstance(done.result, r.CaptureResult)
            assert done.result.points_captured == sum(done.result.consumed.values())
            self.consumed(member, done.transaction_id, done.result.consumed)

    def release(self, member: str, hold: str) -> None:
        self.run(
            c.ReleaseHold(
                program_id=self.program, member_id=member, request_id=self.request(), hold_id=hold
            )
        )

    def convert(self, member: str, points: int) -> None:
        done = self.run(
            c.ConvertPoints(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                store_id="s1",
                points=points,
            )
        )
        if done is not None:
            assert isinstance(done.result, r.ConvertResult)
            assert sum(done.result.consumed.values()) == points
            self.consumed(member, done.transaction_id, done.result.consumed, STEP)

    def spend(self, member: str, amount: int) -> None:
        self.run(
            c.Spend(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                store_id="s1",
                amount_minor=amount,
            )
        )

    def adjust(self, member: str, points: int, ago: timedelta) -> None:
        occurred_at = self.now - ago
        done = self.run(
            c.AdjustPoints(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                occurred_at=occurred_at,
                points=points,
                reason="goodwill",
                operator_id="op",
            )
        )
        if done is None:
            return
        m = self.model
        if points > 0:
            cohort = m.cohort(occurred_at)
            m.lots[done.transaction_id] = cohort
            m.count(m.issued, cohort, points)
        else:
            m.adjusted_away -= points

    def reverse(self, member: str, tx: str, points: int) -> None:
        done = self.run(
            c.ReverseTransaction(
                program_id=self.program,
                member_id=member,
                request_id=self.request(),
                transaction_id=tx,
                points=points,
            )
        )
        if done is None:
            return
        assert isinstance(done.result, r.ReverseResult)
        reversed_points = done.result.points_reversed
        m = self.model
        earn = m.earns[member].get(tx)
        if done.result.debt_added:
            event("a reversed earn left debt")
        if earn is not None:
            event(
                "reversed an earn"
                + (" in full" if earn.reversed + reversed_points == earn.points else "")
            )
            before, earn.reversed = earn.reversed, earn.reversed + reversed_points
            purchases = purchase_left(earn.purchase, earn.reversed, earn.points) - purchase_left(
                earn.purchase, before, earn.points
            )
            self.entry(
                issued=-reversed_points,
                purchases=purchases,
                allocated=-earn.allocated * reversed_points / earn.points,
            )
            return
        redemption = m.redemptions[member][tx]
        event("reversed a conversion" if redemption.step > 1 else "reversed a redemption")
        for lot, n in redemption.give_back(reversed_points):
            m.count(m.redeemed, m.lots[lot], -n)
        self.entry(redeemed=-reversed_points)

    def change_rates(self, rate_ppm: int, point_value: int) -> None:
        self.shared.tally.app.update_program(
            c.UpdateProgram(
                program_id=self.program,
                request_id=self.request(),
                changes={
                    "expected_redemption_rate_ppm": rate_ppm,
                    "point_value_minor": point_value,
                },
            )
        )
        self.model.rate_ppm, self.model.point_value = rate_ppm, point_value
        self.model.rates.append((self.now, rate_ppm))
        event("changed the rates")


STEP = 5  # points per step of the conversion rate
KINDS = [
    *["earn"] * 3,
    *["redeem"] * 2,
    *["hold"] * 2,
    *["capture"] * 2,
    "release",
    *["reverse_earn"] * 2,
    *["reverse_redemption"] * 2,
    "convert",
    "adjust",
    "spend",
    "change_rates",
]

durations = st.one_of(
    st.integers(1, 59).map(lambda s: timedelta(seconds=s)),
    st.integers(1, 600).map(lambda m: timedelta(minutes=m)),
)


# What is drawn never depends on the ledger's state (only on earlier draws), so hypothesis
# can replay and shrink a history: amounts are drawn as shares of what there is, and
# transactions as indexes into what there is, then worked out from the state.
SHARES = 20


def some(data: st.DataObject, limit: int, label: str) -> int:
    """0 (all that remains), a part, exactly all, or one more than there is."""
    k = data.draw(st.integers(0, SHARES + 1), label=label)
    if k == 0:
        return 0
    if k == SHARES + 1:
        return limit + 1
    return max(1, limit * k // SHARES)


def spendable(h: History, data: st.DataObject, member: str) -> int:
    """A part of what the member has available (by the aggregate as it stands), all of
    it, or one more: most redemptions go through, some are refused."""
    available = h.shared.tally.app.get_account(h.program, member).available
    k = data.draw(st.integers(1, SHARES + 1), label="share")
    return available + 1 if k == SHARES + 1 else max(1, available * k // SHARES)


def pick(data: st.DataObject, items: list[str], label: str) -> str | None:
    """One of `items` (in the order they were made), or None if there are none."""
    i = data.draw(st.integers(0, 63), label=label)
    return items[i % len(items)] if items else None


def step(h: History, data: st.DataObject) -> None:
    m = h.model
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    member = data.draw(st.sampled_from(h.members), label="member")
    ago = data.draw(
        st.one_of(
            st.just(timedelta(0)), st.integers(0, 200 * 24).map(lambda x: timedelta(hours=x))
        ),
        label="occurred ago",
    )
    if kind == "earn":
        when = data.draw(st.sampled_from(["never", "never", "never", "past", "later"]))
        expires_in = None
        if when == "past":  # expired already, so at once
            expires_in = -SECOND * data.draw(st.integers(0, 30 * 24 * 3600), label="expired")
        elif when == "later":
            expires_in = SECOND * data.draw(st.integers(1, 48 * 3600), label="expires in")
        points = data.draw(st.integers(1, 1_000), label="points")
        purchase = data.draw(st.one_of(st.just(0), st.integers(1, 10_000)), label="purchase")
        h.earn(member, points, purchase, ago, expires_in)
    elif kind == "redeem":
        h.redeem(member, spendable(h, data, member), ago)
    elif kind == "hold":
        ttl = data.draw(st.integers(60, 3 * 24 * 3600), label="ttl")
        h.hold(member, spendable(h, data, member), ttl)
    elif kind == "capture":
        hold = pick(data, list(m.holds[member]), "hold")
        points = some(data, m.holds[member][hold] if hold is not None else 0, "points")
        if hold is not None:
            h.capture(member, hold, points)
    elif kind == "release":
        hold = pick(data, list(m.holds[member]), "hold")
        if hold is not None:
            h.release(member, hold)
    elif kind == "reverse_earn":
        tx = pick(data, list(m.earns[member]), "earn")
        earn = m.earns[member][tx] if tx is not None else None
        points = some(data, earn.points - earn.reversed if earn else 0, "points")
        if tx is not None:
            h.reverse(member, tx, points)
    elif kind == "reverse_redemption":
        tx = pick(data, list(m.redemptions[member]), "redemption")
        redemption = m.redemptions[member][tx] if tx is not None else None
        # A conversion is reversed in whole steps of its rate.
        unit = redemption.step if redemption else 1
        steps = some(data, redemption.reversible // unit if redemption else 0, "points")
        if tx is not None:
            h.reverse(member, tx, steps * unit)
    elif kind == "convert":
        h.convert(member, STEP * max(1, spendable(h, data, member) // STEP))
    elif kind == "adjust":
        up = data.draw(st.booleans(), label="up")
        points = data.draw(st.integers(1, 300), label="points") if up else 0
        h.adjust(member, points or -spendable(h, data, member), ago)
    elif kind == "spend":
        h.spend(member, data.draw(st.integers(1, 30), label="amount"))
    elif kind == "change_rates":
        rate = data.draw(st.integers(0, PPM), label="rate")
        h.change_rates(rate, data.draw(st.integers(0, 5), label="point value"))


# ---------------------------------------------------------------------- the checks


def deferred(
    queries: RevenueQueries, program: str, as_of: datetime | None, rate: int | None
) -> Any:
    got = queries.deferred_revenue(program, as_of, rate)
    return {
        "points_issued": got.points_issued,
        "points_redeemed": got.points_redeemed,
        "purchases_minor": got.purchases_minor,
        "allocated_minor": got.allocated_minor,
        "revenue_recognised_minor": got.revenue_recognised_minor,
        "contract_liability_minor": got.contract_liability_minor,
        "expected_redemption_rate_ppm": got.expected_redemption_rate_ppm,
        "points_expected_to_be_redeemed": got.points_expected_to_be_redeemed,
    }


def check_breakage(h: History) -> None:
    tally, m = h.shared.tally, h.model
    got = RevenueQueries(tally.database).breakage(h.program, Period.MONTH, None, None, 900_000)
    rows = {row.cohort_label: row for row in got.rows}
    assert set(rows) == set(m.issued), "a cohort for each month something was issued in"
    expired: dict[str, int] = {}
    own_reversals: dict[str, int] = {}
    holding = 0
    for member in h.members:
        account = tally.app.get_account(h.program, member)
        holding += account.available + account.held - account.debt
        for lot in account.lots.values():
            m.count(expired, m.lots[lot.lot_id], lot.expired)
            earn = m.earns[member].get(lot.lot_id)
            if earn is not None:
                m.count(own_reversals, earn.cohort, earn.reversed - lot.expired_reversed)
    if any(expired.values()):
        event("points expired")
    if any(row.outstanding < 0 for row in rows.values()):
        event("a cohort owes points")
    if any(row.closed for row in rows.values()):
        event("a cohort closed")
    for label, row in rows.items():
        assert row.issued == m.issued[label], label
        assert row.redeemed == m.redeemed.get(label, 0), label
        assert row.expired == expired.get(label, 0), label
        assert row.reversed >= own_reversals.get(label, 0), label
        assert row.issued - row.reversed - row.redeemed - row.expired == row.outstanding
        assert row.closed == (row.outstanding == 0 and row.issued - row.reversed > 0)
        assert 0 <= row.projected_redemption_rate_ppm <= PPM
    # What negative adjustments took is reversed in some cohort.
    taken = sum(row.reversed for row in rows.values()) - sum(own_reversals.values())
    assert taken == m.adjusted_away
    outstanding = sum(row.outstanding for row in rows.values())
    assert outstanding == holding
    with tally.database.read() as cur:
        cur.execute(
            "SELECT COALESCE(SUM(points_available + points_held - points_debt), 0)"
            " FROM rm_accounts WHERE program_id = ?",
            (h.program,),
        )
        points_read_model = cur.fetchone()
    assert points_read_model is not None
    assert int(points_read_model[0]) == outstanding


# ---------------------------------------------------------------------- the property


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_the_revenue_read_model_agrees_with_a_model(shared: Shared, data: st.DataObject) -> None:
    shared.programs += 1
    program = f"rev{shared.programs}"
    clock = shared.clock
    # Each example's own start (not the last one's end): a failure replays the same days.
    clock.now = START + HOUR * data.draw(st.integers(0, 3 * 365 * 24), label="start")
    zone = data.draw(st.sampled_from(ZONES), label="zone")
    point_value = data.draw(st.integers(0, 5), label="point value")
    rate = data.draw(st.sampled_from([0, 1, 333_333, 500_000, 950_000, PPM]), label="rate")
    app = shared.tally.app
    app.create_program(
        c.CreateProgram(
            program_id=program,
            request_id=program,
            settings=ProgramSettings(
                "P",
                "EUR",
                time_zone=zone,
                point_value_minor=point_value,
                expected_redemption_rate_ppm=rate,
                points_conversion=PointsConversion(STEP, data.draw(st.integers(1, 3))),
            ),
        )
    )
    model = Model(ZoneInfo(zone), point_value, rate, rates=[(clock.now, rate)])
    members = [f"m{i}" for i in range(data.draw(st.integers(1, 3), label="members"))]
    for member in members:
        clock.now += timedelta(seconds=1)
        app.execute(c.EnrollMember(program_id=program, member_id=member, request_id=member))
        model.earns[member], model.redemptions[member], model.holds[member] = {}, {}, {}
    h = History(shared, program, model, members)
    for _ in range(data.draw(st.integers(15, 40), label="steps")):
        clock.now += data.draw(durations, label="wait")
        step(h, data)
        h.moments.append(clock.now)

    for name in (REVENUE, POINTS):
        shared.tally.projections[name].run_until_caught_up()
    queries = RevenueQueries(shared.tally.database)
    # (a) Deferred revenue: the whole history, and as of moments inside it (a command's own
    # recorded instant counts; a microsecond before does not), before it and after it.
    assert deferred(queries, program, None, None) == model.deferred(None, None)
    moments = [
        data.draw(st.sampled_from(h.moments), label="as_of")
        - data.draw(st.sampled_from([timedelta(0), timedelta(microseconds=1)]))
        for _ in range(2)
    ]
    for as_of in [*moments, START - timedelta(days=1), clock.now + timedelta(days=3)]:
        assert deferred(queries, program, as_of, None) == model.deferred(as_of, None), as_of
    given_rate = data.draw(st.integers(1, PPM), label="given rate")
    assert deferred(queries, program, moments[0], given_rate) == model.deferred(
        moments[0], given_rate
    )
    # (b) Breakage.
    check_breakage(h)
