"""Direct tests of the MemberAccount aggregate: which lots points come from and go back to.

Redemption order, debt repaid by earns, reversal of an earn whose lot has expired, and
points put back into a lot that expired meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.domain import errors
from ledger.domain.account import MemberAccount
from ledger.domain.provenance import Provenance

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
YEAR = timedelta(days=365)  # the tier window: no test here is about tiers


class Member:
    """One account and a clock; each command gets a fresh transaction id (returned)."""

    def __init__(self) -> None:
        self.now = T0
        self.count = 0
        self.account = MemberAccount(
            program_id="prog", member_id="m", referrer_member_id="", provenance=self.prov()
        )
        self.account.collect_events()

    def prov(self, occurred_at: datetime | None = None, reverses: str = "") -> Provenance:
        self.count += 1
        return Provenance(
            transaction_id=f"tx-{self.count:03d}",
            request_id=f"r-{self.count}",
            occurred_at=occurred_at or self.now,
            reverses_transaction_id=reverses,
        )

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The new events: (name, the fields that say what moved)."""
        out = []
        for e in self.account.collect_events():
            fields = {
                k: v
                for k, v in vars(e).items()
                if k not in ("originator_id", "originator_version", "timestamp", "provenance")
            }
            out.append((type(e).__name__, fields))
        return out

    def earn(
        self, points: int, expires_in: timedelta | None = None, earned_ago: timedelta | None = None
    ) -> str:
        p = self.prov(occurred_at=self.now - earned_ago if earned_ago else None)
        expires_at = None if expires_in is None else self.now + expires_in
        self.account.earn(p, self.now, points, 0, expires_at, qualifies_until=p.occurred_at + YEAR)
        return p.transaction_id

    def redeem(self, points: int) -> tuple[str, list[tuple[str, int]]]:
        p = self.prov()
        return p.transaction_id, list(self.account.redeem(p, self.now, points).items())

    def hold(self, points: int, ttl: timedelta = 3 * DAY) -> tuple[str, list[tuple[str, int]]]:
        p = self.prov()
        hold = self.account.hold(p, self.now, points, ttl)
        return hold.hold_id, list(hold.taken.items())

    def capture(self, hold_id: str, points: int = 0) -> tuple[str, Any, Any]:
        p = self.prov()
        consumed, released = self.account.capture_hold(p, self.now, hold_id, points)
        return p.transaction_id, list(consumed.items()), list(released.items())

    def release(self, hold_id: str) -> list[tuple[str, int]]:
        return list(self.account.release_hold(self.prov(), self.now, hold_id).items())

    def reverse(self, transaction_id: str, points: int = 0) -> tuple[int, int]:
        p = self.prov(reverses=transaction_id)
        done = self.account.reverse(p, self.now, transaction_id, points)
        return done.points_reversed, done.debt_added

    def adjust(self, points: int, expires_in: timedelta | None = None) -> None:
        expires_at = None if expires_in is None else self.now + expires_in
        self.account.adjust(self.prov(), self.now, points, expires_at)

    def balances(self) -> tuple[int, int, int]:
        return self.account.available, self.account.held, self.account.debt

    def remaining(self, lot_id: str) -> int:
        return self.account.lots[lot_id].remaining


# ------------------------------------------------------------------ order


def test_redeem_takes_earliest_expiry_first_then_oldest_earn_never_expiring_last() -> None:
    m = Member()
    late = m.earn(10, expires_in=30 * DAY)
    never_new = m.earn(10, earned_ago=HOUR)
    never_old = m.earn(10, earned_ago=2 * DAY)
    early = m.earn(10, expires_in=5 * DAY)
    tie_new = m.earn(10, expires_in=10 * DAY, earned_ago=HOUR)
    tie_old = m.earn(10, expires_in=10 * DAY, earned_ago=3 * HOUR)

    _, consumed = m.redeem(55)

    assert consumed == [
        (early, 10),
        (tie_old, 10),
        (tie_new, 10),
        (late, 10),
        (never_old, 10),
        (never_new, 5),
    ]
    assert [lot.lot_id for lot in m.account.open_lots()] == [never_new]
    assert m.balances() == (5, 0, 0)


