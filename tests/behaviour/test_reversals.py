"""Reversals: undoing (part of) an Earn or a redemption by a new transaction that names it.

Every scenario runs end to end over gRPC against a real server on each backend.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc
from google.rpc import error_details_pb2

from ledger.v1 import ledger_pb2 as pb
from tests.support import (
    Client,
    Refusal,
    ServerThread,
    log_head,
    refused,
    ts,
    wait_past,
)

# ---------------------------------------------------------------------- local helpers


def assert_refused(problem: Refusal, code: grpc.StatusCode, reason: str) -> None:
    assert (problem.code, problem.reason) == (code, reason), problem.message


def remaining(lots: list[pb.Lot]) -> dict[str, int]:
    return {lot.lot_id: lot.remaining for lot in lots}


# ---------------------------------------------------------------------- reversing an Earn


def test_reverse_an_earn_in_full(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100, order_ref="order-1")
    other = client.earn(program, member, 30)

    reversed_ = client.reverse(program, member, earned.transaction_id, reason="refund")

    assert (reversed_.points_reversed, reversed_.debt_added) == (100, 0)
    assert (reversed_.account.points_available, reversed_.account.points_debt) == (30, 0)
    account = client.account(program, member, min_position=reversed_.position)
    assert (account.points_available, account.points_debt) == (30, 0)
    lots = client.lots(program, member, min_position=reversed_.position, include_closed=True)
    assert remaining(lots) == {earned.lot_id: 0, other.lot_id: 30}
    row = client.transactions(program, member, min_position=reversed_.position).transactions[-1]
    assert (row.kind, row.transaction_id) == (
        pb.TRANSACTION_KIND_REVERSE,
        reversed_.transaction_id,
    )
    assert (row.points_delta, row.debt_delta, row.points_balance_after) == (-100, 0, 30)
    assert (row.reverses_transaction_id, row.reason) == (earned.transaction_id, "refund")


def test_reverse_an_earn_in_part_takes_from_its_own_lot_first_then_other_lots(
    client: Client,
) -> None:
    program, member = client.member()
    now = datetime.now(UTC)
    earned = client.earn(program, member, 100, expires_at=ts(now + timedelta(days=30)))
    redeemed = client.redeem(program, member, 70)
    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [(earned.lot_id, 70)]
    # Earned afterwards, these come BEFORE the reversed earn's lot in spend order (sooner
    # expiry) and after it (never): the own lot must still be the first to give points back.
    sooner = client.earn(program, member, 50, expires_at=ts(now + timedelta(days=5)))
    never = client.earn(program, member, 40)

    first = client.reverse(program, member, earned.transaction_id, 20)

    assert (first.points_reversed, first.debt_added) == (20, 0)
    assert first.account.points_available == 100
    lots = client.lots(program, member, min_position=first.position, include_closed=True)
    assert remaining(lots) == {earned.lot_id: 10, sooner.lot_id: 50, never.lot_id: 40}

    # 60 more: the 10 left in the earn's own lot, then 50 from the next lot in spend order.
    second = client.reverse(program, member, earned.transaction_id, 60)

    assert (second.points_reversed, second.debt_added) == (60, 0)
    assert (second.account.points_available, second.account.points_debt) == (40, 0)
    lots = client.lots(program, member, min_position=second.position, include_closed=True)
    assert remaining(lots) == {earned.lot_id: 0, sooner.lot_id: 0, never.lot_id: 40}
    history = client.transactions(program, member, min_position=second.position).transactions
    assert [(t.points_delta, t.reverses_transaction_id) for t in history[-2:]] == [
        (-20, earned.transaction_id),
        (-60, earned.transaction_id),
    ]

    # What is left reversible (20) comes from the remaining lot.
    last = client.reverse(program, member, earned.transaction_id)
    assert (last.points_reversed, last.debt_added) == (20, 0)
    lots = client.lots(program, member, min_position=last.position, include_closed=True)
    assert remaining(lots) == {earned.lot_id: 0, sooner.lot_id: 0, never.lot_id: 20}


def test_reversing_more_than_remains_is_refused_and_writes_nothing(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)

    problem = refused(lambda: client.reverse(program, member, earned.transaction_id, 101))
    assert_refused(problem, grpc.StatusCode.FAILED_PRECONDITION, "REVERSAL_EXCEEDS_ORIGINAL")

    part = client.reverse(program, member, earned.transaction_id, 60)
    problem = refused(lambda: client.reverse(program, member, earned.transaction_id, 41))

    assert_refused(problem, grpc.StatusCode.FAILED_PRECONDITION, "REVERSAL_EXCEEDS_ORIGINAL")
    # The whole log, not the reversal's position: had the refusal written, it would be in it.
    account = client.account(program, member, min_position=log_head(server))
    assert account.points_available == 40
    assert account.version == part.account.version
    rest = client.reverse(program, member, earned.transaction_id, 40)
    assert rest.points_reversed == 40
    assert rest.account.points_available == 0


def test_reversing_again_after_a_full_reversal_is_refused(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    full = client.reverse(program, member, earned.transaction_id)
    assert full.points_reversed == 100

    for points in (0, 1):
        problem = refused(partial(client.reverse, program, member, earned.transaction_id, points))
        assert_refused(problem, grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_LEFT_TO_REVERSE")

    account = client.account(program, member, min_position=full.position)
    assert account.version == full.account.version


def test_reversing_a_spent_earn_creates_debt_that_blocks_spending_until_repaid(
    client: Client,
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    client.redeem(program, member, 60)

    reversed_ = client.reverse(program, member, earned.transaction_id)

    # 40 taken back from the lot, the 60 already spent become debt.
    assert (reversed_.points_reversed, reversed_.debt_added) == (100, 60)
    assert (reversed_.account.points_available, reversed_.account.points_debt) == (0, 60)
    account = client.account(program, member, min_position=reversed_.position)
    assert (account.points_available, account.points_debt) == (0, 60)
    row = client.transactions(program, member, min_position=reversed_.position).transactions[-1]
    assert (row.kind, row.points_delta, row.debt_delta, row.points_debt_after) == (
        pb.TRANSACTION_KIND_REVERSE,
        -40,
        60,
        60,
    )

    # Debt blocks redemption and holds (before any question of available points).
    for attempt in (
        lambda: client.redeem(program, member, 1),
        lambda: client.hold(program, member, 1),
    ):
        assert_refused(refused(attempt), grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_IN_DEBT")

    # Later earns repay the debt first.
    partly = client.earn(program, member, 25)
    assert partly.debt_repaid == 25
    assert (partly.account.points_available, partly.account.points_debt) == (0, 35)
    assert_refused(
        refused(lambda: client.redeem(program, member, 1)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_IN_DEBT",
    )
    repaid = client.earn(program, member, 50)
    assert repaid.debt_repaid == 35
    assert (repaid.account.points_available, repaid.account.points_debt) == (15, 0)
    account = client.account(program, member, min_position=repaid.position)
    assert (account.points_available, account.points_debt) == (15, 0)
    history = client.transactions(program, member, min_position=repaid.position).transactions
    assert [(t.points_delta, t.debt_delta, t.points_debt_after) for t in history[-2:]] == [
        (0, -25, 35),
        (15, -35, 0),
    ]

    # Out of debt, spending works again.
    redeemed = client.redeem(program, member, 15)
    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [(repaid.lot_id, 15)]
    assert (redeemed.account.points_available, redeemed.account.points_debt) == (0, 0)


def test_reversing_an_earn_whose_points_expired_claws_nothing_back(client: Client) -> None:
    program, member = client.member()
    expired = client.earn(
        program, member, 100, expires_at=ts(datetime.now(UTC) - timedelta(days=1))
    )
    other = client.earn(program, member, 50)
    assert other.account.points_available == 50

    reversed_ = client.reverse(program, member, expired.transaction_id)

    # The expired points are gone already: no other lot pays for them, and no debt arises.
    assert (reversed_.points_reversed, reversed_.debt_added) == (100, 0)
    assert (reversed_.account.points_available, reversed_.account.points_debt) == (50, 0)
    lots = client.lots(program, member, min_position=reversed_.position)
    assert remaining(lots) == {other.lot_id: 50}
    row = client.transactions(program, member, min_position=reversed_.position).transactions[-1]
    assert (row.kind, row.points_delta, row.debt_delta, row.reverses_transaction_id) == (
        pb.TRANSACTION_KIND_REVERSE,
        0,
        0,
        expired.transaction_id,
    )


# ---------------------------------------------------------------------- reversing a Redeem


def test_reverse_a_redeem_puts_points_back_into_their_lots_with_their_expiry(
    client: Client,
) -> None:
    program, member = client.member()
    now = datetime.now(UTC)
    early = client.earn(program, member, 100, expires_at=ts(now + timedelta(days=10)))
    late = client.earn(program, member, 50, expires_at=ts(now + timedelta(days=20)))
    original = client.lots(program, member, min_position=late.position)
    expiry = {lot.lot_id: lot.expires_at.ToDatetime(tzinfo=UTC) for lot in original}
    assert expiry == {
        early.lot_id: now + timedelta(days=10),
        late.lot_id: now + timedelta(days=20),
    }
    redeemed = client.redeem(program, member, 120)
    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [
        (early.lot_id, 100),
        (late.lot_id, 20),
    ]

    # In part: the last-consumed points come back first.
    part = client.reverse(program, member, redeemed.transaction_id, 30)

    assert (part.points_reversed, part.debt_added) == (30, 0)
    assert part.account.points_available == 60
    lots = client.lots(program, member, min_position=part.position)
    assert remaining(lots) == {early.lot_id: 10, late.lot_id: 50}

    rest = client.reverse(program, member, redeemed.transaction_id)

    assert rest.points_reversed == 90
    assert rest.account.points_available == 150
    lots = client.lots(program, member, min_position=rest.position)
    assert [(lot.lot_id, lot.remaining, lot.expires_at.ToDatetime(tzinfo=UTC)) for lot in lots] == [
        (early.lot_id, 100, expiry[early.lot_id]),
        (late.lot_id, 50, expiry[late.lot_id]),
    ]
    history = client.transactions(program, member, min_position=rest.position).transactions
    assert [(t.kind, t.points_delta, t.reverses_transaction_id) for t in history[-2:]] == [
        (pb.TRANSACTION_KIND_REVERSE, 30, redeemed.transaction_id),
        (pb.TRANSACTION_KIND_REVERSE, 90, redeemed.transaction_id),
    ]
    assert_refused(
        refused(lambda: client.reverse(program, member, redeemed.transaction_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOTHING_LEFT_TO_REVERSE",
    )


def test_reverse_a_redeem_whose_lot_expired_meanwhile_expires_those_points_at_once(
    client: Client,
) -> None:
    program, member = client.member()
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    soon = client.earn(program, member, 100, expires_at=ts(expires_at))
    never = client.earn(program, member, 50)
    redeemed = client.redeem(program, member, 120)
    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [
        (soon.lot_id, 100),
        (never.lot_id, 20),
    ]
    wait_past(expires_at)

    reversed_ = client.reverse(program, member, redeemed.transaction_id)

    assert reversed_.points_reversed == 120
    # The 20 went back to the open lot; the 100 went back to an expired lot and expired.
    assert reversed_.account.points_available == 50
    account = client.account(program, member, min_position=reversed_.position)
    assert account.points_available == 50
    lots = client.lots(program, member, min_position=reversed_.position, include_closed=True)
    assert {lot.lot_id: (lot.remaining, lot.expired) for lot in lots} == {
        soon.lot_id: (0, 100),
        never.lot_id: (50, 0),
    }
    history = client.transactions(program, member, min_position=reversed_.position).transactions
    assert [(t.kind, t.points_delta, t.points_balance_after) for t in history[-2:]] == [
        (pb.TRANSACTION_KIND_REVERSE, 120, 150),
        (pb.TRANSACTION_KIND_EXPIRE, -100, 50),
    ]
    assert history[-2].reverses_transaction_id == redeemed.transaction_id
    assert history[-1].reverses_transaction_id == ""


# ---------------------------------------------------------------------- what cannot be reversed


def test_adjustments_holds_and_reversals_are_not_reversible(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    credit = client.adjust(program, member, 20)
    debit = client.adjust(program, member, -5)
    hold = client.hold(program, member, 10)
    reversal = client.reverse(program, member, earned.transaction_id, 10)

    for transaction_id in (
        credit.transaction_id,
        debit.transaction_id,
        hold.transaction_id,
        hold.hold_id,
        reversal.transaction_id,
    ):
        problem = refused(partial(client.reverse, program, member, transaction_id))
        assert_refused(problem, grpc.StatusCode.FAILED_PRECONDITION, "TRANSACTION_NOT_REVERSIBLE")

    account = client.account(program, member, min_position=reversal.position)
    assert account.version == reversal.account.version
    assert (account.points_available, account.points_held) == (95, 10)


def test_an_unknown_transaction_is_not_found(client: Client) -> None:
    program, member = client.member()
    client.earn(program, member, 100)
    other = client.enroll(program)
    others_earn = client.earn(program, other, 100)

    for transaction_id in (str(uuid.uuid4()), others_earn.transaction_id):
        problem = refused(partial(client.reverse, program, member, transaction_id))
        assert_refused(problem, grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND")

    # The other member's earn is untouched.
    account = client.account(program, other, min_position=others_earn.position)
    assert account.points_available == 100


# ---------------------------------------------------------------------- naming the original


def test_history_names_the_reversed_transaction_and_leaves_the_original_as_it_was(
    client: Client,
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100, order_ref="order-7", store_id="store-a")
    redeemed = client.redeem(program, member, 30, store_id="store-a")

    undo_redeem = client.reverse(program, member, redeemed.transaction_id, store_id="store-b")
    undo_earn = client.reverse(program, member, earned.transaction_id, 50, store_id="store-b")

    history = client.transactions(program, member, min_position=undo_earn.position).transactions
    assert [
        (t.kind, t.transaction_id, t.reverses_transaction_id, t.points_delta, t.store_id)
        for t in history
    ] == [
        (pb.TRANSACTION_KIND_ENROLL, history[0].transaction_id, "", 0, ""),
        (pb.TRANSACTION_KIND_EARN, earned.transaction_id, "", 100, "store-a"),
        (pb.TRANSACTION_KIND_REDEEM, redeemed.transaction_id, "", -30, "store-a"),
        (
            pb.TRANSACTION_KIND_REVERSE,
            undo_redeem.transaction_id,
            redeemed.transaction_id,
            30,
            "store-b",
        ),
        (
            pb.TRANSACTION_KIND_REVERSE,
            undo_earn.transaction_id,
            earned.transaction_id,
            -50,
            "store-b",
        ),
    ]
    assert len({t.transaction_id for t in history}) == len(history)


def test_reverse_response_names_the_reversed_transaction(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)

    reversed_ = client.reverse(program, member, earned.transaction_id, 40)

    fields = sorted(pb.ReverseResponse.DESCRIPTOR.fields_by_name)
    assert "reverses_transaction_id" in fields, (
        "ReverseResponse has no reverses_transaction_id field: the response does not name "
        "the transaction it reversed"
    )
    assert getattr(reversed_, "reverses_transaction_id") == earned.transaction_id  # noqa: B009
    assert reversed_.transaction_id != earned.transaction_id


# ---------------------------------------------------------------------- the purchase refunded


def test_an_earn_reversal_refunds_its_purchase_pro_rata_or_as_the_till_says(
    client: Client,
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 300, purchase_minor=1000)
    reverse = partial(client.reverse, program, member, earned.transaction_id)

    # Unset: 1000 x 100/300 = 333.33 -> 333.
    assert reverse(100).refunded_purchase_minor == 333
    # Given: recorded as given.
    assert reverse(100, refund_purchase_minor=500).refunded_purchase_minor == 500
    # The last points, unset: all that is left, 1000 - 333 - 500 = 167.
    last = reverse()
    assert (last.points_reversed, last.refunded_purchase_minor) == (100, 167)


def test_a_till_may_refund_nothing_and_other_reversals_refund_no_purchase(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 50, purchase_minor=800)
    goodwill = client.reverse(program, member, earned.transaction_id, 10, refund_purchase_minor=0)
    assert (goodwill.points_reversed, goodwill.refunded_purchase_minor) == (10, 0)
    redeemed = client.redeem(program, member, 5)
    back = client.reverse(program, member, redeemed.transaction_id)
    assert (back.points_reversed, back.refunded_purchase_minor) == (5, 0)


def test_a_refund_replay_answers_the_same_and_another_amount_reuses_the_key(
    client: Client,
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 4, purchase_minor=10)
    request = pb.ReverseRequest(
        program_id=program,
        member_id=member,
        transaction_id=earned.transaction_id,
        points=1,
        store_id="store-1",
        request_id=str(uuid.uuid4()),
    )
    first = client.stub.Reverse(request, timeout=30)
    assert first.refunded_purchase_minor == 3  # 10 x 1/4 = 2.5 -> 3
    again = client.stub.Reverse(request, timeout=30)
    assert (again.transaction_id, again.refunded_purchase_minor) == (first.transaction_id, 3)
    for amount in (0, 3, 4):  # naming any amount, even the one recorded, is another request
        changed = pb.ReverseRequest()
        changed.CopyFrom(request)
        changed.refund_purchase_minor = amount
        assert_refused(
            refused(lambda r=changed: client.stub.Reverse(r, timeout=30)),  # type: ignore[misc]
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
        )
    named = pb.ReverseRequest()
    named.CopyFrom(request)
    named.request_id = str(uuid.uuid4())
    named.refund_purchase_minor = 7
    first_named = client.stub.Reverse(named, timeout=30)
    assert client.stub.Reverse(named, timeout=30).transaction_id == first_named.transaction_id
    assert first_named.refunded_purchase_minor == 7
    account = client.account(program, member, min_position=first_named.position)
    assert account.points_available == 2


def test_bad_refunds_are_refused_and_write_nothing(client: Client, server: ServerThread) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100, purchase_minor=1000)
    redeemed = client.redeem(program, member, 10)
    refund = client.reverse(program, member, earned.transaction_id, 10, refund_purchase_minor=900)
    # Wait for the reversal itself, the last write: waiting for an earlier position let a lagging
    # projection answer without it, and the reversal then showed up in `after` (CI, stop 19).
    before = client.transactions(program, member, min_position=refund.position)
    head = before.transactions[-1].position
    assert head == refund.position

    negative = refused(
        lambda: client.reverse(program, member, earned.transaction_id, 1, refund_purchase_minor=-1)
    )
    assert negative.code == grpc.StatusCode.INVALID_ARGUMENT
    assert negative.fields == {"refund_purchase_minor": "must not be negative"}

    # Only an Earn's reversal refunds purchase money: on a redemption, the field is wrong.
    wrong_kind = refused(
        lambda: client.reverse(program, member, redeemed.transaction_id, refund_purchase_minor=0)
    )
    assert (wrong_kind.code, wrong_kind.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REFUND_NOT_APPLICABLE",
    )
    assert list(wrong_kind.fields) == ["refund_purchase_minor"]

    # 100 of the purchase is left to refund.
    too_much = refused(
        lambda: client.reverse(program, member, earned.transaction_id, 1, refund_purchase_minor=101)
    )
    assert_refused(too_much, grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_PURCHASE")
    assert "only 100 minor units" in too_much.message

    # The whole log: had a refusal written, it would be in it (`head` alone would not wait).
    after = client.transactions(program, member, min_position=log_head(server))
    assert [t.transaction_id for t in after.transactions] == [
        t.transaction_id for t in before.transactions
    ]
    assert (
        client.reverse(
            program, member, earned.transaction_id, 1, refund_purchase_minor=100
        ).refunded_purchase_minor
        == 100
    )


def test_a_batch_carries_the_refund(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 10, purchase_minor=90)
    redeemed = client.redeem(program, member, 2)

    def item(transaction_id: str, points: int, refund: int | None) -> pb.BatchCommand:
        request = pb.ReverseRequest(
            member_id=member,
            transaction_id=transaction_id,
            points=points,
            store_id="s1",
            request_id=str(uuid.uuid4()),
        )
        if refund is not None:
            request.refund_purchase_minor = refund
        return pb.BatchCommand(reverse=request)

    response = client.stub.ExecuteBatch(
        pb.ExecuteBatchRequest(
            program_id=program,
            commands=[
                item(earned.transaction_id, 1, 40),
                item(earned.transaction_id, 1, None),  # 90 x 1/10 = 9
                item(earned.transaction_id, 1, -5),
                item(redeemed.transaction_id, 1, 1),
            ],
        ),
        timeout=60,
    )
    results = response.results
    assert [r.WhichOneof("result") for r in results] == ["reverse", "reverse", "error", "error"]
    assert [r.reverse.refunded_purchase_minor for r in results[:2]] == [40, 9]
    bad, wrong_kind = (refusal_of(r.error) for r in results[2:])
    assert bad == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "",
        {"commands[2].reverse.refund_purchase_minor": "must not be negative"},
    )
    assert wrong_kind[:2] == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "REFUND_NOT_APPLICABLE")
    # Refused by the account, named where it sits in the batch, like the stateless checks.
    assert list(wrong_kind[2]) == ["commands[3].reverse.refund_purchase_minor"]


def refusal_of(status: Any) -> tuple[int, str, dict[str, str]]:
    """(code, ErrorInfo reason, field violations) of a batch item's google.rpc.Status."""
    reason, fields = "", {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.update({v.field: v.description for v in bad.field_violations})
    return status.code, reason, fields
