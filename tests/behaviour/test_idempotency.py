"""Idempotency by request_id: replays answer the original response and write nothing; a
reused key with a different payload is refused; concurrent duplicates commit once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import (
    Client,
    ServerThread,
    account_state,
    new_id,
    refusal,
)

# ---------------------------------------------------------------------- helpers


def program_state(client: Client, program: str) -> pb.Program:
    response: pb.GetProgramResponse = client.stub.GetProgram(
        pb.GetProgramRequest(program_id=program), timeout=30
    )
    return response.program


@dataclass(frozen=True)
class Prepared:
    """One command ready to send: the request, and the same request_id with a changed payload."""

    method: Callable[..., Any]
    request: Any
    changed: Any
    program: str
    member: str  # "" for program-level commands


def _with(request: Any, **changes: Any) -> Any:
    changed = type(request)()
    changed.CopyFrom(request)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed


def prepare_earn(client: Client) -> Prepared:
    program, member = client.member()
    request = pb.EarnRequest(
        program_id=program,
        member_id=member,
        points=100,
        purchase_minor=1000,
        store_id="store-1",
        order_ref="order-1",
        request_id=new_id("req"),
    )
    return Prepared(client.stub.Earn, request, _with(request, points=101), program, member)


def prepare_redeem(client: Client) -> Prepared:
    program, member = client.member()
    client.earn(program, member, 60)
    client.earn(program, member, 40)
    request = pb.RedeemRequest(
        program_id=program,
        member_id=member,
        points=70,
        store_id="store-2",
        order_ref="order-2",
        request_id=new_id("req"),
    )
    return Prepared(client.stub.Redeem, request, _with(request, points=71), program, member)


def prepare_hold(client: Client) -> Prepared:
    program, member = client.member()
    client.earn(program, member, 100)
    request = pb.HoldRequest(
        program_id=program,
        member_id=member,
        points=40,
        ttl_seconds=3600,
        order_ref="order-3",
        request_id=new_id("req"),
    )
    return Prepared(client.stub.Hold, request, _with(request, points=41), program, member)


def prepare_capture(client: Client) -> Prepared:
    program, member = client.member()
    client.earn(program, member, 100)
    hold = client.hold(program, member, 40, ttl_seconds=3600)
    request = pb.CaptureHoldRequest(
        program_id=program,
        member_id=member,
        hold_id=hold.hold_id,
        points=25,
        request_id=new_id("req"),
    )
    return Prepared(client.stub.CaptureHold, request, _with(request, points=26), program, member)


def prepare_release(client: Client) -> Prepared:
    program, member = client.member()
    client.earn(program, member, 100)
    hold = client.hold(program, member, 40, ttl_seconds=3600)
    request = pb.ReleaseHoldRequest(
        program_id=program,
        member_id=member,
        hold_id=hold.hold_id,
        request_id=new_id("req"),
    )
    changed = _with(request, store_id="store-9")
    return Prepared(client.stub.ReleaseHold, request, changed, program, member)


def prepare_adjust(client: Client) -> Prepared:
    program, member = client.member()
    client.earn(program, member, 100)
    request = pb.AdjustRequest(
        program_id=program,
        member_id=member,
        points=-15,
        reason="damaged goods",
        operator_id="op-7",
        request_id=new_id("req"),
    )
    return Prepared(client.stub.Adjust, request, _with(request, reason="other"), program, member)


def prepare_reverse(client: Client) -> Prepared:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    request = pb.ReverseRequest(
        store_id="store-1",
        program_id=program,
        member_id=member,
        transaction_id=earned.transaction_id,
        points=30,
        reason="returned item",
        request_id=new_id("req"),
    )
    return Prepared(client.stub.Reverse, request, _with(request, points=31), program, member)


def prepare_enroll(client: Client) -> Prepared:
    program = client.create_program()
    member = new_id("mem")
    request = pb.EnrollMemberRequest(
        program_id=program,
        member_id=member,
        store_id="store-1",
        request_id=new_id("req"),
    )
    changed = _with(request, store_id="store-2")
    return Prepared(client.stub.EnrollMember, request, changed, program, member)


def prepare_create_program(client: Client) -> Prepared:
    program = new_id("prog")
    request = pb.CreateProgramRequest(
        program_id=program,
        display_name="Coffee club",
        currency="EUR",
        point_value_minor=1,
        tiers=[pb.Tier(code="SILVER", name="Silver", threshold=100)],
        request_id=new_id("req"),
    )
    changed = _with(request, display_name="Tea club")
    return Prepared(client.stub.CreateProgram, request, changed, program, "")


def prepare_update_program(client: Client) -> Prepared:
    program = client.create_program()
    request = pb.UpdateProgramRequest(
        program_id=program, display_name="Renamed", request_id=new_id("req")
    )
    changed = _with(request, display_name="Renamed again")
    return Prepared(client.stub.UpdateProgram, request, changed, program, "")


SCHEDULE = [pb.TopUpBonusStep(min_cash_minor=1_000, bonus_minor=150, bonus_ppm=10_000)]


def prepare_top_up(client: Client) -> Prepared:
    """Without bonus_minor: the schedule's step decides (150 + 1% of the cash)."""
    program, member = client.member(top_up_bonus=SCHEDULE)
    request = pb.TopUpRequest(
        program_id=program,
        member_id=member,
        cash_minor=2_000,
        store_id="store-1",
        payment_ref="pay-1",
        request_id=new_id("req"),
    )
    return Prepared(client.stub.TopUp, request, _with(request, cash_minor=2_001), program, member)