def test_full_ties_fall_back_to_the_lot_id() -> None:
    m = Member()
    first = m.earn(10, expires_in=DAY)
    second = m.earn(10, expires_in=DAY)
    assert first < second
    assert m.redeem(15)[1] == [(first, 10), (second, 5)]


def test_a_hold_takes_in_the_same_order_and_a_capture_consumes_what_it_took_first() -> None:
    m = Member()
    never = m.earn(100)
    late = m.earn(40, expires_in=10 * DAY)
    early = m.earn(30, expires_in=2 * DAY)

    hold_id, taken = m.hold(90)
    assert taken == [(early, 30), (late, 40), (never, 20)]
    assert m.balances() == (80, 90, 0)

    capture_id, consumed, released = m.capture(hold_id, 50)
    assert consumed == [(early, 30), (late, 20)]
    assert released == [(late, 20), (never, 20)]
    assert (m.remaining(early), m.remaining(late), m.remaining(never)) == (0, 20, 100)
    assert m.balances() == (120, 0, 0)

    # A capture is a redemption: reversed like one, last consumed first; the hold itself is not.
    assert m.reverse(capture_id, 25) == (25, 0)
    assert (m.remaining(early), m.remaining(late)) == (5, 40)
    with pytest.raises(errors.TransactionNotReversible):
        m.reverse(hold_id)


def test_refused_redeem_takes_nothing() -> None:
    m = Member()
    lot = m.earn(30)
    m.events()
    with pytest.raises(errors.InsufficientPoints):
        m.redeem(31)
    assert m.remaining(lot) == 30
    assert m.balances() == (30, 0, 0)
    assert m.events() == []


# ------------------------------------------------------------------ debt


def test_reversing_a_spent_earn_creates_debt_which_blocks_redemption_and_earns_repay() -> None:
    m = Member()
    lot = m.earn(100)
    m.redeem(100)
    assert m.reverse(lot) == (100, 100)
    assert m.balances() == (0, 0, 100)

    with pytest.raises(errors.AccountInDebt):
        m.redeem(1)
    with pytest.raises(errors.AccountInDebt):
        m.hold(1)

    small = m.earn(30)
    assert m.account.lots[small].points == 0
    assert small not in m.account.open_lot_ids
    assert m.balances() == (0, 0, 70)

    big = m.earn(100, expires_in=DAY)
    assert m.account.lots[big].points == 30
    assert m.balances() == (30, 0, 0)
    assert m.redeem(30)[1] == [(big, 30)]


def test_earn_returns_the_points_that_repaid_debt() -> None:
    m = Member()
    lot = m.earn(50)
    m.redeem(50)
    m.reverse(lot)
    p = m.prov()
    assert m.account.earn(p, m.now, 20, 0, None, qualifies_until=p.occurred_at + YEAR) == 20
    p = m.prov()
    assert m.account.earn(p, m.now, 100, 0, None, qualifies_until=p.occurred_at + YEAR) == 30
    assert m.balances() == (70, 0, 0)


def test_a_positive_adjustment_repays_debt_first() -> None:
    m = Member()
    lot = m.earn(40)
    m.redeem(40)
    m.reverse(lot)
    m.adjust(25)
    assert m.balances() == (0, 0, 15)
    m.adjust(25)
    assert m.balances() == (10, 0, 0)


def test_reversing_an_earn_takes_its_own_lot_first_then_others_then_debt() -> None:
    m = Member()
    other = m.earn(30)
    lot = m.earn(100, expires_in=DAY)  # spent first
    m.redeem(80)  # lot 80
    assert m.reverse(lot) == (100, 50)  # 20 from its lot, 30 from the other, 50 owed
    assert (m.remaining(lot), m.remaining(other)) == (0, 0)
    assert m.balances() == (0, 0, 50)


