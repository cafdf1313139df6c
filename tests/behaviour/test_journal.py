"""The double-entry journal through ReportService, on both backends: every posting of a
history, the trial balance (the general ledger, members as control accounts) summing to zero
per unit, each member's subsidiary accounts (ListPostings totals) equal to their balances and
adding up to the control account, ListPostings by transaction and by ledger account with
control totals, paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import report_pb2 as rpb
from ledger.v1 import report_pb2_grpc
from tests.support import Client, refused, ts


def reports(client: Client) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(client.channel)


def balances(response: rpb.GetTrialBalanceResponse) -> dict[str, int]:
    return {r.ledger_account: r.balance for r in response.rows}


def subsidiary(client: Client, program: str, account: str, min_position: int = 0) -> int:
    """A member's ledger account: the control total of its postings."""
    page = reports(client).ListPostings(
        rpb.ListPostingsRequest(
            program_id=program, ledger_account=account, page_size=1, min_position=min_position
        )
    )
    return int(page.total_amount)


def test_a_history_posts_balanced_entries_and_the_trial_balance_ties(client: Client) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    earned = client.earn(program, alice, 100, store_id="s1")
    client.redeem(program, alice, 30, store_id="s2")
    held = client.hold(program, alice, 20)
    client.stub.CaptureHold(
        pb.CaptureHoldRequest(
            program_id=program,
            member_id=alice,
            hold_id=held.hold_id,
            points=5,
            request_id="cap-1",
        )
    )
    bobs = client.earn(program, bob, 40, store_id="s1")
    client.reverse(program, alice, earned.transaction_id, points=60, store_id="s2")
    client.adjust(program, bob, -10)
    client.top_up(program, alice, 1000, bonus_minor=100, store_id="s1")
    client.spend(program, alice, 330, store_id="s2")
    client.top_up(program, bob, 500, bonus_minor=0, store_id="s2")
    last = client.reverse(program, bob, bobs.transaction_id, store_id="s3")  # 10 into debt

    trial = reports(client).GetTrialBalance(
        rpb.GetTrialBalanceRequest(program_id=program, min_position=last.position)
    )
    assert trial.position >= last.position
    by_unit: dict[str, int] = {}
    for row in trial.rows:
        by_unit[row.unit] = by_unit.get(row.unit, 0) + row.balance
        assert row.balance == row.credit - row.debit
    assert by_unit == {"points": 0, "EUR": 0}
    got = balances(trial)
    assert not [a for a in got if a.startswith("member:") and not a.startswith("member:*:")]
    accounts = {m: client.account(program, m, min_position=last.position) for m in (alice, bob)}
    # Per kind: each member's subsidiary account equals the account's balance, and the
    # members' add up to the control account.
    for kind, field, sign in (
        ("points", "points_available", 1),
        ("points_held", "points_held", 1),
        ("points_debt", "points_debt", -1),
        ("cash", "stored_value_cash_minor", 1),
        ("bonus", "stored_value_bonus_minor", 1),
    ):
        members = {m: subsidiary(client, program, f"member:{m}:{kind}") for m in accounts}
        assert members == {m: sign * getattr(a, field) for m, a in accounts.items()}, kind
        assert got.get(f"member:*:{kind}", 0) == sum(members.values()), kind
    assert got["member:*:points"] == 5  # alice 100 - 30 - 5 - 60; bob 40 - 10 - 30
    assert got["member:*:points_debt"] == -10  # bob's earn reversed: 10 more than he had
    assert got["store:s1:points_issued"] == -140
    assert got["store:s2:points_issued"] == 60  # the refund at another store
    assert got["store:s3:points_issued"] == 40
    assert got["store:s2:points_redeemed"] == 30
    assert got["program:points_adjusted"] == 10
    assert (got["member:*:cash"], got["member:*:bonus"]) == (1000 - 300 + 500, 100 - 30)
    assert got["store:s1:cash_received"] == -1000
    assert got["store:s1:cash_spent"] == 300  # s1's cash, spent at s2


def control(account: str) -> str:
    return f"member:*:{account.rsplit(':', 1)[1]}" if account.startswith("member:") else account


