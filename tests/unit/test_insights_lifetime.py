"""A member's Lifetime (ledger/domain/insights.py), what the insights projection keeps so
that a purchase after every other fact updates a member's facts without reading their
purchases: made of all the purchases, it says what behaviour_at says of the member's life
at their newest fact; a purchase added with `bought` gives what making it of all of them
gives. In Shanghai's days, where a purchase at 17:00 UTC is on the next day."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.insights import (
    Behaviour,
    InsightSettings,
    Lifetime,
    Purchase,
    Refund,
    behaviour_at,
    lifetime_of,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2025, 1, 1, tzinfo=UTC)

purchase = st.tuples(
    st.integers(0, 2_000),  # occurred, in hours after START (several on a day, gaps of days)
    st.sampled_from(["s1", "s2", "s3"]),
    st.integers(1, 5_000),  # purchase money
    st.lists(st.tuples(st.integers(0, 900), st.integers(1, 3_000)), max_size=2),  # refunds
)


def made(drawn: list[tuple[int, str, int, list[tuple[int, int]]]]) -> list[Purchase]:
    return [
        Purchase(
            f"t{i:03}",
            START + timedelta(hours=h),
            store,
            money,
            tuple(Refund(START + timedelta(hours=h + rh), amount) for rh, amount in refunds),
        )
        for i, (h, store, money, refunds) in enumerate(drawn)
    ]


def lifetime_fields(b: Behaviour) -> Behaviour:
    """behaviour_at's fields that do not depend on the instant's window or recency."""
    return replace(b, frequency=0, monetary_minor=0, average_order_minor=0, recency_days=-1)


def newest(purchases: list[Purchase]) -> datetime:
    return max(
        (at for p in purchases for at in (p.occurred_at, *(r.occurred_at for r in p.refunds))),
        default=START,
    )


@settings(max_examples=150)
@given(st.lists(purchase, max_size=14))
def test_a_lifetime_says_what_behaviour_at_says_at_the_newest_fact(
    drawn: list[tuple[int, str, int, list[tuple[int, int]]]],
) -> None:
    purchases = made(drawn)
    seen = behaviour_at(purchases, newest(purchases), SHANGHAI, InsightSettings())
    assert lifetime_of(purchases, SHANGHAI).behaviour() == lifetime_fields(seen)


@settings(max_examples=150)
@given(
    st.lists(purchase, max_size=12),
    st.lists(st.tuples(st.integers(1, 400), st.sampled_from(["s1", "s2", "s4"])), max_size=4),
)
def test_a_purchase_after_every_fact_updates_the_lifetime_as_all_purchases_make_it(
    drawn: list[tuple[int, str, int, list[tuple[int, int]]]],
    later: list[tuple[int, str]],
) -> None:
    """Purchases after the newest purchase or refund (hours later, or minutes: the same
    local day), each with its money whole, added one by one."""
    purchases = made(drawn)
    life = lifetime_of(purchases, SHANGHAI)
    at = newest(purchases)
    for i, (minutes, store) in enumerate(later):
        at += timedelta(minutes=minutes * 7)
        bought = Purchase(f"u{i}", at, store, 100 * (i + 1))
        purchases.append(bought)
        life = life.bought(bought.occurred_at, bought.store_id, bought.purchase_minor, SHANGHAI)
        assert life == lifetime_of(purchases, SHANGHAI)


def test_no_purchase_and_a_tie_between_stores() -> None:
    assert Lifetime().behaviour() == Behaviour()
    one = Purchase("a", START, "s2", 500)
    two = Purchase("b", START + timedelta(days=3), "s1", 500)
    life = lifetime_of([one, two], SHANGHAI)
    assert (life.gaps, life.stores) == (((3, 1),), (("s1", 500), ("s2", 500)))
    assert life.behaviour().favourite_store_id == "s1"  # the tie to the smallest id
    assert life.behaviour().purchase_cycle_days == 3
