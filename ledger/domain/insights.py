"""Member behaviour for marketing (docs/insights.md, decision 28): purchase behaviour at an
instant, the lifecycle stage read against the member's own purchase cycle, and RFM scores by
quintiles within the programme.

A purchase is an Earn with money on it (`purchase_minor` > 0), at its `occurred_at`, in its
store. Its refunds are the money of the reversals of that Earn (`refund_purchase_minor`
recorded with each), each at its own `occurred_at`. At an instant T a purchase is worth its
money less the refunds that occurred by T; one refunded to nothing no longer counts at all.
A Spend pays with stored value for a purchase the till also records as an Earn, so it is not
a second purchase: it counts towards the stored-value usage rate only.

Time is business time (occurred_at): behaviour at T is what members bought by T, measured
to T. Whole days are calendar days in the programme's time zone.

Pure: no SQL, no gRPC. The insights projection keeps the facts (projections/insights.py);
ledger/insights_queries.py feeds them to these functions.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from itertools import pairwise
from zoneinfo import ZoneInfo

from ledger.domain.deferred_revenue import round_half_up

QUINTILES = 5


@dataclass(frozen=True)
class InsightSettings:
    """A programme's thresholds (UpdateProgram `insight_settings`); the defaults are argued
    for in docs/insights.md. Whole days and whole percentages: no floats."""

    frequency_window_days: int = 365  # `frequency` and `monetary_minor` look this far back
    new_member_days: int = 30  # enrolled at most this long ago ...
    new_member_max_purchases: int = 1  # ... with at most this many purchases: NEW
    default_cycle_days: int = 30  # the cycle of a member with fewer than two purchase days
    min_cycle_days: int = 7  # no cycle is shorter (two purchases on one day are not a habit)
    at_risk_after_cycles_pct: int = 150  # overdue by 1.5 cycles: AT_RISK
    dormant_after_cycles_pct: int = 300  # by 3 cycles: DORMANT
    lost_after_days: int = 365  # no purchase for longer than this (or never, enrolled longer): LOST

    def problems(self) -> list[tuple[str, str]]:
        """(field, why) for every setting out of range: nothing is clamped silently."""
        found: list[tuple[str, str]] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0 < value <= 36_600:
                found.append((f.name, "must be from 1 to 36,600"))
        if not found:
            if self.min_cycle_days > self.default_cycle_days:
                found.append(("min_cycle_days", "must not exceed default_cycle_days"))
            if self.dormant_after_cycles_pct <= self.at_risk_after_cycles_pct:
                found.append(("dormant_after_cycles_pct", "must exceed at_risk_after_cycles_pct"))
        return found


class Stage(StrEnum):
    NEW = "NEW"
    ACTIVE = "ACTIVE"
    AT_RISK = "AT_RISK"
    DORMANT = "DORMANT"
    LOST = "LOST"


class Segment(StrEnum):
    CHAMPIONS = "CHAMPIONS"
    LOYAL = "LOYAL"
    POTENTIAL_LOYALIST = "POTENTIAL_LOYALIST"
    NEW_CUSTOMERS = "NEW_CUSTOMERS"
    PROMISING = "PROMISING"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    ABOUT_TO_SLEEP = "ABOUT_TO_SLEEP"
    AT_RISK = "AT_RISK"
    CANNOT_LOSE = "CANNOT_LOSE"
    HIBERNATING = "HIBERNATING"
    LOST = "LOST"


@dataclass(frozen=True)
class Refund:
    occurred_at: datetime
    amount_minor: int


@dataclass(frozen=True)
class Purchase:
    transaction_id: str
    occurred_at: datetime
    store_id: str
    purchase_minor: int
    refunds: tuple[Refund, ...] = ()

    def net_at(self, as_of: datetime) -> int:
        """Its money less the refunds that occurred by `as_of` (never below zero)."""
        refunded = sum(r.amount_minor for r in self.refunds if r.occurred_at <= as_of)
        return max(0, self.purchase_minor - refunded)


@dataclass(frozen=True)
class Behaviour:
    """A member's purchases seen at one instant."""

    lifetime_purchases: int = 0
    lifetime_value_minor: int = 0
    frequency: int = 0  # purchases in the window ending at the instant
    monetary_minor: int = 0  # their net money
    average_order_minor: int = 0
    purchase_cycle_days: int = 0  # 0: fewer than two purchase days
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    last_purchase_day: date | None = None  # in the programme's zone: the recency score's value
    recency_days: int = -1  # -1: no purchase
    favourite_store_id: str = ""


