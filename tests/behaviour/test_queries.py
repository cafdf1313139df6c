"""Queries: pagination, time filters, read-your-writes by min_position, tiers, lots, and the
program's settings as GetProgram shows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from ledger.v1 import ledger_pb2 as pb
from tests.support import Client, ServerThread, log_head, new_id, refusal, ts


def enroll(client: Client, program: str, **fields: Any) -> pb.EnrollMemberResponse:
    response: pb.EnrollMemberResponse = client.stub.EnrollMember(
        pb.EnrollMemberRequest(
            program_id=program, member_id=new_id("mem"), request_id=new_id("req"), **fields
        ),
        timeout=30,
    )
    return response


def all_pages(
    client: Client, program: str, member: str, page_size: int, **f: Any
) -> list[list[pb.Transaction]]:
    pages: list[list[pb.Transaction]] = []
    token = ""
    while True:
        page = client.transactions(program, member, page_size=page_size, page_token=token, **f)
        pages.append(list(page.transactions))
        token = page.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "pagination does not end"


def ids(transactions: list[pb.Transaction]) -> list[str]:
    return [t.transaction_id for t in transactions]


# ---------------------------------------------------------------------- pagination


@pytest.fixture
def seven_earns(client: Client) -> tuple[str, str, list[str], int]:
    """A member with an enrollment and 7 earns: (program, member, transaction ids, position)."""
    program = client.create_program()
    enrolled = enroll(client, program)
    member = enrolled.account.member_id
    transaction_ids = [enrolled.transaction_id]
    last = 0
    for i in range(1, 8):
        earned = client.earn(program, member, i, order_ref=f"order-{i}")
        transaction_ids.append(earned.transaction_id)
        last = earned.position
    return program, member, transaction_ids, last


def test_pages_of_three(client: Client, seven_earns: tuple[str, str, list[str], int]) -> None:
    program, member, expected, last = seven_earns

    pages = all_pages(client, program, member, 3, min_position=last)

    assert [len(p) for p in pages] == [3, 3, 2]
    assert [ids(p) for p in pages] == [expected[0:3], expected[3:6], expected[6:8]]
    assert [t.kind for t in pages[0]] == [
        pb.TRANSACTION_KIND_ENROLL,
        pb.TRANSACTION_KIND_EARN,
        pb.TRANSACTION_KIND_EARN,
    ]
    assert [t.points_delta for p in pages for t in p] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert [t.points_balance_after for p in pages for t in p] == [0, 1, 3, 6, 10, 15, 21, 28]
    positions = [t.position for p in pages for t in p]
    assert positions == sorted(positions)
    assert len(set(positions)) == 8


@pytest.mark.parametrize(
    ("page_size", "sizes"),
    [(1, [1] * 8), (4, [4, 4]), (7, [7, 1]), (8, [8]), (9, [8]), (0, [8]), (1000, [8])],
)
def test_page_sizes(
    client: Client,
    seven_earns: tuple[str, str, list[str], int],
    page_size: int,
    sizes: list[int],
) -> None:
    """A full last page still ends the listing: no trailing empty page."""
    program, member, expected, last = seven_earns

    pages = all_pages(client, program, member, page_size, min_position=last)

    assert [len(p) for p in pages] == sizes
    assert [i for p in pages for i in ids(p)] == expected


def test_a_page_token_continues_after_new_writes(
    client: Client, seven_earns: tuple[str, str, list[str], int]
) -> None:
    program, member, expected, last = seven_earns
    first = client.transactions(program, member, min_position=last, page_size=3)
    newer = client.earn(program, member, 100)

    rest = client.transactions(
        program,
        member,
        min_position=newer.position,
        page_size=10,
        page_token=first.next_page_token,
    )

    assert ids(list(first.transactions)) == expected[:3]
    assert ids(list(rest.transactions)) == [*expected[3:], newer.transaction_id]
    assert rest.next_page_token == ""


def test_histories_of_members_do_not_mix(client: Client) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    client.earn(program, alice, 10)
    last = client.earn(program, bob, 20)

    alice_rows = client.transactions(program, alice, min_position=last.position).transactions
    bob_rows = client.transactions(program, bob, min_position=last.position).transactions

    assert [t.points_delta for t in alice_rows] == [0, 10]
    assert [t.points_delta for t in bob_rows] == [0, 20]


# ---------------------------------------------------------------------- time filters


def test_since_and_until_filter_by_occurred_at(client: Client) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    program = client.create_program()
    member = enroll(client, program, occurred_at=ts(now - timedelta(days=30))).account.member_id
    earns = {}
    last = 0
    for days_ago in (5, 4, 3, 2, 1):
        earned = client.earn(
            program, member, days_ago * 10, occurred_at=ts(now - timedelta(days=days_ago))
        )
        earns[days_ago] = earned.transaction_id
        last = earned.position

    def listed(**f: Any) -> list[str]:
        return [
            i for p in all_pages(client, program, member, 2, min_position=last, **f) for i in ids(p)
        ]

    since, until = ts(now - timedelta(days=4)), ts(now - timedelta(days=2))
    # since is inclusive, until exclusive; the listing stays in log order.
    assert listed(since=since, until=until) == [earns[4], earns[3]]
    assert listed(since=since) == [earns[4], earns[3], earns[2], earns[1]]
    assert len(listed(until=until)) == 4  # the enrollment, 30 days ago, and 5, 4, 3 days ago
    assert listed(until=until)[1:] == [earns[5], earns[4], earns[3]]
    assert listed(since=ts(now - timedelta(days=1, seconds=-1))) == []
    assert listed(since=ts(now - timedelta(days=1))) == [earns[1]]

    rows = client.transactions(
        program, member, min_position=last, since=since, until=until
    ).transactions
    assert [(t.points_delta, t.occurred_at.ToDatetime(tzinfo=UTC)) for t in rows] == [
        (40, now - timedelta(days=4)),
        (30, now - timedelta(days=3)),
    ]
    assert all(t.recorded_at.ToDatetime(tzinfo=UTC) >= now for t in rows)


def test_late_upload_is_listed_in_log_order_with_its_business_time(client: Client) -> None:
    """An offline store uploads yesterday's earn after today's: both listed, in the order the
    ledger recorded them, each with its own occurred_at."""
    now = datetime.now(UTC).replace(microsecond=0)
    program = client.create_program()
    member = enroll(client, program, occurred_at=ts(now - timedelta(days=3))).account.member_id
    today = client.earn(program, member, 10)
    yesterday = client.earn(program, member, 20, occurred_at=ts(now - timedelta(days=1)))

    rows = client.transactions(program, member, min_position=yesterday.position).transactions

    assert ids(list(rows))[1:] == [today.transaction_id, yesterday.transaction_id]
    assert rows[2].occurred_at.ToDatetime(tzinfo=UTC) == now - timedelta(days=1)
    assert [t.points_balance_after for t in rows] == [0, 10, 30]


# ---------------------------------------------------------------------- read your writes


def test_min_position_reads_your_writes(client: Client) -> None:
    program, member = client.member()
    expected_balance = 0
    seen: list[str] = []
    for i in range(15):
        if i % 3 == 2:
            response: Any = client.redeem(program, member, 5)
            expected_balance -= 5
        else:
            response = client.earn(program, member, 10)
            expected_balance += 10
        seen.append(response.transaction_id)

        account = client.account(program, member, min_position=response.position)
        history = client.transactions(
            program, member, min_position=response.position, page_size=1000
        ).transactions
        lots = client.lots(program, member, min_position=response.position)

        assert account.points_available == expected_balance
        assert account.version == response.account.version
        assert ids(list(history))[1:] == seen
        assert sum(lot.remaining for lot in lots) == expected_balance


def test_get_account_matches_the_command_response(client: Client) -> None:
    program = client.create_program(
        tiers=[
            pb.Tier(code="SILVER", name="Silver", threshold=100),
            pb.Tier(code="GOLD", name="Gold", threshold=500),
        ]
    )
    enrolled = enroll(client, program, store_id="store-1")
    member = enrolled.account.member_id
    assert client.account(program, member, min_position=enrolled.position) == enrolled.account

    def checked(response: Any) -> Any:
        # Right after each command, the read model shows exactly the account it answered.
        assert client.account(program, member, min_position=response.position) == (response.account)
        return response

    first = checked(client.earn(program, member, 150))
    checked(client.earn(program, member, 40, qualifying=False))
    checked(client.redeem(program, member, 30))
    hold = checked(client.hold(program, member, 20))
    assert hold.account.points_held == 20
    checked(client.capture(program, member, hold.hold_id, 5))
    checked(client.adjust(program, member, 7))
    last = checked(client.reverse(program, member, first.transaction_id, 10))

    final = client.account(program, member, min_position=last.position)
    assert final.points_available == 150 + 40 - 30 - 5 + 7 - 10
    assert final.points_held == 0
    assert final.qualifying_points == 140
    assert (final.tier_code, final.next_tier_code, final.points_to_next_tier) == (
        "SILVER",
        "GOLD",
        360,
    )
    assert final.enrolled_at == enrolled.account.enrolled_at
    assert final.program_id == program
    assert final.member_id == member


def test_each_response_account_is_what_get_account_shows_then(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 50)
    assert client.account(program, member, min_position=earned.position) == earned.account
    held = client.hold(program, member, 20)
    assert client.account(program, member, min_position=held.position) == held.account


@pytest.mark.parametrize("rpc", ["GetAccount", "ListTransactions", "ListLots"])
def test_min_position_beyond_the_log_times_out_with_the_deadline(
    client: Client, server: ServerThread, rpc: str
) -> None:
    program, member = client.member()
    beyond = log_head(server) + 10**9
    request: Any = {
        "GetAccount": pb.GetAccountRequest,
        "ListTransactions": pb.ListTransactionsRequest,
        "ListLots": pb.ListLotsRequest,
    }[rpc](program_id=program, member_id=member, min_position=beyond)

    with pytest.raises(grpc.RpcError) as failure:
        getattr(client.stub, rpc)(request, timeout=0.5)

    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_get_account_unknown_member_is_not_found_after_min_position(
    client: Client, server: ServerThread
) -> None:
    program, _ = client.member()
    with pytest.raises(grpc.RpcError) as failure:
        client.account(program, "nobody", min_position=log_head(server))
    assert refusal(failure.value).reason == "MEMBER_NOT_FOUND"


# ---------------------------------------------------------------------- lots


def test_list_lots_include_closed_shows_spent_lots(client: Client) -> None:
    program, member = client.member()
    first = client.earn(program, member, 50)
    second = client.earn(program, member, 30)
    redeemed = client.redeem(program, member, 60)
    assert [(c.lot_id, c.points) for c in redeemed.consumed] == [
        (first.lot_id, 50),
        (second.lot_id, 10),
    ]

    open_lots = client.lots(program, member, min_position=redeemed.position)
    all_lots = client.lots(program, member, min_position=redeemed.position, include_closed=True)

    assert [(lot.lot_id, lot.points, lot.remaining) for lot in open_lots] == [
        (second.lot_id, 30, 20)
    ]
    assert sorted((lot.lot_id, lot.points, lot.remaining) for lot in all_lots) == sorted(
        [(first.lot_id, 50, 0), (second.lot_id, 30, 20)]
    )
    assert all(not lot.HasField("expires_at") for lot in all_lots)


def test_list_lots_shows_held_points_and_expiry(client: Client) -> None:
    program, member = client.member(
        expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=30)
    )
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    earned = client.earn(program, member, 40, occurred_at=ts(occurred))
    held = client.hold(program, member, 15)

    lots = client.lots(program, member, min_position=held.position)

    assert [(lot.lot_id, lot.points, lot.remaining, lot.held) for lot in lots] == [
        (earned.lot_id, 40, 25, 15)
    ]
    assert lots[0].earned_at.ToDatetime(tzinfo=UTC) == occurred
    assert lots[0].expires_at.ToDatetime(tzinfo=UTC) == occurred + timedelta(days=30)


# ---------------------------------------------------------------------- tiers

SILVER_GOLD = [
    pb.Tier(code="SILVER", name="Silver", threshold=100),
    pb.Tier(code="GOLD", name="Gold", threshold=500),
]


def standing(account: pb.Account) -> tuple[str, int, str, int]:
    return (
        account.tier_code,
        account.qualifying_points,
        account.next_tier_code,
        account.points_to_next_tier,
    )


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_tier_fields(client: Client, order: str) -> None:
    tiers = SILVER_GOLD if order == "ascending" else list(reversed(SILVER_GOLD))
    program = client.create_program(tiers=tiers)
    enrolled = enroll(client, program)
    member = enrolled.account.member_id
    assert standing(enrolled.account) == ("", 0, "SILVER", 100)

    def step(response: Any, expected: tuple[str, int, str, int], available: int) -> None:
        assert standing(response.account) == expected
        assert response.account.points_available == available
        account = client.account(program, member, min_position=response.position)
        assert standing(account) == expected
        assert account.points_available == available

    step(client.earn(program, member, 60), ("", 60, "SILVER", 40), 60)
    step(client.earn(program, member, 300, qualifying=False), ("", 60, "SILVER", 40), 360)
    step(client.earn(program, member, 40), ("SILVER", 100, "GOLD", 400), 400)
    step(client.redeem(program, member, 350), ("SILVER", 100, "GOLD", 400), 50)
    step(client.earn(program, member, 399), ("SILVER", 499, "GOLD", 1), 449)
    step(client.earn(program, member, 1), ("GOLD", 500, "", 0), 450)
    step(client.earn(program, member, 1000), ("GOLD", 1500, "", 0), 1450)


def test_reversing_a_qualifying_earn_lowers_the_tier(client: Client) -> None:
    program, member = client.member(tiers=SILVER_GOLD)
    earned = client.earn(program, member, 520)
    assert standing(earned.account) == ("GOLD", 520, "", 0)

    reversed_ = client.reverse(program, member, earned.transaction_id, 30)

    assert standing(reversed_.account) == ("SILVER", 490, "GOLD", 10)
    account = client.account(program, member, min_position=reversed_.position)
    assert standing(account) == ("SILVER", 490, "GOLD", 10)


def test_earns_outside_the_tier_window_do_not_count(client: Client) -> None:
    program = client.create_program(tiers=SILVER_GOLD, tier_window_days=30)
    now = datetime.now(UTC)
    member = enroll(client, program, occurred_at=ts(now - timedelta(days=90))).account.member_id
    client.earn(program, member, 450, occurred_at=ts(now - timedelta(days=40)))
    inside = client.earn(program, member, 120, occurred_at=ts(now - timedelta(days=20)))

    assert standing(inside.account) == ("SILVER", 120, "GOLD", 380)
    assert inside.account.points_available == 570
    account = client.account(program, member, min_position=inside.position)
    assert standing(account) == ("SILVER", 120, "GOLD", 380)


def test_a_new_tier_window_applies_to_earns_recorded_after_it(client: Client) -> None:
    """Regression: the tier was recomputed with the current window, so an UpdateProgram
    rewrote what earns recorded before it counted for."""
    program = client.create_program(tiers=SILVER_GOLD, tier_window_days=30)
    now = datetime.now(UTC)
    member = enroll(client, program, occurred_at=ts(now - timedelta(days=90))).account.member_id
    before = client.earn(program, member, 120, occurred_at=ts(now - timedelta(days=20)))
    assert standing(before.account) == ("SILVER", 120, "GOLD", 380)

    client.stub.UpdateProgram(
        pb.UpdateProgramRequest(program_id=program, tier_window_days=10, request_id=new_id("u"))
    )
    # Recorded under the 30-day window: still counts. Recorded under 10 days, 20 days ago: not.
    after = client.earn(program, member, 450, occurred_at=ts(now - timedelta(days=20)))
    recent = client.earn(program, member, 5)

    for response in (after, recent):
        assert standing(response.account)[:2] in {("SILVER", 120), ("SILVER", 125)}
    assert standing(recent.account) == ("SILVER", 125, "GOLD", 375)
    account = client.account(program, member, min_position=recent.position)
    assert standing(account) == ("SILVER", 125, "GOLD", 375)
    assert account.points_available == 575


def test_no_tiers_means_empty_tier_fields(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 1000)
    assert standing(earned.account) == ("", 1000, "", 0)
    assert standing(client.account(program, member, min_position=earned.position)) == (
        "",
        1000,
        "",
        0,
    )


# ---------------------------------------------------------------------- programs


def get_program(client: Client, program: str) -> pb.Program:
    response: pb.GetProgramResponse = client.stub.GetProgram(
        pb.GetProgramRequest(program_id=program), timeout=30
    )
    return response.program


def full_program_request() -> pb.CreateProgramRequest:
    return pb.CreateProgramRequest(
        program_id=new_id("prog"),
        display_name="Coffee club",
        currency="JPY",
        time_zone="Asia/Tokyo",
        point_value_minor=3,
        expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=2),
        tiers=SILVER_GOLD,
        tier_window_days=180,
        stored_value_split=pb.STORED_VALUE_SPLIT_BONUS_FIRST,
        expected_redemption_rate_ppm=650_000,
        request_id=new_id("req"),
    )


def settings(program: pb.Program) -> dict[str, Any]:
    return {
        "program_id": program.program_id,
        "display_name": program.display_name,
        "currency": program.currency,
        "time_zone": program.time_zone,
        "point_value_minor": program.point_value_minor,
        "expiry_policy": (
            program.expiry_policy.kind,
            program.expiry_policy.days,
            program.expiry_policy.years,
        ),
        "tiers": [(t.code, t.name, t.threshold) for t in program.tiers],
        "tier_window_days": program.tier_window_days,
        "stored_value_split": program.stored_value_split,
        "expected_redemption_rate_ppm": program.expected_redemption_rate_ppm,
    }


def test_get_program_returns_what_was_created(client: Client) -> None:
    request = full_program_request()
    created = client.stub.CreateProgram(request, timeout=30)

    program = get_program(client, request.program_id)

    assert program == created.program
    assert settings(program) == {
        "program_id": request.program_id,
        "display_name": "Coffee club",
        "currency": "JPY",
        "time_zone": "Asia/Tokyo",
        "point_value_minor": 3,
        "expiry_policy": (pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, 0, 2),
        "tiers": [("SILVER", "Silver", 100), ("GOLD", "Gold", 500)],
        "tier_window_days": 180,
        "stored_value_split": pb.STORED_VALUE_SPLIT_BONUS_FIRST,
        "expected_redemption_rate_ppm": 650_000,
    }
    assert program.version == 1
    assert program.created_at == program.updated_at
    assert created.transaction_id
    assert created.position > 0


def test_program_defaults(client: Client) -> None:
    program_id = client.create_program()
    program = get_program(client, program_id)
    assert settings(program) == {
        "program_id": program_id,
        "display_name": "Test programme",
        "currency": "EUR",
        "time_zone": "UTC",
        "point_value_minor": 0,
        "expiry_policy": (pb.EXPIRY_KIND_NEVER, 0, 0),
        "tiers": [],
        "tier_window_days": 365,
        "stored_value_split": pb.STORED_VALUE_SPLIT_PROPORTIONAL,
        "expected_redemption_rate_ppm": 1_000_000,
    }


def test_update_only_display_name_leaves_the_rest(client: Client) -> None:
    request = full_program_request()
    created = client.stub.CreateProgram(request, timeout=30).program

    updated = client.stub.UpdateProgram(
        pb.UpdateProgramRequest(
            program_id=request.program_id,
            display_name="Coffee & cake club",
            request_id=new_id("req"),
        ),
        timeout=30,
    )

    program = get_program(client, request.program_id)
    assert program == updated.program
    assert settings(program) == {**settings(created), "display_name": "Coffee & cake club"}
    assert program.version == 2
    assert program.created_at == created.created_at
    assert program.updated_at.ToDatetime() >= created.updated_at.ToDatetime()
    assert updated.transaction_id
    assert updated.position > 0


@pytest.mark.parametrize(
    ("update", "changed"),
    [
        pytest.param(
            {"replace_tiers": True, "tiers": [pb.Tier(code="PLATINUM", name="Pt", threshold=900)]},
            {"tiers": [("PLATINUM", "Pt", 900)]},
            id="replace-tiers",
        ),
        pytest.param({"replace_tiers": True}, {"tiers": []}, id="clear-tiers"),
        pytest.param({"tier_window_days": 30}, {"tier_window_days": 30}, id="tier-window"),
        pytest.param(
            {"stored_value_split": pb.STORED_VALUE_SPLIT_CASH_FIRST},
            {"stored_value_split": pb.STORED_VALUE_SPLIT_CASH_FIRST},
            id="split",
        ),
        pytest.param(
            {"expected_redemption_rate_ppm": 1},
            {"expected_redemption_rate_ppm": 1},
            id="rate",
        ),
        pytest.param(
            {"expiry_policy": pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=90)},
            {"expiry_policy": (pb.EXPIRY_KIND_ROLLING_DAYS, 90, 0)},
            id="expiry",
        ),
    ],
)
def test_update_changes_only_the_fields_set(
    client: Client, update: dict[str, Any], changed: dict[str, Any]
) -> None:
    request = full_program_request()
    created = client.stub.CreateProgram(request, timeout=30).program

    updated = client.stub.UpdateProgram(
        pb.UpdateProgramRequest(program_id=request.program_id, request_id=new_id("req"), **update),
        timeout=30,
    ).program

    assert settings(updated) == {**settings(created), **changed}
    assert get_program(client, request.program_id) == updated
    assert updated.version == 2


def test_updates_accumulate(client: Client) -> None:
    request = full_program_request()
    client.stub.CreateProgram(request, timeout=30)
    updates: list[dict[str, Any]] = [
        {"display_name": "One"},
        {"tier_window_days": 7},
        {"replace_tiers": True},
    ]
    for i, update in enumerate(updates, start=2):
        response = client.stub.UpdateProgram(
            pb.UpdateProgramRequest(
                program_id=request.program_id, request_id=new_id("req"), **update
            ),
            timeout=30,
        )
        assert response.program.version == i

    program = get_program(client, request.program_id)
    assert (program.display_name, program.tier_window_days, list(program.tiers)) == ("One", 7, [])
    assert program.currency == "JPY"
    assert program.version == 4
