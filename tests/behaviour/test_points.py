"""Earning and redeeming points: lots, their order, and what the reads show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, ServerThread, log_head, refusal, ts


def test_earn_then_redeem_takes_earliest_expiring_lot_first(client: Client) -> None:
    program, member = client.member()
    now = datetime.now(UTC)
    late = client.earn(program, member, 100, expires_at=ts(now + timedelta(days=30)))
    early = client.earn(program, member, 50, expires_at=ts(now + timedelta(days=5)))
    never = client.earn(program, member, 10)

    redeemed = client.redeem(program, member, 120)

    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [
        (early.lot_id, 50),
        (late.lot_id, 70),
    ]
    assert redeemed.account.points_available == 40
    lots = client.lots(program, member, min_position=redeemed.position)
    assert [(lot.lot_id, lot.remaining) for lot in lots] == [(late.lot_id, 30), (never.lot_id, 10)]


def test_redeem_beyond_available_is_refused_and_writes_nothing(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 30)

    with pytest.raises(grpc.RpcError) as failure:
        client.redeem(program, member, 31)

    problem = refusal(failure.value)
    assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
    assert problem.reason == "INSUFFICIENT_POINTS"
    # The whole log, not the earn's position: had the refusal written, it would be in it.
    account = client.account(program, member, min_position=log_head(server))
    assert account.points_available == 30
    assert account.version == earned.account.version


def test_history_has_running_balances(client: Client) -> None:
    program, member = client.member()
    client.earn(program, member, 100, order_ref="o-1", store_id="store-a")
    last = client.redeem(program, member, 40, order_ref="o-2", store_id="store-b")

    history = client.transactions(program, member, min_position=last.position).transactions

    assert [(t.kind, t.points_delta, t.points_balance_after) for t in history] == [
        (pb.TRANSACTION_KIND_ENROLL, 0, 0),
        (pb.TRANSACTION_KIND_EARN, 100, 100),
        (pb.TRANSACTION_KIND_REDEEM, -40, 60),
    ]
    assert history[2].store_id == "store-b"
    assert history[2].order_ref == "o-2"
    assert history[2].transaction_id == last.transaction_id
