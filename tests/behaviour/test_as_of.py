"""as_of reads (decision 20): GetAccount, ListTransactions and ListLots as the ledger knew them
at a recorded instant, over real gRPC on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, new_id, refused, ts, wait_past

TIERS = [
    pb.Tier(code="SILVER", name="Silver", threshold=100),
    pb.Tier(code="GOLD", name="Gold", threshold=500),
]


def account_as_of(client: Client, program: str, member: str, as_of: datetime) -> pb.Account:
    response = client.stub.GetAccount(
        pb.GetAccountRequest(program_id=program, member_id=member, as_of=ts(as_of)), timeout=30
    )
    account: pb.Account = response.account
    return account


def transactions_as_of(
    client: Client, program: str, member: str, as_of: datetime, **f: Any
) -> pb.ListTransactionsResponse:
    response: pb.ListTransactionsResponse = client.stub.ListTransactions(
        pb.ListTransactionsRequest(program_id=program, member_id=member, as_of=ts(as_of), **f),
        timeout=30,
    )
    return response


def lots(client: Client, program: str, member: str, **f: Any) -> list[pb.Lot]:
    response = client.stub.ListLots(
        pb.ListLotsRequest(program_id=program, member_id=member, **f), timeout=30
    )
    return list(response.lots)


def moment_after() -> datetime:
    """Now, and the wall clock past it: the next command is recorded strictly later."""
    moment = datetime.now(UTC)
    wait_past(moment)
    return moment


class History:
    """Commands of one member, with each answer's account, the lots then, and an instant
    between that command and the next."""

    def __init__(self, client: Client, program: str, member: str) -> None:
        self.client, self.program, self.member = client, program, member
        self.steps: list[tuple[datetime, pb.Account, list[pb.Lot], list[str]]] = []
        self.transaction_ids: list[str] = []

    def after(self, response: Any) -> Any:
        self.transaction_ids.append(response.transaction_id)
        now_lots = lots(
            self.client,
            self.program,
            self.member,
            include_closed=True,
            min_position=response.position,
        )
        self.steps.append((moment_after(), response.account, now_lots, list(self.transaction_ids)))
        return response


def test_as_of_between_commands_is_the_account_then(client: Client) -> None:
    program = client.create_program(tiers=TIERS)
    enrolled = client.stub.EnrollMember(
        pb.EnrollMemberRequest(
            program_id=program, member_id=new_id("mem"), request_id=new_id("req")
        ),
        timeout=30,
    )
    member = enrolled.account.member_id
    history = History(client, program, member)
    history.after(enrolled)
    first = history.after(client.earn(program, member, 150))
    history.after(client.earn(program, member, 40, qualifying=False))
    hold = history.after(client.hold(program, member, 60))
    history.after(client.top_up(program, member, 1000, bonus_minor=100))
    history.after(client.spend(program, member, 300))
    history.after(client.capture(program, member, hold.hold_id, 25))
    history.after(client.redeem(program, member, 30))
    # A refund of the earn: the account goes below SILVER's threshold.
    history.after(client.reverse(program, member, first.transaction_id, 80))
    history.after(client.earn(program, member, 10))

    for moment, account, lots_then, ids_then in history.steps:
        assert account_as_of(client, program, member, moment) == account
        assert lots(client, program, member, include_closed=True, as_of=ts(moment)) == lots_then
        open_then = [lot for lot in lots_then if lot.remaining > 0 or lot.held > 0]
        assert lots(client, program, member, as_of=ts(moment)) == open_then
        listed = transactions_as_of(client, program, member, moment, page_size=1000)
        assert [t.transaction_id for t in listed.transactions] == ids_then

    tiers = [account.tier_code for _, account, _, _ in history.steps]
    assert tiers[0] == ""
    assert tiers[1] == "SILVER"
    assert tiers[-2] == ""
    assert tiers[-1] == ""
    held = [account.points_held for _, account, _, _ in history.steps]
    assert held[3] == 60
    assert held[6] == 0
    stored = [
        (a.stored_value_cash_minor, a.stored_value_bonus_minor) for _, a, _, _ in history.steps
    ]
    assert stored[3] == (0, 0)
    assert stored[4] == (1000, 100)
    assert stored[5][0] + stored[5][1] == 800
    # The exact instant a command was recorded is included (as_of is inclusive).
    recorded = [t.recorded_at.ToDatetime(tzinfo=UTC) for t in listed.transactions]
    assert account_as_of(client, program, member, recorded[1]).points_available == 150
    assert account_as_of(client, program, member, recorded[1]).version == 2
    before_second = recorded[1] - timedelta(microseconds=1)
    assert account_as_of(client, program, member, before_second).version == 1


def test_as_of_before_enrolment_or_the_programme_is_not_found(client: Client) -> None:
    before_program = moment_after()
    program = client.create_program()
    before_member = moment_after()
    member = client.enroll(program)
    for rpc, request_type in (
        ("GetAccount", pb.GetAccountRequest),
        ("ListTransactions", pb.ListTransactionsRequest),
        ("ListLots", pb.ListLotsRequest),
    ):
        call = getattr(client.stub, rpc)

        def ask(
            moment: datetime, who: str = member, call: Any = call, request_type: Any = request_type
        ) -> Any:
            return call(
                request_type(program_id=program, member_id=who, as_of=ts(moment)), timeout=30
            )

        not_yet = refused(lambda: ask(before_member))
        assert not_yet.code == grpc.StatusCode.NOT_FOUND, rpc
        assert not_yet.reason == "MEMBER_NOT_FOUND", rpc
        assert "did not exist" in not_yet.message, rpc
        no_program = refused(lambda: ask(before_program))
        assert no_program.code == grpc.StatusCode.NOT_FOUND, rpc
        assert no_program.reason == "PROGRAM_NOT_FOUND", rpc
        assert "did not exist" in no_program.message, rpc
        stranger = refused(lambda: ask(datetime.now(UTC), "nobody"))
        assert stranger.reason == "MEMBER_NOT_FOUND", rpc
    assert account_as_of(client, program, member, datetime.now(UTC)).version == 1


def test_as_of_after_a_reversal_that_dropped_the_tier(client: Client) -> None:
    program = client.create_program(tiers=TIERS)
    member = client.enroll(program)
    earned = client.earn(program, member, 520)
    gold = moment_after()
    client.reverse(program, member, earned.transaction_id, 100)
    silver = moment_after()
    client.reverse(program, member, earned.transaction_id, 0)
    none = moment_after()
    at_gold = account_as_of(client, program, member, gold)
    assert (at_gold.tier_code, at_gold.qualifying_points) == ("GOLD", 520)
    at_silver = account_as_of(client, program, member, silver)
    assert (at_silver.tier_code, at_silver.qualifying_points) == ("SILVER", 420)
    assert (at_silver.next_tier_code, at_silver.points_to_next_tier) == ("GOLD", 80)
    at_none = account_as_of(client, program, member, none)
    assert (at_none.tier_code, at_none.qualifying_points, at_none.points_available) == ("", 0, 0)


def test_as_of_uses_the_tier_rules_recorded_then(client: Client) -> None:
    program = client.create_program(tiers=TIERS)
    member = client.enroll(program)
    client.earn(program, member, 150)
    before = moment_after()
    client.update_program(
        program, replace_tiers=True, tiers=[pb.Tier(code="BRONZE", name="Bronze", threshold=50)]
    )
    after = moment_after()
    assert account_as_of(client, program, member, before).tier_code == "SILVER"
    assert account_as_of(client, program, member, after).tier_code == "BRONZE"


def test_pages_with_as_of_are_bound_to_it(client: Client) -> None:
    program = client.create_program()
    member = client.enroll(program)
    ids = []
    cut = datetime.now(UTC)
    for i in range(1, 8):
        ids.append(client.earn(program, member, i).transaction_id)
        if i == 4:
            cut = moment_after()
    seen: list[str] = []
    token = ""
    while True:
        page = transactions_as_of(client, program, member, cut, page_size=2, page_token=token)
        seen += [t.transaction_id for t in page.transactions]
        token = page.next_page_token
        if not token:
            break
        last_token = token
    assert len(seen) == 5
    assert seen[1:] == ids[:4]
    # A token made with as_of is refused without it or with another as_of, and the reverse.
    without = refused(
        lambda: client.stub.ListTransactions(
            pb.ListTransactionsRequest(
                program_id=program, member_id=member, page_size=2, page_token=last_token
            ),
            timeout=30,
        )
    )
    assert without.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in without.fields
    other = refused(
        lambda: transactions_as_of(
            client,
            program,
            member,
            cut + timedelta(microseconds=1),
            page_size=2,
            page_token=last_token,
        )
    )
    assert "page_token" in other.fields
    plain = client.transactions(program, member, page_size=2).next_page_token
    assert (
        "page_token"
        in refused(
            lambda: transactions_as_of(client, program, member, cut, page_size=2, page_token=plain)
        ).fields
    )
    # since/until stay on business time, together with as_of.
    narrowed = transactions_as_of(
        client, program, member, cut, until=ts(datetime.now(UTC) + timedelta(days=1))
    )
    assert len(narrowed.transactions) == 5


def test_bad_as_of_is_invalid_argument(client: Client) -> None:
    program, member = client.member()
    future = ts(datetime.now(UTC) + timedelta(minutes=1))
    bad_nanos = ts(datetime.now(UTC))
    bad_nanos.nanos = -1
    for rpc, request_type in (
        ("GetAccount", pb.GetAccountRequest),
        ("ListTransactions", pb.ListTransactionsRequest),
        ("ListLots", pb.ListLotsRequest),
    ):
        for as_of, words in ((future, "future"), (bad_nanos, "nanos")):
            refusal = refused(
                lambda: getattr(client.stub, rpc)(  # noqa: B023 - called at once
                    request_type(program_id=program, member_id=member, as_of=as_of),  # noqa: B023
                    timeout=30,
                )
            )
            assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT, rpc
            assert words in refusal.fields["as_of"], rpc
    # Every bad field at once: as_of and the query's own.
    both = refused(
        lambda: client.stub.ListTransactions(
            pb.ListTransactionsRequest(
                program_id=program, member_id=member, page_size=5000, as_of=future
            ),
            timeout=30,
        )
    )
    assert {"as_of", "page_size"} <= both.fields.keys()
