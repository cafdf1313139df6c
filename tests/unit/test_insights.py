"""The rules of member insights (ledger/domain/insights.py) and the small date and rate
helpers of ledger/insights_queries.py, against expectations computed by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ledger.domain.insights import (
    Behaviour,
    InsightSettings,
    Purchase,
    Refund,
    Scores,
    Segment,
    Stage,
    behaviour_at,
    programme_cuts,
    purchase_cycle_days,
    quintile_cuts,
    refund_pro_rata,
    segment_of,
    stage_at,
)
from ledger.insights_queries import anniversary_within, ppm

UTC_ZONE = ZoneInfo("UTC")
SHANGHAI = ZoneInfo("Asia/Shanghai")
DEFAULTS = InsightSettings()


def at(day: str, hour: int = 12, minute: int = 0, zone: ZoneInfo = UTC_ZONE) -> datetime:
    d = date.fromisoformat(day)
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=zone).astimezone(UTC)


def bought(tid: str, when: datetime, money: int, store: str = "s1", *refunds: Refund) -> Purchase:
    return Purchase(tid, when, store, money, tuple(refunds))


# ---------------------------------------------------------------------- quintiles


def test_tied_values_score_the_same_and_leave_scores_empty() -> None:
    # N = 10: score = ceil(5 c / 10). Seven 1s: c = 7 -> 4; the 2: c = 8 -> 4; the 3: c = 9
    # -> 5; the 5: c = 10 -> 5. Nobody scores 1 to 3.
    cuts = quintile_cuts([1, 1, 1, 1, 1, 1, 1, 2, 3, 5])
    assert cuts.starts == (1, 1, 1, 3)
    assert cuts.members == 10
    assert [cuts.score(v) for v in (1, 2, 3, 5)] == [4, 4, 5, 5]


def test_quintiles_of_five_values_with_a_tie_in_the_middle() -> None:
    # 10: c = 1 -> 1; 20: c = 3 -> 3; 30: c = 4 -> 4; 40: c = 5 -> 5.
    cuts = quintile_cuts([40, 20, 10, 30, 20])
    assert [cuts.score(v) for v in (10, 20, 30, 40)] == [1, 3, 4, 5]


def test_a_single_scored_member_is_a_five_and_two_are_three_and_five() -> None:
    alone = quintile_cuts([7])
    assert alone.starts == (7, 7, 7, 7)
    assert alone.score(7) == 5
    pair = quintile_cuts([200, 100])
    assert (pair.score(100), pair.score(200)) == (3, 5)  # ceil(5/2) = 3


def test_no_values_give_no_cuts() -> None:
    cuts = quintile_cuts([])
    assert (cuts.starts, cuts.members) == ((), 0)


def test_members_without_a_purchase_are_not_scored() -> None:
    day = date(2025, 6, 1)
    one = Behaviour(lifetime_purchases=2, lifetime_value_minor=500, last_purchase_day=day)
    cuts = programme_cuts([one, Behaviour(), Behaviour()])
    assert cuts.frequency.members == 1
    assert cuts.scores(one) == Scores(5, 5, 5, Segment.CHAMPIONS)
    assert cuts.scores(Behaviour()) == Scores()


# ---------------------------------------------------------------------- segment grid


@pytest.mark.parametrize(
    ("r", "f", "m", "segment"),
    [
        (5, 5, 5, Segment.CHAMPIONS),
        (5, 1, 1, Segment.NEW_CUSTOMERS),
        (1, 1, 1, Segment.LOST),
        (1, 5, 5, Segment.CANNOT_LOSE),
        (2, 1, 1, Segment.HIBERNATING),
        (4, 1, 1, Segment.PROMISING),
        (3, 1, 1, Segment.ABOUT_TO_SLEEP),
        (3, 4, 3, Segment.LOYAL),  # FM = 3.5 rounds up to 4
        (3, 3, 2, Segment.NEEDS_ATTENTION),  # FM = 2.5 -> 3
        (4, 1, 2, Segment.POTENTIAL_LOYALIST),  # FM = 1.5 -> 2
        (2, 4, 5, Segment.CANNOT_LOSE),  # FM = 4.5 -> 5
        (1, 3, 3, Segment.HIBERNATING),
        (1, 4, 4, Segment.AT_RISK),
    ],
)
def test_segment_grid(r: int, f: int, m: int, segment: Segment) -> None:
    assert segment_of(r, f, m) is segment


@pytest.mark.parametrize(("r", "f", "m"), [(0, 3, 3), (3, 6, 3), (3, 3, -1)])
def test_a_score_outside_one_to_five_is_refused(r: int, f: int, m: int) -> None:
    with pytest.raises(ValueError, match="an RFM score is 1 to 5"):
        segment_of(r, f, m)


# ---------------------------------------------------------------------- purchase cycle


def test_cycle_median_of_an_odd_count_of_gaps() -> None:
    d = date(2025, 1, 1)
    # gaps 10, 20, 3 -> sorted 3, 10, 20 -> 10
    days = [d, d + timedelta(10), d + timedelta(30), d + timedelta(33)]
    assert purchase_cycle_days(days) == 10


def test_cycle_median_of_an_even_count_of_gaps_rounds_half_up() -> None:
    d = date(2025, 1, 1)
    # gaps 10 and 21: (10 + 21) / 2 = 15.5 -> 16
    assert purchase_cycle_days([d, d + timedelta(10), d + timedelta(31)]) == 16


def test_purchases_on_one_day_are_one_purchase_day() -> None:
    d = date(2025, 1, 1)
    assert purchase_cycle_days([d, d, d + timedelta(7)]) == 7
    assert purchase_cycle_days([d, d]) == 0
    assert purchase_cycle_days([]) == 0


# ---------------------------------------------------------------------- behaviour


def _spring(refund: Refund | None = None) -> list[Purchase]:
    """docs/insights.md's example: 100.00, 60.00, 40.00 and 80.00."""
    third = bought("t3", at("2025-05-20"), 4000, "s2", *([refund] if refund else []))
    return [
        bought("t1", at("2025-04-01"), 10000, "s1"),
        bought("t2", at("2025-04-15"), 6000, "s2"),
        third,
        bought("t4", at("2025-06-10"), 8000, "s1"),
    ]