def prepare_spend(client: Client) -> Prepared:
    program, member = client.member()
    client.top_up(program, member, 1_000, bonus_minor=200)
    request = pb.SpendRequest(
        program_id=program,
        member_id=member,
        amount_minor=700,
        store_id="store-2",
        order_ref="order-4",
        request_id=new_id("req"),
    )
    changed = _with(request, amount_minor=701)
    return Prepared(client.stub.Spend, request, changed, program, member)


def prepare_refund(client: Client) -> Prepared:
    program, member = client.member()
    client.top_up(program, member, 1_000, bonus_minor=200)
    spent = client.spend(program, member, 700)
    request = pb.ReverseRequest(
        store_id="store-3",
        program_id=program,
        member_id=member,
        transaction_id=spent.transaction_id,
        amount_minor=400,
        request_id=new_id("req"),
    )
    changed = _with(request, amount_minor=401)
    return Prepared(client.stub.Reverse, request, changed, program, member)


def prepare_cash_out(client: Client) -> Prepared:
    program, member = client.member(cash_out_policy=pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS)
    topped = client.top_up(program, member, 1_000, bonus_minor=200)
    client.spend(program, member, 600)
    request = pb.ReverseRequest(
        store_id="store-1",
        program_id=program,
        member_id=member,
        transaction_id=topped.transaction_id,
        amount_minor=300,
        request_id=new_id("req"),
    )
    changed = _with(request, amount_minor=0)
    return Prepared(client.stub.Reverse, request, changed, program, member)


def prepare_convert(client: Client) -> Prepared:
    program, member = client.member(points_conversion=pb.PointsConversion(points=10, value_minor=7))
    client.earn(program, member, 100)
    request = pb.ConvertPointsRequest(
        program_id=program,
        member_id=member,
        points=50,
        store_id="store-1",
        request_id=new_id("req"),
    )
    changed = _with(request, points=60)
    return Prepared(client.stub.ConvertPoints, request, changed, program, member)


COMMANDS = {
    "Earn": prepare_earn,
    "Redeem": prepare_redeem,
    "Hold": prepare_hold,
    "CaptureHold": prepare_capture,
    "ReleaseHold": prepare_release,
    "Adjust": prepare_adjust,
    "Reverse": prepare_reverse,
    "EnrollMember": prepare_enroll,
    "CreateProgram": prepare_create_program,
    "UpdateProgram": prepare_update_program,
    "TopUp": prepare_top_up,
    "Spend": prepare_spend,
    "Reverse-refund": prepare_refund,
    "Reverse-cash-out": prepare_cash_out,
    "ConvertPoints": prepare_convert,
}