def test_the_total_reversed_never_exceeds_the_original() -> None:
    m = Member()
    lot = m.earn(100)
    assert m.reverse(lot, 60) == (60, 0)
    with pytest.raises(errors.ReversalExceedsOriginal):
        m.reverse(lot, 41)
    assert m.reverse(lot) == (40, 0)
    with pytest.raises(errors.NothingLeftToReverse):
        m.reverse(lot)
    with pytest.raises(errors.TransactionNotFound):
        m.reverse("tx-unknown")


# ------------------------------------------------------------------ expiry and reversals


def test_reversing_an_earn_whose_lot_expired_does_not_claw_back_the_expired_points() -> None:
    m = Member()
    lot = m.earn(100, expires_in=DAY)
    other = m.earn(100)
    m.redeem(40)  # from the expiring lot
    m.now += 2 * DAY
    m.events()

    assert m.reverse(lot) == (100, 0)

    events = m.events()
    assert events[0] == ("LotsExpired", {"as_of": m.now, "lots": {lot: 60}})
    assert events[1] == (
        "EarnReversed",
        {
            "points": 100,
            "taken": {other: 40},
            "from_expired": 60,
            "debt_added": 0,
            "refund_purchase_minor": 0,
        },
    )
    assert m.balances() == (60, 0, 0)


def test_partial_reversals_of_an_expired_earn_count_its_expired_points_once() -> None:
    m = Member()
    lot = m.earn(100, expires_in=DAY)
    m.redeem(30)
    m.now += 2 * DAY  # 70 expire
    assert m.reverse(lot, 50) == (50, 0)  # all of it from expired points
    assert m.reverse(lot, 50) == (50, 30)  # 20 expired points left; the 30 spent are owed
    assert m.account.lots[lot].expired_reversed == 70
    assert m.balances() == (0, 0, 30)


def test_redemption_reversal_into_an_expired_lot_expires_at_once() -> None:
    m = Member()
    expiring = m.earn(100, expires_in=DAY)
    never = m.earn(50)
    redemption, consumed = m.redeem(120)
    assert consumed == [(expiring, 100), (never, 20)]
    m.now += 2 * DAY

    # Last consumed first: a partial reversal goes back into the never-expiring lot.
    assert m.reverse(redemption, 20) == (20, 0)
    m.events()
    assert m.balances() == (50, 0, 0)

    assert m.reverse(redemption) == (100, 0)
    events = m.events()
    assert [name for name, _ in events] == ["RedemptionReversed", "LotsExpired"]
    assert events[0][1]["restored"] == {expiring: 100}
    assert events[1][1]["lots"] == {expiring: 100}
    assert m.account.lots[expiring].expired == 100
    assert m.balances() == (50, 0, 0)


def test_held_points_do_not_expire_while_held_and_expire_when_released() -> None:
    m = Member()
    lot = m.earn(100, expires_in=DAY)
    hold_id, _ = m.hold(60, ttl=5 * DAY)
    m.now += 2 * DAY
    m.account.bring_up_to(m.now, m.prov())
    assert m.account.lots[lot].expired == 40
    assert m.balances() == (0, 60, 0)

    assert m.release(hold_id) == [(lot, 60)]
    assert m.account.lots[lot].expired == 100
    assert m.balances() == (0, 0, 0)


def test_a_hold_past_its_ttl_gives_its_points_back_before_the_next_command() -> None:
    m = Member()
    lot = m.earn(100, expires_in=DAY)
    hold_id, _ = m.hold(100, ttl=HOUR)
    m.now += HOUR  # the TTL has run out at exactly this instant
    with pytest.raises(errors.HoldNotActive):
        m.capture(hold_id)
    with pytest.raises(errors.HoldNotActive):
        m.release(hold_id)
    m.events()
    m.account.bring_up_to(m.now, m.prov())
    assert hold_id not in m.account.holds
    assert m.balances() == (100, 0, 0)
    m.now += DAY
    m.account.bring_up_to(m.now, m.prov())
    assert m.account.lots[lot].expired == 100
    assert m.balances() == (0, 0, 0)


