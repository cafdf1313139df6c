"""The journal's postings, kind by kind: the worked examples of docs/accounting.md."""

from __future__ import annotations

from datetime import timedelta

from ledger.domain import journal
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
