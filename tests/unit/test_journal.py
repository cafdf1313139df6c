"""The journal's postings, kind by kind: the worked examples of docs/accounting.md."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from ledger.domain import journal
from ledger.domain.program import CashOutPolicy, PointsConversion, StoredValueSplit
from ledger.domain.provenance import Provenance
from tests.unit.test_lot_order import DAY, Member


def posted(m: Member) -> dict[str, int]:
    """The postings of the account's new events, summed by ledger account."""
    totals: dict[str, int] = {}
    for event in m.account.collect_events():
        entries = journal.postings(event, "m", "CNY")
        assert sum(p.amount for p in entries) == 0
        for p in entries:
            assert p.unit == journal.POINTS
            totals[p.ledger_account] = totals.get(p.ledger_account, 0) + p.amount
    return {k: v for k, v in totals.items() if v}


def test_earn_and_redeem() -> None:
    m = Member()
    m.earn(100)
    assert posted(m) == {"member:m:points": 100, "store:-:points_issued": -100}
    m.redeem(30)
    assert posted(m) == {"member:m:points": -30, "store:-:points_redeemed": 30}


def test_a_hold_moves_points_aside_and_a_capture_redeems_part_of_them() -> None:
    m = Member()
    m.earn(100)
    posted(m)
    hold_id, _ = m.hold(40)
    assert posted(m) == {"member:m:points": -40, "member:m:points_held": 40}
    m.capture(hold_id, 25)
    assert posted(m) == {
        "member:m:points_held": -40,
        "store:-:points_redeemed": 25,
        "member:m:points": 15,
    }


def test_expiry_and_the_reversal_of_an_earn_that_had_expired() -> None:
    m = Member()
    lot = m.earn(50, expires_in=DAY)
    posted(m)
    m.now += 2 * DAY
    m.adjust(5)  # any command brings the account up to now: the lot expires first
    assert posted(m) == {
        "member:m:points": -50 + 5,
        "program:points_expired": 50,
        "program:points_adjusted": -5,
    }
    m.reverse(lot)  # the refund of a purchase whose points had expired
    assert posted(m) == {"program:points_expired": -50, "store:-:points_issued": 50}


def test_a_reversal_into_debt_and_its_repayment() -> None:
    m = Member()
    lot = m.earn(30)
    m.redeem(30)
    posted(m)
    m.reverse(lot)  # spent already: all of it becomes debt
    assert posted(m) == {"member:m:points_debt": -30, "store:-:points_issued": 30}
    m.earn(50, expires_in=timedelta(days=365))  # repays the debt first
    assert posted(m) == {
        "member:m:points_debt": 30,
        "member:m:points": 20,
        "store:-:points_issued": -50,
    }


# ---------------------------------------------------------------------- stored value


def money_posted(m: Member) -> dict[tuple[str, str], int]:
    """Like posted(), by (ledger account, unit): stored value posts in the currency."""
    totals: dict[tuple[str, str], int] = {}
    for event in m.account.collect_events():
        entries = journal.postings(event, "m", "CNY")
        for unit in {p.unit for p in entries}:
            assert sum(p.amount for p in entries if p.unit == unit) == 0, entries
        for p in entries:
            key = (p.ledger_account, p.unit)
            totals[key] = totals.get(key, 0) + p.amount
    return {k: v for k, v in totals.items() if v}


def at(m: Member, store: str, reverses: str = "") -> Provenance:
    return replace(m.prov(reverses=reverses), store_id=store)


def test_a_card_sold_at_one_store_spent_at_another_refunded_at_a_third_and_cashed_out() -> None:
    """The worked example of docs/accounting.md, posting by posting."""
    m = Member()
    sold = at(m, "A")
    m.account.top_up(sold, m.now, 1000, 100, "pay-1", 1000, 1)
    assert money_posted(m) == {
        ("member:m:cash", "CNY"): 1000,
        ("store:A:cash_received", "CNY"): -1000,
        ("member:m:bonus", "CNY"): 100,
        ("store:A:bonus_granted", "CNY"): -100,
    }
    spent = at(m, "B")
    assert m.account.spend(spent, m.now, 550, StoredValueSplit.PROPORTIONAL) == (500, 50)
    assert money_posted(m) == {
        ("member:m:cash", "CNY"): -500,
        ("store:A:cash_spent", "CNY"): 500,  # A's money, spent at B: settlement
        ("member:m:bonus", "CNY"): -50,
        ("store:A:bonus_spent", "CNY"): 50,
    }
    refund = at(m, "C", reverses=spent.transaction_id)
    done = m.account.reverse(refund, m.now, spent.transaction_id, 0, 110)
    assert (done.cash_minor, done.bonus_minor) == (100, 10)  # the spend's split, pro rata
    assert money_posted(m) == {
        ("member:m:cash", "CNY"): 100,
        ("store:A:cash_spent", "CNY"): -100,
        ("member:m:bonus", "CNY"): 10,
        ("store:A:bonus_spent", "CNY"): -10,
    }
    out = at(m, "B", reverses=sold.transaction_id)
    done = m.account.reverse(
        out, m.now, sold.transaction_id, 0, 0, CashOutPolicy.DEDUCT_SPENT_BONUS
    )
    # 600 cash left of the top-up; 40 of its bonus was spent (50 - 10 refunded): kept.
    assert (done.refunded_cash_minor, done.bonus_deducted_minor) == (560, 40)
    assert done.forfeited_bonus_minor == 60
    assert money_posted(m) == {
        ("member:m:cash", "CNY"): -600,
        ("store:A:cash_paid_out", "CNY"): 560,
        ("store:A:cash_withheld", "CNY"): 40,
        ("member:m:bonus", "CNY"): -60,
        ("store:A:bonus_forfeited", "CNY"): 60,
    }
    assert (m.account.cash, m.account.bonus) == (0, 0)


def test_points_converted_into_stored_value_and_back() -> None:
    m = Member()
    m.earn(100)
    m.account.collect_events()
    converted = at(m, "A")
    value, _ = m.account.convert_points(converted, m.now, 30, PointsConversion(10, 100))
    assert value == 300
    assert money_posted(m) == {
        ("member:m:points", "points"): -30,
        ("store:A:points_converted", "points"): 30,
        ("member:m:bonus", "CNY"): 300,
        ("store:A:bonus_converted", "CNY"): -300,
    }
    back = at(m, "B", reverses=converted.transaction_id)
    done = m.account.reverse(back, m.now, converted.transaction_id, 20)
    assert (done.points_reversed, done.value_minor) == (20, 200)
    assert money_posted(m) == {
        ("member:m:points", "points"): 20,
        ("store:B:points_converted", "points"): -20,
        ("member:m:bonus", "CNY"): -200,
        ("store:A:bonus_converted", "CNY"): 200,  # off the lot A converted
    }