def test_behaviour_with_a_partial_refund() -> None:
    purchases = _spring(Refund(at("2025-05-25"), 2000))
    b = behaviour_at(purchases, at("2025-06-30"), UTC_ZONE, DEFAULTS)
    assert b.lifetime_purchases == 4
    assert b.lifetime_value_minor == 26000  # 100 + 60 + 20 + 80
    assert b.average_order_minor == 6500
    assert b.purchase_cycle_days == 21  # gaps 14, 35, 21
    assert b.recency_days == 20
    assert b.frequency == 4
    assert b.monetary_minor == 26000
    assert b.first_purchase_at == at("2025-04-01")
    assert b.last_purchase_at == at("2025-06-10")
    assert b.last_purchase_day == date(2025, 6, 10)
    assert b.favourite_store_id == "s1"  # 180.00 against 80.00


def test_a_refund_counts_from_its_own_occurred_at() -> None:
    purchases = _spring(Refund(at("2025-05-25"), 2000))
    before = behaviour_at(purchases, at("2025-05-24"), UTC_ZONE, DEFAULTS)
    assert before.lifetime_value_minor == 20000  # 100 + 60 + 40: the refund is still ahead
    assert before.recency_days == 4


def test_a_purchase_refunded_whole_stops_counting() -> None:
    purchases = _spring(Refund(at("2025-05-25"), 4000))
    b = behaviour_at(purchases, at("2025-06-30"), UTC_ZONE, DEFAULTS)
    assert (b.lifetime_purchases, b.lifetime_value_minor) == (3, 24000)
    assert b.average_order_minor == 8000
    assert b.purchase_cycle_days == 35  # gaps 14 and 56


def test_refunds_never_take_a_purchase_below_zero() -> None:
    p = bought("t", at("2025-01-01"), 1000, "s1", Refund(at("2025-01-02"), 700))
    p = Purchase(p.transaction_id, p.occurred_at, p.store_id, 1000, (*p.refunds, p.refunds[0]))
    assert p.net_at(at("2025-01-03")) == 0


def test_a_refund_of_the_only_purchase_leaves_no_behaviour() -> None:
    only = bought("t", at("2025-03-01"), 5000, "s1", Refund(at("2025-03-05"), 5000))
    b = behaviour_at([only], at("2025-04-01"), UTC_ZONE, DEFAULTS)
    assert b == Behaviour()
    assert (b.recency_days, b.last_purchase_day) == (-1, None)
    assert programme_cuts([b]).scores(b) == Scores()
    # Before the refund it was a purchase.
    assert behaviour_at([only], at("2025-03-04"), UTC_ZONE, DEFAULTS).lifetime_purchases == 1


def test_no_purchases() -> None:
    assert behaviour_at([], at("2025-04-01"), UTC_ZONE, DEFAULTS) == Behaviour()