def behaviour_at(
    purchases: Iterable[Purchase], as_of: datetime, zone: ZoneInfo, settings: InsightSettings
) -> Behaviour:
    """What a member's purchases say at `as_of`: those that occurred by then and are not
    refunded to nothing by then."""
    counted = sorted(
        ((p, net) for p in purchases if p.occurred_at <= as_of and (net := p.net_at(as_of)) > 0),
        key=lambda pn: (pn[0].occurred_at, pn[0].transaction_id),
    )
    if not counted:
        return Behaviour()
    window_start = as_of - timedelta(days=settings.frequency_window_days)
    recent = [net for p, net in counted if p.occurred_at > window_start]
    value = sum(net for _, net in counted)
    by_store: dict[str, int] = {}
    for p, net in counted:
        by_store[p.store_id] = by_store.get(p.store_id, 0) + net
    days = [local_day(p.occurred_at, zone) for p, _ in counted]
    first, last = counted[0][0], counted[-1][0]
    return Behaviour(
        lifetime_purchases=len(counted),
        lifetime_value_minor=value,
        frequency=len(recent),
        monetary_minor=sum(recent),
        average_order_minor=round_half_up(Fraction(value, len(counted))),
        purchase_cycle_days=purchase_cycle_days(days),
        first_purchase_at=first.occurred_at,
        last_purchase_at=last.occurred_at,
        last_purchase_day=days[-1],
        recency_days=(local_day(as_of, zone) - days[-1]).days,
        # The most net money; a tie goes to the smallest store id (stable across replays).
        favourite_store_id=min(by_store, key=lambda s: (-by_store[s], s)),
    )


@dataclass(frozen=True)
class Lifetime:
    """A member's lifetime facts once all their purchases and refunds have occurred (the
    lifetime fields of behaviour_at at their newest fact), with what a later purchase needs
    to update them without the others: how many gaps of each length lie between their
    purchase days, and their net money per store. `lifetime_of` makes them of all the
    purchases; `bought` adds one that comes after every fact, refunded in nothing."""

    purchases: int = 0
    value_minor: int = 0
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    last_purchase_day: date | None = None
    gaps: tuple[tuple[int, int], ...] = ()  # (days between two purchase days, how many)
    stores: tuple[tuple[str, int], ...] = ()  # (store, net money), by store id

    def bought(self, occurred_at: datetime, store_id: str, money: int, zone: ZoneInfo) -> Lifetime:
        """These facts and a purchase of `money` (> 0) at `occurred_at`, which is after
        every purchase counted here: the last one."""
        day = local_day(occurred_at, zone)
        gaps = dict(self.gaps)
        if self.last_purchase_day is not None and day != self.last_purchase_day:
            gap = (day - self.last_purchase_day).days
            gaps[gap] = gaps.get(gap, 0) + 1
        stores = dict(self.stores)
        stores[store_id] = stores.get(store_id, 0) + money
        return Lifetime(
            purchases=self.purchases + 1,
            value_minor=self.value_minor + money,
            first_purchase_at=self.first_purchase_at or occurred_at,
            last_purchase_at=occurred_at,
            last_purchase_day=day,
            gaps=tuple(sorted(gaps.items())),
            stores=tuple(sorted(stores.items())),
        )

    def behaviour(self) -> Behaviour:
        """The lifetime fields of behaviour_at (the others as for no window: not kept)."""
        if not self.purchases:
            return Behaviour()
        return Behaviour(
            lifetime_purchases=self.purchases,
            lifetime_value_minor=self.value_minor,
            purchase_cycle_days=self._median_gap(),
            first_purchase_at=self.first_purchase_at,
            last_purchase_at=self.last_purchase_at,
            last_purchase_day=self.last_purchase_day,
            favourite_store_id=min(self.stores, key=lambda s: (-s[1], s[0]))[0],
        )

    def _median_gap(self) -> int:
        """purchase_cycle_days of the gaps counted."""
        count = sum(n for _, n in self.gaps)
        if not count:
            return 0
        middle = count // 2

        def nth(index: int) -> int:
            for gap, n in self.gaps:
                if index < n:
                    return gap
                index -= n
            raise IndexError(index)

        if count % 2:
            return nth(middle)
        return round_half_up(Fraction(nth(middle - 1) + nth(middle), 2))