def test_expiry_is_idempotent_per_instant() -> None:
    m = Member()
    a = m.earn(10, expires_in=DAY)
    b = m.earn(20, expires_in=2 * DAY)
    m.earn(40)
    sweep = Provenance(transaction_id="sweep", request_id="", occurred_at=T0 + DAY)
    assert m.account.expire_lots(T0 + DAY, sweep) == {a: 10}
    assert m.account.expire_lots(T0 + DAY, sweep) == {}
    assert m.account.expire_lots(T0 + 3 * DAY, sweep) == {b: 20}
    assert m.account.expire_lots(T0 + 3 * DAY, sweep) == {}
    assert m.balances() == (40, 0, 0)


# ------------------------------------------------------------------ holds and reversals


def test_releasing_a_hold_then_reversing_its_expired_earn_leaves_no_debt() -> None:
    m = Member()
    lot = m.earn(100, expires_in=DAY)
    hold_id, _ = m.hold(100, ttl=5 * DAY)
    m.now += 2 * DAY
    m.release(hold_id)  # the points go back and expire at once
    assert m.reverse(lot) == (100, 0)
    assert m.balances() == (0, 0, 0)


def test_reversing_an_earn_whose_points_are_held_then_expire_leaves_no_debt() -> None:
    """The same facts as the test above, reversal and release in the other order.

    None of the earn's points was ever spent: all 100 were held. Reversing the earn must leave
    no debt whichever came first. Here the reversal, leaving the active hold alone (decision
    0002), finds nothing in the lot and records 100 of debt; the release then gives the 100
    held points back, and points coming back repay debt before they go into a lot.
    """
    m = Member()
    lot = m.earn(100, expires_in=DAY)
    hold_id, _ = m.hold(100, ttl=5 * DAY)
    m.now += 2 * DAY
    assert m.reverse(lot) == (100, 100)
    m.release(hold_id)
    assert m.account.lots[lot].expired == 0  # they repaid the debt instead of expiring
    assert m.balances() == (0, 0, 0)


def test_no_balance_beyond_int64() -> None:
    m = Member()
    m.earn(2**63 - 2)
    m.earn(1)
    with pytest.raises(errors.BalanceLimitExceeded):
        m.earn(1)
    with pytest.raises(errors.BalanceLimitExceeded):
        m.adjust(1)


def test_reversing_a_redemption_then_its_expired_earn_keeps_the_other_lot() -> None:
    m = Member()
    spent = m.earn(100, expires_in=DAY)
    other = m.earn(100)
    redemption, _ = m.redeem(100)  # all from the expiring lot
    m.now += 2 * DAY
    m.reverse(redemption)  # back into the expired lot, which expires at once
    assert m.reverse(spent) == (100, 0)  # all its points expired: nothing clawed back
    assert m.remaining(other) == 100
    assert m.balances() == (100, 0, 0)


def test_reversing_an_earn_then_its_redemption_keeps_the_other_lot() -> None:
    """The same facts as the test above, both reversals at the same instant, other order.

    The spent earn's points were redeemed, then the redemption was reversed: the member keeps
    the other lot either way. Here the earn reversal takes 100 from the other lot in place of
    the earn's own points (away in the redemption); the redemption reversal then gives those
    100 back to the other lot instead of putting them into the reversed, expired lot.
    """
    m = Member()
    spent = m.earn(100, expires_in=DAY)
    other = m.earn(100)
    redemption, _ = m.redeem(100)
    m.now += 2 * DAY
    assert m.reverse(spent) == (100, 0)
    assert m.remaining(other) == 0
    m.reverse(redemption)
    assert m.account.lots[spent].remaining == 0
    assert m.balances() == (100, 0, 0)
    assert m.remaining(other) == 100