def test_the_trial_balance_as_of_a_moment_inside_a_day_or_after_whole_days(
    client: Client,
) -> None:
    """as_of inside today reads today's part-day from the postings, as_of tomorrow only the
    sums of whole days: both equal the postings recorded at or before it."""
    program, alice = client.member()
    bob = client.enroll(program, f"{alice}:points_held")  # a member id ending like a kind
    for i in range(4):
        client.earn(program, alice, 10 + i, store_id="s1")
        client.top_up(program, bob, 100 + i, bonus_minor=i, store_id="s2")
    last = client.redeem(program, alice, 7, store_id="s2")
    stub = reports(client)
    journal = stub.ListPostings(
        rpb.ListPostingsRequest(program_id=program, page_size=1000, min_position=last.position)
    ).postings
    times = sorted({p.recorded_at.ToDatetime(tzinfo=UTC) for p in journal})

    def trial(as_of: datetime | None) -> dict[tuple[str, str], tuple[int, int]]:
        request = rpb.GetTrialBalanceRequest(program_id=program)
        if as_of is not None:
            request.as_of.CopyFrom(ts(as_of))
        rows = stub.GetTrialBalance(request).rows
        return {(r.ledger_account, r.unit): (r.debit, r.credit) for r in rows}

    def expected(as_of: datetime) -> dict[tuple[str, str], tuple[int, int]]:
        sums: dict[tuple[str, str], tuple[int, int]] = {}
        for p in journal:
            if p.recorded_at.ToDatetime(tzinfo=UTC) <= as_of:
                d, c = sums.get((control(p.ledger_account), p.unit), (0, 0))
                sums[(control(p.ledger_account), p.unit)] = (
                    d - min(p.amount, 0),
                    c + max(p.amount, 0),
                )
        return sums

    for as_of in (times[0], times[3], times[-2], times[-2] + timedelta(microseconds=1)):
        assert trial(as_of) == expected(as_of), as_of
    assert trial(times[0] - timedelta(microseconds=1)) == {}
    everything = trial(None)
    assert everything == expected(times[-1])
    assert trial(datetime.now(UTC) + timedelta(days=1)) == everything
    # bob's accounts are member:<alice>:points_held:<kind>: no held points at all
    assert ("member:*:points_held", "points") not in everything
    assert everything[("member:*:cash", "EUR")] == (0, 406)


def test_postings_by_transaction_and_by_account_with_totals_and_pages(client: Client) -> None:
    program, alice = client.member()
    earns = [client.earn(program, alice, 10 * (i + 1), store_id="s1") for i in range(5)]
    stub = reports(client)

    one = stub.ListPostings(
        rpb.ListPostingsRequest(
            program_id=program,
            transaction_id=earns[2].transaction_id,
            min_position=earns[-1].position,
        )
    )
    assert sorted((p.ledger_account, p.amount) for p in one.postings) == [
        (f"member:{alice}:points", 30),
        ("store:s1:points_issued", -30),
    ]
    assert (one.total_count, one.total_amount) == (2, 0)

    account = f"member:{alice}:points"
    pages, token = [], ""
    while True:
        page = stub.ListPostings(
            rpb.ListPostingsRequest(
                program_id=program, ledger_account=account, page_size=2, page_token=token
            )
        )
        pages.append([p.amount for p in page.postings])
        assert (page.total_count, page.total_amount) == (5, 150)  # the whole, on every page
        token = page.next_page_token
        if not token:
            break
    assert pages == [[10, 20], [30, 40], [50]]

    later = datetime.now(UTC) + timedelta(hours=1)
    nothing = stub.ListPostings(rpb.ListPostingsRequest(program_id=program, since=ts(later)))
    assert (list(nothing.postings), nothing.total_count) == ([], 0)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"program_id": "bad id"}, "program_id"),
        ({"page_size": 5000}, "page_size"),
        ({"page_token": "nonsense"}, "page_token"),
        ({"min_position": -1}, "min_position"),
        (
            {
                "since": ts(datetime(2024, 1, 2, tzinfo=UTC)),
                "until": ts(datetime(2024, 1, 2, tzinfo=UTC)),
            },
            "until",
        ),
        (
            {
                "since": ts(datetime(2024, 1, 2, tzinfo=UTC)),
                "until": ts(datetime(2024, 1, 1, tzinfo=UTC)),
            },
            "until",
        ),
    ],
)
def test_bad_report_input_is_invalid_argument(
    client: Client, request_fields: dict[str, Any], field: str
) -> None:
    program, _ = client.member()
    fields: dict[str, Any] = {"program_id": program, **request_fields}
    problem = refused(lambda: reports(client).ListPostings(rpb.ListPostingsRequest(**fields)))
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in problem.fields


def test_an_unknown_program_is_not_found(client: Client) -> None:
    problem = refused(
        lambda: reports(client).GetTrialBalance(rpb.GetTrialBalanceRequest(program_id="nosuch"))
    )
    assert problem.code == grpc.StatusCode.NOT_FOUND
