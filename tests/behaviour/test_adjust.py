"""Adjust: an operator's manual correction, signed, always with a reason and an operator.

Every scenario runs end to end over gRPC against a real server on each backend.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import grpc
import pytest

from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, ServerThread, log_head, refused

# ---------------------------------------------------------------------- local helpers


# ---------------------------------------------------------------------- scenarios


def test_a_positive_adjust_credits_a_lot(client: Client) -> None:
    program, member = client.member()

    credit = client.adjust(program, member, 50, reason="service recovery", operator_id="agent-7")

    assert (credit.account.points_available, credit.account.points_debt) == (50, 0)
    account = client.account(program, member, min_position=credit.position)
    assert account.points_available == 50
    [lot] = client.lots(program, member, min_position=credit.position)
    assert (lot.lot_id, lot.points, lot.remaining) == (credit.transaction_id, 50, 50)
    assert not lot.HasField("expires_at")  # the program's policy: never
    row = client.transactions(program, member, min_position=credit.position).transactions[-1]
    assert (row.kind, row.transaction_id, row.points_delta, row.points_balance_after) == (
        pb.TRANSACTION_KIND_ADJUST,
        credit.transaction_id,
        50,
        50,
    )
    # The credited points are spendable from that lot.
    redeemed = client.redeem(program, member, 50)
    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [(credit.transaction_id, 50)]
    assert redeemed.account.points_available == 0


def test_a_negative_adjust_takes_points_but_never_beyond_available(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    hold = client.hold(program, member, 30)  # held points are not available

    problem = refused(lambda: client.adjust(program, member, -71))

    assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
    assert problem.reason == "INSUFFICIENT_POINTS"
    # The whole log, not the hold's position: had the refusal written, it would be in it.
    account = client.account(program, member, min_position=log_head(server))
    assert (account.points_available, account.points_held) == (70, 30)
    assert account.version == hold.account.version

    debit = client.adjust(program, member, -70)

    assert (debit.account.points_available, debit.account.points_held) == (0, 30)
    [lot] = client.lots(program, member, min_position=debit.position)
    assert (lot.lot_id, lot.remaining, lot.held) == (earned.lot_id, 0, 30)
    row = client.transactions(program, member, min_position=debit.position).transactions[-1]
    assert (row.kind, row.points_delta, row.points_balance_after, row.points_held_after) == (
        pb.TRANSACTION_KIND_ADJUST,
        -70,
        0,
        30,
    )


@pytest.mark.parametrize(
    ("fields", "violations"),
    [
        ({"reason": ""}, {"reason"}),
        ({"reason": "   "}, {"reason"}),
        ({"operator_id": ""}, {"operator_id"}),
        ({"reason": "", "operator_id": ""}, {"reason", "operator_id"}),
    ],
    ids=["no-reason", "blank-reason", "no-operator", "neither"],
)
def test_adjust_requires_a_reason_and_an_operator(
    client: Client, fields: dict[str, Any], violations: set[str]
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)

    for points in (10, -10):
        problem = refused(partial(client.adjust, program, member, points, **fields))
        assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
        assert set(problem.fields) == violations

    account = client.account(program, member, min_position=earned.position)
    assert account.points_available == 100
    assert account.version == earned.account.version


def test_operator_and_reason_appear_in_the_history(client: Client) -> None:
    program, member = client.member()
    credit = client.adjust(
        program,
        member,
        25,
        reason="goodwill: late delivery",
        operator_id="agent-7",
        store_id="call-centre",
    )
    debit = client.adjust(program, member, -5, reason="duplicate credit", operator_id="agent-9")

    history = client.transactions(program, member, min_position=debit.position).transactions

    assert [
        (t.kind, t.transaction_id, t.points_delta, t.reason, t.operator_id, t.store_id)
        for t in history[1:]
    ] == [
        (
            pb.TRANSACTION_KIND_ADJUST,
            credit.transaction_id,
            25,
            "goodwill: late delivery",
            "agent-7",
            "call-centre",
        ),
        (pb.TRANSACTION_KIND_ADJUST, debit.transaction_id, -5, "duplicate credit", "agent-9", ""),
    ]


def test_an_adjust_while_in_debt_repays_the_debt_first(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    client.redeem(program, member, 100)
    in_debt = client.reverse(program, member, earned.transaction_id)
    assert (in_debt.account.points_available, in_debt.account.points_debt) == (0, 100)

    partly = client.adjust(program, member, 30)

    assert (partly.account.points_available, partly.account.points_debt) == (0, 70)
    cleared = client.adjust(program, member, 100)
    assert (cleared.account.points_available, cleared.account.points_debt) == (30, 0)
    account = client.account(program, member, min_position=cleared.position)
    assert (account.points_available, account.points_debt) == (30, 0)
    assert [
        (lot.lot_id, lot.remaining)
        for lot in client.lots(program, member, min_position=cleared.position)
    ] == [(cleared.transaction_id, 30)]
    history = client.transactions(program, member, min_position=cleared.position).transactions
    assert [(t.kind, t.points_delta, t.debt_delta, t.points_debt_after) for t in history[-2:]] == [
        (pb.TRANSACTION_KIND_ADJUST, 0, -30, 70),
        (pb.TRANSACTION_KIND_ADJUST, 30, -70, 0),
    ]
    # Out of debt, the points are spendable.
    redeemed = client.redeem(program, member, 30)
    assert redeemed.account.points_available == 0