def state_of(client: Client, server: ServerThread, prepared: Prepared) -> Any:
    if prepared.member:
        return account_state(client, server, prepared.program, prepared.member)
    return program_state(client, prepared.program)


# ---------------------------------------------------------------------- replays


@pytest.mark.parametrize("command", COMMANDS)
def test_same_request_id_and_payload_returns_the_original_response_and_writes_nothing(
    client: Client, server: ServerThread, command: str
) -> None:
    prepared = COMMANDS[command](client)
    first = prepared.method(prepared.request, timeout=30)
    before = state_of(client, server, prepared)

    second = prepared.method(prepared.request, timeout=30)
    third = prepared.method(prepared.request, timeout=30)

    assert second == first
    assert third == first
    assert first.transaction_id
    assert first.position > 0
    assert state_of(client, server, prepared) == before


def test_replayed_responses_carry_the_original_fields(client: Client, server: ServerThread) -> None:
    """Not just equal to each other: equal to what the first call decided."""
    prepared = prepare_redeem(client)
    first = prepared.method(prepared.request, timeout=30)
    client.earn(prepared.program, prepared.member, 500)  # the account moves on

    replay = prepared.method(prepared.request, timeout=30)

    assert replay.transaction_id == first.transaction_id
    assert replay.position == first.position
    assert replay.account.points_available == 30
    assert replay.account == first.account
    assert [(c.lot_id, c.points) for c in replay.consumed] == [
        (c.lot_id, c.points) for c in first.consumed
    ]
    assert sum(c.points for c in replay.consumed) == 70
    state = account_state(client, server, prepared.program, prepared.member)
    assert state.account.points_available == 530
    assert state.transaction_ids.count(first.transaction_id) == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_same_request_id_with_a_different_payload_is_refused(
    client: Client, server: ServerThread, command: str
) -> None:
    prepared = COMMANDS[command](client)
    first = prepared.method(prepared.request, timeout=30)
    before = state_of(client, server, prepared)

    with pytest.raises(grpc.RpcError) as failure:
        prepared.method(prepared.changed, timeout=30)

    problem = refusal(failure.value)
    assert problem.code == grpc.StatusCode.ALREADY_EXISTS
    assert problem.reason == "IDEMPOTENCY_KEY_REUSED"
    assert state_of(client, server, prepared) == before
    # The original is still what the key answers.
    assert prepared.method(prepared.request, timeout=30) == first


def test_a_replayed_top_up_answers_the_bonus_granted_then(
    client: Client, server: ServerThread
) -> None:
    prepared = prepare_top_up(client)
    first = prepared.method(prepared.request, timeout=30)
    assert (first.bonus_minor, first.bonus_step_min_cash_minor) == (170, 1_000)  # 150 + 1%
    client.update_program(
        prepared.program,
        replace_top_up_bonus=True,
        top_up_bonus=[pb.TopUpBonusStep(min_cash_minor=500, bonus_minor=999)],
    )
    before = account_state(client, server, prepared.program, prepared.member)

    replay = prepared.method(prepared.request, timeout=30)

    assert replay == first
    assert account_state(client, server, prepared.program, prepared.member) == before
    assert before.account.stored_value_bonus_minor == 170


