"""The double-entry journal through ReportService, on both backends: every posting of a
history, the trial balance summing to zero per unit, members' ledger accounts equal to their
balances, ListPostings by transaction and by ledger account with control totals, paging."""

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
    client.earn(program, bob, 40, store_id="s1")
    client.reverse(program, alice, earned.transaction_id, points=60, store_id="s2")
    last = client.adjust(program, bob, -10)

    trial = reports(client).GetTrialBalance(
        rpb.GetTrialBalanceRequest(program_id=program, min_position=last.position)
    )
    assert trial.position >= last.position
    by_unit: dict[str, int] = {}
    for row in trial.rows:
        by_unit[row.unit] = by_unit.get(row.unit, 0) + row.balance
        assert row.balance == row.credit - row.debit
    assert by_unit == {"points": 0}
    got = balances(trial)
    a = client.account(program, alice, min_position=last.position)
    b = client.account(program, bob, min_position=last.position)
    assert got.get(f"member:{alice}:points", 0) == a.points_available
    assert got.get(f"member:{alice}:points_held", 0) == a.points_held
    assert got.get(f"member:{alice}:points_debt", 0) == -a.points_debt
    assert got.get(f"member:{bob}:points", 0) == b.points_available
    assert got["store:s1:points_issued"] == -140
    assert got["store:s2:points_issued"] == 60  # the refund at another store
    assert got["store:s2:points_redeemed"] == 30
    assert got["program:points_adjusted"] == 10


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
