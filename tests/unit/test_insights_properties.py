"""The insight rules against simple models (ledger/domain/insights.py): quintile scores are
ceil(5 x count(<= v) / N) however the values tie, the purchase cycle is the median gap of
the distinct purchase days, and a member's behaviour at T adds up the purchases that
occurred by T net of the refunds that occurred by T. Each model is written out here, from
the definitions in docs/insights.md, never by calling the code under test."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.insights import (
    InsightSettings,
    Purchase,
    Refund,
    behaviour_at,
    purchase_cycle_days,
    quintile_cuts,
    segment_of,
)

UTC_ZONE = ZoneInfo("UTC")
START = datetime(2025, 1, 1, tzinfo=UTC)


@given(st.lists(st.integers(min_value=-5, max_value=30), min_size=1, max_size=60))
def test_a_score_is_the_ceiling_of_five_times_the_share_at_or_below(values: list[int]) -> None:
    cuts = quintile_cuts(values)
    n = len(values)
    for v in values:
        at_or_below = sum(1 for x in values if x <= v)
        expected = -((-5 * at_or_below) // n)  # ceil without floats
        assert cuts.score(v) == expected
    assert cuts.score(max(values)) == 5  # the top value always scores 5


@given(st.lists(st.integers(min_value=0, max_value=400), min_size=0, max_size=30))
def test_the_cycle_is_the_median_gap_of_the_purchase_days(offsets: list[int]) -> None:
    days = [date(2025, 1, 1) + timedelta(days=d) for d in offsets]
    distinct = sorted(set(offsets))
    gaps = sorted(b - a for a, b in pairwise(distinct))
    if not gaps:
        expected = 0
    elif len(gaps) % 2:
        expected = gaps[len(gaps) // 2]
    else:
        mean = Fraction(gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2], 2)
        expected = int(mean + Fraction(1, 2)) if mean >= 0 else 0  # half up
    assert purchase_cycle_days(days) == expected


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
def test_the_segment_reads_r_and_the_mean_of_f_and_m(r: int, f: int, m: int) -> None:
    # F and M enter only through their mean rounded half up: swapped, or replaced by any
    # pair with the same mean, they give the same segment.
    fm = (f + m + 1) // 2
    assert segment_of(r, f, m) == segment_of(r, m, f) == segment_of(r, fm, fm)


purchase = st.tuples(
    st.integers(0, 800),  # occurred, in hours after START
    st.sampled_from(["s1", "s2", "s3"]),
    st.integers(1, 5_000),  # purchase money
    st.lists(st.tuples(st.integers(0, 900), st.integers(1, 3_000)), max_size=3),  # refunds
)


@given(st.lists(purchase, max_size=12), st.integers(0, 1_000))
def test_behaviour_adds_up_what_occurred_by_the_instant(
    drawn: list[tuple[int, str, int, list[tuple[int, int]]]], at_hours: int
) -> None:
    as_of = START + timedelta(hours=at_hours)
    purchases = [
        Purchase(
            f"t{i}",
            START + timedelta(hours=h),
            store,
            money,
            tuple(Refund(START + timedelta(hours=h + rh), amount) for rh, amount in refunds),
        )
        for i, (h, store, money, refunds) in enumerate(drawn)
    ]
    seen = behaviour_at(purchases, as_of, UTC_ZONE, InsightSettings())

    # The model: a purchase counts at T if it occurred by T and its money less the refunds
    # that occurred by T is above zero; it is worth that (never below zero).
    worth: list[tuple[datetime, str, int]] = []
    for h, store, money, refunds in drawn:
        occurred = START + timedelta(hours=h)
        if occurred > as_of:
            continue
        refunded = sum(a for rh, a in refunds if occurred + timedelta(hours=rh) <= as_of)
        if money - refunded > 0:
            worth.append((occurred, store, money - refunded))
    assert seen.lifetime_purchases == len(worth)
    assert seen.lifetime_value_minor == sum(w for _, _, w in worth)
    if not worth:
        assert seen.last_purchase_at is None
        assert seen.recency_days == -1
        return
    assert seen.last_purchase_at == max(o for o, _, _ in worth)
    assert seen.first_purchase_at == min(o for o, _, _ in worth)
    assert seen.recency_days == (as_of.date() - max(o for o, _, _ in worth).date()).days
    total = Fraction(sum(w for _, _, w in worth), len(worth))
    assert seen.average_order_minor == int(total + Fraction(1, 2))
    by_store: dict[str, int] = {}
    for _, store, w in worth:
        by_store[store] = by_store.get(store, 0) + w
    best = max(by_store.values())
    assert seen.favourite_store_id == min(s for s, v in by_store.items() if v == best)
    window_start = as_of - timedelta(days=365)
    recent = [w for o, _, w in worth if o > window_start]
    assert (seen.frequency, seen.monetary_minor) == (len(recent), sum(recent))