def test_a_replayed_spend_and_cash_out_answer_the_policy_in_force_then(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member(stored_value_split=pb.STORED_VALUE_SPLIT_CASH_FIRST)
    topped = client.top_up(program, member, 1_000, bonus_minor=200)
    spend_key, cash_out_key = new_id("spend"), new_id("cash-out")
    spent = client.spend(program, member, 300, request_id=spend_key)
    out = client.refund(program, member, topped.transaction_id, 100, request_id=cash_out_key)
    assert (spent.cash_minor, spent.bonus_minor) == (300, 0)
    assert (out.refunded_cash_minor, out.forfeited_bonus_minor) == (100, 28)  # 200 * 100 / 700
    client.update_program(
        program,
        stored_value_split=pb.STORED_VALUE_SPLIT_BONUS_FIRST,
        cash_out_policy=pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS,
    )
    before = account_state(client, server, program, member)

    assert client.spend(program, member, 300, request_id=spend_key) == spent
    assert (
        client.refund(program, member, topped.transaction_id, 100, request_id=cash_out_key) == out
    )
    assert account_state(client, server, program, member) == before


def test_a_top_up_naming_its_bonus_is_another_payload_than_one_leaving_it_to_the_schedule(
    client: Client, server: ServerThread
) -> None:
    """Unset and 0 differ: a till that named no bonus cannot replay as one that named 0."""
    prepared = prepare_top_up(client)
    first = prepared.method(prepared.request, timeout=30)
    before = state_of(client, server, prepared)
    for bonus in (0, first.bonus_minor):
        named = _with(prepared.request, bonus_minor=bonus)
        with pytest.raises(grpc.RpcError) as failure:
            prepared.method(named, timeout=30)
        problem = refusal(failure.value)
        assert (problem.code, problem.reason) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
        )
    assert state_of(client, server, prepared) == before