def test_the_frequency_window_and_lifetime() -> None:
    as_of = at("2025-06-30")
    purchases = [
        bought("old", as_of - timedelta(days=400), 1000),
        bought("edge", as_of - timedelta(days=365), 2000),  # at the window start: outside
        bought("new", as_of - timedelta(days=10), 3000),
    ]
    b = behaviour_at(purchases, as_of, UTC_ZONE, DEFAULTS)
    assert (b.lifetime_purchases, b.lifetime_value_minor) == (3, 6000)
    assert (b.frequency, b.monetary_minor) == (1, 3000)


def test_favourite_store_ties_go_to_the_smallest_id() -> None:
    purchases = [bought("a", at("2025-01-01"), 500, "s9"), bought("b", at("2025-01-02"), 500, "s1")]
    assert behaviour_at(purchases, at("2025-02-01"), UTC_ZONE, DEFAULTS).favourite_store_id == "s1"


def test_days_are_the_programmes_local_days() -> None:
    # 23:30 and 00:30 in Shanghai are two local days (the same UTC day: 15:30 and 16:30).
    late = at("2025-03-01", 23, 30, SHANGHAI)
    early = at("2025-03-02", 0, 30, SHANGHAI)
    assert late.date() == early.date()
    purchases = [bought("a", late, 100), bought("b", early, 100)]
    as_of = at("2025-03-02", 1, 0, SHANGHAI)
    shanghai = behaviour_at(purchases, as_of, SHANGHAI, DEFAULTS)
    assert (shanghai.purchase_cycle_days, shanghai.recency_days) == (1, 0)
    utc = behaviour_at(purchases, as_of, UTC_ZONE, DEFAULTS)
    assert (utc.purchase_cycle_days, utc.recency_days) == (0, 0)
    # From the late purchase alone, 00:10 the next Shanghai day is a day later.
    one = behaviour_at([purchases[0]], at("2025-03-02", 0, 10, SHANGHAI), SHANGHAI, DEFAULTS)
    assert one.recency_days == 1


# ---------------------------------------------------------------------- stages


def _weekly() -> list[Purchase]:
    start = at("2025-01-06")
    return [bought(f"w{i}", start + timedelta(days=7 * i), 1000) for i in range(4)]


@pytest.mark.parametrize(
    ("days_after", "stage"),
    [
        (0, Stage.ACTIVE),
        (10, Stage.ACTIVE),  # 1000 <= 7 x 150 = 1050
        (11, Stage.AT_RISK),  # 1100 > 1050
        (21, Stage.AT_RISK),  # 2100 is not > 7 x 300
        (22, Stage.DORMANT),
        (365, Stage.DORMANT),
        (366, Stage.LOST),
    ],
)
def test_a_weekly_buyers_stage_as_time_passes(days_after: int, stage: Stage) -> None:
    purchases = _weekly()
    as_of = purchases[-1].occurred_at + timedelta(days=days_after)
    b = behaviour_at(purchases, as_of, UTC_ZONE, DEFAULTS)
    assert b.purchase_cycle_days == 7
    enrolled = at("2024-12-01")
    assert stage_at(b, enrolled, as_of, UTC_ZONE, DEFAULTS) is stage


def test_one_purchase_takes_the_default_cycle_and_short_cycles_the_minimum() -> None:
    enrolled = at("2024-01-01")
    one = [bought("a", at("2025-01-01"), 100)]
    # cycle 30: AT_RISK from day 46, DORMANT from day 91.
    for days, stage in ((45, Stage.ACTIVE), (46, Stage.AT_RISK), (91, Stage.DORMANT)):
        as_of = at("2025-01-01") + timedelta(days=days)
        b = behaviour_at(one, as_of, UTC_ZONE, DEFAULTS)
        assert stage_at(b, enrolled, as_of, UTC_ZONE, DEFAULTS) is stage
    # Two purchases a day apart: cycle 1, read as 7.
    two = [*one, bought("b", at("2025-01-02"), 100)]
    for days, stage in ((10, Stage.ACTIVE), (11, Stage.AT_RISK)):
        as_of = at("2025-01-02") + timedelta(days=days)
        b = behaviour_at(two, as_of, UTC_ZONE, DEFAULTS)
        assert b.purchase_cycle_days == 1
        assert stage_at(b, enrolled, as_of, UTC_ZONE, DEFAULTS) is stage


