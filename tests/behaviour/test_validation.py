"""Bad input: INVALID_ARGUMENT naming exactly the bad fields, never INTERNAL, nothing written,
and the request_id left free. Unknown things: NOT_FOUND. Duplicates: ALREADY_EXISTS."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.v1 import ledger_pb2 as pb
from tests.support import (
    Client,
    Refusal,
    ServerThread,
    account_state,
    new_id,
    refusal,
    ts,
)

MAX_AMOUNT = 10**15

# ---------------------------------------------------------------------- helpers


def refused(call: Callable[..., Any], request: Any) -> Refusal:
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=30)
    return refusal(failure.value)


def assert_invalid(problem: Refusal, *fields: str) -> None:
    assert problem.code == grpc.StatusCode.INVALID_ARGUMENT, problem
    assert set(problem.fields) == set(fields), problem
    assert all(problem.fields[f] for f in fields), "every violation is described"


def assert_refused(problem: Refusal, code: grpc.StatusCode, reason: str) -> None:
    assert (problem.code, problem.reason) == (code, reason), problem


def get_program(client: Client, program: str) -> pb.Program:
    response: pb.GetProgramResponse = client.stub.GetProgram(
        pb.GetProgramRequest(program_id=program), timeout=30
    )
    return response.program


Value = Any  # a field value, or a function of the request giving one


def with_field(request: Message, field: str, value: Value) -> Any:
    changed = type(request)()
    changed.CopyFrom(request)
    if callable(value):
        value = value(changed)
    target = getattr(changed, field)
    if isinstance(value, Message):
        target.CopyFrom(value)
    elif isinstance(value, list):
        del target[:]
        target.extend(value)
    else:
        setattr(changed, field, value)
    return changed


def future(minutes: int) -> Callable[[Any], Timestamp]:
    return lambda _: ts(datetime.now(UTC) + timedelta(minutes=minutes))


def raw_timestamp(seconds: int, nanos: int) -> Callable[[Any], Timestamp]:
    return lambda _: Timestamp(seconds=seconds, nanos=nanos)


NOW_SECONDS = 1_700_000_000  # 2023-11-14: a valid instant, in the past


@dataclass(frozen=True)
class Setup:
    """A member with 100 points, 10 of them on hold."""

    program: str
    member: str
    earn_id: str
    hold_id: str


def setup_member(client: Client) -> Setup:
    program, member = client.member()
    earned = client.earn(program, member, 100)
    hold = client.hold(program, member, 10, ttl_seconds=3600)
    return Setup(program, member, earned.transaction_id, hold.hold_id)


@dataclass(frozen=True)
class CardSetup(Setup):
    """And a card: a top-up of 1000 + 200 bonus, 300 of it spent, 20 points converted (into
    200 of bonus at the programme's rate of 10 points = 100)."""

    top_up_id: str
    spend_id: str
    conversion_id: str


def setup_card(client: Client) -> CardSetup:
    program, member = client.member(
        points_conversion=pb.PointsConversion(points=10, value_minor=100)
    )
    earned = client.earn(program, member, 100)
    hold = client.hold(program, member, 10, ttl_seconds=3600)
    topped = client.top_up(program, member, 1000, bonus_minor=200)
    spent = client.spend(program, member, 300)
    converted = client.convert(program, member, 20)
    return CardSetup(
        program,
        member,
        earned.transaction_id,
        hold.hold_id,
        topped.transaction_id,
        spent.transaction_id,
        converted.transaction_id,
    )


# Commands named for what they do; each is sent as this RPC.
RPC_OF = {"RefundSpend": "Reverse", "CashOut": "Reverse", "ReverseConversion": "Reverse"}
STORED_VALUE = ("TopUp", "Spend", "ConvertPoints", *RPC_OF)


def setup_for(client: Client, command: str) -> Setup:
    return setup_card(client) if command in STORED_VALUE else setup_member(client)


def stub_call(client: Client, command: str) -> Callable[..., Any]:
    return getattr(client.stub, RPC_OF.get(command, command))  # type: ignore[no-any-return]


def _card(s: Setup) -> CardSetup:
    assert isinstance(s, CardSetup)
    return s


# A valid request of each account command, for the Setup's member.
BASE: dict[str, Callable[[Setup], Any]] = {
    "EnrollMember": lambda s: pb.EnrollMemberRequest(
        program_id=s.program,
        member_id=new_id("mem"),
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "Earn": lambda s: pb.EarnRequest(
        program_id=s.program,
        member_id=s.member,
        points=10,
        purchase_minor=100,
        store_id="store-1",
        order_ref="order-1",
        request_id=new_id("req"),
    ),
    "Redeem": lambda s: pb.RedeemRequest(
        program_id=s.program,
        member_id=s.member,
        points=5,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "Hold": lambda s: pb.HoldRequest(
        program_id=s.program,
        member_id=s.member,
        points=5,
        ttl_seconds=600,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "CaptureHold": lambda s: pb.CaptureHoldRequest(
        program_id=s.program,
        member_id=s.member,
        hold_id=s.hold_id,
        points=4,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "ReleaseHold": lambda s: pb.ReleaseHoldRequest(
        program_id=s.program,
        member_id=s.member,
        hold_id=s.hold_id,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "Adjust": lambda s: pb.AdjustRequest(
        program_id=s.program,
        member_id=s.member,
        points=5,
        reason="goodwill",
        operator_id="op-1",
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "Reverse": lambda s: pb.ReverseRequest(
        program_id=s.program,
        member_id=s.member,
        transaction_id=s.earn_id,
        points=5,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "TopUp": lambda s: pb.TopUpRequest(
        program_id=s.program,
        member_id=s.member,
        cash_minor=500,
        bonus_minor=50,
        store_id="store-1",
        payment_ref="pay-1",
        request_id=new_id("req"),
    ),
    "Spend": lambda s: pb.SpendRequest(
        program_id=s.program,
        member_id=s.member,
        amount_minor=100,
        store_id="store-1",
        order_ref="order-1",
        request_id=new_id("req"),
    ),
    "ConvertPoints": lambda s: pb.ConvertPointsRequest(
        program_id=s.program,
        member_id=s.member,
        points=10,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "RefundSpend": lambda s: pb.ReverseRequest(
        program_id=s.program,
        member_id=s.member,
        transaction_id=_card(s).spend_id,
        amount_minor=50,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "CashOut": lambda s: pb.ReverseRequest(
        program_id=s.program,
        member_id=s.member,
        transaction_id=_card(s).top_up_id,
        amount_minor=100,
        store_id="store-1",
        request_id=new_id("req"),
    ),
    "ReverseConversion": lambda s: pb.ReverseRequest(
        program_id=s.program,
        member_id=s.member,
        transaction_id=_card(s).conversion_id,
        points=10,
        store_id="store-1",
        request_id=new_id("req"),
    ),
}
ACCOUNT_COMMANDS = list(BASE)

BAD_IDS = {
    "space": "has space",
    "slash": "a/b",
    "non-ascii": "caf\u00e9",
    "65-chars": "x" * 65,
    "empty": "",
}
BAD_OPTIONAL_IDS = {k: v for k, v in BAD_IDS.items() if k != "empty"}

ID_FIELDS: list[tuple[str, list[str], dict[str, str]]] = [
    ("program_id", ACCOUNT_COMMANDS, BAD_IDS),
    ("member_id", ACCOUNT_COMMANDS, BAD_IDS),
    # Earn, Redeem, Reverse and the stored-value commands must name the store; elsewhere it
    # may be left out.
    ("store_id", ["Earn", "Redeem", "Reverse", *STORED_VALUE], BAD_IDS),
    (
        "store_id",
        ["EnrollMember", "Hold", "CaptureHold", "ReleaseHold", "Adjust"],
        BAD_OPTIONAL_IDS,
    ),
    ("hold_id", ["CaptureHold", "ReleaseHold"], BAD_IDS),
    ("transaction_id", ["Reverse", *RPC_OF], BAD_IDS),
    ("operator_id", ["Adjust"], BAD_IDS),
    ("referrer_member_id", ["EnrollMember"], BAD_OPTIONAL_IDS),
]

ACCOUNT_CASES: list[Any] = [
    pytest.param(rpc, field, value, field, id=f"{rpc}-{field}-{label}")
    for field, rpcs, bad in ID_FIELDS
    for rpc in rpcs
    for label, value in bad.items()
]
ACCOUNT_CASES += [
    pytest.param(rpc, "request_id", value, "request_id", id=f"{rpc}-request_id-{label}")
    for rpc in ACCOUNT_COMMANDS
    for label, value in {"empty": "", "129-chars": "r" * 129, "newline": "req\nid"}.items()
]
ACCOUNT_CASES += [
    pytest.param(rpc, "occurred_at", value, "occurred_at", id=f"{rpc}-occurred_at-{label}")
    for rpc in ACCOUNT_COMMANDS
    for label, value in {
        "10-min-future": future(10),
        "nanos-1e9": raw_timestamp(NOW_SECONDS, 1_000_000_000),
        "nanos-negative": raw_timestamp(NOW_SECONDS, -1),
    }.items()
]
ACCOUNT_CASES += [
    pytest.param(rpc, field, value, expected, id=f"{rpc}-{field}-{label}")
    for rpc, field, label, value, expected in [
        *[
            (rpc, "points", label, value, "points")
            for rpc in ("Earn", "Redeem", "Hold")
            for label, value in {
                "zero": 0,
                "negative": -1,
                "int64-min": -(2**63),
                "above-1e15": MAX_AMOUNT + 1,
                "int64-max": 2**63 - 1,
            }.items()
        ],
        ("Earn", "purchase_minor", "negative", -1, "purchase_minor"),
        ("Earn", "purchase_minor", "above-1e15", MAX_AMOUNT + 1, "purchase_minor"),
        ("Earn", "order_ref", "257-chars", "o" * 257, "order_ref"),
        ("Earn", "reason", "257-chars", "r" * 257, "reason"),
        ("Earn", "occurred_at", "before-1970", raw_timestamp(-86_400, 0), "occurred_at"),
        ("Earn", "expires_at", "nanos-1e9", raw_timestamp(NOW_SECONDS, 10**9), "expires_at"),
        ("Earn", "occurred_at", "seconds-2^62", raw_timestamp(2**62, 0), "occurred_at"),
        ("Earn", "occurred_at", "seconds-minus-2^62", raw_timestamp(-(2**62), 0), "occurred_at"),
        ("Earn", "expires_at", "year-10001", raw_timestamp(253_465_459_200, 0), "expires_at"),
        ("Reverse", "amount_minor", "with-points", 5, "amount_minor"),
        ("Redeem", "order_ref", "257-chars", "o" * 257, "order_ref"),
        ("Hold", "ttl_seconds", "negative", -1, "ttl_seconds"),
        ("Hold", "ttl_seconds", "7-days-and-1s", 7 * 86_400 + 1, "ttl_seconds"),
        ("Hold", "order_ref", "257-chars", "o" * 257, "order_ref"),
        ("CaptureHold", "points", "negative", -1, "points"),
        ("Adjust", "points", "zero", 0, "points"),
        ("Adjust", "points", "above-1e15", MAX_AMOUNT + 1, "points"),
        ("Adjust", "points", "below-minus-1e15", -(MAX_AMOUNT + 1), "points"),
        ("Adjust", "points", "int64-min", -(2**63), "points"),
        ("Adjust", "reason", "empty", "", "reason"),
        ("Adjust", "reason", "blank", "   ", "reason"),
        ("Reverse", "points", "negative", -1, "points"),
        ("Reverse", "points", "above-1e15", MAX_AMOUNT + 1, "points"),
        ("Reverse", "amount_minor", "negative", -1, "amount_minor"),
        ("EnrollMember", "referrer_member_id", "self", lambda r: r.member_id, "referrer_member_id"),
        *[
            (rpc, field, label, value, field)
            for rpc, field in (
                ("TopUp", "cash_minor"),
                ("Spend", "amount_minor"),
                ("ConvertPoints", "points"),
            )
            for label, value in {
                "zero": 0,
                "negative": -1,
                "int64-min": -(2**63),
                "above-1e15": MAX_AMOUNT + 1,
                "int64-max": 2**63 - 1,
            }.items()
        ],
        *[
            (rpc, field, label, value, field)
            for rpc, field in (
                ("TopUp", "bonus_minor"),
                ("RefundSpend", "amount_minor"),
                ("CashOut", "amount_minor"),
                ("ReverseConversion", "points"),
            )
            for label, value in {
                "negative": -1,
                "int64-min": -(2**63),
                "above-1e15": MAX_AMOUNT + 1,
                "int64-max": 2**63 - 1,
            }.items()
        ],
        ("TopUp", "payment_ref", "257-chars", "p" * 257, "payment_ref"),
        ("Spend", "order_ref", "257-chars", "o" * 257, "order_ref"),
        ("RefundSpend", "reason", "257-chars", "r" * 257, "reason"),
        ("RefundSpend", "points", "with-amount", 5, "amount_minor"),
        ("CashOut", "points", "with-amount", 5, "amount_minor"),
        ("ReverseConversion", "amount_minor", "with-points", 100, "amount_minor"),
    ]
]


@pytest.mark.parametrize(("rpc", "field", "value", "expected"), ACCOUNT_CASES)
def test_bad_account_command_input_is_invalid_argument_and_writes_nothing(
    client: Client, server: ServerThread, rpc: str, field: str, value: Value, expected: str
) -> None:
    s = setup_for(client, rpc)
    good = BASE[rpc](s)
    bad = with_field(good, field, value)
    call = stub_call(client, rpc)
    before = account_state(client, server, s.program, s.member)

    assert_invalid(refused(call, bad), expected)

    assert account_state(client, server, s.program, s.member) == before
    # The refusal did not spend the key: the corrected request, same request_id, goes through.
    response = call(good, timeout=30)
    assert response.transaction_id


def test_store_id_may_be_left_out_where_no_till_is_involved(
    client: Client, server: ServerThread
) -> None:
    """Earn, Redeem and Reverse name their store (settlement follows it); an operator's
    adjustment or a hold from a web checkout may leave it out."""
    program, member = client.member()
    earned = client.earn(program, member, 10, store_id="web")
    adjusted = client.adjust(program, member, 5, store_id="")
    history = client.transactions(program, member, min_position=adjusted.position)
    assert [t.store_id for t in history.transactions] == ["", "web", ""]
    assert earned.account.points_available == 10


@pytest.mark.parametrize(
    ("rpc", "field", "value"),
    [
        pytest.param("Earn", "points", MAX_AMOUNT, id="earn-1e15"),
        pytest.param("Earn", "points", 1, id="earn-1"),
        pytest.param("Earn", "purchase_minor", MAX_AMOUNT, id="purchase-1e15"),
        pytest.param("Hold", "ttl_seconds", 7 * 86_400, id="ttl-7-days"),
        pytest.param("Earn", "request_id", "r" * 128, id="request_id-128"),
        pytest.param("Earn", "store_id", "S" * 64, id="store_id-64"),
        pytest.param("Earn", "store_id", "a.b_c:d-E9", id="store_id-all-classes"),
        pytest.param("EnrollMember", "member_id", "m" * 64, id="member_id-64"),
        pytest.param("Adjust", "operator_id", "o" * 64, id="operator_id-64"),
        pytest.param("TopUp", "cash_minor", MAX_AMOUNT, id="top-up-cash-1e15"),
        pytest.param("TopUp", "cash_minor", 1, id="top-up-cash-1"),
        pytest.param("TopUp", "bonus_minor", MAX_AMOUNT, id="top-up-bonus-1e15"),
        pytest.param("TopUp", "bonus_minor", 0, id="top-up-bonus-0"),
        pytest.param("TopUp", "payment_ref", "p" * 256, id="payment_ref-256"),
        pytest.param("Spend", "amount_minor", 1, id="spend-1"),
        pytest.param("Spend", "order_ref", "o" * 256, id="spend-order_ref-256"),
        pytest.param("RefundSpend", "amount_minor", 0, id="refund-all"),
        pytest.param("CashOut", "amount_minor", 0, id="cash-out-all"),
        pytest.param("ReverseConversion", "points", 0, id="unconvert-all"),
    ],
)
def test_values_at_the_limits_are_accepted(
    client: Client, rpc: str, field: str, value: Value
) -> None:
    s = setup_for(client, rpc)
    request = with_field(BASE[rpc](s), field, value)
    response = stub_call(client, rpc)(request, timeout=30)
    assert response.transaction_id
    assert response.account.program_id == s.program
    assert response.account.member_id == request.member_id


def test_several_bad_fields_are_all_reported(client: Client, server: ServerThread) -> None:
    s = setup_member(client)
    before = account_state(client, server, s.program, s.member)
    request = pb.EarnRequest(
        program_id=s.program,
        member_id="bad id",
        points=0,
        purchase_minor=-1,
        store_id="s" * 65,
        order_ref="o" * 257,
        request_id="",
        occurred_at=ts(datetime.now(UTC) + timedelta(minutes=10)),
    )

    problem = refused(client.stub.Earn, request)

    assert_invalid(
        problem,
        "member_id",
        "points",
        "purchase_minor",
        "store_id",
        "order_ref",
        "request_id",
        "occurred_at",
    )
    assert account_state(client, server, s.program, s.member) == before


def test_several_bad_stored_value_fields_are_all_reported(
    client: Client, server: ServerThread
) -> None:
    s = setup_card(client)
    before = account_state(client, server, s.program, s.member)
    top_up = pb.TopUpRequest(
        program_id=s.program,
        member_id=s.member,
        cash_minor=0,
        bonus_minor=-1,
        store_id="",
        payment_ref="p" * 257,
        request_id=new_id("req"),
    )
    spend = pb.SpendRequest(
        program_id=s.program,
        member_id="a/b",
        amount_minor=-5,
        store_id="has space",
        order_ref="o" * 257,
        request_id="",
    )
    refund = pb.ReverseRequest(
        program_id=s.program,
        member_id=s.member,
        transaction_id=s.spend_id,
        points=1,
        amount_minor=-1,
        store_id="",
        request_id=new_id("req"),
    )

    assert_invalid(
        refused(client.stub.TopUp, top_up), "cash_minor", "bonus_minor", "store_id", "payment_ref"
    )
    assert_invalid(
        refused(client.stub.Spend, spend),
        "member_id",
        "amount_minor",
        "store_id",
        "order_ref",
        "request_id",
    )
    assert_invalid(refused(client.stub.Reverse, refund), "amount_minor", "store_id")
    convert = pb.ConvertPointsRequest(program_id=s.program, member_id=s.member, points=0)
    assert_invalid(refused(client.stub.ConvertPoints, convert), "points", "store_id", "request_id")
    assert account_state(client, server, s.program, s.member) == before


def test_several_bad_program_fields_are_all_reported(client: Client) -> None:
    program = new_id("prog")
    request = pb.CreateProgramRequest(
        program_id=program,
        display_name="",
        currency="eur",
        time_zone="Mars/Olympus",
        tier_window_days=5000,
        request_id=new_id("req"),
        expiry_policy=pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=0),
        tiers=[pb.Tier(code="GOLD", threshold=5), pb.Tier(code="GOLD", threshold=9)],
    )

    problem = refused(client.stub.CreateProgram, request)

    assert_invalid(
        problem,
        "display_name",
        "currency",
        "time_zone",
        "tier_window_days",
        "expiry_policy.days",
        "tiers",
    )
    assert_refused(
        refused(client.stub.GetProgram, pb.GetProgramRequest(program_id=program)),
        grpc.StatusCode.NOT_FOUND,
        "PROGRAM_NOT_FOUND",
    )


def test_several_bad_stored_value_program_fields_are_all_reported(client: Client) -> None:
    program = new_id("prog")
    request = pb.CreateProgramRequest(
        program_id=program,
        display_name="Card",
        currency="CNY",
        request_id=new_id("req"),
        stored_value_split=9,  # type: ignore[arg-type]
        top_up_bonus=[
            pb.TopUpBonusStep(min_cash_minor=0, bonus_minor=-1, bonus_ppm=-1),
            pb.TopUpBonusStep(min_cash_minor=5, bonus_ppm=100_000_001),
        ],
        points_conversion=pb.PointsConversion(),
        cash_out_policy=7,  # type: ignore[arg-type]
    )

    problem = refused(client.stub.CreateProgram, request)

    assert_invalid(
        problem,
        "stored_value_split",
        "top_up_bonus[0].min_cash_minor",
        "top_up_bonus[0].bonus_minor",
        "top_up_bonus[0].bonus_ppm",
        "top_up_bonus[1].bonus_ppm",
        "points_conversion.points",
        "points_conversion.value_minor",
        "cash_out_policy",
    )
    assert_refused(
        refused(client.stub.GetProgram, pb.GetProgramRequest(program_id=program)),
        grpc.StatusCode.NOT_FOUND,
        "PROGRAM_NOT_FOUND",
    )


def test_stored_value_program_fields_at_their_limits_are_accepted(client: Client) -> None:
    steps = [
        pb.TopUpBonusStep(min_cash_minor=MAX_AMOUNT - i, bonus_minor=MAX_AMOUNT, bonus_ppm=ppm)
        for i, ppm in enumerate([100_000_000, 0, *range(1, 31)])
    ]
    request = pb.CreateProgramRequest(
        program_id=new_id("prog"),
        display_name="Card",
        currency="CNY",
        request_id=new_id("req"),
        stored_value_split=pb.STORED_VALUE_SPLIT_BONUS_FIRST,
        top_up_bonus=steps,
        points_conversion=pb.PointsConversion(points=MAX_AMOUNT, value_minor=MAX_AMOUNT),
        cash_out_policy=pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS,
    )

    created = client.stub.CreateProgram(request, timeout=30).program

    assert len(created.top_up_bonus) == 32
    assert created.top_up_bonus[0].min_cash_minor == MAX_AMOUNT - 31  # in order of min cash
    assert created.top_up_bonus[-1].bonus_ppm == 100_000_000
    assert (created.points_conversion.points, created.points_conversion.value_minor) == (
        MAX_AMOUNT,
        MAX_AMOUNT,
    )
    assert created.cash_out_policy == pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS
    assert created.stored_value_split == pb.STORED_VALUE_SPLIT_BONUS_FIRST
    assert get_program(client, created.program_id) == created


def test_several_bad_query_fields_are_all_reported(client: Client) -> None:
    program, _ = client.member()
    request = pb.ListTransactionsRequest(
        program_id=program, member_id="", page_size=-1, min_position=-1, page_token="%%%"
    )
    assert_invalid(
        refused(client.stub.ListTransactions, request),
        "member_id",
        "page_size",
        "min_position",
        "page_token",
    )


# ---------------------------------------------------------------------- programs


def _create_base() -> pb.CreateProgramRequest:
    return pb.CreateProgramRequest(
        program_id=new_id("prog"),
        display_name="Coffee club",
        currency="EUR",
        time_zone="Europe/Berlin",
        point_value_minor=1,
        request_id=new_id("req"),
        tiers=[pb.Tier(code="SILVER", name="Silver", threshold=100)],
    )


def _tiers(*pairs: tuple[str, int]) -> list[pb.Tier]:
    return [pb.Tier(code=code, name=code.title(), threshold=t) for code, t in pairs]


def _step(min_cash: int, bonus: int, ppm: int = 0) -> pb.TopUpBonusStep:
    return pb.TopUpBonusStep(min_cash_minor=min_cash, bonus_minor=bonus, bonus_ppm=ppm)


def _rate(points: int, value: int) -> pb.PointsConversion:
    return pb.PointsConversion(points=points, value_minor=value)


CREATE_CASES = [
    pytest.param(field, value, expected, id=f"{field}-{label}")
    for field, label, value, expected in [
        ("program_id", "space", "has space", "program_id"),
        ("program_id", "65-chars", "p" * 65, "program_id"),
        ("program_id", "empty", "", "program_id"),
        ("request_id", "empty", "", "request_id"),
        ("request_id", "129-chars", "r" * 129, "request_id"),
        ("display_name", "empty", "", "display_name"),
        ("display_name", "blank", "   ", "display_name"),
        ("display_name", "201-chars", "d" * 201, "display_name"),
        ("currency", "lower-case", "eur", "currency"),
        ("currency", "four-letters", "EURO", "currency"),
        ("currency", "empty", "", "currency"),
        ("currency", "digit", "EU1", "currency"),
        ("time_zone", "mars", "Mars/Olympus", "time_zone"),
        ("time_zone", "path", "../../etc/passwd", "time_zone"),
        ("point_value_minor", "negative", -1, "point_value_minor"),
        (
            "expiry_policy",
            "rolling-0-days",
            pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=0),
            "expiry_policy.days",
        ),
        (
            "expiry_policy",
            "rolling-negative-days",
            pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=-30),
            "expiry_policy.days",
        ),
        (
            "expiry_policy",
            "end-of-year-101",
            pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=101),
            "expiry_policy.years",
        ),
        (
            "expiry_policy",
            "end-of-year-negative",
            pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_END_OF_YEAR_AFTER_YEARS, years=-1),
            "expiry_policy.years",
        ),
        ("expiry_policy", "unknown-kind", pb.ExpiryPolicy(kind=99), "expiry_policy.kind"),  # type: ignore[arg-type]
        ("tiers", "duplicate-codes", _tiers(("SILVER", 100), ("SILVER", 500)), "tiers"),
        ("tiers", "duplicate-thresholds", _tiers(("SILVER", 100), ("GOLD", 100)), "tiers"),
        ("tiers", "bad-code", _tiers(("SIL VER", 100)), "tiers[0].code"),
        ("tiers", "empty-code", _tiers(("SILVER", 100), ("", 500)), "tiers[1].code"),
        ("tiers", "negative-threshold", _tiers(("SILVER", -1)), "tiers[0].threshold"),
        ("tiers", "threshold-above-1e15", _tiers(("SILVER", MAX_AMOUNT + 1)), "tiers[0].threshold"),
        (
            "tiers",
            "name-101-chars",
            [pb.Tier(code="SILVER", name="n" * 101, threshold=1)],
            "tiers[0].name",
        ),
        ("tiers", "33-tiers", _tiers(*((f"T{i}", i) for i in range(33))), "tiers"),
        ("tier_window_days", "3651", 3651, "tier_window_days"),
        ("tier_window_days", "negative", -1, "tier_window_days"),
        ("stored_value_split", "unknown", 42, "stored_value_split"),
        ("expected_redemption_rate_ppm", "above-1e6", 1_000_001, "expected_redemption_rate_ppm"),
        ("expected_redemption_rate_ppm", "negative", -5, "expected_redemption_rate_ppm"),
        *[
            ("top_up_bonus", label, [step], f"top_up_bonus[0].{field}")
            for label, step, field in [
                ("min-cash-0", _step(0, 100), "min_cash_minor"),
                ("min-cash-negative", _step(-1, 100), "min_cash_minor"),
                ("min-cash-above-1e15", _step(MAX_AMOUNT + 1, 100), "min_cash_minor"),
                ("bonus-negative", _step(1000, -1), "bonus_minor"),
                ("bonus-above-1e15", _step(1000, MAX_AMOUNT + 1), "bonus_minor"),
                ("ppm-negative", _step(1000, 0, -1), "bonus_ppm"),
                ("ppm-above-1e8", _step(1000, 0, 100_000_001), "bonus_ppm"),
            ]
        ],
        (
            "top_up_bonus",
            "second-step-bad",
            [_step(1000, 100), _step(0, 5)],
            "top_up_bonus[1].min_cash_minor",
        ),
        (
            "top_up_bonus",
            "duplicate-min-cash",
            [_step(1000, 100), _step(1000, 200)],
            "top_up_bonus",
        ),
        (
            "top_up_bonus",
            "33-steps",
            [_step(1000 + i, i) for i in range(33)],
            "top_up_bonus",
        ),
        *[
            ("points_conversion", label, rate, f"points_conversion.{field}")
            for label, rate, field in [
                ("points-0", _rate(0, 100), "points"),
                ("points-negative", _rate(-10, 100), "points"),
                ("points-above-1e15", _rate(MAX_AMOUNT + 1, 100), "points"),
                ("value-0", _rate(10, 0), "value_minor"),
                ("value-negative", _rate(10, -100), "value_minor"),
                ("value-above-1e15", _rate(10, MAX_AMOUNT + 1), "value_minor"),
            ]
        ],
        ("cash_out_policy", "unknown", 42, "cash_out_policy"),
        ("cash_out_policy", "negative", -1, "cash_out_policy"),
    ]
]


@pytest.mark.parametrize(("field", "value", "expected"), CREATE_CASES)
def test_bad_create_program_input_is_invalid_argument_and_writes_nothing(
    client: Client, field: str, value: Value, expected: str
) -> None:
    good = _create_base()
    bad = with_field(good, field, value)

    assert_invalid(refused(client.stub.CreateProgram, bad), expected)

    for program_id in {good.program_id, bad.program_id} - {""}:
        if " " in program_id or len(program_id) > 64:
            continue
        assert_refused(
            refused(client.stub.GetProgram, pb.GetProgramRequest(program_id=program_id)),
            grpc.StatusCode.NOT_FOUND,
            "PROGRAM_NOT_FOUND",
        )
    created = client.stub.CreateProgram(good, timeout=30)
    assert created.program.program_id == good.program_id
    assert created.program.version == 1


UPDATE_CASES = [
    pytest.param(changes, expected, id=label)
    for label, changes, expected in [
        ("nothing-set", {}, "program"),
        ("display_name-empty", {"display_name": ""}, "display_name"),
        ("tier_window_days-0", {"tier_window_days": 0}, "tier_window_days"),
        ("tier_window_days-3651", {"tier_window_days": 3651}, "tier_window_days"),
        ("rate-0", {"expected_redemption_rate_ppm": 0}, "expected_redemption_rate_ppm"),
        ("tiers-without-replace", {"display_name": "x", "tiers": _tiers(("GOLD", 5))}, "tiers"),
        (
            "replace-duplicate-codes",
            {"replace_tiers": True, "tiers": _tiers(("GOLD", 5), ("GOLD", 9))},
            "tiers",
        ),
        (
            "rolling-0-days",
            {"expiry_policy": pb.ExpiryPolicy(kind=pb.EXPIRY_KIND_ROLLING_DAYS, days=0)},
            "expiry_policy.days",
        ),
        ("request_id-empty", {"display_name": "x", "request_id": ""}, "request_id"),
        ("program_id-bad", {"display_name": "x", "program_id": "a b"}, "program_id"),
        (
            "top_up_bonus-without-replace",
            {"display_name": "x", "top_up_bonus": [_step(1000, 100)]},
            "top_up_bonus",
        ),
        (
            "replace-bad-step",
            {"replace_top_up_bonus": True, "top_up_bonus": [_step(1000, 100), _step(0, 1)]},
            "top_up_bonus[1].min_cash_minor",
        ),
        (
            "replace-ppm-above-1e8",
            {"replace_top_up_bonus": True, "top_up_bonus": [_step(1000, 0, 100_000_001)]},
            "top_up_bonus[0].bonus_ppm",
        ),
        (
            "replace-duplicate-steps",
            {"replace_top_up_bonus": True, "top_up_bonus": [_step(5, 1), _step(5, 2)]},
            "top_up_bonus",
        ),
        (
            "replace-33-steps",
            {"replace_top_up_bonus": True, "top_up_bonus": [_step(1 + i, i) for i in range(33)]},
            "top_up_bonus",
        ),
        (
            "rate-and-clear",
            {
                "display_name": "x",
                "points_conversion": _rate(10, 100),
                "clear_points_conversion": True,
            },
            "points_conversion",
        ),
        ("rate-points-0", {"points_conversion": _rate(0, 100)}, "points_conversion.points"),
        (
            "rate-value-negative",
            {"points_conversion": _rate(10, -1)},
            "points_conversion.value_minor",
        ),
        ("cash_out_policy-unknown", {"cash_out_policy": 42}, "cash_out_policy"),
        ("stored_value_split-unknown", {"stored_value_split": 42}, "stored_value_split"),
    ]
]


@pytest.mark.parametrize(("changes", "expected"), UPDATE_CASES)
def test_bad_update_program_input_is_invalid_argument_and_writes_nothing(
    client: Client, changes: dict[str, Any], expected: str
) -> None:
    program = client.create_program(
        tiers=_tiers(("SILVER", 100)),
        top_up_bonus=[_step(1000, 100)],
        points_conversion=_rate(10, 100),
        cash_out_policy=pb.CASH_OUT_POLICY_DEDUCT_SPENT_BONUS,
    )
    before = get_program(client, program)
    request = pb.UpdateProgramRequest(program_id=program, request_id=new_id("req"))
    for field, value in changes.items():
        request = with_field(request, field, value)

    assert_invalid(refused(client.stub.UpdateProgram, request), expected)

    assert get_program(client, program) == before


# ---------------------------------------------------------------------- queries


def _token(program: str, member: str, payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _fingerprint(program: str, member: str) -> str:
    """What this server's tokens carry for an unfiltered listing (a forger can compute it)."""
    key = f"{program}|{member}|None|None"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


QUERY_CASES = [
    pytest.param(rpc, field, value, expected, id=f"{rpc}-{field}-{label}")
    for rpc, field, label, value, expected in [
        *[
            (rpc, field, label, value, field)
            for rpc in ("GetAccount", "ListTransactions", "ListLots")
            for field, label, value in [
                ("program_id", "space", "has space"),
                ("program_id", "empty", ""),
                ("program_id", "65-chars", "p" * 65),
                ("member_id", "slash", "a/b"),
                ("member_id", "empty", ""),
                ("member_id", "65-chars", "m" * 65),
                ("min_position", "negative", -1),
            ]
        ],
        ("ListTransactions", "page_size", "negative", -1, "page_size"),
        ("ListTransactions", "page_size", "1001", 1001, "page_size"),
        ("ListTransactions", "page_token", "garbage", "not a token!", "page_token"),
        ("ListTransactions", "page_token", "not-json", _b64(b"hello"), "page_token"),
        ("ListTransactions", "page_token", "json-list", _b64(b"[1, 2]"), "page_token"),
        ("ListTransactions", "page_token", "json-number", _b64(b"7"), "page_token"),
        ("ListTransactions", "page_token", "not-utf8", _b64(b"\xff\xfe\xfd"), "page_token"),
        ("ListTransactions", "page_token", "513-chars", "A" * 513, "page_token"),
        (
            "ListTransactions",
            "page_token",
            "negative-position",
            lambda r: _token(
                r.program_id,
                r.member_id,
                {"after": -1, "query": _fingerprint(r.program_id, r.member_id)},
            ),
            "page_token",
        ),
        (
            "ListTransactions",
            "page_token",
            "string-position",
            lambda r: _token(
                r.program_id,
                r.member_id,
                {"after": "3", "query": _fingerprint(r.program_id, r.member_id)},
            ),
            "page_token",
        ),
        (
            "ListTransactions",
            "page_token",
            "beyond-int64",
            lambda r: _token(
                r.program_id,
                r.member_id,
                {"after": 2**70, "query": _fingerprint(r.program_id, r.member_id)},
            ),
            "page_token",
        ),
        (
            "ListTransactions",
            "page_token",
            "no-query",
            lambda r: _token(r.program_id, r.member_id, {"after": 1}),
            "page_token",
        ),
        ("ListTransactions", "since", "nanos-1e9", raw_timestamp(NOW_SECONDS, 10**9), "since"),
        ("ListTransactions", "until", "seconds-2^62", raw_timestamp(2**62, 0), "until"),
        ("ListTransactions", "until", "before-since", raw_timestamp(NOW_SECONDS - 1, 0), "until"),
    ]
]

QUERY_REQUESTS: dict[str, Callable[[str, str, int], Any]] = {
    "GetAccount": lambda p, m, at: pb.GetAccountRequest(program_id=p, member_id=m, min_position=at),
    "ListTransactions": lambda p, m, at: pb.ListTransactionsRequest(
        program_id=p, member_id=m, min_position=at, since=Timestamp(seconds=NOW_SECONDS)
    ),
    "ListLots": lambda p, m, at: pb.ListLotsRequest(program_id=p, member_id=m, min_position=at),
}


@pytest.mark.parametrize(("rpc", "field", "value", "expected"), QUERY_CASES)
def test_bad_query_input_is_invalid_argument(
    client: Client, rpc: str, field: str, value: Value, expected: str
) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 10)
    good = QUERY_REQUESTS[rpc](program, member, earned.position)
    if field == "page_token":
        good.ClearField("since")  # the forged tokens are for the unfiltered listing
    bad = with_field(good, field, value)

    assert_invalid(refused(getattr(client.stub, rpc), bad), expected)
    getattr(client.stub, rpc)(good, timeout=30)  # and the good one is fine


def test_get_program_with_a_bad_id_is_invalid_argument(client: Client) -> None:
    for bad in ("", "a b", "p" * 65):
        problem = refused(client.stub.GetProgram, pb.GetProgramRequest(program_id=bad))
        assert_invalid(problem, "program_id")


def test_largest_page_size_is_accepted(client: Client) -> None:
    program, member = client.member()
    earned = client.earn(program, member, 1)
    listing = client.transactions(program, member, min_position=earned.position, page_size=1000)
    assert len(listing.transactions) == 2
    assert listing.next_page_token == ""


def _first_page_token(client: Client, program: str, member: str, **f: Any) -> str:
    for _ in range(3):
        last = client.earn(program, member, 1)
    page = client.transactions(program, member, min_position=last.position, page_size=2, **f)
    assert len(page.transactions) == 2
    assert page.next_page_token
    return page.next_page_token


def test_page_token_of_another_member_is_refused(client: Client) -> None:
    program, alice = client.member()
    bob = client.enroll(program)
    token = _first_page_token(client, program, alice)

    problem = refused(
        client.stub.ListTransactions,
        pb.ListTransactionsRequest(
            program_id=program, member_id=bob, page_size=2, page_token=token
        ),
    )

    assert_invalid(problem, "page_token")


def test_page_token_of_another_time_range_is_refused(client: Client) -> None:
    program, member = client.member()
    since = datetime.now(UTC) - timedelta(days=1)
    token = _first_page_token(client, program, member, since=ts(since))

    problem = refused(
        client.stub.ListTransactions,
        pb.ListTransactionsRequest(
            program_id=program,
            member_id=member,
            page_size=2,
            page_token=token,
            since=ts(since - timedelta(days=1)),
        ),
    )

    assert_invalid(problem, "page_token")


def test_page_token_of_another_program_is_refused(client: Client) -> None:
    program, member = client.member()
    other = client.create_program()
    client.enroll(other, member)
    token = _first_page_token(client, program, member)

    problem = refused(
        client.stub.ListTransactions,
        pb.ListTransactionsRequest(
            program_id=other, member_id=member, page_size=2, page_token=token
        ),
    )

    assert_invalid(problem, "page_token")


def test_run_expiry_in_the_future_is_invalid_argument(client: Client) -> None:
    program = client.create_program()
    request = pb.RunExpiryRequest(
        program_id=program,
        request_id=new_id("req"),
        as_of=ts(datetime.now(UTC) + timedelta(days=1)),
    )
    assert_invalid(refused(client.stub.RunExpiry, request), "as_of")


# ---------------------------------------------------------------------- not found

UNKNOWN_PROGRAM_REQUESTS: dict[str, Callable[[str], Any]] = {
    "EnrollMember": lambda p: pb.EnrollMemberRequest(
        program_id=p, member_id="m-1", request_id=new_id("req")
    ),
    "Earn": lambda p: pb.EarnRequest(
        store_id="store-1", program_id=p, member_id="m-1", points=1, request_id=new_id("req")
    ),
    "Redeem": lambda p: pb.RedeemRequest(
        store_id="store-1", program_id=p, member_id="m-1", points=1, request_id=new_id("req")
    ),
    "Hold": lambda p: pb.HoldRequest(
        program_id=p, member_id="m-1", points=1, request_id=new_id("req")
    ),
    "CaptureHold": lambda p: pb.CaptureHoldRequest(
        program_id=p, member_id="m-1", hold_id="h-1", request_id=new_id("req")
    ),
    "ReleaseHold": lambda p: pb.ReleaseHoldRequest(
        program_id=p, member_id="m-1", hold_id="h-1", request_id=new_id("req")
    ),
    "Adjust": lambda p: pb.AdjustRequest(
        program_id=p,
        member_id="m-1",
        points=1,
        reason="r",
        operator_id="op",
        request_id=new_id("req"),
    ),
    "Reverse": lambda p: pb.ReverseRequest(
        store_id="store-1",
        program_id=p,
        member_id="m-1",
        transaction_id="t-1",
        request_id=new_id("req"),
    ),
    "TopUp": lambda p: pb.TopUpRequest(
        store_id="store-1", program_id=p, member_id="m-1", cash_minor=1, request_id=new_id("req")
    ),
    "Spend": lambda p: pb.SpendRequest(
        store_id="store-1", program_id=p, member_id="m-1", amount_minor=1, request_id=new_id("req")
    ),
    "ConvertPoints": lambda p: pb.ConvertPointsRequest(
        store_id="store-1", program_id=p, member_id="m-1", points=1, request_id=new_id("req")
    ),
    "UpdateProgram": lambda p: pb.UpdateProgramRequest(
        program_id=p, display_name="x", request_id=new_id("req")
    ),
    "RunExpiry": lambda p: pb.RunExpiryRequest(program_id=p, request_id=new_id("req")),
    "GetProgram": lambda p: pb.GetProgramRequest(program_id=p),
    "GetAccount": lambda p: pb.GetAccountRequest(program_id=p, member_id="m-1"),
    "ListTransactions": lambda p: pb.ListTransactionsRequest(program_id=p, member_id="m-1"),
    "ListLots": lambda p: pb.ListLotsRequest(program_id=p, member_id="m-1"),
}


@pytest.mark.parametrize("rpc", UNKNOWN_PROGRAM_REQUESTS)
def test_unknown_program_is_not_found(client: Client, rpc: str) -> None:
    program = new_id("nowhere")
    problem = refused(getattr(client.stub, rpc), UNKNOWN_PROGRAM_REQUESTS[rpc](program))
    assert_refused(problem, grpc.StatusCode.NOT_FOUND, "PROGRAM_NOT_FOUND")
    if rpc != "GetProgram":
        assert_refused(
            refused(client.stub.GetProgram, pb.GetProgramRequest(program_id=program)),
            grpc.StatusCode.NOT_FOUND,
            "PROGRAM_NOT_FOUND",
        )


UNKNOWN_MEMBER_RPCS = [
    rpc
    for rpc in UNKNOWN_PROGRAM_REQUESTS
    if rpc not in ("EnrollMember", "UpdateProgram", "RunExpiry", "GetProgram")
]


@pytest.mark.parametrize("rpc", UNKNOWN_MEMBER_RPCS)
def test_unknown_member_is_not_found(client: Client, rpc: str) -> None:
    program = client.create_program()
    request = UNKNOWN_PROGRAM_REQUESTS[rpc](program)
    problem = refused(getattr(client.stub, rpc), request)
    assert_refused(problem, grpc.StatusCode.NOT_FOUND, "MEMBER_NOT_FOUND")
    # Nothing was created on the way.
    assert_refused(
        refused(client.stub.GetAccount, pb.GetAccountRequest(program_id=program, member_id="m-1")),
        grpc.StatusCode.NOT_FOUND,
        "MEMBER_NOT_FOUND",
    )


def test_unknown_hold_is_not_found(client: Client, server: ServerThread) -> None:
    s = setup_member(client)
    before = account_state(client, server, s.program, s.member)
    for rpc, request in [
        (
            "CaptureHold",
            pb.CaptureHoldRequest(
                program_id=s.program,
                member_id=s.member,
                hold_id="no-such-hold",
                request_id=new_id("req"),
            ),
        ),
        (
            "ReleaseHold",
            pb.ReleaseHoldRequest(
                program_id=s.program,
                member_id=s.member,
                hold_id="no-such-hold",
                request_id=new_id("req"),
            ),
        ),
    ]:
        problem = refused(getattr(client.stub, rpc), request)
        assert_refused(problem, grpc.StatusCode.NOT_FOUND, "HOLD_NOT_FOUND")
    assert account_state(client, server, s.program, s.member) == before


def test_unknown_transaction_is_not_found(client: Client, server: ServerThread) -> None:
    s = setup_member(client)
    other_program, other_member = client.member()
    foreign = client.earn(other_program, other_member, 10)  # not this account's
    before = account_state(client, server, s.program, s.member)
    for transaction_id in ("no-such-transaction", foreign.transaction_id):
        problem = refused(
            client.stub.Reverse,
            pb.ReverseRequest(
                store_id="store-1",
                program_id=s.program,
                member_id=s.member,
                transaction_id=transaction_id,
                request_id=new_id("req"),
            ),
        )
        assert_refused(problem, grpc.StatusCode.NOT_FOUND, "TRANSACTION_NOT_FOUND")
    assert account_state(client, server, s.program, s.member) == before


# ---------------------------------------------------------------------- already exists


def test_creating_a_program_twice_is_already_exists(client: Client) -> None:
    program = client.create_program(display_name="First")
    first = get_program(client, program)

    problem = refused(
        client.stub.CreateProgram,
        pb.CreateProgramRequest(
            program_id=program, display_name="Second", currency="USD", request_id=new_id("req")
        ),
    )

    assert_refused(problem, grpc.StatusCode.ALREADY_EXISTS, "PROGRAM_ALREADY_EXISTS")
    assert get_program(client, program) == first
    assert first.display_name == "First"
    assert first.currency == "EUR"


def test_enrolling_twice_is_already_exists(client: Client, server: ServerThread) -> None:
    program, member = client.member()
    client.earn(program, member, 10)
    before = account_state(client, server, program, member)

    problem = refused(
        client.stub.EnrollMember,
        pb.EnrollMemberRequest(program_id=program, member_id=member, request_id=new_id("req")),
    )

    assert_refused(problem, grpc.StatusCode.ALREADY_EXISTS, "MEMBER_ALREADY_ENROLLED")
    assert account_state(client, server, program, member) == before
    assert before.account.points_available == 10


# ---------------------------------------------------------------------- big amounts


def test_earning_the_largest_amount_repeatedly_is_fine(
    client: Client, server: ServerThread
) -> None:
    program, member = client.member()
    for i in range(1, 4):
        earned = client.earn(program, member, MAX_AMOUNT, purchase_minor=MAX_AMOUNT)
        assert earned.account.points_available == i * MAX_AMOUNT
    redeemed = client.redeem(program, member, MAX_AMOUNT)
    redeemed = client.redeem(program, member, MAX_AMOUNT - 1)
    assert redeemed.account.points_available == MAX_AMOUNT + 1
    state = account_state(client, server, program, member)
    assert state.account.points_available == MAX_AMOUNT + 1
    assert len(state.transaction_ids) == 6


@pytest.mark.parametrize(
    ("rpc", "points"),
    [
        ("Earn", MAX_AMOUNT + 1),
        ("Adjust", MAX_AMOUNT + 1),
        ("Redeem", MAX_AMOUNT + 1),
        ("Earn", 2**63 - 1),
        ("Adjust", 2**63 - 1),
    ],
)
def test_amounts_above_the_bound_are_invalid_not_internal(
    client: Client, server: ServerThread, rpc: str, points: int
) -> None:
    s = setup_member(client)
    client.earn(s.program, s.member, MAX_AMOUNT)
    before = account_state(client, server, s.program, s.member)
    request = with_field(BASE[rpc](s), "points", points)

    assert_invalid(refused(getattr(client.stub, rpc), request), "points")

    assert account_state(client, server, s.program, s.member) == before
    assert before.account.points_available == MAX_AMOUNT + 90