def test_same_request_id_for_another_member_of_the_program_is_reuse(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    request_id = new_id("req")
    first = client.earn(program, alice, 100, request_id=request_id)
    bob_before = account_state(client, server, program, bob)

    with pytest.raises(grpc.RpcError) as failure:
        client.earn(program, bob, 100, request_id=request_id)

    problem = refusal(failure.value)
    assert problem.code == grpc.StatusCode.ALREADY_EXISTS
    assert problem.reason == "IDEMPOTENCY_KEY_REUSED"
    assert account_state(client, server, program, bob) == bob_before
    assert bob_before.account.points_available == 0
    alice_state = account_state(client, server, program, alice)
    assert alice_state.account.points_available == 100
    assert alice_state.transaction_ids.count(first.transaction_id) == 1


def test_same_request_id_for_another_command_is_reuse(client: Client, server: ServerThread) -> None:
    program, member = client.member()
    request_id = new_id("req")
    client.earn(program, member, 100, request_id=request_id)
    before = account_state(client, server, program, member)

    with pytest.raises(grpc.RpcError) as failure:
        client.redeem(program, member, 100, request_id=request_id)

    problem = refusal(failure.value)
    assert problem.code == grpc.StatusCode.ALREADY_EXISTS
    assert problem.reason == "IDEMPOTENCY_KEY_REUSED"
    assert account_state(client, server, program, member) == before


def test_request_ids_are_per_program(client: Client, server: ServerThread) -> None:
    program_a, member_a = client.member()
    program_b = client.create_program()
    member_b = client.enroll(program_b, member_a)  # same member id, other program
    request_id = new_id("req")

    in_a = client.earn(program_a, member_a, 100, request_id=request_id)
    in_b = client.earn(program_b, member_b, 100, request_id=request_id)

    assert in_a.transaction_id != in_b.transaction_id
    assert in_a.position != in_b.position
    assert in_a.account.program_id == program_a
    assert in_b.account.program_id == program_b
    assert in_b.account.points_available == 100
    for program, member, earned in ((program_a, member_a, in_a), (program_b, member_b, in_b)):
        state = account_state(client, server, program, member)
        assert state.account.points_available == 100
        assert state.transaction_ids[1:] == [earned.transaction_id]


def test_program_request_ids_are_per_program_too(client: Client) -> None:
    request_id = new_id("req")
    first = client.create_program(request_id=request_id)
    second = client.create_program(request_id=request_id)

    assert program_state(client, first).program_id == first
    assert program_state(client, second).program_id == second


# ---------------------------------------------------------------------- refusals


def test_a_refused_command_records_nothing_and_can_be_retried_with_its_request_id(
    client: Client, server: ServerThread
) -> None:
    """Refusals are not recorded: the key stays free, so the same request succeeds once the
    account can take it, and from then on replays that success."""
    program, member = client.member()
    client.earn(program, member, 20)
    request_id = new_id("req")
    before = account_state(client, server, program, member)

    with pytest.raises(grpc.RpcError) as failure:
        client.redeem(program, member, 50, request_id=request_id)
    problem = refusal(failure.value)
    assert problem.code == grpc.StatusCode.FAILED_PRECONDITION
    assert problem.reason == "INSUFFICIENT_POINTS"
    assert account_state(client, server, program, member) == before

    # Asked again unchanged: still refused, still nothing written.
    with pytest.raises(grpc.RpcError) as again:
        client.redeem(program, member, 50, request_id=request_id)
    assert refusal(again.value).reason == "INSUFFICIENT_POINTS"
    assert account_state(client, server, program, member) == before

    client.earn(program, member, 40)
    redeemed = client.redeem(program, member, 50, request_id=request_id)

    assert redeemed.account.points_available == 10
    state = account_state(client, server, program, member)
    assert state.account.points_available == 10
    assert len(state.transaction_ids) == 4  # enroll, earn, earn, redeem
    assert state.transaction_ids[-1] == redeemed.transaction_id
    assert client.redeem(program, member, 50, request_id=request_id) == redeemed


def test_a_refused_command_does_not_reserve_its_key_for_its_payload(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member()
    request_id = new_id("req")
    with pytest.raises(grpc.RpcError) as failure:
        client.redeem(program, member, 50, request_id=request_id)
    assert refusal(failure.value).reason == "INSUFFICIENT_POINTS"

    earned = client.earn(program, member, 50, request_id=request_id)

    assert earned.account.points_available == 50
    state = account_state(client, server, program, member)
    assert state.transaction_ids[1:] == [earned.transaction_id]


def test_an_invalid_request_does_not_consume_its_key(client: Client) -> None:
    program, member = client.member()
    request_id = new_id("req")
    with pytest.raises(grpc.RpcError) as failure:
        client.earn(program, member, 0, request_id=request_id)
    assert refusal(failure.value).code == grpc.StatusCode.INVALID_ARGUMENT

    earned = client.earn(program, member, 10, request_id=request_id)
    assert earned.account.points_available == 10


# ---------------------------------------------------------------------- concurrency

DUPLICATES = 8


def deliver_concurrently(target: str, method: str, request: Any) -> list[Any]:
    """Send `request` DUPLICATES times at once, each over its own connection.

    Returns each delivery's response, or its grpc.RpcError."""
    channels = [
        # A local subchannel pool: a real TCP connection per channel, not a shared one.
        grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(DUPLICATES)
    ]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        barrier = threading.Barrier(DUPLICATES)
        results: list[Any] = [None] * DUPLICATES

        def deliver(i: int) -> None:
            stub = pb_grpc.LedgerServiceStub(channels[i])
            barrier.wait(timeout=30)
            try:
                results[i] = getattr(stub, method)(request, timeout=60)
            except grpc.RpcError as e:
                results[i] = e

        threads = [threading.Thread(target=deliver, args=(i,)) for i in range(DUPLICATES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        return results
    finally:
        for channel in channels:
            channel.close()


def describe(results: list[Any]) -> list[str]:
    return [
        f"{refusal(r).code} {refusal(r).reason} {refusal(r).message}"
        if isinstance(r, grpc.RpcError)
        else "ok"
        for r in results
    ]


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_duplicate_earns_commit_once(
    client: Client, server: ServerThread, attempt: int
) -> None:
    program, member = client.member()
    client.earn(program, member, 5)
    request = pb.EarnRequest(
        store_id="store-1",
        program_id=program,
        member_id=member,
        points=100,
        purchase_minor=900,
        order_ref=f"order-{attempt}",
        request_id=new_id("req"),
    )

    results = deliver_concurrently(server.target, "Earn", request)

    assert describe(results) == ["ok"] * DUPLICATES
    first = results[0]
    assert all(r == first for r in results)
    assert first.account.points_available == 105
    state = account_state(client, server, program, member)
    assert state.account.points_available == 105
    assert state.transaction_ids.count(first.transaction_id) == 1
    assert len(state.transaction_ids) == 3  # enroll, earn 5, earn 100
    assert state.account.version == first.account.version


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_duplicate_redeems_commit_once(
    client: Client, server: ServerThread, attempt: int
) -> None:
    program, member = client.member()
    client.earn(program, member, 100)
    request = pb.RedeemRequest(
        store_id="store-1",
        program_id=program,
        member_id=member,
        points=60,
        order_ref=f"order-{attempt}",
        request_id=new_id("req"),
    )

    results = deliver_concurrently(server.target, "Redeem", request)

    # A second commit would have been refused (60 + 60 > 100) or doubled the redemption.
    assert describe(results) == ["ok"] * DUPLICATES
    first = results[0]
    assert all(r == first for r in results)
    assert first.account.points_available == 40
    assert sum(c.points for c in first.consumed) == 60
    state = account_state(client, server, program, member)
    assert state.account.points_available == 40
    assert state.transaction_ids.count(first.transaction_id) == 1
    assert len(state.transaction_ids) == 3  # enroll, earn, redeem
    assert state.account.version == first.account.version


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_duplicate_enrollments_commit_once(
    client: Client, server: ServerThread, attempt: int
) -> None:
    program = client.create_program()
    member = new_id("mem")
    request = pb.EnrollMemberRequest(
        program_id=program,
        member_id=member,
        store_id=f"store-{attempt}",
        request_id=new_id("req"),
    )

    results = deliver_concurrently(server.target, "EnrollMember", request)

    assert describe(results) == ["ok"] * DUPLICATES
    first = results[0]
    assert all(r == first for r in results)
    state = account_state(client, server, program, member)
    assert state.transaction_ids == [first.transaction_id]
    assert state.account.version == first.account.version


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_duplicate_program_creations_commit_once(
    client: Client, server: ServerThread, attempt: int
) -> None:
    program = new_id("prog")
    request = pb.CreateProgramRequest(
        program_id=program,
        display_name=f"Race {attempt}",
        currency="EUR",
        request_id=new_id("req"),
    )

    results = deliver_concurrently(server.target, "CreateProgram", request)

    assert describe(results) == ["ok"] * DUPLICATES
    first = results[0]
    assert all(r == first for r in results)
    assert program_state(client, program).version == first.program.version == 1


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_duplicate_spends_commit_once(
    client: Client, server: ServerThread, attempt: int
) -> None:
    program, member = client.member()
    client.top_up(program, member, 1_000, bonus_minor=0)
    request = pb.SpendRequest(
        store_id="store-1",
        program_id=program,
        member_id=member,
        amount_minor=600,
        order_ref=f"order-{attempt}",
        request_id=new_id("req"),
    )

    results = deliver_concurrently(server.target, "Spend", request)

    # A second commit would have been refused (600 + 600 > 1,000) or spent twice.
    assert describe(results) == ["ok"] * DUPLICATES
    first = results[0]
    assert all(r == first for r in results)
    assert first.account.stored_value_cash_minor == 400
    state = account_state(client, server, program, member)
    assert state.account.stored_value_cash_minor == 400
    assert state.transaction_ids.count(first.transaction_id) == 1
    assert len(state.transaction_ids) == 3  # enroll, top-up, spend
    assert state.account.version == first.account.version


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_duplicate_top_ups_commit_once(
    client: Client, server: ServerThread, attempt: int
) -> None:
    program, member = client.member(top_up_bonus=SCHEDULE)
    request = pb.TopUpRequest(
        store_id="store-1",
        program_id=program,
        member_id=member,
        cash_minor=1_000 + attempt,
        payment_ref=f"pay-{attempt}",
        request_id=new_id("req"),
    )

    results = deliver_concurrently(server.target, "TopUp", request)

    assert describe(results) == ["ok"] * DUPLICATES
    first = results[0]
    assert all(r == first for r in results)
    state = account_state(client, server, program, member)
    assert (state.account.stored_value_cash_minor, state.account.stored_value_bonus_minor) == (
        1_000 + attempt,
        160,  # 150 + 1% of 1,000..1,002
    )
    assert len(state.transaction_ids) == 2  # enroll, top-up
