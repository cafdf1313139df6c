"""Stored value over the real server: TopUp, Spend, their refunds and cash-outs, ConvertPoints
and its reversal, the programme's bonus schedule, split and cash-out policy.

Every scenario runs end to end over gRPC against a real server on each backend. The numbers
in the comments are worked out by hand from the rules (docs/api.md), not read off the code:

- PROPORTIONAL: cash = floor(amount * cash / (cash + bonus)), bonus = the rest.
- a refund of a spend puts back cash = floor(spend.cash * refunded_total_after / spend.amount)
  - cash refunded before, bonus = the rest, into the lots drawn from, last drawn first.
- a cash-out of `c` of a top-up forfeits floor(lot's remaining bonus * c / lot's remaining
  cash) (all of it when all the cash goes); DEDUCT_SPENT_BONUS keeps from the cash handed
  back the bonus spent from that top-up, net of refunds and not deducted before.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from ledger.application.service import SNAPSHOT_AFTER_REPLAYING
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import (
    Client,
    Refusal,
    ServerThread,
    account_state,
    log_head,
    new_id,
    refusal,
    refused,
    scratch_postgres,
    ts,
)

PROPORTIONAL = pb.STORED_VALUE_SPLIT_PROPORTIONAL
CASH_FIRST = pb.STORED_VALUE_SPLIT_CASH_FIRST
BONUS_FIRST = pb.STORED_VALUE_SPLIT_BONUS_FIRST
FORFEIT = pb.CASH_OUT_POLICY_FORFEIT_REMAINING_BONUS
DEDUCT = pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS
FAILED = grpc.StatusCode.FAILED_PRECONDITION
RATE = pb.PointsConversion(points=10, value_minor=100)  # 10 points = 1.00 of bonus

# ---------------------------------------------------------------------- local helpers


def assert_refused(problem: Refusal, code: grpc.StatusCode, reason: str) -> None:
    assert (problem.code, problem.reason) == (code, reason), problem.message


def card(response: Any) -> tuple[int, int]:
    """(cash, bonus) of the account a command response carries."""
    return response.account.stored_value_cash_minor, response.account.stored_value_bonus_minor


def split(response: pb.SpendResponse | pb.ReverseResponse) -> tuple[int, int]:
    return response.cash_minor, response.bonus_minor


def cash_out(response: pb.ReverseResponse) -> tuple[int, int, int]:
    """(handed back, spent bonus deducted, bonus forfeited) of a TopUp reversal."""
    return (
        response.refunded_cash_minor,
        response.bonus_deducted_minor,
        response.forfeited_bonus_minor,
    )


def value_rows(
    client: Client, program: str, member: str, position: int
) -> list[tuple[int, int, int, int, int]]:
    """(kind, cash delta, bonus delta, cash after, bonus after) of each transaction."""
    history = client.transactions(program, member, min_position=position, page_size=1000)
    return [
        (
            t.kind,
            t.cash_delta_minor,
            t.bonus_delta_minor,
            t.cash_balance_after_minor,
            t.bonus_balance_after_minor,
        )
        for t in history.transactions
    ]


def last_row(client: Client, program: str, member: str, position: int) -> pb.Transaction:
    history = client.transactions(program, member, min_position=position, page_size=1000)
    row: pb.Transaction = history.transactions[-1]
    return row


def refused_writes_nothing(
    client: Client,
    server: ServerThread,
    program: str,
    member: str,
    call: Any,
    reason: str,
    code: grpc.StatusCode = FAILED,
) -> None:
    """`call` is refused with `reason`, and the account (version, balances, history) is as
    it was once the projections have caught up with the whole log."""
    before = account_state(client, server, program, member)
    history = client.transactions(program, member, min_position=log_head(server), page_size=1000)
    assert_refused(refused(call), code, reason)
    assert account_state(client, server, program, member) == before
    assert (
        client.transactions(program, member, min_position=log_head(server), page_size=1000)
        == history
    )


def enrolled_long_ago(client: Client, **program_fields: Any) -> tuple[str, str]:
    """A member enrolled a week ago, so that top-ups may be dated back."""
    program = client.create_program(**program_fields)
    member = client.enroll(program, occurred_at=ts(datetime.now(UTC) - timedelta(days=7)))
    return program, member


# ---------------------------------------------------------------------- split policies


def test_proportional_split_rounds_the_cash_part_down(client: Client, server: ServerThread) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    topped = client.top_up(program, member, 100, bonus_minor=20, payment_ref="pay-1")
    assert card(topped) == (100, 20)

    # 7 * 100 / 120 = 5.83: cash 5, bonus 2.
    first = client.spend(program, member, 7)
    assert split(first) == (5, 2)
    assert card(first) == (95, 18)
    # One minor unit: 1 * 95 / 113 = 0.84: all of it from bonus.
    unit = client.spend(program, member, 1)
    assert split(unit) == (0, 1)
    assert card(unit) == (95, 17)
    # An odd amount: 33 * 95 / 112 = 27.99: cash 27, bonus 6 (the remainder goes to bonus).
    odd = client.spend(program, member, 33)
    assert split(odd) == (27, 6)
    assert card(odd) == (68, 11)
    # Everything left: 79 * 68 / 79 = 68 exactly: cash 68, bonus 11.
    rest = client.spend(program, member, 79)
    assert split(rest) == (68, 11)
    assert card(rest) == (0, 0)

    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.spend(program, member, 1),
        "INSUFFICIENT_STORED_VALUE",
    )
    assert value_rows(client, program, member, rest.position)[1:] == [
        (pb.TRANSACTION_KIND_TOP_UP, 100, 20, 100, 20),
        (pb.TRANSACTION_KIND_SPEND, -5, -2, 95, 18),
        (pb.TRANSACTION_KIND_SPEND, 0, -1, 95, 17),
        (pb.TRANSACTION_KIND_SPEND, -27, -6, 68, 11),
        (pb.TRANSACTION_KIND_SPEND, -68, -11, 0, 0),
    ]


def test_proportional_split_with_no_bonus_takes_all_from_cash(client: Client) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    client.top_up(program, member, 50, bonus_minor=0)

    for amount, left in ((1, 49), (13, 36), (36, 0)):
        spent = client.spend(program, member, amount)
        assert split(spent) == (amount, 0)
        assert card(spent) == (left, 0)


def test_proportional_split_with_no_cash_left_takes_all_from_bonus(client: Client) -> None:
    """A card holding only bonus (converted points), then a little cash on top."""
    program, member = client.member(stored_value_split=PROPORTIONAL, points_conversion=RATE)
    client.earn(program, member, 100)
    converted = client.convert(program, member, 10)
    assert (converted.value_minor, card(converted)) == (100, (0, 100))

    spent = client.spend(program, member, 33)
    assert split(spent) == (0, 33)  # 33 * 0 / 100 = 0
    assert card(spent) == (0, 67)

    client.top_up(program, member, 10, bonus_minor=0)
    # 7 * 10 / 77 = 0.9: still all from bonus; 8 * 10 / 70 = 1.14: cash 1, bonus 7.
    small = client.spend(program, member, 7)
    assert split(small) == (0, 7)
    assert card(small) == (10, 60)
    larger = client.spend(program, member, 8)
    assert split(larger) == (1, 7)
    assert card(larger) == (9, 53)


def test_proportional_split_after_the_bonus_ran_out_under_another_policy(
    client: Client,
) -> None:
    """UpdateProgram of the split applies to later spends: the card is emptied of cash under
    CASH_FIRST, then PROPORTIONAL sees cash 0 and takes bonus only."""
    program, member = client.member(stored_value_split=PROPORTIONAL)
    client.top_up(program, member, 100, bonus_minor=20)
    client.update_program(program, stored_value_split=CASH_FIRST)
    cash_first = client.spend(program, member, 100)
    assert split(cash_first) == (100, 0)
    client.update_program(program, stored_value_split=PROPORTIONAL)

    spent = client.spend(program, member, 5)

    assert split(spent) == (0, 5)
    assert card(spent) == (0, 15)


def test_cash_first_takes_cash_then_bonus(client: Client, server: ServerThread) -> None:
    program, member = client.member(stored_value_split=CASH_FIRST)
    client.top_up(program, member, 100, bonus_minor=20)

    assert split(client.spend(program, member, 1)) == (1, 0)
    across = client.spend(program, member, 100)  # the 99 cash left, then 1 of bonus
    assert split(across) == (99, 1)
    assert card(across) == (0, 19)
    last = client.spend(program, member, 19)
    assert split(last) == (0, 19)
    assert card(last) == (0, 0)
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.spend(program, member, 1),
        "INSUFFICIENT_STORED_VALUE",
    )


def test_bonus_first_takes_bonus_then_cash(client: Client) -> None:
    program, member = client.member(stored_value_split=BONUS_FIRST)
    client.top_up(program, member, 100, bonus_minor=20)

    assert split(client.spend(program, member, 1)) == (0, 1)
    across = client.spend(program, member, 20)  # the 19 bonus left, then 1 of cash
    assert split(across) == (1, 19)
    assert card(across) == (99, 0)
    last = client.spend(program, member, 99)
    assert split(last) == (99, 0)
    assert card(last) == (0, 0)


@pytest.mark.parametrize("policy", [PROPORTIONAL, CASH_FIRST, BONUS_FIRST])
def test_spending_more_than_the_card_holds_is_refused_and_writes_nothing(
    client: Client, server: ServerThread, policy: int
) -> None:
    program, member = client.member(stored_value_split=policy)
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.spend(program, member, 1),
        "INSUFFICIENT_STORED_VALUE",
    )
    client.top_up(program, member, 100, bonus_minor=20)
    problem = refused(lambda: client.spend(program, member, 121))
    assert_refused(problem, FAILED, "INSUFFICIENT_STORED_VALUE")
    assert "121 requested, 120 of stored value available" in problem.message

    spent = client.spend(program, member, 120)  # exactly what it holds
    assert sum(split(spent)) == 120
    assert card(spent) == (0, 0)


# ---------------------------------------------------------------------- lots, oldest first


def test_spends_draw_on_the_oldest_top_up_first_by_business_time(
    client: Client, server: ServerThread
) -> None:
    """A top-up uploaded later by an offline store, but made earlier, is drawn first: the
    cash-outs afterwards show which top-up the spend took from."""
    program, member = enrolled_long_ago(client, stored_value_split=CASH_FIRST)
    now = datetime.now(UTC)
    recent = client.top_up(program, member, 100, bonus_minor=0, store_id="store-1")
    older = client.top_up(
        program,
        member,
        100,
        bonus_minor=0,
        store_id="store-2",
        occurred_at=ts(now - timedelta(days=2)),
    )

    spent = client.spend(program, member, 150)  # 100 from `older`, then 50 from `recent`
    assert split(spent) == (150, 0)

    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.refund(program, member, older.transaction_id),
        "NOTHING_LEFT_TO_REVERSE",
    )
    out = client.refund(program, member, recent.transaction_id)
    assert cash_out(out) == (50, 0, 0)
    assert card(out) == (0, 0)


def test_top_ups_at_the_same_instant_are_drawn_in_the_order_they_were_made(
    client: Client,
) -> None:
    program, member = enrolled_long_ago(client, stored_value_split=CASH_FIRST)
    moment = ts(datetime.now(UTC) - timedelta(hours=1))
    first = client.top_up(program, member, 100, bonus_minor=0, occurred_at=moment)
    second = client.top_up(program, member, 100, bonus_minor=0, occurred_at=moment)

    client.spend(program, member, 100)

    assert_refused(
        refused(lambda: client.refund(program, member, first.transaction_id)),
        FAILED,
        "NOTHING_LEFT_TO_REVERSE",
    )
    assert cash_out(client.refund(program, member, second.transaction_id)) == (100, 0, 0)


def test_cash_and_bonus_parts_each_draw_on_lots_oldest_first(client: Client) -> None:
    """PROPORTIONAL over two top-ups: the cash part and the bonus part are drawn from the
    lots each on its own, oldest first; the DEDUCT_SPENT_BONUS cash-outs show where."""
    program, member = client.member(stored_value_split=PROPORTIONAL, cash_out_policy=DEDUCT)
    only_cash = client.top_up(program, member, 100, bonus_minor=0)
    with_bonus = client.top_up(program, member, 50, bonus_minor=50)
    # Card: cash 150, bonus 50. Spend 120: cash 120 * 150 / 200 = 90, bonus 30.
    # Cash: 90 from `only_cash` (the oldest, 100). Bonus: `only_cash` has none, so 30 from
    # `with_bonus`, whose cash is untouched.
    spent = client.spend(program, member, 120)
    assert split(spent) == (90, 30)
    assert card(spent) == (60, 20)

    # `only_cash`: 10 cash left, no bonus was spent from it: all 10 back.
    assert cash_out(client.refund(program, member, only_cash.transaction_id)) == (10, 0, 0)
    # `with_bonus`: 50 cash left, 20 bonus left, 30 of its bonus spent: 50 - 30 = 20 back,
    # 30 deducted, the 20 bonus lapses.
    out = client.refund(program, member, with_bonus.transaction_id)
    assert cash_out(out) == (20, 30, 20)
    assert card(out) == (0, 0)


# ---------------------------------------------------------------------- refunds of a spend


def test_partial_refunds_add_up_to_the_spend_split_exactly(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    client.top_up(program, member, 100, bonus_minor=20)
    spent = client.spend(program, member, 60)  # 60 * 100 / 120 = 50 cash, 10 bonus
    assert split(spent) == (50, 10)
    sid = spent.transaction_id

    # Refund 7: cash 50 * 7 / 60 = 5.83 -> 5, bonus 2.
    first = client.refund(program, member, sid, 7, reason="one item back")
    assert split(first) == (5, 2)
    assert card(first) == (55, 12)
    assert first.reverses_transaction_id == sid
    # Refund 7 more (14 in all): cash 50 * 14 / 60 = 11.67 -> 11, less the 5 before = 6;
    # bonus 1.
    second = client.refund(program, member, sid, 7)
    assert split(second) == (6, 1)
    assert card(second) == (61, 13)
    # 46 remain; 47 is too much, and writes nothing.
    problem = refused(lambda: client.refund(program, member, sid, 47))
    assert_refused(problem, FAILED, "REVERSAL_EXCEEDS_ORIGINAL")
    assert "46" in problem.message
    # Refund the 46 left (60 in all): cash 50 - 11 = 39, bonus 46 - 39 = 7.
    last = client.refund(program, member, sid, 46)
    assert split(last) == (39, 7)
    assert split(spent) == (5 + 6 + 39, 2 + 1 + 7)
    assert card(last) == (100, 20)

    for amount in (0, 1):
        refused_writes_nothing(
            client,
            server,
            program,
            member,
            partial(client.refund, program, member, sid, amount),
            "NOTHING_LEFT_TO_REVERSE",
        )
    rows = value_rows(client, program, member, last.position)
    assert rows[-3:] == [
        (pb.TRANSACTION_KIND_REVERSE, 5, 2, 55, 12),
        (pb.TRANSACTION_KIND_REVERSE, 6, 1, 61, 13),
        (pb.TRANSACTION_KIND_REVERSE, 39, 7, 100, 20),
    ]


def test_a_refund_of_zero_refunds_all_that_remains(client: Client) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    client.top_up(program, member, 100, bonus_minor=20)
    spent = client.spend(program, member, 60)  # 50 cash, 10 bonus
    client.refund(program, member, spent.transaction_id, 7)  # 5 cash, 2 bonus

    rest = client.refund(program, member, spent.transaction_id)

    assert split(rest) == (45, 8)  # 53 more: 50 - 5 cash, the rest bonus
    assert card(rest) == (100, 20)


def test_a_one_unit_refund_of_a_mixed_spend_goes_to_bonus_first(client: Client) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    client.top_up(program, member, 10, bonus_minor=10)
    spent = client.spend(program, member, 3)  # 3 * 10 / 20 = 1.5: cash 1, bonus 2
    assert split(spent) == (1, 2)
    sid = spent.transaction_id

    # Refunded one at a time: cash after = 1 * n / 3 -> 0, 0, 1.
    refunds = [client.refund(program, member, sid, 1) for _ in range(3)]
    assert [split(r) for r in refunds] == [(0, 1), (0, 1), (1, 0)]
    assert client.stored_value(program, member, refunds[-1].position) == (10, 10)


def test_a_refund_at_another_store_is_recorded_there(client: Client) -> None:
    program, member = client.member(stored_value_split=CASH_FIRST)
    client.top_up(program, member, 100, bonus_minor=0, store_id="store-1")
    spent = client.spend(program, member, 40, store_id="store-2", order_ref="order-9")

    refund = client.refund(program, member, spent.transaction_id, 15, store_id="store-3")

    assert split(refund) == (15, 0)
    assert card(refund) == (75, 0)
    history = client.transactions(program, member, min_position=refund.position).transactions
    assert [(t.kind, t.store_id, t.order_ref) for t in history[-2:]] == [
        (pb.TRANSACTION_KIND_SPEND, "store-2", "order-9"),
        (pb.TRANSACTION_KIND_REVERSE, "store-3", ""),
    ]
    assert history[-1].reverses_transaction_id == spent.transaction_id


def test_a_refund_goes_back_into_the_lots_drawn_from_last_drawn_first(client: Client) -> None:
    program, member = client.member(stored_value_split=CASH_FIRST)
    older = client.top_up(program, member, 100, bonus_minor=0)
    newer = client.top_up(program, member, 100, bonus_minor=0)
    spent = client.spend(program, member, 150)  # 100 from `older`, 50 from `newer`

    # 30 back: into `newer` (drawn last). Then 40: the 20 still owed to `newer`, 20 to `older`.
    client.refund(program, member, spent.transaction_id, 30)
    client.refund(program, member, spent.transaction_id, 40)

    assert cash_out(client.refund(program, member, older.transaction_id)) == (20, 0, 0)
    out = client.refund(program, member, newer.transaction_id)
    assert cash_out(out) == (100, 0, 0)  # its 50 never spent, and the 50 refunded
    assert card(out) == (0, 0)


# ---------------------------------------------------------------------- cash-out of a top-up


def test_cash_out_after_partial_spending_forfeits_the_remaining_bonus(client: Client) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL, cash_out_policy=FORFEIT)
    topped = client.top_up(program, member, 100, bonus_minor=20, store_id="store-1")
    client.spend(program, member, 60)  # 50 cash, 10 bonus: 50 cash and 10 bonus remain

    out = client.refund(program, member, topped.transaction_id, store_id="store-2")

    # FORFEIT_REMAINING_BONUS: the 50 unspent cash back, nothing deducted, the 10 bonus lapses.
    assert cash_out(out) == (50, 0, 10)
    assert (out.cash_minor, out.bonus_minor) == (0, 0)
    assert card(out) == (0, 0)
    row = last_row(client, program, member, out.position)
    assert (row.kind, row.cash_delta_minor, row.bonus_delta_minor) == (
        pb.TRANSACTION_KIND_REVERSE,
        -50,
        -10,
    )
    assert (row.reverses_transaction_id, row.store_id) == (topped.transaction_id, "store-2")
    assert client.stored_value(program, member, out.position) == (0, 0)


def test_cash_out_after_partial_spending_deducts_the_spent_bonus(client: Client) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL, cash_out_policy=DEDUCT)
    topped = client.top_up(program, member, 100, bonus_minor=20)
    client.spend(program, member, 60)  # 50 cash, 10 bonus: 50 cash and 10 bonus remain

    out = client.refund(program, member, topped.transaction_id)

    # DEDUCT_SPENT_BONUS: of the 50 cash taken off the card, the 10 bonus spent is kept: 40
    # handed back; the 10 bonus left lapses.
    assert cash_out(out) == (40, 10, 10)
    assert card(out) == (0, 0)
    row = last_row(client, program, member, out.position)
    assert (row.cash_delta_minor, row.bonus_delta_minor) == (-50, -10)


def test_partial_cash_outs_forfeit_bonus_pro_rata_and_deduct_the_spent_bonus_once(
    client: Client,
    server: ServerThread,
) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL, cash_out_policy=DEDUCT)
    topped = client.top_up(program, member, 100, bonus_minor=20)
    client.spend(program, member, 60)  # 50 cash, 10 bonus: 50 cash and 10 bonus remain
    tid = topped.transaction_id

    # 20 of the 50 cash: forfeit 10 * 20 / 50 = 4 of the bonus; the 10 bonus spent comes off
    # the 20: 10 handed back.
    first = client.refund(program, member, tid, 20)
    assert cash_out(first) == (10, 10, 4)
    assert card(first) == (30, 6)
    # 7 more: forfeit 6 * 7 / 30 = 1.4 -> 1; the spent bonus was deducted already: 7 back.
    second = client.refund(program, member, tid, 7)
    assert cash_out(second) == (7, 0, 1)
    assert card(second) == (23, 5)
    # 23 cash remain: 24 is too much, and writes nothing.
    problem = refused(lambda: client.refund(program, member, tid, 24))
    assert_refused(problem, FAILED, "REVERSAL_EXCEEDS_ORIGINAL")
    assert "23" in problem.message
    # All that remains: 23 back, the last 5 of bonus lapse.
    last = client.refund(program, member, tid)
    assert cash_out(last) == (23, 0, 5)
    assert card(last) == (0, 0)
    # Handed back in all: 10 + 7 + 23 = 40 = the 50 unspent cash less the 10 bonus spent.
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.refund(program, member, tid),
        "NOTHING_LEFT_TO_REVERSE",
    )


def test_the_deduction_never_exceeds_the_cash_taken(client: Client) -> None:
    program, member = client.member(stored_value_split=BONUS_FIRST, cash_out_policy=DEDUCT)
    topped = client.top_up(program, member, 100, bonus_minor=100)
    client.spend(program, member, 150)  # 100 bonus, then 50 cash: 50 cash remain

    # 30 of the 50: all 30 kept against the 100 bonus spent, nothing handed back.
    first = client.refund(program, member, topped.transaction_id, 30)
    assert cash_out(first) == (0, 30, 0)
    assert card(first) == (20, 0)
    rest = client.refund(program, member, topped.transaction_id)
    assert cash_out(rest) == (0, 20, 0)
    assert card(rest) == (0, 0)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # Spend 60 (50 cash, 10 bonus), refund 30 (cash 50 * 30 / 60 = 25, bonus 5): 75
        # cash and 15 bonus on the card, 5 bonus spent net of the refund.
        pytest.param(FORFEIT, (75, 0, 15), id="forfeit"),  # all 75 back, 15 lapse
        pytest.param(DEDUCT, (70, 5, 15), id="deduct"),  # 75 less the 5 still spent
    ],
)
def test_cash_out_after_a_refund(
    client: Client, policy: int, expected: tuple[int, int, int]
) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL, cash_out_policy=policy)
    topped = client.top_up(program, member, 100, bonus_minor=20)
    spent = client.spend(program, member, 60)
    refund = client.refund(program, member, spent.transaction_id, 30)
    assert split(refund) == (25, 5)
    assert card(refund) == (75, 15)

    out = client.refund(program, member, topped.transaction_id)

    assert cash_out(out) == expected
    assert card(out) == (0, 0)


def test_cash_out_of_a_spent_top_up_is_nothing_left(client: Client, server: ServerThread) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    topped = client.top_up(program, member, 100, bonus_minor=20)
    client.spend(program, member, 120)  # all of it: 100 cash, 20 bonus
    client.top_up(program, member, 10, bonus_minor=0)  # the card holds value, not `topped`

    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.refund(program, member, topped.transaction_id),
        "NOTHING_LEFT_TO_REVERSE",
    )
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.refund(program, member, topped.transaction_id, 1),
        "NOTHING_LEFT_TO_REVERSE",
    )


def test_the_cash_out_policy_in_force_at_the_cash_out_applies(client: Client) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL, cash_out_policy=FORFEIT)
    topped = client.top_up(program, member, 100, bonus_minor=20)
    client.spend(program, member, 60)  # 50 cash, 10 bonus
    client.update_program(program, cash_out_policy=DEDUCT)
    assert client.program(program).cash_out_policy == DEDUCT

    out = client.refund(program, member, topped.transaction_id)

    assert cash_out(out) == (40, 10, 10)


# ---------------------------------------------------------------------- wrong units


def test_a_reversal_in_the_wrong_unit_is_refused_and_writes_nothing(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(points_conversion=RATE)
    earned = client.earn(program, member, 100)
    redeemed = client.redeem(program, member, 10)
    converted = client.convert(program, member, 20)
    topped = client.top_up(program, member, 100, bonus_minor=0)
    spent = client.spend(program, member, 10)

    for call in (
        lambda: client.reverse(program, member, spent.transaction_id, 5),
        lambda: client.reverse(program, member, topped.transaction_id, 5),
        lambda: client.refund(program, member, earned.transaction_id, 5),
        lambda: client.refund(program, member, redeemed.transaction_id, 5),
        lambda: client.refund(program, member, converted.transaction_id, 100),
    ):
        refused_writes_nothing(client, server, program, member, call, "REVERSAL_IN_WRONG_UNIT")


# ---------------------------------------------------------------------- ConvertPoints


def test_conversion_at_the_rate_takes_points_earliest_expiry_first(client: Client) -> None:
    program, member = client.member(points_conversion=RATE)
    now = datetime.now(UTC)
    later = client.earn(program, member, 50, expires_at=ts(now + timedelta(days=60)))
    sooner = client.earn(program, member, 50, expires_at=ts(now + timedelta(days=5)))

    converted = client.convert(program, member, 70, store_id="store-4")

    assert converted.value_minor == 700  # 7 steps of 10 points = 100
    assert [(c.lot_id, c.points) for c in converted.consumed] == [
        (sooner.lot_id, 50),
        (later.lot_id, 20),
    ]
    assert converted.account.points_available == 30
    assert card(converted) == (0, 700)
    account = client.account(program, member, min_position=converted.position)
    assert (account.points_available, account.stored_value_bonus_minor) == (30, 700)
    row = last_row(client, program, member, converted.position)
    assert (row.kind, row.points_delta, row.cash_delta_minor, row.bonus_delta_minor) == (
        pb.TRANSACTION_KIND_CONVERT,
        -70,
        0,
        700,
    )
    assert (row.points_balance_after, row.bonus_balance_after_minor, row.store_id) == (
        30,
        700,
        "store-4",
    )
    lots = client.lots(program, member, min_position=converted.position, include_closed=True)
    assert {lot.lot_id: lot.remaining for lot in lots} == {sooner.lot_id: 0, later.lot_id: 30}


def test_conversion_off_the_rate_or_beyond_the_points_is_refused(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(points_conversion=RATE)
    client.earn(program, member, 35)

    for points, reason in ((25, "NOT_A_MULTIPLE_OF_RATE"), (1, "NOT_A_MULTIPLE_OF_RATE")):
        refused_writes_nothing(
            client,
            server,
            program,
            member,
            partial(client.convert, program, member, points),
            reason,
        )
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.convert(program, member, 40),
        "INSUFFICIENT_POINTS",
    )
    converted = client.convert(program, member, 30)
    assert (converted.value_minor, converted.account.points_available) == (300, 5)


def test_conversion_without_a_rate_is_refused(client: Client, server: ServerThread) -> None:
    program, member = client.member()
    client.earn(program, member, 100)
    assert not client.program(program).HasField("points_conversion")
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.convert(program, member, 10),
        "CONVERSION_NOT_AVAILABLE",
    )


def test_clearing_the_rate_stops_conversion(client: Client, server: ServerThread) -> None:
    program, member = client.member(points_conversion=RATE)
    client.earn(program, member, 100)
    client.convert(program, member, 10)

    client.update_program(program, clear_points_conversion=True)

    assert not client.program(program).HasField("points_conversion")
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.convert(program, member, 10),
        "CONVERSION_NOT_AVAILABLE",
    )
    client.update_program(program, points_conversion=pb.PointsConversion(points=5, value_minor=7))
    assert client.convert(program, member, 15).value_minor == 21


def test_conversion_in_debt_is_refused(client: Client, server: ServerThread) -> None:
    program, member = client.member(points_conversion=RATE)
    earned = client.earn(program, member, 100)
    client.redeem(program, member, 60)
    client.earn(program, member, 50)
    # The reversed earn's lot gives its 40, the later lot its 50; 10 become debt.
    reversed_ = client.reverse(program, member, earned.transaction_id)
    assert (reversed_.account.points_available, reversed_.account.points_debt) == (0, 10)

    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.convert(program, member, 10),
        "ACCOUNT_IN_DEBT",
    )


def test_a_conversion_reversal_is_limited_to_the_value_still_on_the_card(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(points_conversion=RATE, stored_value_split=PROPORTIONAL)
    earned = client.earn(program, member, 100)
    converted = client.convert(program, member, 30)  # 300 of bonus
    cid = converted.transaction_id
    spent = client.spend(program, member, 150)  # bonus only on the card: 150 of bonus
    assert split(spent) == (0, 150)

    # 150 left of its 300: whole steps of 100 -> 1 step = 10 points reversible.
    for points, reason in ((20, "REVERSAL_EXCEEDS_ORIGINAL"), (5, "NOT_A_MULTIPLE_OF_RATE")):
        refused_writes_nothing(
            client,
            server,
            program,
            member,
            partial(client.reverse, program, member, cid, points),
            reason,
        )
    back = client.reverse(program, member, cid, 10)
    assert (back.points_reversed, back.value_minor) == (10, 100)
    assert back.account.points_available == 80
    assert card(back) == (0, 50)
    lots = client.lots(program, member, min_position=back.position, include_closed=True)
    assert {lot.lot_id: lot.remaining for lot in lots} == {earned.lot_id: 80}
    row = last_row(client, program, member, back.position)
    assert (row.kind, row.points_delta, row.bonus_delta_minor, row.bonus_balance_after_minor) == (
        pb.TRANSACTION_KIND_REVERSE,
        10,
        -100,
        50,
    )
    # 50 of bonus is less than a step: nothing left to reverse while it is spent.
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.reverse(program, member, cid),
        "NOTHING_LEFT_TO_REVERSE",
    )

    # The spend refunded: its 150 of bonus back into the conversion's lot; 200 on it now, so
    # the other 20 points are reversible, and then nothing at all.
    client.refund(program, member, spent.transaction_id)
    rest = client.reverse(program, member, cid)
    assert (rest.points_reversed, rest.value_minor) == (20, 200)
    assert rest.account.points_available == 100
    assert card(rest) == (0, 0)
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.reverse(program, member, cid, 10),
        "NOTHING_LEFT_TO_REVERSE",
    )


def test_converted_value_is_never_cashed_out(client: Client, server: ServerThread) -> None:
    program, member = client.member(points_conversion=RATE, cash_out_policy=FORFEIT)
    client.earn(program, member, 50)
    converted = client.convert(program, member, 50)
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        lambda: client.refund(program, member, converted.transaction_id, 500),
        "REVERSAL_IN_WRONG_UNIT",
    )
    # A top-up after it: its cash-out hands back its own cash only.
    topped = client.top_up(program, member, 100, bonus_minor=0)
    out = client.refund(program, member, topped.transaction_id)
    assert cash_out(out) == (100, 0, 0)
    assert card(out) == (0, 500)


# ---------------------------------------------------------------------- the bonus schedule

SCHEDULE = [
    # Given out of order: the highest step met applies, not the last listed.
    pb.TopUpBonusStep(min_cash_minor=10_000, bonus_ppm=100_000),  # 10% of the cash
    pb.TopUpBonusStep(min_cash_minor=1_000, bonus_minor=100),  # 充10送1
    pb.TopUpBonusStep(min_cash_minor=20_000, bonus_minor=500, bonus_ppm=50_000),  # 5 + 5%
    pb.TopUpBonusStep(min_cash_minor=5_000, bonus_minor=800),
]


@pytest.mark.parametrize(
    ("cash", "bonus", "step"),
    [
        pytest.param(999, 0, None, id="below-the-first-step"),
        pytest.param(1_000, 100, 1_000, id="exactly-at-the-first-step"),
        pytest.param(4_999, 100, 1_000, id="just-below-the-second"),
        pytest.param(5_000, 800, 5_000, id="exactly-at-the-second"),
        # 12,345 * 100,000 / 1,000,000 = 1,234.5 -> 1,234.
        pytest.param(12_345, 1_234, 10_000, id="ppm-rounded-down"),
        pytest.param(19_999, 1_999, 10_000, id="ppm-below-the-highest"),
        # 500 + 20,000 * 5% = 1,500.
        pytest.param(20_000, 1_500, 20_000, id="exactly-at-the-highest"),
        # 500 + 1,000,000 * 5% = 50,500.
        pytest.param(1_000_000, 50_500, 20_000, id="far-above-the-highest"),
    ],
)
def test_the_schedule_grants_the_highest_step_met(
    client: Client, cash: int, bonus: int, step: int | None
) -> None:
    program, member = client.member(top_up_bonus=SCHEDULE)

    topped = client.top_up(program, member, cash, payment_ref="pay-7")

    assert (topped.cash_minor, topped.bonus_minor) == (cash, bonus)
    if step is None:
        assert not topped.HasField("bonus_step_min_cash_minor")
    else:
        assert topped.bonus_step_min_cash_minor == step
    assert card(topped) == (cash, bonus)
    row = last_row(client, program, member, topped.position)
    assert (row.kind, row.cash_delta_minor, row.bonus_delta_minor, row.order_ref) == (
        pb.TRANSACTION_KIND_TOP_UP,
        cash,
        bonus,
        "pay-7",
    )


def test_the_schedule_is_kept_in_order_of_its_steps(client: Client) -> None:
    program = client.create_program(top_up_bonus=SCHEDULE)
    steps = client.program(program).top_up_bonus
    assert [(s.min_cash_minor, s.bonus_minor, s.bonus_ppm) for s in steps] == [
        (1_000, 100, 0),
        (5_000, 800, 0),
        (10_000, 0, 100_000),
        (20_000, 500, 50_000),
    ]


@pytest.mark.parametrize("bonus", [0, 7, 10**15])
def test_an_explicit_bonus_wins_over_the_schedule(client: Client, bonus: int) -> None:
    program, member = client.member(top_up_bonus=SCHEDULE)

    topped = client.top_up(program, member, 5_000, bonus_minor=bonus)

    assert topped.bonus_minor == bonus
    assert not topped.HasField("bonus_step_min_cash_minor")
    assert card(topped) == (5_000, bonus)


def test_without_a_schedule_a_top_up_without_bonus_gets_none(client: Client) -> None:
    program, member = client.member()
    topped = client.top_up(program, member, 10**15)
    assert (topped.bonus_minor, topped.HasField("bonus_step_min_cash_minor")) == (0, False)
    assert card(topped) == (10**15, 0)


def test_a_new_schedule_applies_only_to_later_top_ups(client: Client) -> None:
    program, member = client.member(
        top_up_bonus=[pb.TopUpBonusStep(min_cash_minor=1_000, bonus_minor=100)]
    )
    key = new_id("req")
    before = client.top_up(program, member, 1_000, request_id=key)
    assert before.bonus_minor == 100

    updated = client.update_program(
        program,
        replace_top_up_bonus=True,
        top_up_bonus=[pb.TopUpBonusStep(min_cash_minor=1_000, bonus_minor=300)],
    )
    assert [s.bonus_minor for s in updated.program.top_up_bonus] == [300]

    after = client.top_up(program, member, 1_000)
    assert after.bonus_minor == 300
    assert card(after) == (2_000, 400)
    # The earlier top-up, replayed, still answers what it granted; its row is unchanged.
    assert client.top_up(program, member, 1_000, request_id=key) == before
    rows = value_rows(client, program, member, after.position)
    assert rows[1:] == [
        (pb.TRANSACTION_KIND_TOP_UP, 1_000, 100, 1_000, 100),
        (pb.TRANSACTION_KIND_TOP_UP, 1_000, 300, 2_000, 400),
    ]

    # An empty replacement clears the schedule.
    client.update_program(program, replace_top_up_bonus=True)
    assert list(client.program(program).top_up_bonus) == []
    cleared = client.top_up(program, member, 1_000)
    assert (cleared.bonus_minor, cleared.HasField("bonus_step_min_cash_minor")) == (0, False)


def test_updating_other_fields_keeps_the_schedule_and_the_rate(client: Client) -> None:
    program = client.create_program(
        top_up_bonus=SCHEDULE, points_conversion=RATE, cash_out_policy=DEDUCT
    )
    client.update_program(program, display_name="Renamed")
    shown = client.program(program)
    assert len(shown.top_up_bonus) == 4
    assert (shown.points_conversion.points, shown.points_conversion.value_minor) == (10, 100)
    assert shown.cash_out_policy == DEDUCT


# ---------------------------------------------------------------------- reads after each kind


def test_account_and_history_after_each_kind(client: Client, server: ServerThread) -> None:
    program, member = client.member(
        stored_value_split=PROPORTIONAL, points_conversion=RATE, cash_out_policy=DEDUCT
    )
    earned = client.earn(program, member, 100)
    steps: list[Any] = []

    def step(response: Any, cash: int, bonus: int, points: int) -> None:
        assert card(response) == (cash, bonus)
        account = client.account(program, member, min_position=response.position)
        assert account == response.account
        assert (
            account.stored_value_cash_minor,
            account.stored_value_bonus_minor,
            account.points_available,
        ) == (cash, bonus, points)
        steps.append(response)

    topped = client.top_up(program, member, 1_000, bonus_minor=200, payment_ref="pay-1")
    step(topped, 1_000, 200, 100)
    # 600 * 1,000 / 1,200 = 500 cash, 100 bonus.
    spent = client.spend(program, member, 600, order_ref="order-1", store_id="store-2")
    step(spent, 500, 100, 100)
    # Refund 120: cash 500 * 120 / 600 = 100, bonus 20.
    refunded = client.refund(program, member, spent.transaction_id, 120, reason="returned")
    step(refunded, 600, 120, 100)
    converted = client.convert(program, member, 40)  # 400 of bonus, in its own lot
    step(converted, 600, 520, 60)
    unconverted = client.reverse(program, member, converted.transaction_id, 20)
    step(unconverted, 600, 320, 80)
    # Cash-out of the top-up: its 600 cash; 80 of its bonus spent net of the refund
    # (100 - 20) is deducted: 520 back; its 120 bonus left lapses. The converted 200 stays.
    out = client.refund(program, member, topped.transaction_id)
    assert cash_out(out) == (520, 80, 120)
    step(out, 0, 200, 80)

    history = client.transactions(program, member, min_position=out.position).transactions
    assert [
        (
            t.transaction_id,
            t.kind,
            t.points_delta,
            t.cash_delta_minor,
            t.bonus_delta_minor,
            t.points_balance_after,
            t.cash_balance_after_minor,
            t.bonus_balance_after_minor,
        )
        for t in history[2:]
    ] == [
        (topped.transaction_id, pb.TRANSACTION_KIND_TOP_UP, 0, 1_000, 200, 100, 1_000, 200),
        (spent.transaction_id, pb.TRANSACTION_KIND_SPEND, 0, -500, -100, 100, 500, 100),
        (refunded.transaction_id, pb.TRANSACTION_KIND_REVERSE, 0, 100, 20, 100, 600, 120),
        (converted.transaction_id, pb.TRANSACTION_KIND_CONVERT, -40, 0, 400, 60, 600, 520),
        (unconverted.transaction_id, pb.TRANSACTION_KIND_REVERSE, 20, 0, -200, 80, 600, 320),
        (out.transaction_id, pb.TRANSACTION_KIND_REVERSE, 0, -600, -120, 80, 0, 200),
    ]
    assert history[1].transaction_id == earned.transaction_id
    assert [(t.order_ref, t.store_id, t.reverses_transaction_id) for t in history[2:4]] == [
        ("pay-1", "store-1", ""),
        ("order-1", "store-2", ""),
    ]
    assert (history[4].reason, history[4].reverses_transaction_id) == (
        "returned",
        spent.transaction_id,
    )
    assert history[6].reverses_transaction_id == converted.transaction_id
    assert history[7].reverses_transaction_id == topped.transaction_id
    assert [t.position for t in history[2:]] == [s.position for s in steps]
    state = account_state(client, server, program, member)
    assert state.account.version == out.account.version == 8


# ---------------------------------------------------------------------- points debt


def test_points_debt_does_not_block_stored_value(client: Client) -> None:
    program, member = client.member(stored_value_split=CASH_FIRST)
    earned = client.earn(program, member, 100)
    client.redeem(program, member, 60)
    in_debt = client.reverse(program, member, earned.transaction_id)
    assert in_debt.account.points_debt == 60
    topped = client.top_up(program, member, 500, bonus_minor=50)

    spent = client.spend(program, member, 120)

    assert split(spent) == (120, 0)
    assert (spent.account.points_debt, card(spent)) == (60, (380, 50))
    assert_refused(refused(lambda: client.redeem(program, member, 1)), FAILED, "ACCOUNT_IN_DEBT")
    refund = client.refund(program, member, spent.transaction_id, 20)
    assert card(refund) == (400, 50)
    out = client.refund(program, member, topped.transaction_id)
    assert cash_out(out) == (400, 0, 50)
    assert (out.account.points_debt, card(out)) == (60, (0, 0))


# ---------------------------------------------------------------------- idempotent replays


def test_replays_answer_the_original_and_write_nothing(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL, cash_out_policy=DEDUCT)
    keys = {name: new_id(name) for name in ("top-up", "spend", "refund", "cash-out")}
    topped = client.top_up(program, member, 1_000, bonus_minor=200, request_id=keys["top-up"])
    spent = client.spend(program, member, 600, request_id=keys["spend"])
    refunded = client.refund(program, member, spent.transaction_id, 60, request_id=keys["refund"])
    out = client.refund(program, member, topped.transaction_id, 100, request_id=keys["cash-out"])
    before = account_state(client, server, program, member)

    again = [
        client.top_up(program, member, 1_000, bonus_minor=200, request_id=keys["top-up"]),
        client.spend(program, member, 600, request_id=keys["spend"]),
        client.refund(program, member, spent.transaction_id, 60, request_id=keys["refund"]),
        client.refund(program, member, topped.transaction_id, 100, request_id=keys["cash-out"]),
    ]

    assert again == [topped, spent, refunded, out]
    assert account_state(client, server, program, member) == before
    assert len(before.transaction_ids) == 5

    changed = [
        lambda: client.top_up(program, member, 1_000, bonus_minor=201, request_id=keys["top-up"]),
        lambda: client.top_up(program, member, 1_000, request_id=keys["top-up"]),
        lambda: client.spend(program, member, 601, request_id=keys["spend"]),
        lambda: client.spend(program, member, 600, store_id="store-2", request_id=keys["spend"]),
        lambda: client.refund(program, member, spent.transaction_id, 61, request_id=keys["refund"]),
        lambda: client.refund(
            program, member, topped.transaction_id, 0, request_id=keys["cash-out"]
        ),
    ]
    for call in changed:
        assert_refused(refused(call), grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert account_state(client, server, program, member) == before


# ---------------------------------------------------------------------- concurrency

SPENDERS = 16


def send_concurrently(target: str, method: str, requests: list[Any]) -> list[Any]:
    """Send every request at once, each over its own connection: responses or RpcErrors."""
    channels = [
        grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in requests
    ]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        barrier = threading.Barrier(len(requests))
        results: list[Any] = [None] * len(requests)

        def deliver(i: int) -> None:
            stub = pb_grpc.LedgerServiceStub(channels[i])
            barrier.wait(timeout=30)
            try:
                results[i] = getattr(stub, method)(requests[i], timeout=60)
            except grpc.RpcError as e:
                results[i] = e

        threads = [threading.Thread(target=deliver, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return results
    finally:
        for channel in channels:
            channel.close()


@pytest.mark.parametrize(
    "amounts",
    [
        pytest.param([100] * SPENDERS, id="equal"),
        pytest.param([70, 130, 90, 110, 250, 60, 40, 300, 80, 120, 150, 200, 1, 999, 35, 65],
                     id="mixed"),
    ],
)  # fmt: skip
def test_concurrent_spends_never_overspend(
    client: Client, server: ServerThread, amounts: list[int]
) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    client.top_up(program, member, 800, bonus_minor=200)  # 1,000 on the card
    requests = [
        pb.SpendRequest(
            program_id=program,
            member_id=member,
            amount_minor=amount,
            store_id="store-1",
            request_id=new_id("spend"),
        )
        for amount in amounts
    ]

    results = send_concurrently(server.target, "Spend", requests)

    done = [r for r in results if not isinstance(r, grpc.RpcError)]
    problems = [refusal(r) for r in results if isinstance(r, grpc.RpcError)]
    assert {(p.code, p.reason) for p in problems} <= {(FAILED, "INSUFFICIENT_STORED_VALUE")}
    spent = sum(r.cash_minor + r.bonus_minor for r in done)
    assert spent <= 1_000
    state = account_state(client, server, program, member)
    cash, bonus = state.account.stored_value_cash_minor, state.account.stored_value_bonus_minor
    assert (cash, bonus) == (
        800 - sum(r.cash_minor for r in done),
        200 - sum(r.bonus_minor for r in done),
    )
    assert min(cash, bonus) >= 0
    # Every refused spend was more than the card held at the end (it held at least that
    # much whenever the spend was decided).
    refused_amounts = [
        a for a, r in zip(amounts, results, strict=True) if isinstance(r, grpc.RpcError)
    ]
    assert all(a > cash + bonus for a in refused_amounts)
    assert len(state.transaction_ids) == 2 + len(done)
    if amounts == [100] * SPENDERS:
        # 1,000 / 100: exactly ten fit, each 80 cash and 20 bonus (the 4:1 ratio stays).
        assert len(done) == 10
        assert {(r.cash_minor, r.bonus_minor) for r in done} == {(80, 20)}
        assert (cash, bonus) == (0, 0)


def test_a_conversion_reversal_in_debt_repays_the_debt_first(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(points_conversion=RATE)
    earned = client.earn(program, member, 100)
    converted = client.convert(program, member, 50)  # 500 of bonus; 50 points left in the lot
    in_debt = client.reverse(program, member, earned.transaction_id)  # 50 back, 50 owed
    assert (in_debt.account.points_available, in_debt.account.points_debt) == (0, 50)

    back = client.reverse(program, member, converted.transaction_id, 30)

    # The 30 points coming back repay debt; the 300 of bonus they became leave the card.
    assert (back.points_reversed, back.value_minor) == (30, 300)
    assert (back.account.points_available, back.account.points_debt) == (0, 20)
    assert card(back) == (0, 200)
    row = last_row(client, program, member, back.position)
    assert (row.points_delta, row.debt_delta, row.bonus_delta_minor) == (0, -30, -300)
    assert (row.points_debt_after, row.bonus_balance_after_minor) == (20, 200)


def test_refunds_and_cash_outs_are_not_themselves_reversible(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member()
    topped = client.top_up(program, member, 100, bonus_minor=0)
    spent = client.spend(program, member, 30)
    refund = client.refund(program, member, spent.transaction_id, 10)
    out = client.refund(program, member, topped.transaction_id, 10)

    for transaction_id in (refund.transaction_id, out.transaction_id):
        for call in (
            partial(client.refund, program, member, transaction_id, 1),
            partial(client.reverse, program, member, transaction_id),
        ):
            refused_writes_nothing(
                client, server, program, member, call, "TRANSACTION_NOT_REVERSIBLE"
            )
    other_program, other_member = client.member()
    foreign = client.top_up(other_program, other_member, 100)
    refused_writes_nothing(
        client,
        server,
        program,
        member,
        partial(client.refund, program, member, foreign.transaction_id),
        "TRANSACTION_NOT_FOUND",
        grpc.StatusCode.NOT_FOUND,
    )


def test_concurrent_refunds_of_one_spend_never_refund_more_than_it(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(stored_value_split=PROPORTIONAL)
    client.top_up(program, member, 800, bonus_minor=200)
    spent = client.spend(program, member, 500)  # 400 cash, 100 bonus
    requests = [
        pb.ReverseRequest(
            program_id=program,
            member_id=member,
            transaction_id=spent.transaction_id,
            amount_minor=45,
            store_id="store-2",
            request_id=new_id("refund"),
        )
        for _ in range(SPENDERS)
    ]

    results = send_concurrently(server.target, "Reverse", requests)

    done = [r for r in results if not isinstance(r, grpc.RpcError)]
    problems = [refusal(r) for r in results if isinstance(r, grpc.RpcError)]
    # 500 / 45: eleven fit (495), the rest exceed the 5 left.
    assert len(done) == 11
    assert {(p.code, p.reason) for p in problems} == {(FAILED, "REVERSAL_EXCEEDS_ORIGINAL")}
    assert sum(r.cash_minor + r.bonus_minor for r in done) == 495
    rest = client.refund(program, member, spent.transaction_id)
    # Cumulatively pro rata: all refunded, the parts add up to the split exactly.
    assert sum(r.cash_minor for r in done) + rest.cash_minor == 400
    assert sum(r.bonus_minor for r in done) + rest.bonus_minor == 100
    assert card(rest) == (800, 200)
    state = account_state(client, server, program, member)
    assert len(state.transaction_ids) == 3 + 11 + 1


# ---------------------------------------------------------------------- found by review


@contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tally-test-") as folder:
            yield f"sqlite:///{Path(folder) / 'ledger.db'}"
    else:
        with scratch_postgres() as url:
            yield url


@contextmanager
def serving(url: str) -> Iterator[Client]:
    server = ServerThread(url)
    client = Client(server.target, "")
    try:
        yield client
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_card_with_a_long_history_is_usable_after_a_restart(backend: str) -> None:
    """A cold load that replays SNAPSHOT_AFTER_REPLAYING events takes a snapshot; the
    account's stored value (ValueLot, SpendRecord, PointsConversion) must survive it."""
    with database(backend) as url:
        with serving(url) as client:
            program, member = client.member(
                points_conversion=pb.PointsConversion(points=1, value_minor=1)
            )
            client.earn(program, member, 10)
            client.convert(program, member, 10)
            client.top_up(program, member, 10_000, bonus_minor=0)
            for _ in range(SNAPSHOT_AFTER_REPLAYING):
                client.spend(program, member, 1)
        with serving(url) as client:  # a restart: the account is loaded cold
            spent = client.spend(program, member, 1)
            assert (
                spent.account.stored_value_cash_minor + spent.account.stored_value_bonus_minor
                == 10_010 - 201
            )
        with serving(url) as client:  # and from the snapshot that load left behind
            spent = client.spend(program, member, 1)
            assert spent.account.version == 4 + SNAPSHOT_AFTER_REPLAYING + 2