def test_new_members_and_members_who_never_bought() -> None:
    enrolled = at("2025-01-01")
    none = Behaviour()
    assert stage_at(none, enrolled, at("2025-01-31"), UTC_ZONE, DEFAULTS) is Stage.NEW  # day 30
    assert stage_at(none, enrolled, at("2025-02-01"), UTC_ZONE, DEFAULTS) is Stage.DORMANT
    assert stage_at(none, enrolled, at("2026-01-01"), UTC_ZONE, DEFAULTS) is Stage.DORMANT
    assert stage_at(none, enrolled, at("2026-01-02"), UTC_ZONE, DEFAULTS) is Stage.LOST  # 366
    first = [bought("a", at("2025-01-05"), 100)]
    as_of = at("2025-01-20")
    b = behaviour_at(first, as_of, UTC_ZONE, DEFAULTS)
    assert stage_at(b, enrolled, as_of, UTC_ZONE, DEFAULTS) is Stage.NEW
    # A second purchase day in the first month: a habit forming, read on the cycle.
    second = [*first, bought("b", at("2025-01-12"), 100)]
    b = behaviour_at(second, as_of, UTC_ZONE, DEFAULTS)
    assert stage_at(b, enrolled, as_of, UTC_ZONE, DEFAULTS) is Stage.ACTIVE


def test_settings_out_of_range_are_named() -> None:
    assert DEFAULTS.problems() == []
    assert InsightSettings(new_member_days=0).problems() == [
        ("new_member_days", "must be from 1 to 36,600")
    ]
    assert InsightSettings(min_cycle_days=31).problems() == [
        ("min_cycle_days", "must not exceed default_cycle_days")
    ]
    assert InsightSettings(dormant_after_cycles_pct=150).problems() == [
        ("dormant_after_cycles_pct", "must exceed at_risk_after_cycles_pct")
    ]


# ---------------------------------------------------------------------- refunds pro rata


def test_an_earn_reversed_in_parts_refunds_exactly_its_purchase() -> None:
    # 1000 for 3 points: 333.33 -> 333, again 333, and the last point takes the 334 left.
    first = refund_pro_rata(1000, 3, 0, 1, 0)
    second = refund_pro_rata(1000, 3, 1, 1, first)
    last = refund_pro_rata(1000, 3, 2, 1, first + second)
    assert (first, second, last) == (333, 333, 334)
    assert refund_pro_rata(1000, 3, 0, 3, 0) == 1000
    assert refund_pro_rata(1001, 2, 0, 1, 0) == 501  # 500.5 rounds half up
    assert refund_pro_rata(0, 3, 0, 1, 0) == 0
    assert refund_pro_rata(1000, 0, 0, 1, 0) == 0


# ---------------------------------------------------------------------- query helpers


def test_anniversaries_in_the_programmes_days() -> None:
    enrolled = at("2023-06-10")
    assert anniversary_within(enrolled, at("2025-06-10"), UTC_ZONE, 0)
    assert anniversary_within(enrolled, at("2025-06-03"), UTC_ZONE, 7)
    assert not anniversary_within(enrolled, at("2025-06-03"), UTC_ZONE, 6)
    assert not anniversary_within(enrolled, at("2025-06-11"), UTC_ZONE, 300)
    assert anniversary_within(enrolled, at("2025-06-11"), UTC_ZONE, 364)  # 2026-06-10
    # Across the new year.
    assert anniversary_within(at("2020-01-02"), at("2025-12-30"), UTC_ZONE, 3)
    # The day of enrolment is not its own anniversary; a year later it is.
    assert not anniversary_within(at("2025-06-10"), at("2025-06-10", 18), UTC_ZONE, 0)
    assert anniversary_within(at("2025-06-10"), at("2025-06-10", 18), UTC_ZONE, 365)
    # 00:30 in Shanghai on 10 June is 16:30 UTC on 9 June: 10 June in Shanghai.
    early = at("2023-06-10", 0, 30, SHANGHAI)
    assert anniversary_within(early, at("2025-06-10", 20, 0, SHANGHAI), SHANGHAI, 0)
    assert not anniversary_within(early, at("2025-06-10", 20, 0, SHANGHAI), UTC_ZONE, 0)


def test_a_29_february_enrolment_has_its_anniversary_on_28_february_otherwise() -> None:
    leap = at("2024-02-29")
    assert anniversary_within(leap, at("2025-02-28"), UTC_ZONE, 0)
    assert not anniversary_within(leap, at("2025-03-01"), UTC_ZONE, 300)
    assert anniversary_within(leap, at("2028-02-29"), UTC_ZONE, 0)
    assert not anniversary_within(leap, at("2028-02-28"), UTC_ZONE, 0)


def test_rates_in_parts_per_million() -> None:
    assert ppm(1, 3) == 333333
    assert ppm(2, 3) == 666667
    assert ppm(1, 2_000_000) == 1  # 0.5 rounds half up
    assert ppm(5, 0) == 0
    assert ppm(10, 10) == 1_000_000
