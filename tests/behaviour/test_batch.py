"""ExecuteBatch: many commands in one call, each idempotent, validated and decided like a
single one; atomic batches are all or nothing."""

from __future__ import annotations

import grpc
import pytest

from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, new_id, refusal, refused


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


def test_a_batch_mixes_commands_refusals_and_duplicates(client: Client) -> None:
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
    history = client.transactions(program, alice, min_position=again.position)
    assert len(history.transactions) == 3  # enroll, earn, redeem


def test_an_atomic_batch_with_a_refusal_applies_nothing(client: Client) -> None:
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
    account = client.account(program, alice, min_position=seeded.position)
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


def test_an_atomic_batch_with_a_reused_request_id_applies_nothing(client: Client) -> None:
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
    account = client.account(program, alice, min_position=seeded.position)
    assert (account.points_available, account.version) == (10, seeded.account.version)


def test_an_atomic_batch_repeating_a_request_id_with_another_payload_applies_nothing(
    client: Client,
) -> None:
    program, alice = client.member()
    seeded = client.earn(program, alice, 10)
    key = new_id("twice")

    response = run(client, program, [earn(alice, 1, key), earn(alice, 2, key)], atomic=True)

    assert [reason(r) for r in response.results] == [
        "ATOMIC_BATCH_ABORTED",
        "IDEMPOTENCY_KEY_REUSED",
    ]
    account = client.account(program, alice, min_position=seeded.position)
    assert (account.points_available, account.version) == (10, seeded.account.version)


def test_a_retried_atomic_batch_answers_from_its_records_and_writes_nothing(
    client: Client,
) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    commands = [earn(alice, 100), redeem(alice, 60), earn(bob, 7)]
    first = run(client, program, commands, atomic=True)

    again = run(client, program, commands, atomic=True)

    assert list(again.results) == list(first.results)
    assert again.position == first.position
    history = client.transactions(program, alice, min_position=first.position)
    assert len(history.transactions) == 3  # enroll, earn, redeem: nothing twice
    assert client.account(program, bob, min_position=first.position).version == 2


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
