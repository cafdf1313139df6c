"""Holds: points reserved for a checkout, then captured, released, or let run out.

Every scenario runs end to end over gRPC against a real server on each backend. The only
waiting is in bounded polling loops for the scenarios about time running out (a hold's TTL,
a lot's expiry); nothing here asserts how long anything took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.v1 import ledger_pb2 as pb
from tests.support import (
    POLL_INTERVAL_SECONDS,
    POLL_LIMIT_SECONDS,
    Client,
    ServerThread,
    log_head,
    refused,
    ts,
    wait_past,
)

# ---------------------------------------------------------------------- local helpers


def poll_account(
    client: Client,
    program: str,
    member: str,
    min_position: int,
    done: Callable[[pb.Account], bool],
) -> pb.GetAccountResponse:
    """Poll GetAccount (bounded) until `done(account)`; fail with the last account seen.

    `min_position` keeps the first reads from seeing a state older than our own writes."""
    deadline = time.monotonic() + POLL_LIMIT_SECONDS
    while True:
        response: pb.GetAccountResponse = client.stub.GetAccount(
            pb.GetAccountRequest(program_id=program, member_id=member, min_position=min_position),
            timeout=30,
        )
        if done(response.account):
            return response
        assert time.monotonic() < deadline, f"condition never met; last account: {response}"
        time.sleep(POLL_INTERVAL_SECONDS)


def lot_state(lots: list[pb.Lot]) -> dict[str, tuple[int, int, int]]:
    """lot_id -> (remaining, held, expired)."""
    return {lot.lot_id: (lot.remaining, lot.held, lot.expired) for lot in lots}


def as_datetime(moment: Timestamp) -> datetime:
    return moment.ToDatetime(tzinfo=UTC)


# ---------------------------------------------------------------------- placing a hold


def test_hold_moves_points_from_available_to_held(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)

    hold = client.hold(program, member, 30, order_ref="cart-1", store_id="web")

    assert hold.hold_id
    assert (hold.account.points_available, hold.account.points_held) == (70, 30)
    account = client.account(program, member, min_position=hold.position)
    assert (account.points_available, account.points_held) == (70, 30)
    assert account.version == hold.account.version
    lots = client.lots(program, member, min_position=hold.position)
    assert [(lot.lot_id, lot.points, lot.remaining, lot.held) for lot in lots] == [
        (earned.lot_id, 100, 70, 30)
    ]
    row = client.transactions(program, member, min_position=hold.position).transactions[-1]
    assert (row.kind, row.points_delta, row.held_delta) == (pb.TRANSACTION_KIND_HOLD, -30, 30)
    assert (row.points_balance_after, row.points_held_after) == (70, 30)
    assert (row.transaction_id, row.hold_id) == (hold.transaction_id, hold.hold_id)
    assert (row.order_ref, row.store_id) == ("cart-1", "web")

    # Held points are not available to anything else.
    problem = refused(lambda: client.redeem(program, member, 71))
    assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
    assert problem.reason == "INSUFFICIENT_POINTS"
    problem = refused(lambda: client.hold(program, member, 71))
    assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
    assert problem.reason == "INSUFFICIENT_POINTS"


def test_hold_takes_points_from_the_earliest_expiring_lots(client: Client) -> None:
    program, member = client.member()
    now = datetime.now(UTC)
    late = client.earn(program, member, 100, expires_at=ts(now + timedelta(days=30)))
    early = client.earn(program, member, 50, expires_at=ts(now + timedelta(days=5)))
    never = client.earn(program, member, 10)

    hold = client.hold(program, member, 120)

    assert (hold.account.points_available, hold.account.points_held) == (40, 120)
    lots = client.lots(program, member, min_position=hold.position)
    assert [(lot.lot_id, lot.remaining, lot.held) for lot in lots] == [
        (early.lot_id, 0, 50),
        (late.lot_id, 30, 70),
        (never.lot_id, 10, 0),
    ]

    captured = client.capture(program, member, hold.hold_id)

    assert [(c.lot_id, c.points) for c in captured.consumed] == [
        (early.lot_id, 50),
        (late.lot_id, 70),
    ]


# ---------------------------------------------------------------------- capture


def test_partial_capture_redeems_that_part_and_releases_the_rest(client: Client) -> None:
    program, member = client.member()
    now = datetime.now(UTC)
    first = client.earn(program, member, 100, expires_at=ts(now + timedelta(days=5)))
    second = client.earn(program, member, 100, expires_at=ts(now + timedelta(days=30)))
    hold = client.hold(program, member, 150)
    assert (hold.account.points_available, hold.account.points_held) == (50, 150)

    captured = client.capture(program, member, hold.hold_id, 120)

    assert (captured.points_captured, captured.points_released) == (120, 30)
    assert [(c.lot_id, c.points) for c in captured.consumed] == [
        (first.lot_id, 100),
        (second.lot_id, 20),
    ]
    assert (captured.account.points_available, captured.account.points_held) == (80, 0)
    account = client.account(program, member, min_position=captured.position)
    assert (account.points_available, account.points_held) == (80, 0)
    lots = client.lots(program, member, min_position=captured.position, include_closed=True)
    assert lot_state(lots) == {first.lot_id: (0, 0, 0), second.lot_id: (80, 0, 0)}
    row = client.transactions(program, member, min_position=captured.position).transactions[-1]
    assert (row.kind, row.transaction_id, row.hold_id) == (
        pb.TRANSACTION_KIND_CAPTURE,
        captured.transaction_id,
        hold.hold_id,
    )
    # 30 released back to available, 150 no longer held: 120 left the account as a redemption.
    assert (row.points_delta, row.held_delta) == (30, -150)
    assert (row.points_balance_after, row.points_held_after) == (80, 0)

    # The hold has ended: neither its rest nor anything else of it can be captured again.
    problem = refused(lambda: client.capture(program, member, hold.hold_id, 30))
    assert (problem.code, problem.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_NOT_ACTIVE",
    )


def test_capture_of_zero_captures_everything_held(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    hold = client.hold(program, member, 40)

    captured = client.capture(program, member, hold.hold_id, 0)

    assert (captured.points_captured, captured.points_released) == (40, 0)
    assert [(c.lot_id, c.points) for c in captured.consumed] == [(earned.lot_id, 40)]
    assert (captured.account.points_available, captured.account.points_held) == (60, 0)
    account = client.account(program, member, min_position=captured.position)
    assert (account.points_available, account.points_held) == (60, 0)
    [lot] = client.lots(program, member, min_position=captured.position)
    assert (lot.remaining, lot.held) == (60, 0)


def test_capture_of_more_than_held_is_refused_and_the_hold_stays(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member()
    client.earn(program, member, 100)
    hold = client.hold(program, member, 40)

    problem = refused(lambda: client.capture(program, member, hold.hold_id, 41))

    assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
    assert problem.reason == "CAPTURE_EXCEEDS_HOLD"
    # The whole log, not the hold's position: had the refusal written, it would be in it.
    account = client.account(program, member, min_position=log_head(server))
    assert (account.points_available, account.points_held) == (60, 40)
    assert account.version == hold.account.version
    # The hold is still active and can be captured within its amount.
    captured = client.capture(program, member, hold.hold_id, 40)
    assert (captured.points_captured, captured.points_released) == (40, 0)
    assert (captured.account.points_available, captured.account.points_held) == (60, 0)


@pytest.mark.parametrize("ending", ["captured", "released"])
def test_an_ended_hold_can_be_neither_captured_nor_released(
    client: Client, server: ServerThread, ending: str
) -> None:
    program, member = client.member()
    client.earn(program, member, 100)
    hold = client.hold(program, member, 40)
    ended: pb.CaptureHoldResponse | pb.ReleaseHoldResponse
    if ending == "captured":
        ended = client.capture(program, member, hold.hold_id, 10)
        expected_available = 90
    else:
        ended = client.release(program, member, hold.hold_id)
        expected_available = 100

    for attempt in (
        lambda: client.capture(program, member, hold.hold_id, 0),
        lambda: client.capture(program, member, hold.hold_id, 5),
        lambda: client.release(program, member, hold.hold_id),
    ):
        problem = refused(attempt)
        assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
        assert problem.reason == "HOLD_NOT_ACTIVE"

    # The whole log, not the end's position: had a refusal written, it would be in it.
    account = client.account(program, member, min_position=log_head(server))
    assert (account.points_available, account.points_held) == (expected_available, 0)
    assert account.version == ended.account.version


def test_an_unknown_hold_is_not_found(client: Client) -> None:
    program, member = client.member()
    client.earn(program, member, 100)
    other = client.enroll(program)
    client.earn(program, other, 100)
    others_hold = client.hold(program, other, 50)

    for hold_id in ("no-such-hold", others_hold.hold_id):
        for attempt in (
            partial(client.capture, program, member, hold_id),
            partial(client.release, program, member, hold_id),
        ):
            problem = refused(attempt)
            assert problem.code == grpc.StatusCode.NOT_FOUND
            assert problem.reason == "HOLD_NOT_FOUND"

    # The other member's hold was not touched by those attempts.
    account = client.account(program, other, min_position=others_hold.position)
    assert (account.points_available, account.points_held) == (50, 50)


# ---------------------------------------------------------------------- release and TTL


def test_release_returns_the_points_to_their_lots(client: Client) -> None:
    program, member = client.member()
    now = datetime.now(UTC)
    early = client.earn(program, member, 50, expires_at=ts(now + timedelta(days=5)))
    late = client.earn(program, member, 100, expires_at=ts(now + timedelta(days=30)))
    before = client.lots(program, member, min_position=late.position)
    hold = client.hold(program, member, 80)
    held_lots = client.lots(program, member, min_position=hold.position)
    assert lot_state(held_lots) == {early.lot_id: (0, 50, 0), late.lot_id: (70, 30, 0)}

    released = client.release(program, member, hold.hold_id, store_id="web")

    assert released.points_released == 80
    assert (released.account.points_available, released.account.points_held) == (150, 0)
    account = client.account(program, member, min_position=released.position)
    assert (account.points_available, account.points_held) == (150, 0)
    after = client.lots(program, member, min_position=released.position)
    assert lot_state(after) == {early.lot_id: (50, 0, 0), late.lot_id: (100, 0, 0)}
    # Same lots, same expiry: the points went back where they came from.
    assert [(lot.lot_id, lot.expires_at) for lot in after] == [
        (lot.lot_id, lot.expires_at) for lot in before
    ]
    row = client.transactions(program, member, min_position=released.position).transactions[-1]
    assert (row.kind, row.transaction_id, row.hold_id) == (
        pb.TRANSACTION_KIND_RELEASE,
        released.transaction_id,
        hold.hold_id,
    )
    assert (row.points_delta, row.held_delta) == (80, -80)
    assert (row.points_balance_after, row.points_held_after) == (150, 0)


def test_a_hold_whose_ttl_runs_out_is_released_without_anyone_calling(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    hold = client.hold(program, member, 60, ttl_seconds=1)
    assert (hold.account.points_available, hold.account.points_held) == (40, 60)

    # Nobody calls anything on this account: only the server's sweeper can free the points.
    swept = poll_account(client, program, member, hold.position, lambda a: a.points_held == 0)

    assert (swept.account.points_available, swept.account.points_held) == (100, 0)
    history = client.transactions(program, member, min_position=swept.position).transactions
    assert [t.kind for t in history] == [
        pb.TRANSACTION_KIND_ENROLL,
        pb.TRANSACTION_KIND_EARN,
        pb.TRANSACTION_KIND_HOLD,
        pb.TRANSACTION_KIND_HOLD_EXPIRED,
    ]
    expired = history[-1]
    assert expired.hold_id == hold.hold_id
    assert (expired.points_delta, expired.held_delta) == (60, -60)
    assert (expired.points_balance_after, expired.points_held_after) == (100, 0)
    lots = client.lots(program, member, min_position=swept.position)
    assert lot_state(lots) == {earned.lot_id: (100, 0, 0)}

    problem = refused(lambda: client.capture(program, member, hold.hold_id))
    assert (problem.code, problem.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_NOT_ACTIVE",
    )


def test_a_hold_past_its_ttl_cannot_be_captured_even_before_the_sweep(client: Client) -> None:
    program, member = client.member()
    client.earn(program, member, 100)
    hold = client.hold(program, member, 60, ttl_seconds=1)

    # Straight after the TTL ran out: the sweeper (every ~0.5 s) has most likely not run.
    wait_past(as_datetime(hold.expires_at))
    capture = refused(lambda: client.capture(program, member, hold.hold_id))
    release = refused(lambda: client.release(program, member, hold.hold_id))

    for problem in (capture, release):
        assert (problem.code, problem.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "HOLD_NOT_ACTIVE",
        )
    # The refused commands wrote nothing; the sweeper ends the hold exactly once.
    swept = poll_account(client, program, member, hold.position, lambda a: a.points_held == 0)
    assert (swept.account.points_available, swept.account.points_held) == (100, 0)
    history = client.transactions(program, member, min_position=swept.position).transactions
    assert [t.kind for t in history] == [
        pb.TRANSACTION_KIND_ENROLL,
        pb.TRANSACTION_KIND_EARN,
        pb.TRANSACTION_KIND_HOLD,
        pb.TRANSACTION_KIND_HOLD_EXPIRED,
    ]


def test_held_points_do_not_expire_while_held(client: Client) -> None:
    program, member = client.member()
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    earned = client.earn(program, member, 100, expires_at=ts(expires_at))
    hold = client.hold(program, member, 100, ttl_seconds=600)

    wait_past(expires_at)
    # An expiry run after the lot's expiry finds nothing to expire: its points are held.
    run = client.run_expiry(program)
    assert (run.expired_points, run.lots_expired) == (0, 0)
    account = client.account(program, member, min_position=run.position)
    assert (account.points_available, account.points_held) == (0, 100)
    [lot] = client.lots(program, member, min_position=run.position)
    assert (lot.lot_id, lot.remaining, lot.held, lot.expired) == (earned.lot_id, 0, 100, 0)

    released = client.release(program, member, hold.hold_id)

    # Back in a lot that is past its expiry: they expire at once.
    assert released.points_released == 100
    assert (released.account.points_available, released.account.points_held) == (0, 0)
    account = client.account(program, member, min_position=released.position)
    assert (account.points_available, account.points_held) == (0, 0)
    assert client.lots(program, member, min_position=released.position) == []
    [lot] = client.lots(program, member, min_position=released.position, include_closed=True)
    assert (lot.lot_id, lot.remaining, lot.held, lot.expired) == (earned.lot_id, 0, 0, 100)
    history = client.transactions(program, member, min_position=released.position).transactions
    assert [(t.kind, t.points_delta, t.held_delta, t.points_balance_after) for t in history] == [
        (pb.TRANSACTION_KIND_ENROLL, 0, 0, 0),
        (pb.TRANSACTION_KIND_EARN, 100, 0, 100),
        (pb.TRANSACTION_KIND_HOLD, -100, 100, 0),
        (pb.TRANSACTION_KIND_RELEASE, 100, -100, 100),
        (pb.TRANSACTION_KIND_EXPIRE, -100, 0, 0),
    ]


def test_points_freed_by_the_ttl_after_their_lot_expired_expire_at_once(client: Client) -> None:
    program, member = client.member()
    lot_expires_at = datetime.now(UTC) + timedelta(seconds=2)
    earned = client.earn(program, member, 100, expires_at=ts(lot_expires_at))
    hold = client.hold(program, member, 100, ttl_seconds=3)
    assert as_datetime(hold.expires_at) > lot_expires_at

    swept = poll_account(client, program, member, hold.position, lambda a: a.points_held == 0)

    assert (swept.account.points_available, swept.account.points_held) == (0, 0)
    [lot] = client.lots(program, member, min_position=swept.position, include_closed=True)
    assert (lot.lot_id, lot.remaining, lot.held, lot.expired) == (earned.lot_id, 0, 0, 100)
    history = client.transactions(program, member, min_position=swept.position).transactions
    assert [(t.kind, t.points_delta, t.held_delta) for t in history[2:]] == [
        (pb.TRANSACTION_KIND_HOLD, -100, 100),
        (pb.TRANSACTION_KIND_HOLD_EXPIRED, 100, -100),
        (pb.TRANSACTION_KIND_EXPIRE, -100, 0),
    ]


def test_capture_after_the_lot_expired_spends_held_points_and_expires_the_rest(
    client: Client,
) -> None:
    program, member = client.member()
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    earned = client.earn(program, member, 100, expires_at=ts(expires_at))
    hold = client.hold(program, member, 100, ttl_seconds=600)
    wait_past(expires_at)

    captured = client.capture(program, member, hold.hold_id, 30)

    assert (captured.points_captured, captured.points_released) == (30, 70)
    assert [(c.lot_id, c.points) for c in captured.consumed] == [(earned.lot_id, 30)]
    assert (captured.account.points_available, captured.account.points_held) == (0, 0)
    [lot] = client.lots(program, member, min_position=captured.position, include_closed=True)
    assert (lot.remaining, lot.held, lot.expired) == (0, 0, 70)


def test_a_capture_can_be_reversed_like_a_redeem(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    hold = client.hold(program, member, 60)
    captured = client.capture(program, member, hold.hold_id, 40)
    assert captured.account.points_available == 60

    part = client.reverse(program, member, captured.transaction_id, 15, reason="item returned")

    assert (part.points_reversed, part.debt_added) == (15, 0)
    assert part.account.points_available == 75
    # Only what was captured (40) can be reversed, not what the hold released.
    problem = refused(lambda: client.reverse(program, member, captured.transaction_id, 26))
    assert (problem.code, problem.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REVERSAL_EXCEEDS_ORIGINAL",
    )
    rest = client.reverse(program, member, captured.transaction_id)
    assert (rest.points_reversed, rest.debt_added) == (25, 0)
    assert (rest.account.points_available, rest.account.points_held) == (100, 0)
    [lot] = client.lots(program, member, min_position=rest.position)
    assert (lot.lot_id, lot.remaining, lot.held) == (earned.lot_id, 100, 0)
    history = client.transactions(program, member, min_position=rest.position).transactions
    reversals = [t for t in history if t.kind == pb.TRANSACTION_KIND_REVERSE]
    assert [(t.transaction_id, t.reverses_transaction_id, t.points_delta) for t in reversals] == [
        (part.transaction_id, captured.transaction_id, 15),
        (rest.transaction_id, captured.transaction_id, 25),
    ]
    problem = refused(lambda: client.reverse(program, member, captured.transaction_id))
    assert (problem.code, problem.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOTHING_LEFT_TO_REVERSE",
    )