def lifetime_of(purchases: Iterable[Purchase], zone: ZoneInfo) -> Lifetime:
    """A member's Lifetime once all their purchases and refunds have occurred: each
    purchase with money left, in the order behaviour_at counts them."""
    counted = sorted(
        ((p, net) for p in purchases if (net := p.net_at(_AFTER_ALL)) > 0),
        key=lambda pn: (pn[0].occurred_at, pn[0].transaction_id),
    )
    life = Lifetime()
    for p, net in counted:
        life = life.bought(p.occurred_at, p.store_id, net, zone)
    return life


_AFTER_ALL = datetime.max.replace(tzinfo=UTC)  # every purchase and refund has occurred by then


def local_day(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def purchase_cycle_days(days: Sequence[date]) -> int:
    """The median of the whole days between consecutive purchase days (购买周期); several
    purchases on one day are one purchase day. An even count of gaps takes the mean of the
    middle two, rounded half up. 0 with fewer than two purchase days."""
    distinct = sorted(set(days))
    gaps = sorted((b - a).days for a, b in pairwise(distinct))
    if not gaps:
        return 0
    middle = len(gaps) // 2
    if len(gaps) % 2:
        return gaps[middle]
    return round_half_up(Fraction(gaps[middle - 1] + gaps[middle], 2))


def stage_at(
    behaviour: Behaviour,
    enrolled_at: datetime,
    as_of: datetime,
    zone: ZoneInfo,
    settings: InsightSettings,
) -> Stage:
    """The member's lifecycle stage, read against their own cycle: a member who buys every
    week is at risk after a fortnight's silence, one who buys every quarter is not."""
    enrolled_days = (local_day(as_of, zone) - local_day(enrolled_at, zone)).days
    return stage_of(behaviour, enrolled_days, settings)


def stage_of(behaviour: Behaviour, enrolled_days: int, settings: InsightSettings) -> Stage:
    """stage_at, given the local days from the enrolment's day to as_of's (what a list of
    members computes once per programme, not twice per member)."""
    is_new = enrolled_days <= settings.new_member_days
    if behaviour.lifetime_purchases == 0:
        if is_new:
            return Stage.NEW
        return Stage.DORMANT if enrolled_days <= settings.lost_after_days else Stage.LOST
    if is_new and behaviour.lifetime_purchases <= settings.new_member_max_purchases:
        return Stage.NEW
    cycle = max(
        behaviour.purchase_cycle_days or settings.default_cycle_days, settings.min_cycle_days
    )
    overdue_pct = behaviour.recency_days * 100  # compared with cycle * pct: whole numbers
    if behaviour.recency_days > settings.lost_after_days:
        return Stage.LOST
    if overdue_pct > cycle * settings.dormant_after_cycles_pct:
        return Stage.DORMANT
    if overdue_pct > cycle * settings.at_risk_after_cycles_pct:
        return Stage.AT_RISK
    return Stage.ACTIVE


# ---------------------------------------------------------------------------- RFM


@dataclass(frozen=True)
class QuintileCuts:
    """Where scores 2, 3, 4 and 5 start for one of R, F, M over a programme's scored members.

    A member's score is ceil(5 x c / N), c the members whose value is at or below theirs, N
    the members scored (those with a purchase): the top value scores 5, members with equal
    values score the same, and one purchasing member alone is a 5. Kept as the four values
    where the score steps up, so scoring a member is four comparisons."""

    starts: tuple[int, ...]  # ascending, at most 4
    members: int

    def score(self, value: int) -> int:
        return 1 + bisect_right(self.starts, value)  # 1 + the starts at or below value


def start_ranks(members: int) -> tuple[int, ...]:
    """Where scores 2, 3, 4 and 5 start, as ranks: the k-th start is the value of rank
    k x N // 5 + 1 (1 the smallest) among the N scored members' values in ascending order.

    The k-th start is the smallest value v with 5 x c(v) > k x N (from v on, ceil(5 x c / N)
    exceeds k), c(v) the members at or below v; that is c(v) >= r with r = floor(kN / 5) + 1.
    The value of rank r has c >= r; any smaller value has c <= r - 1, so 5 x c <= kN. Ties
    change nothing: equal values share one c. No members: no starts."""
    return tuple(k * members // QUINTILES + 1 for k in range(1, QUINTILES)) if members else ()


def quintile_cuts(values: Iterable[int]) -> QuintileCuts:
    ordered = sorted(values)
    return QuintileCuts(tuple(ordered[r - 1] for r in start_ranks(len(ordered))), len(ordered))


# The segment of each (R, FM) pair: FM is the mean of the F and M scores, rounded half up.
# Rows R = 5 .. 1, columns FM = 1 .. 5.
_GRID: tuple[tuple[Segment, ...], ...] = (
    (
        Segment.NEW_CUSTOMERS,
        Segment.POTENTIAL_LOYALIST,
        Segment.POTENTIAL_LOYALIST,
        Segment.LOYAL,
        Segment.CHAMPIONS,
    ),
    (
        Segment.PROMISING,
        Segment.POTENTIAL_LOYALIST,
        Segment.POTENTIAL_LOYALIST,
        Segment.LOYAL,
        Segment.CHAMPIONS,
    ),
    (
        Segment.ABOUT_TO_SLEEP,
        Segment.NEEDS_ATTENTION,
        Segment.NEEDS_ATTENTION,
        Segment.LOYAL,
        Segment.LOYAL,
    ),
    (
        Segment.HIBERNATING,
        Segment.HIBERNATING,
        Segment.AT_RISK,
        Segment.AT_RISK,
        Segment.CANNOT_LOSE,
    ),
    (Segment.LOST, Segment.LOST, Segment.HIBERNATING, Segment.AT_RISK, Segment.CANNOT_LOSE),
)


def _segment_of(recency: int, frequency: int, monetary: int) -> Segment:
    fm = (frequency + monetary + 1) // 2  # the mean, rounded half up (scores are positive)
    return _GRID[QUINTILES - recency][fm - 1]


# Every (R, F, M) of scores 1-5 and its segment: a list of members looks each one up.
_SEGMENTS = {
    (r, f, m): _segment_of(r, f, m)
    for r in range(1, QUINTILES + 1)
    for f in range(1, QUINTILES + 1)
    for m in range(1, QUINTILES + 1)
}


def segment_of(recency: int, frequency: int, monetary: int) -> Segment:
    """The named segment of scores 1-5 (docs/insights.md has the grid and its reading)."""
    segment = _SEGMENTS.get((recency, frequency, monetary))
    if segment is None:
        bad = next(s for s in (recency, frequency, monetary) if not 1 <= s <= QUINTILES)
        raise ValueError(f"an RFM score is 1 to 5, not {bad}")
    return segment


@dataclass(frozen=True)
class Scores:
    recency: int = 0
    frequency: int = 0
    monetary: int = 0
    segment: Segment | None = None  # None: no purchase, not scored


@dataclass(frozen=True)
class ProgrammeCuts:
    """The programme's cuts for the three scores. R is scored on the last purchase day (a
    later day scores higher: the same order as fewer days since), F on lifetime purchases,
    M on lifetime net money: lifetime, as in Hughes' RFM, so that "high F and M, low R"
    (at risk, cannot lose) can happen at all; the window shows in `frequency` and
    `monetary_minor`."""

    recency: QuintileCuts
    frequency: QuintileCuts
    monetary: QuintileCuts

    def scores(self, behaviour: Behaviour) -> Scores:
        if behaviour.last_purchase_day is None:
            return Scores()
        r = self.recency.score(behaviour.last_purchase_day.toordinal())
        f = self.frequency.score(behaviour.lifetime_purchases)
        m = self.monetary.score(behaviour.lifetime_value_minor)
        return Scores(r, f, m, segment_of(r, f, m))


def programme_cuts(behaviours: Iterable[Behaviour]) -> ProgrammeCuts:
    scored = [b for b in behaviours if b.last_purchase_day is not None]
    return ProgrammeCuts(
        recency=quintile_cuts(
            b.last_purchase_day.toordinal() for b in scored if b.last_purchase_day
        ),
        frequency=quintile_cuts(b.lifetime_purchases for b in scored),
        monetary=quintile_cuts(b.lifetime_value_minor for b in scored),
    )


def refund_pro_rata(
    purchase_minor: int, earn_points: int, reversed_before: int, points: int, refunded_before: int
) -> int:
    """The purchase money an Earn reversal refunds when the till does not say
    (`refund_purchase_minor` unset): the purchase pro rata to the points reversed, rounded
    half up, and all that is left when the last points go, so that reversing an Earn in
    parts refunds exactly its purchase."""
    if earn_points <= 0 or purchase_minor <= 0:
        return 0
    if reversed_before + points >= earn_points:
        return max(0, purchase_minor - refunded_before)
    share = round_half_up(Fraction(purchase_minor * points, earn_points))
    return min(share, max(0, purchase_minor - refunded_before))
