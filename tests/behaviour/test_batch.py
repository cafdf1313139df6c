"""ExecuteBatch: many commands in one call, each idempotent, validated and decided like a
single one; atomic batches are all or nothing."""

from __future__ import annotations

import grpc
import pytest

from ledger.domain.ids import request_id_key
from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, ServerThread, log_head, new_id, refusal, refused


def earn(member: str, points: int, request_id: str | None = None) -> pb.BatchCommand:
    return pb.BatchCommand(
        earn=pb.EarnRequest(
            member_id=member, points=points, store_id="s1", request_id=request_id or new_id("r")
        )
    )


def redeem(member: str, points: int, request_id: str | None = None) -> pb.BatchCommand:
    return pb.BatchCommand(
        redeem=pb.RedeemRequest(
            member_id=member, points=points, store_id="s1", request_id=request_id or new_id("r")
        )
    )


def run(
    client: Client, program: str, commands: list[pb.BatchCommand], atomic: bool = False
) -> pb.ExecuteBatchResponse:
    response: pb.ExecuteBatchResponse = client.stub.ExecuteBatch(
        pb.ExecuteBatchRequest(program_id=program, commands=commands, atomic=atomic), timeout=60
    )
    return response


def reason(result: pb.BatchResult) -> str:
    from google.rpc import error_details_pb2

    for detail in result.error.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def test_a_batch_mixes_commands_refusals_and_duplicates(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    commands = [
        earn(alice, 100, "a-1"),
        redeem(alice, 30, "a-2"),
        redeem(alice, 500, "a-3"),  # refused: only 70 left
        earn(bob, 10, "b-1"),
        earn(alice, 100, "a-1"),  # a duplicate of the first: the same answer
        redeem(bob, 10, "b-2"),
        pb.BatchCommand(
            earn=pb.EarnRequest(member_id=bob, points=0, store_id="s1", request_id="b-3")
        ),  # invalid
    ]

    response = run(client, program, commands)

    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["earn", "redeem", "error", "earn", "earn", "redeem", "error"]
    assert response.results[1].redeem.account.points_available == 70
    assert response.results[2].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reason(response.results[2]) == "INSUFFICIENT_POINTS"
    assert response.results[4].earn == response.results[0].earn
    assert response.results[5].redeem.account.points_available == 0
    assert response.results[6].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "commands[6].earn.points" in response.results[6].error.message
    assert response.position == max(
        response.results[i].earn.position or response.results[i].redeem.position
        for i in (0, 1, 3, 5)
    )
    assert client.account(program, alice, min_position=response.position).points_available == 70
    assert client.account(program, bob, min_position=response.position).points_available == 0

    # The whole batch again: every command answers as before, nothing is written twice.
    again = run(client, program, commands)
    assert [r.WhichOneof("result") for r in again.results] == kinds
    assert again.results[0].earn == response.results[0].earn
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    history = client.transactions(program, alice, min_position=log_head(server))
    assert len(history.transactions) == 3  # enroll, earn, redeem


def test_an_atomic_batch_with_a_refusal_applies_nothing(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member()
    seeded = client.earn(program, alice, 50)

    response = run(
        client, program, [earn(alice, 100), redeem(alice, 500), earn(alice, 5)], atomic=True
    )

    assert [reason(r) for r in response.results] == [
        "ATOMIC_BATCH_ABORTED",
        "INSUFFICIENT_POINTS",
        "ATOMIC_BATCH_ABORTED",
    ]
    assert response.results[0].error.code == grpc.StatusCode.ABORTED.value[0]
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    account = client.account(program, alice, min_position=log_head(server))
    assert (account.points_available, account.version) == (50, seeded.account.version)


def test_an_atomic_batch_applies_all_in_order(client: Client) -> None:
    program, alice = client.member()
    bob = client.enroll(program)

    response = run(
        client, program, [earn(alice, 100), redeem(alice, 60), earn(bob, 7)], atomic=True
    )

    assert [r.WhichOneof("result") for r in response.results] == ["earn", "redeem", "earn"]
    assert response.results[1].redeem.account.points_available == 40
    assert client.account(program, alice, min_position=response.position).points_available == 40
    assert client.account(program, bob, min_position=response.position).points_available == 7


@pytest.mark.parametrize(
    ("commands", "field"),
    [
        ([], "commands"),
        ([pb.BatchCommand()], "commands[0]"),
    ],
)
def test_bad_batches_are_invalid_arguments(
    client: Client, commands: list[pb.BatchCommand], field: str
) -> None:
    program, _ = client.member()
    if field == "commands":
        with pytest.raises(grpc.RpcError) as failure:
            run(client, program, commands)
        problem = refusal(failure.value)
        assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "commands" in problem.fields
    else:
        response = run(client, program, commands)
        assert response.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert field in response.results[0].error.message


def test_a_command_for_another_program_is_refused_alone(client: Client) -> None:
    program, alice = client.member()
    other = pb.BatchCommand(
        earn=pb.EarnRequest(
            program_id="elsewhere", member_id=alice, points=5, store_id="s1", request_id=new_id("r")
        )
    )
    response = run(client, program, [earn(alice, 10), other])
    assert response.results[0].earn.account.points_available == 10
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_an_atomic_batch_with_a_reused_request_id_applies_nothing(
    client: Client, server: ServerThread
) -> None:
    """Regression: the reused key was answered ALREADY_EXISTS and the rest committed."""
    program, alice = client.member()
    key = new_id("k1")
    seeded = client.earn(program, alice, 10, request_id=key)

    response = run(client, program, [earn(alice, 99, key), earn(alice, 5)], atomic=True)

    assert [reason(r) for r in response.results] == [
        "IDEMPOTENCY_KEY_REUSED",
        "ATOMIC_BATCH_ABORTED",
    ]
    assert response.results[0].error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    account = client.account(program, alice, min_position=log_head(server))
    assert (account.points_available, account.version) == (10, seeded.account.version)


def test_an_atomic_batch_repeating_a_request_id_with_another_payload_applies_nothing(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member()
    seeded = client.earn(program, alice, 10)
    key = new_id("twice")

    response = run(client, program, [earn(alice, 1, key), earn(alice, 2, key)], atomic=True)

    assert [reason(r) for r in response.results] == [
        "ATOMIC_BATCH_ABORTED",
        "IDEMPOTENCY_KEY_REUSED",
    ]
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    account = client.account(program, alice, min_position=log_head(server))
    assert (account.points_available, account.version) == (10, seeded.account.version)


def test_a_retried_atomic_batch_answers_from_its_records_and_writes_nothing(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    commands = [earn(alice, 100), redeem(alice, 60), earn(bob, 7)]
    first = run(client, program, commands, atomic=True)

    again = run(client, program, commands, atomic=True)

    assert list(again.results) == list(first.results)
    assert again.position == first.position
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    head = log_head(server)
    history = client.transactions(program, alice, min_position=head)
    assert len(history.transactions) == 3  # enroll, earn, redeem: nothing twice
    assert client.account(program, bob, min_position=head).version == 2


def test_a_command_the_server_fails_on_is_internal_and_costs_no_other(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typing import Any

    from ledger.application import commands as c
    from ledger.application import handlers

    program, alice = client.member()
    unlucky = client.enroll(program)
    real = handlers.handler_for(c.EarnPoints)

    def buggy(cmd: c.EarnPoints, ctx: handlers.CommandContext) -> Any:
        if cmd.member_id == unlucky:
            raise ZeroDivisionError("a bug")
        return real(cmd, ctx)

    monkeypatch.setitem(handlers._HANDLERS, c.EarnPoints, buggy)
    response = run(client, program, [earn(alice, 10), earn(unlucky, 10), earn(alice, 5)])

    assert [r.WhichOneof("result") for r in response.results] == ["earn", "error", "earn"]
    assert response.results[1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert reason(response.results[1]) == "INTERNAL"
    assert client.account(program, alice, min_position=response.position).points_available == 15
    problem = refused(lambda: client.earn(program, unlucky, 1))
    assert problem.code == grpc.StatusCode.INTERNAL


# ---------------------------------------------------------------------- stored value


def top_up(
    member: str, cash: int, bonus: int | None = None, request_id: str | None = None
) -> pb.BatchCommand:
    request = pb.TopUpRequest(
        member_id=member, cash_minor=cash, store_id="s1", request_id=request_id or new_id("r")
    )
    if bonus is not None:
        request.bonus_minor = bonus
    return pb.BatchCommand(top_up=request)


def spend(member: str, amount: int, request_id: str | None = None) -> pb.BatchCommand:
    return pb.BatchCommand(
        spend=pb.SpendRequest(
            member_id=member,
            amount_minor=amount,
            store_id="s2",
            request_id=request_id or new_id("r"),
        )
    )


def refund(
    program: str, member: str, of_request_id: str, amount: int, request_id: str | None = None
) -> pb.BatchCommand:
    """A Reverse by money of the command sent with `of_request_id` (its transaction id is
    derived from the programme and the request_id, so a batch may name one of its own)."""
    return pb.BatchCommand(
        reverse=pb.ReverseRequest(
            member_id=member,
            transaction_id=str(request_id_key(program, of_request_id)),
            amount_minor=amount,
            store_id="s3",
            request_id=request_id or new_id("r"),
        )
    )


def test_a_batch_tops_up_spends_and_refunds_with_refusals_and_duplicates(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member(
        top_up_bonus=[pb.TopUpBonusStep(min_cash_minor=1_000, bonus_minor=200)]
    )
    bob = client.enroll(program)
    commands = [
        top_up(alice, 1_000, request_id="a-1"),  # the schedule: 200 of bonus
        spend(alice, 600, request_id="a-2"),  # 600 * 1,000 / 1,200 = 500 cash, 100 bonus
        spend(alice, 601, request_id="a-3"),  # refused: 600 left
        top_up(bob, 50, bonus=5, request_id="b-1"),
        top_up(alice, 1_000, request_id="a-1"),  # a duplicate of the first: the same answer
        refund(program, alice, "a-2", 60, request_id="a-4"),  # cash 500 * 60 / 600 = 50
        spend(bob, 0, request_id="b-2"),  # invalid
        pb.BatchCommand(
            top_up=pb.TopUpRequest(member_id=bob, cash_minor=5, request_id="b-3")
        ),  # invalid: no store
        spend(bob, 55, request_id="b-4"),
    ]

    response = run(client, program, commands)

    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == [
        "top_up",
        "spend",
        "error",
        "top_up",
        "top_up",
        "reverse",
        "error",
        "error",
        "spend",
    ]
    results = response.results
    assert (results[0].top_up.bonus_minor, results[0].top_up.bonus_step_min_cash_minor) == (
        200,
        1_000,
    )
    assert (results[1].spend.cash_minor, results[1].spend.bonus_minor) == (500, 100)
    assert results[2].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert reason(results[2]) == "INSUFFICIENT_STORED_VALUE"
    assert results[4].top_up == results[0].top_up
    assert (results[5].reverse.cash_minor, results[5].reverse.bonus_minor) == (50, 10)
    assert results[5].reverse.reverses_transaction_id == results[1].spend.transaction_id
    assert results[6].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "commands[6].spend.amount_minor" in results[6].error.message
    assert results[7].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "commands[7].top_up.store_id" in results[7].error.message
    assert (results[8].spend.cash_minor, results[8].spend.bonus_minor) == (50, 5)
    assert client.stored_value(program, alice, response.position) == (550, 110)
    assert client.stored_value(program, bob, response.position) == (0, 0)

    # The whole batch again: every command answers as before, nothing is written twice.
    again = run(client, program, commands)
    assert [r.WhichOneof("result") for r in again.results] == kinds
    for i in (0, 1, 3, 5, 8):
        assert again.results[i] == results[i]
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    head = log_head(server)
    history = client.transactions(program, alice, min_position=head)
    assert [t.kind for t in history.transactions] == [
        pb.TRANSACTION_KIND_ENROLL,
        pb.TRANSACTION_KIND_TOP_UP,
        pb.TRANSACTION_KIND_SPEND,
        pb.TRANSACTION_KIND_REVERSE,
    ]
    assert client.stored_value(program, alice, head) == (550, 110)


def test_an_atomic_batch_with_a_refused_spend_applies_nothing(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    seeded = client.top_up(program, alice, 100, bonus_minor=0)
    bob_before = client.account(program, bob, min_position=seeded.position)

    response = run(
        client,
        program,
        [top_up(alice, 50, bonus=10), spend(alice, 100), top_up(bob, 70), spend(alice, 61)],
        atomic=True,
    )

    # 100 + 60 on the card, 100 spent: the last 61 does not fit the 60 left.
    assert [reason(r) for r in response.results] == [
        "ATOMIC_BATCH_ABORTED",
        "ATOMIC_BATCH_ABORTED",
        "ATOMIC_BATCH_ABORTED",
        "INSUFFICIENT_STORED_VALUE",
    ]
    assert response.results[0].error.code == grpc.StatusCode.ABORTED.value[0]
    assert response.results[3].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    head = log_head(server)
    account = client.account(program, alice, min_position=head)
    assert (
        account.stored_value_cash_minor,
        account.stored_value_bonus_minor,
        account.version,
    ) == (100, 0, seeded.account.version)
    assert client.account(program, bob, min_position=head) == bob_before
    history = client.transactions(program, alice, min_position=head)
    assert len(history.transactions) == 2  # enroll, the seeded top-up


def test_an_atomic_batch_with_an_invalid_top_up_applies_nothing(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member()
    seeded = client.top_up(program, alice, 100, bonus_minor=0)

    response = run(client, program, [spend(alice, 10), top_up(alice, 0)], atomic=True)

    assert reason(response.results[0]) == "ATOMIC_BATCH_ABORTED"
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "commands[1].top_up.cash_minor" in response.results[1].error.message
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    account = client.account(program, alice, min_position=log_head(server))
    assert (account.stored_value_cash_minor, account.version) == (100, seeded.account.version)


def test_an_atomic_batch_of_stored_value_applies_all_in_order(
    client: Client, server: ServerThread
) -> None:
    program, alice = client.member(
        stored_value_split=pb.STORED_VALUE_SPLIT_CASH_FIRST,
        cash_out_policy=pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS,
    )
    bob = client.enroll(program)

    commands = [
        top_up(alice, 100, bonus=20, request_id="t-1"),
        spend(alice, 110),  # cash first: 100 cash, 10 bonus
        top_up(bob, 30, bonus=0),
        refund(program, alice, "t-1", 0),  # cash-out: no cash left, the 10 bonus lapses
        spend(bob, 30),
    ]

    response = run(client, program, commands, atomic=True)

    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["top_up", "spend", "top_up", "reverse", "spend"]
    results = response.results
    assert (results[1].spend.cash_minor, results[1].spend.bonus_minor) == (100, 10)
    out = results[3].reverse
    assert (out.refunded_cash_minor, out.bonus_deducted_minor, out.forfeited_bonus_minor) == (
        0,
        0,
        10,
    )
    assert client.stored_value(program, alice, response.position) == (0, 0)
    assert client.stored_value(program, bob, response.position) == (0, 0)
    history = client.transactions(program, alice, min_position=response.position)
    assert [t.kind for t in history.transactions][1:] == [
        pb.TRANSACTION_KIND_TOP_UP,
        pb.TRANSACTION_KIND_SPEND,
        pb.TRANSACTION_KIND_REVERSE,
    ]
    # Retried: answered from its records, nothing written twice.
    again = run(client, program, commands, atomic=True)
    assert list(again.results) == list(results)
    # The whole log, not an earlier answer's position: had the batch written, it would be in it.
    assert client.account(program, alice, min_position=log_head(server)).version == 4