def test_points_held_when_their_earn_is_reversed_give_back_the_lot_that_stood_in() -> None:
    """Hold, reverse the earn (another lot stands in), release: the stand-in is repaid, the
    same end as release-then-reverse."""
    m = Member()
    spent = m.earn(100, expires_in=DAY)
    other = m.earn(100)
    hold_id, _ = m.hold(100)  # all from the expiring lot
    assert m.reverse(spent) == (100, 0)
    assert m.remaining(other) == 0
    m.release(hold_id)
    assert m.balances() == (100, 0, 0)
    assert (m.remaining(spent), m.remaining(other)) == (0, 100)


# ------------------------------------------------------------------ checks by the applying code


def two_overdue_holds_on_a_reversed_lot(
    r_expires: timedelta | None, x_expires: timedelta | None
) -> Member:
    """Earn R 10; hold 5 and 5 (both from R, TTL 1 day); earn X 3; reverse R in full (X
    stands in for 3, debt 7); earn 7 (repays the debt); earn Z 10; two days later."""
    m = Member()
    r = m.earn(10, expires_in=r_expires)
    m.hold(5, ttl=DAY)
    m.hold(5, ttl=DAY)
    m.earn(3, expires_in=x_expires)
    assert m.reverse(r) == (10, 7)
    m.earn(7)
    m.earn(10)
    m.now += 2 * DAY
    return m


@pytest.mark.parametrize(
    ("r_expires", "x_expires"), [(None, HOUR), (HOUR, None)], ids=["x-expires", "r-expires"]
)
def test_what_a_redeem_may_take_is_what_bringing_the_account_up_to_now_leaves(
    r_expires: timedelta | None, x_expires: timedelta | None
) -> None:
    """Regression: the pre-check counted the stand-in lot's share once per returning hold
    (14 instead of 17 with X expiring; 16 instead of 13 with R expiring, and then redeeming
    16 tripped the allocation's assert)."""
    m = two_overdue_holds_on_a_reversed_lot(r_expires, x_expires)
    probe = two_overdue_holds_on_a_reversed_lot(r_expires, x_expires)
    probe.account.bring_up_to(probe.now, probe.prov())
    available = probe.account.available

    assert m.account.balances_at(m.now) == (available, 0)
    m.account.collect_events()
    with pytest.raises(errors.InsufficientPoints):
        m.redeem(available + 1)
    assert m.account.collect_events() == []  # refused before any event
    assert m.redeem(available)[1]  # the whole of it, no AssertionError
    assert m.balances() == (0, 0, 0)


def test_points_that_repaid_a_reversed_earns_debt_stand_in_for_its_lot() -> None:
    """Regression: repaid debt recorded no stand-in, so points coming back went to the
    reversed lot (never expiring) in one order of the two reversals, and stayed in the
    repaying lot (expiring) in the other."""

    def play(reverse_the_earn_first: bool) -> Member:
        m = Member()
        r = m.earn(10)  # never expires
        redemption, _ = m.redeem(10)
        if reverse_the_earn_first:
            assert m.reverse(r) == (10, 10)  # its points were spent: debt
            m.earn(10, expires_in=DAY)  # repays the debt
            m.reverse(redemption)
        else:
            m.earn(10, expires_in=DAY)
            m.reverse(redemption)
            assert m.reverse(r) == (10, 0)
        return m

    first, second = play(True), play(False)
    remaining = [{i: lot.remaining for i, lot in m.account.lots.items()} for m in (first, second)]
    assert list(remaining[0].values()) == list(remaining[1].values()) == [0, 10]
    for m in (first, second):
        assert m.balances() == (10, 0, 0)
        m.now += 2 * DAY
        assert m.account.balances_at(m.now) == (0, 0)  # the repaying lot's expiry
