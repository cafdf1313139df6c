"""Expiry: lots expire by the program's policy or the Earn's override, on their account's
next command and on demand (RunExpiry), never twice. (The server's scheduled lot sweep runs
once a minute; nothing here waits for it.)

Every scenario runs end to end over gRPC against a real server on each backend.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.v1 import ledger_pb2 as pb
from tests.support import (
    Client,
    ServerThread,
    log_head,
    new_id,
    refused,
    ts,
    wait_past,
)

ROLLING_30_DAYS = pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=30)


# ---------------------------------------------------------------------- local helpers


def utc(moment: Timestamp) -> datetime:
    return moment.ToDatetime(tzinfo=UTC)


def lots_by_id(lots: list[pb.Lot]) -> dict[str, tuple[int, int, int]]:
    """lot_id -> (points, remaining, expired)."""
    return {lot.lot_id: (lot.points, lot.remaining, lot.expired) for lot in lots}


# ---------------------------------------------------------------------- already expired on arrival


def test_an_earn_dated_past_its_rolling_expiry_is_never_spendable(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(expiry_policy=ROLLING_30_DAYS)
    now = datetime.now(UTC)
    fresh = client.earn(program, member, 50)
    recent_at = now - timedelta(days=29)
    recent = client.earn(program, member, 20, occurred_at=ts(recent_at))
    stale_at = now - timedelta(days=40)

    stale = client.earn(program, member, 100, occurred_at=ts(stale_at))

    # Expired within the very command that recorded it, before any sweep.
    assert (stale.account.points_available, stale.account.points_debt) == (70, 0)
    problem = refused(lambda: client.redeem(program, member, 71))
    assert (problem.code, problem.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_POINTS",
    )
    # The whole log, not the earn's position: had the refusal written, it would be in it.
    account = client.account(program, member, min_position=log_head(server))
    assert account.points_available == 70
    open_lots = client.lots(program, member, min_position=stale.position)
    assert {lot.lot_id for lot in open_lots} == {fresh.lot_id, recent.lot_id}
    all_lots = client.lots(program, member, min_position=stale.position, include_closed=True)
    [lot] = [lot for lot in all_lots if lot.lot_id == stale.lot_id]
    assert (lot.points, lot.remaining, lot.expired) == (100, 0, 100)
    assert utc(lot.earned_at) == stale_at
    assert utc(lot.expires_at) == stale_at + timedelta(days=30)
    history = client.transactions(program, member, min_position=stale.position).transactions
    assert [(t.kind, t.points_delta, t.points_balance_after) for t in history[-2:]] == [
        (pb.TRANSACTION_KIND_EARN, 100, 170),
        (pb.TRANSACTION_KIND_EXPIRE, -100, 70),
    ]

    # What is spendable comes from the live lots only, earliest expiry first.
    redeemed = client.redeem(program, member, 70)
    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [
        (recent.lot_id, 20),
        (fresh.lot_id, 50),
    ]


def test_each_expiry_a_command_records_is_a_transaction_of_its_own(client: Client) -> None:
    """One command can expire points twice: lots already due when it starts, and then its
    own points (an earn dated past its expiry). Every history row is one transaction."""
    program, member = client.member()
    due_at = datetime.now(UTC) + timedelta(seconds=2)
    first = client.earn(program, member, 100, expires_at=ts(due_at))
    wait_past(due_at)

    # `first` is due and (the lot sweep runs once a minute) not yet expired by anyone.
    late = client.earn(program, member, 30, expires_at=ts(datetime.now(UTC) - timedelta(days=1)))

    assert late.account.points_available == 0
    lots = client.lots(program, member, min_position=late.position, include_closed=True)
    assert lots_by_id(lots) == {first.lot_id: (100, 0, 100), late.lot_id: (30, 0, 30)}
    history = client.transactions(program, member, min_position=late.position).transactions
    assert sorted(t.points_delta for t in history if t.kind == pb.TRANSACTION_KIND_EXPIRE) == [
        -100,
        -30,
    ]
    ids = [t.transaction_id for t in history]
    sharing_an_id = [
        (pb.TransactionKind.Name(t.kind), t.points_delta)
        for t in history
        if ids.count(t.transaction_id) > 1
    ]
    assert sharing_an_id == []


# ---------------------------------------------------------------------- RunExpiry


def test_run_expiry_expires_due_lots_across_members_exactly_once(client: Client) -> None:
    program = client.create_program(expiry_policy=ROLLING_30_DAYS)
    first, second, idle = (client.enroll(program) for _ in range(3))
    other_program, outsider = client.member(expiry_policy=ROLLING_30_DAYS)
    due_at = datetime.now(UTC) + timedelta(seconds=2)
    earned_at = ts(due_at - timedelta(days=30))
    a = client.earn(program, first, 100, occurred_at=earned_at)
    b = client.earn(program, first, 40, occurred_at=earned_at)
    spent = client.redeem(program, first, 30)
    consumed = {c.lot_id: c.points for c in spent.consumed}
    c = client.earn(program, second, 70, occurred_at=earned_at)
    d = client.earn(program, second, 25)
    e = client.earn(program, idle, 10)
    f = client.earn(other_program, outsider, 55, occurred_at=earned_at)
    wait_past(due_at)
    as_of = ts(datetime.now(UTC))
    request_id = new_id("expiry")

    run = client.run_expiry(program, as_of=as_of, request_id=request_id)

    assert (run.expired_points, run.lots_expired, run.accounts_touched) == (180, 3, 2)
    assert run.transaction_id
    balances = {
        m: client.account(program, m, min_position=run.position).points_available
        for m in (first, second, idle)
    }
    assert balances == {first: 0, second: 25, idle: 10}
    first_lots = client.lots(program, first, min_position=run.position, include_closed=True)
    assert lots_by_id(first_lots) == {
        a.lot_id: (100, 0, 100 - consumed.get(a.lot_id, 0)),
        b.lot_id: (40, 0, 40 - consumed.get(b.lot_id, 0)),
    }
    second_lots = client.lots(program, second, min_position=run.position, include_closed=True)
    assert lots_by_id(second_lots) == {c.lot_id: (70, 0, 70), d.lot_id: (25, 25, 0)}
    assert lots_by_id(client.lots(program, idle, min_position=run.position)) == {
        e.lot_id: (10, 10, 0)
    }
    for member, points, after in ((first, -110, 0), (second, -70, 25)):
        row = client.transactions(program, member, min_position=run.position).transactions[-1]
        assert (row.kind, row.points_delta, row.points_balance_after) == (
            pb.TRANSACTION_KIND_EXPIRE,
            points,
            after,
        )
        assert row.transaction_id == run.transaction_id
    # Another program's due lot is not this program's business.
    assert lots_by_id(client.lots(other_program, outsider, min_position=run.position)) == {
        f.lot_id: (55, 55, 0)
    }

    # The same instant again, as a new request: nothing is left to expire.
    again = client.run_expiry(program, as_of=as_of, request_id=new_id("expiry"))
    assert (again.expired_points, again.lots_expired, again.accounts_touched) == (0, 0, 0)
    assert again.transaction_id != run.transaction_id

    # The same request again: the original answer, nothing written twice.
    replay = client.run_expiry(program, as_of=as_of, request_id=request_id)
    assert (replay.expired_points, replay.lots_expired, replay.accounts_touched) == (180, 3, 2)
    assert (replay.transaction_id, replay.position) == (run.transaction_id, run.position)
    # ...and the same request_id for another instant is a different request.
    problem = refused(
        lambda: client.run_expiry(
            program, as_of=ts(datetime.now(UTC) - timedelta(seconds=1)), request_id=request_id
        )
    )
    assert (problem.code, problem.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    account = client.account(program, first, min_position=again.position)
    assert account.version == spent.account.version + 1


def test_run_expiry_as_of_in_the_future_is_invalid(client: Client) -> None:
    program, member = client.member(expiry_policy=ROLLING_30_DAYS)
    client.earn(program, member, 100)

    problem = refused(
        lambda: client.run_expiry(program, as_of=ts(datetime.now(UTC) + timedelta(hours=1)))
    )

    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(problem.fields) == {"as_of"}


def test_run_expiry_of_an_unknown_program_is_not_found(client: Client) -> None:
    problem = refused(lambda: client.run_expiry(new_id("prog")))

    assert problem.code == grpc.StatusCode.NOT_FOUND
    assert problem.reason == "PROGRAM_NOT_FOUND"


# ---------------------------------------------------------------------- when a lot expires


def test_an_explicit_expires_at_overrides_the_program_policy(client: Client) -> None:
    program, member = client.member(expiry_policy=ROLLING_30_DAYS)
    now = datetime.now(UTC)
    earned_at = now - timedelta(hours=1)
    later = now + timedelta(days=400)
    already = now - timedelta(minutes=1)

    by_policy = client.earn(program, member, 100, occurred_at=ts(earned_at))
    extended = client.earn(program, member, 50, occurred_at=ts(earned_at), expires_at=ts(later))
    lapsed = client.earn(program, member, 20, occurred_at=ts(earned_at), expires_at=ts(already))

    assert lapsed.account.points_available == 150
    lots = client.lots(program, member, min_position=lapsed.position, include_closed=True)
    assert {lot.lot_id: (utc(lot.expires_at), lot.remaining, lot.expired) for lot in lots} == {
        by_policy.lot_id: (earned_at + timedelta(days=30), 100, 0),
        extended.lot_id: (later, 50, 0),
        lapsed.lot_id: (already, 0, 20),
    }


def _local_year_end_cases() -> list[tuple[str, int, datetime, datetime]]:
    """(time_zone, years, occurred_at, expected expires_at) around a New Year, built from the
    current year so the lots stay in the future. Offsets on 1 January: Auckland +13 (NZDT),
    Los Angeles -8 (PST)."""
    base = datetime.now(UTC).year - 1
    auckland = timezone(timedelta(hours=13))
    los_angeles = timezone(timedelta(hours=-8))
    # 31 Dec 12:00 UTC is already 1 January 01:00 in Auckland: the earn's local year is `base`.
    auckland_earn = datetime(base - 1, 12, 31, 12, tzinfo=UTC)
    # 1 Jan 05:00 UTC is still 31 December 21:00 in Los Angeles: the local year is base - 1.
    la_earn = datetime(base, 1, 1, 5, tzinfo=UTC)
    return [
        ("Pacific/Auckland", 3, auckland_earn, datetime(base + 4, 1, 1, tzinfo=auckland)),
        ("America/Los_Angeles", 3, la_earn, datetime(base + 3, 1, 1, tzinfo=los_angeles)),
        ("UTC", 3, la_earn, datetime(base + 4, 1, 1, tzinfo=UTC)),
    ]


@pytest.mark.parametrize(
    ("time_zone", "years", "occurred_at", "expected"),
    _local_year_end_cases(),
    ids=["auckland", "los-angeles", "utc"],
)
def test_end_of_year_policy_expires_at_the_local_year_end(
    client: Client, time_zone: str, years: int, occurred_at: datetime, expected: datetime
) -> None:
    policy = pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=years)
    program, member = client.member(expiry_policy=policy, time_zone=time_zone)

    earned = client.earn(program, member, 100, occurred_at=ts(occurred_at))

    assert earned.account.points_available == 100
    [lot] = client.lots(program, member, min_position=earned.position)
    assert lot.lot_id == earned.lot_id
    assert utc(lot.earned_at) == occurred_at
    assert utc(lot.expires_at) == expected
    assert (lot.points, lot.remaining, lot.expired) == (100, 100, 0)
