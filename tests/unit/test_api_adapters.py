"""The gRPC edges without a server: ledger/api/requests.py turns each account-command request
into the command the shared builder makes (or InvalidArgument naming the field), and
ledger/api/responses.py turns each Outcome into its response."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.api import descriptors
from ledger.api import requests as parse
from ledger.api import responses as present
from ledger.api.errors import InvalidArgument
from ledger.application import commands as c
from ledger.application import results as r
from ledger.application.views import AccountView, Outcome
from ledger.v1 import ledger_pb2 as pb

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
EARLIER = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)


def ts(moment: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(moment)
    return t


COMMON: dict[str, Any] = {
    "program_id": "p",
    "member_id": "m",
    "request_id": "r-1",
    "store_id": "s1",
}
COMMAND_COMMON: dict[str, Any] = {**COMMON, "occurred_at": EARLIER}

# Each RPC: a valid request, its parser, and the command it must become.
CASES: dict[str, tuple[Any, Callable[[Any, datetime], c.AccountCommand], c.AccountCommand]] = {
    "EnrollMember": (
        pb.EnrollMemberRequest(**COMMON, occurred_at=ts(EARLIER), referrer_member_id="f"),
        parse.enroll_member,
        c.EnrollMember(**COMMAND_COMMON, referrer_member_id="f"),
    ),
    "Earn": (
        pb.EarnRequest(
            **COMMON,
            occurred_at=ts(EARLIER),
            points=10,
            purchase_minor=100,
            order_ref="o",
            reason="buy",
            qualifying=False,
            expires_at=ts(NOW + timedelta(days=30)),
        ),
        parse.earn,
        c.EarnPoints(
            **COMMAND_COMMON,
            points=10,
            purchase_minor=100,
            order_ref="o",
            reason="buy",
            qualifying=False,
            expires_at=NOW + timedelta(days=30),
        ),
    ),
    "Redeem": (
        pb.RedeemRequest(**COMMON, occurred_at=ts(EARLIER), points=5, order_ref="o", reason="x"),
        parse.redeem,
        c.RedeemPoints(**COMMAND_COMMON, points=5, order_ref="o", reason="x"),
    ),
    "Hold": (
        pb.HoldRequest(**COMMON, occurred_at=ts(EARLIER), points=5, ttl_seconds=60, order_ref="o"),
        parse.hold,
        c.HoldPoints(**COMMAND_COMMON, points=5, ttl_seconds=60, order_ref="o"),
    ),
    "CaptureHold": (
        pb.CaptureHoldRequest(**COMMON, occurred_at=ts(EARLIER), hold_id="h", points=4),
        parse.capture_hold,
        c.CaptureHold(**COMMAND_COMMON, hold_id="h", points=4),
    ),
    "ReleaseHold": (
        pb.ReleaseHoldRequest(**COMMON, occurred_at=ts(EARLIER), hold_id="h"),
        parse.release_hold,
        c.ReleaseHold(**COMMAND_COMMON, hold_id="h"),
    ),
    "Adjust": (
        pb.AdjustRequest(
            **COMMON, occurred_at=ts(EARLIER), points=-5, reason="fix", operator_id="op"
        ),
        parse.adjust,
        c.AdjustPoints(**COMMAND_COMMON, points=-5, reason="fix", operator_id="op"),
    ),
    "Reverse": (
        pb.ReverseRequest(
            **COMMON, occurred_at=ts(EARLIER), transaction_id="t", points=5, reason="refund"
        ),
        parse.reverse,
        c.ReverseTransaction(**COMMAND_COMMON, transaction_id="t", points=5, reason="refund"),
    ),
}
RPCS = list(CASES)


def invalid(rpc: str, **changes: Any) -> list[tuple[str, str]]:
    request, parser, _ = CASES[rpc]
    changed = type(request)()
    changed.CopyFrom(request)
    for field, value in changes.items():
        if isinstance(value, Timestamp):
            getattr(changed, field).CopyFrom(value)
        else:
            setattr(changed, field, value)
    with pytest.raises(InvalidArgument) as refused:
        parser(changed, NOW)
    return refused.value.violations


@pytest.mark.parametrize("rpc", RPCS)
def test_a_valid_request_becomes_the_builders_command(rpc: str) -> None:
    request, parser, expected = CASES[rpc]
    assert parser(request, NOW) == expected


@pytest.mark.parametrize("rpc", RPCS)
def test_the_descriptor_parses_with_the_same_parser(rpc: str) -> None:
    _, parser, _ = CASES[rpc]
    (descriptor,) = [d for d in descriptors.ACCOUNT_COMMANDS if d.rpc == rpc]
    assert descriptor.parse is parser


@pytest.mark.parametrize("rpc", RPCS)
def test_unset_timestamps_are_none_not_the_epoch(rpc: str) -> None:
    request, parser, _ = CASES[rpc]
    bare = type(request)()
    bare.CopyFrom(request)
    bare.ClearField("occurred_at")
    assert parser(bare, NOW).occurred_at is None


def test_earn_unset_qualifying_is_true_and_unset_expiry_is_none() -> None:
    request = pb.EarnRequest(**COMMON, points=1)
    command = parse.earn(request, NOW)
    assert (command.qualifying, command.expires_at) == (True, None)


def test_hold_ttl_unset_is_the_default() -> None:
    command = parse.hold(pb.HoldRequest(**COMMON, points=1), NOW)
    assert command.ttl_seconds == 900


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("timestamp", "description"),
    [
        pytest.param(Timestamp(seconds=1_700_000_000, nanos=10**9), "nanos", id="nanos-1e9"),
        pytest.param(Timestamp(seconds=1_700_000_000, nanos=-1), "nanos", id="nanos-negative"),
        pytest.param(Timestamp(seconds=2**62), "out of range", id="seconds-2^62"),
        pytest.param(Timestamp(seconds=-86_400), "between 1970", id="before-1970"),
        pytest.param(ts(NOW + timedelta(minutes=6)), "5 minutes", id="6-min-future"),
    ],
)
def test_a_bad_occurred_at_is_its_violation(
    rpc: str, timestamp: Timestamp, description: str
) -> None:
    found = invalid(rpc, occurred_at=timestamp)
    assert [f for f, _ in found] == ["occurred_at"]
    assert description in found[0][1]


@pytest.mark.parametrize(
    ("rpc", "changes", "field"),
    [
        ("Earn", {"expires_at": Timestamp(seconds=253_465_459_200)}, "expires_at"),
        ("Earn", {"store_id": ""}, "store_id"),
        ("Redeem", {"store_id": ""}, "store_id"),
        ("Reverse", {"store_id": ""}, "store_id"),
        ("Earn", {"points": 0}, "points"),
        ("Adjust", {"points": 10**15 + 1}, "points"),
        ("Adjust", {"reason": " "}, "reason"),
        ("Hold", {"ttl_seconds": -1}, "ttl_seconds"),
        ("CaptureHold", {"hold_id": "a/b"}, "hold_id"),
        ("Reverse", {"amount_minor": 5}, "amount_minor"),
        ("EnrollMember", {"referrer_member_id": "m"}, "referrer_member_id"),
        ("ReleaseHold", {"request_id": ""}, "request_id"),
    ],
)
def test_a_bad_field_is_invalid_argument_naming_it(
    rpc: str, changes: dict[str, Any], field: str
) -> None:
    assert [f for f, _ in invalid(rpc, **changes)] == [field]


@pytest.mark.parametrize("rpc", ["Earn", "Redeem", "Adjust", "Reverse"])
def test_a_batch_names_the_commands_own_fields(rpc: str) -> None:
    request, _, expected = CASES[rpc]
    batch_field = next(d.batch_field for d in descriptors.ACCOUNT_COMMANDS if d.rpc == rpc)
    assert batch_field is not None
    good = pb.BatchCommand(**{batch_field: request})
    bad = pb.BatchCommand()
    getattr(bad, batch_field).CopyFrom(request)
    getattr(bad, batch_field).member_id = ""
    getattr(bad, batch_field).program_id = ""  # left empty: the batch's
    parsed = parse.batch(pb.ExecuteBatchRequest(program_id="p", commands=[good, bad]), NOW)
    assert parsed[0] == expected
    assert isinstance(parsed[1], InvalidArgument)
    assert [f for f, _ in parsed[1].violations] == [f"commands[1].{batch_field}.member_id"]


# ---------------------------------------------------------------------- presenters

VIEW = AccountView(
    program_id="p",
    member_id="m",
    points_available=90,
    points_held=10,
    points_debt=3,
    stored_value_cash_minor=0,
    stored_value_bonus_minor=0,
    tier_code="SILVER",
    qualifying_points=120,
    next_tier_code="GOLD",
    points_to_next_tier=80,
    enrolled_at=EARLIER,
    version=7,
)
ACCOUNT = pb.Account(
    program_id="p",
    member_id="m",
    points_available=90,
    points_held=10,
    points_debt=3,
    tier_code="SILVER",
    qualifying_points=120,
    next_tier_code="GOLD",
    points_to_next_tier=80,
    enrolled_at=ts(EARLIER),
    version=7,
)
BASE: dict[str, Any] = {"transaction_id": "t-9", "position": 42}


def outcome(result: r.Result | None) -> Outcome:
    return Outcome(**BASE, account=VIEW, result=result)


PRESENTED: list[Any] = [
    pytest.param(
        present.enroll_member(outcome(None)),
        pb.EnrollMemberResponse(**BASE, account=ACCOUNT),
        id="EnrollMember",
    ),
    pytest.param(
        present.earn(outcome(r.EarnResult(lot_id="lot-1", debt_repaid=3))),
        pb.EarnResponse(**BASE, account=ACCOUNT, lot_id="lot-1", debt_repaid=3),
        id="Earn",
    ),
    pytest.param(
        present.redeem(outcome(r.RedeemResult(consumed={"lot-1": 4, "lot-2": 1}))),
        pb.RedeemResponse(
            **BASE,
            account=ACCOUNT,
            consumed=[
                pb.LotPoints(lot_id="lot-1", points=4),
                pb.LotPoints(lot_id="lot-2", points=1),
            ],
        ),
        id="Redeem",
    ),
    pytest.param(
        present.hold(outcome(r.HoldResult(hold_id="h-1", expires_at=NOW))),
        pb.HoldResponse(**BASE, account=ACCOUNT, hold_id="h-1", expires_at=ts(NOW)),
        id="Hold",
    ),
    pytest.param(
        present.capture_hold(
            outcome(r.CaptureResult(consumed={"lot-1": 4}, points_captured=4, points_released=6))
        ),
        pb.CaptureHoldResponse(
            **BASE,
            account=ACCOUNT,
            points_captured=4,
            points_released=6,
            consumed=[pb.LotPoints(lot_id="lot-1", points=4)],
        ),
        id="CaptureHold",
    ),
    pytest.param(
        present.release_hold(outcome(r.ReleaseResult(points_released=10))),
        pb.ReleaseHoldResponse(**BASE, account=ACCOUNT, points_released=10),
        id="ReleaseHold",
    ),
    pytest.param(
        present.adjust(outcome(None)), pb.AdjustResponse(**BASE, account=ACCOUNT), id="Adjust"
    ),
    pytest.param(
        present.reverse(
            outcome(r.ReverseResult(points_reversed=5, debt_added=2, reverses_transaction_id="t"))
        ),
        pb.ReverseResponse(
            **BASE, account=ACCOUNT, points_reversed=5, debt_added=2, reverses_transaction_id="t"
        ),
        id="Reverse",
    ),
    pytest.param(
        present.run_expiry(
            Outcome(**BASE, result=r.ExpiryResult(expired_points=30, lots_expired=2))
        ),
        pb.RunExpiryResponse(**BASE, expired_points=30, lots_expired=2),
        id="RunExpiry",
    ),
]


@pytest.mark.parametrize(("response", "expected"), PRESENTED)
def test_an_outcome_is_presented_as_its_response(response: Any, expected: Any) -> None:
    assert response == expected


def test_an_outcome_without_an_account_presents_an_empty_one() -> None:
    response = present.adjust(Outcome(**BASE))
    assert response.account == pb.Account()


def test_a_presenter_refuses_another_commands_result() -> None:
    with pytest.raises(AssertionError):
        present.earn(outcome(r.ReleaseResult(points_released=1)))


def test_each_descriptor_presents_with_its_commands_presenter() -> None:
    results: dict[str, r.Result | None] = {
        "EnrollMember": None,
        "Earn": r.EarnResult(lot_id="l", debt_repaid=0),
        "Redeem": r.RedeemResult(consumed={}),
        "Hold": r.HoldResult(hold_id="h", expires_at=NOW),
        "CaptureHold": r.CaptureResult(consumed={}, points_captured=0, points_released=0),
        "ReleaseHold": r.ReleaseResult(points_released=0),
        "Adjust": None,
        "Reverse": r.ReverseResult(points_reversed=0, debt_added=0, reverses_transaction_id=""),
        "TopUp": r.TopUpResult(cash_minor=1, bonus_minor=0, bonus_step_min_cash=None),
        "Spend": r.SpendResult(cash_minor=1, bonus_minor=0),
        "ConvertPoints": r.ConvertResult(value_minor=1, consumed={}),
    }
    for d in descriptors.ACCOUNT_COMMANDS:
        response = d.present(outcome(results[d.rpc]))
        assert type(response).__name__ == f"{d.rpc}Response"
        assert (response.transaction_id, response.position) == ("t-9", 42)
        assert response.account == ACCOUNT