def test_a_cash_out_refunded_and_cashed_out_again_pays_back_all_the_cash_under_deduct(
    client: Client,
) -> None:
    """Everything bought is refunded and everything on the card cashed out: the member gets
    back all the cash paid, under DEDUCT_SPENT_BONUS as under FORFEIT_REMAINING_BONUS. The
    refund brings the spent bonus back onto the card, so the cash withheld for it comes back
    too (it would otherwise be taken twice: withheld, and the bonus lapsing again)."""
    program, member = client.member(
        stored_value_split=pb.STORED_VALUE_SPLIT_PROPORTIONAL,
        cash_out_policy=pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS,
    )
    topped = client.top_up(program, member, 100, bonus_minor=20)
    spent = client.spend(program, member, 60)  # 50 cash, 10 bonus
    first = client.refund(program, member, topped.transaction_id)  # 50 - 10 = 40 back
    assert (first.refunded_cash_minor, first.bonus_deducted_minor) == (40, 10)
    back = client.refund(program, member, spent.transaction_id)
    # 50 cash and 10 bonus back, and the 10 of cash withheld for that bonus with them.
    assert (back.cash_minor, back.bonus_minor) == (60, 10)
    second = client.refund(program, member, topped.transaction_id)
    assert (second.refunded_cash_minor, second.bonus_deducted_minor) == (60, 0)
    assert second.forfeited_bonus_minor == 10
    assert first.refunded_cash_minor + second.refunded_cash_minor == 100
    card = client.account(program, member, min_position=second.position)
    assert (card.stored_value_cash_minor, card.stored_value_bonus_minor) == (0, 0)
