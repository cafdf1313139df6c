"""The shared account-command builders (ledger/application/validation.py), without protobuf:
valid values build the expected command, each kind of bad value gives its field's violation,
and the importer's records go through the same rules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ledger.application import commands as c
from ledger.application import validation as build
from ledger.application.validation import MAX_AMOUNT, InvalidCommand, Violations
from ledger.domain.ids import request_id_key
from ledger.importer import BadRecord, to_command

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
EARLIER = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
COMMON: dict[str, Any] = {
    "program_id": "p",
    "member_id": "m",
    "request_id": "r-1",
    "occurred_at": EARLIER,
    "store_id": "s1",
}
# A valid set of values for each builder.
VALID: dict[str, tuple[Callable[..., c.AccountCommand], dict[str, Any]]] = {
    "EnrollMember": (build.enroll_member, {"referrer_member_id": "friend"}),
    "Earn": (
        build.earn,
        {
            "points": 10,
            "purchase_minor": 100,
            "order_ref": "o-1",
            "reason": "buy",
            "qualifying": False,
            "expires_at": NOW + timedelta(days=30),
        },
    ),
    "Redeem": (build.redeem, {"points": 5, "order_ref": "o-2", "reason": "coffee"}),
    "Hold": (build.hold, {"points": 5, "ttl_seconds": 600, "order_ref": "o-3"}),
    "CaptureHold": (build.capture_hold, {"hold_id": "h-1", "points": 4}),
    "ReleaseHold": (build.release_hold, {"hold_id": "h-1"}),
    "Adjust": (build.adjust, {"points": -5, "reason": "goodwill", "operator_id": "op-1"}),
    "Reverse": (build.reverse, {"transaction_id": "t-1", "points": 5, "reason": "refund"}),
}
EXPECTED: dict[str, c.AccountCommand] = {
    "EnrollMember": c.EnrollMember(**COMMON, referrer_member_id="friend"),
    "Earn": c.EarnPoints(
        **COMMON,
        points=10,
        purchase_minor=100,
        order_ref="o-1",
        reason="buy",
        qualifying=False,
        expires_at=NOW + timedelta(days=30),
    ),
    "Redeem": c.RedeemPoints(**COMMON, points=5, order_ref="o-2", reason="coffee"),
    "Hold": c.HoldPoints(**COMMON, points=5, ttl_seconds=600, order_ref="o-3"),
    "CaptureHold": c.CaptureHold(**COMMON, hold_id="h-1", points=4),
    "ReleaseHold": c.ReleaseHold(**COMMON, hold_id="h-1"),
    "Adjust": c.AdjustPoints(**COMMON, points=-5, reason="goodwill", operator_id="op-1"),
    "Reverse": c.ReverseTransaction(**COMMON, transaction_id="t-1", points=5, reason="refund"),
}
ALL = list(VALID)


def built(kind: str, **changes: Any) -> c.AccountCommand:
    builder, values = VALID[kind]
    return builder(**{**COMMON, **values, **changes}, now=NOW)


def violations_of(kind: str, **changes: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidCommand) as refused:
        built(kind, **changes)
    return refused.value.violations


@pytest.mark.parametrize("kind", ALL)
def test_valid_values_build_the_expected_command(kind: str) -> None:
    assert built(kind) == EXPECTED[kind]


# The values each builder cannot do without (besides the common ones).
REQUIRED_ONLY: dict[str, dict[str, Any]] = {
    "Earn": {"points": 1},
    "Redeem": {"points": 1},
    "Hold": {"points": 1},
    "CaptureHold": {"hold_id": "h"},
    "ReleaseHold": {"hold_id": "h"},
    "Adjust": {"points": 1, "reason": "x", "operator_id": "op"},
    "Reverse": {"transaction_id": "t"},
}


@pytest.mark.parametrize("kind", ALL)
def test_optional_fields_may_be_left_at_their_defaults(kind: str) -> None:
    builder, _ = VALID[kind]
    required = REQUIRED_ONLY.get(kind, {})
    store = {"store_id": "s"} if kind in ("Earn", "Redeem", "Reverse") else {}
    command = builder(program_id="p", member_id="m", request_id="r", now=NOW, **store, **required)
    assert command.occurred_at is None
    assert command.store_id == store.get("store_id", "")


BAD_IDS = {"space": "has space", "slash": "a/b", "non-ascii": "caf\u00e9", "65": "x" * 65}
STORE_REQUIRED = ["Earn", "Redeem", "Reverse"]
BAD_VALUES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("program_id", ALL, {**BAD_IDS, "empty": ""}),
    ("member_id", ALL, {**BAD_IDS, "empty": ""}),
    ("store_id", STORE_REQUIRED, {**BAD_IDS, "empty": ""}),
    ("store_id", [k for k in ALL if k not in STORE_REQUIRED], BAD_IDS),
    ("hold_id", ["CaptureHold", "ReleaseHold"], {**BAD_IDS, "empty": ""}),
    ("transaction_id", ["Reverse"], {**BAD_IDS, "empty": ""}),
    ("operator_id", ["Adjust"], {**BAD_IDS, "empty": ""}),
    ("referrer_member_id", ["EnrollMember"], {**BAD_IDS, "self": "m"}),
    ("request_id", ALL, {"empty": "", "129": "r" * 129, "newline": "r\nid"}),
    (
        "occurred_at",
        ALL,
        {
            "6-min-future": NOW + timedelta(minutes=6),
            "naive": datetime(2024, 1, 1),
            "before-1970": datetime(1969, 12, 31, 23, 59, tzinfo=UTC),
            "after-9999-12-31": datetime(9999, 12, 31, 0, 0, 1, tzinfo=UTC),
        },
    ),
    ("points", ["Earn", "Redeem", "Hold"], {"0": 0, "-1": -1, "1e15+1": MAX_AMOUNT + 1}),
    ("points", ["CaptureHold", "Reverse"], {"-1": -1, "1e15+1": MAX_AMOUNT + 1}),
    ("points", ["Adjust"], {"0": 0, "1e15+1": MAX_AMOUNT + 1, "-1e15-1": -MAX_AMOUNT - 1}),
    ("purchase_minor", ["Earn"], {"-1": -1, "1e15+1": MAX_AMOUNT + 1}),
    ("order_ref", ["Earn", "Redeem", "Hold"], {"257": "o" * 257}),
    ("reason", ["Earn", "Redeem", "Reverse"], {"257": "r" * 257}),
    ("reason", ["Adjust"], {"empty": "", "blank": "   ", "257": "r" * 257}),
    ("expires_at", ["Earn"], {"before-1970": datetime(1900, 1, 1, tzinfo=UTC)}),
    ("ttl_seconds", ["Hold"], {"-1": -1, "7-days-and-1s": 7 * 86_400 + 1}),
    ("amount_minor", ["Reverse"], {"-1": -1, "with-points": 5}),
]
CASES: list[Any] = [
    pytest.param(kind, field, value, id=f"{kind}-{field}-{label}")
    for field, kinds, bad in BAD_VALUES
    for kind in kinds
    for label, value in bad.items()
]


@pytest.mark.parametrize(("kind", "field", "value"), CASES)
def test_each_bad_value_is_its_fields_violation(kind: str, field: str, value: Any) -> None:
    found = violations_of(kind, **{field: value})
    assert {f for f, _ in found} == {field}
    assert all(description for _, description in found)


def test_a_reversal_names_points_or_money_not_both() -> None:
    assert violations_of("Reverse", points=3, amount_minor=5) == [
        ("amount_minor", "set points (for points) or amount_minor (for money), not both")
    ]


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        pytest.param("Earn", {"points": MAX_AMOUNT, "purchase_minor": MAX_AMOUNT}, id="1e15"),
        pytest.param("Adjust", {"points": -MAX_AMOUNT}, id="adjust-minus-1e15"),
        pytest.param("Adjust", {"points": MAX_AMOUNT}, id="adjust-1e15"),
        pytest.param("Hold", {"ttl_seconds": 7 * 86_400}, id="ttl-7-days"),
        pytest.param("Earn", {"request_id": "r" * 128, "store_id": "a.b_c:d-E9"}, id="ids"),
        pytest.param("Earn", {"occurred_at": NOW + timedelta(minutes=5)}, id="5-min-skew"),
        pytest.param("Reverse", {"points": 0}, id="reverse-all"),
        pytest.param("CaptureHold", {"points": 0}, id="capture-all"),
    ],
)
def test_values_at_the_limits_are_accepted(kind: str, changes: dict[str, Any]) -> None:
    command = built(kind, **changes)
    for field, value in changes.items():
        assert getattr(command, field) == value


def test_hold_ttl_zero_is_the_default() -> None:
    command = built("Hold", ttl_seconds=0)
    assert isinstance(command, c.HoldPoints)
    assert command.ttl_seconds == build.DEFAULT_TTL_SECONDS


def test_times_with_an_offset_are_kept_in_utc() -> None:
    berlin = timezone(timedelta(hours=2))
    command = built("Earn", occurred_at=datetime(2024, 5, 1, 10, 30, tzinfo=berlin))
    assert command.occurred_at == EARLIER
    assert command.occurred_at is not None
    assert command.occurred_at.utcoffset() == timedelta(0)


def test_every_bad_field_is_reported_at_once() -> None:
    found = violations_of(
        "Earn",
        member_id="bad id",
        points=0,
        purchase_minor=-1,
        store_id="",
        order_ref="o" * 257,
        request_id="",
        occurred_at=NOW + timedelta(minutes=10),
    )
    assert [f for f, _ in found] == [
        "member_id",
        "request_id",
        "occurred_at",
        "store_id",
        "points",
        "purchase_minor",
        "order_ref",
    ]


def test_a_front_ends_own_violations_stop_an_otherwise_valid_command() -> None:
    v = Violations()
    v.add("occurred_at", "nanos must be in 0..999999999")
    with pytest.raises(InvalidCommand) as refused:
        build.redeem(**COMMON, points=5, now=NOW, violations=v)
    assert refused.value.violations == [("occurred_at", "nanos must be in 0..999999999")]
    assert str(refused.value) == "occurred_at: nanos must be in 0..999999999"


def test_the_module_imports_nothing_of_grpc_or_protobuf() -> None:
    probe = (
        "import sys, ledger.application.validation\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'grpc'"
        " or m.startswith(('google.protobuf', 'ledger.v1', 'ledger.api'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


# ---------------------------------------------------------------------- the importer's records


def record(kind: str, **fields: Any) -> c.AccountCommand:
    return to_command({"type": kind, **fields}, "p", "src", 7, NOW)


def rejected(kind: str, **fields: Any) -> str:
    with pytest.raises(BadRecord) as refused:
        record(kind, **fields)
    return str(refused.value)


def test_a_record_builds_the_command_the_rpc_would() -> None:
    earn = record(
        "earn", member_id="m", points="10", store_id="s1", purchase_minor="100",
        qualifying="no", occurred_at="2024-05-01T10:30:00+02:00", order_ref="o-1",
    )  # fmt: skip
    assert earn == build.earn(
        program_id="p", member_id="m", request_id="import:src:7", occurred_at=EARLIER,
        store_id="s1", points=10, purchase_minor=100, order_ref="o-1", qualifying=False,
        now=NOW,
    )  # fmt: skip
    reverse = record("reverse", member_id="m", reverses="e-1", store_id="s1", request_id="x")
    assert reverse == c.ReverseTransaction(
        program_id="p",
        member_id="m",
        request_id="x",
        store_id="s1",
        transaction_id=str(request_id_key("p", "e-1")),
    )
    member = record("member", member_id="m", referrer_member_id="friend")
    assert member == c.EnrollMember(
        program_id="p", member_id="m", request_id="import:src:7", referrer_member_id="friend"
    )


@pytest.mark.parametrize(
    ("kind", "fields", "message"),
    [
        ("earn", {"points": 5}, "store_id: required"),
        ("redeem", {"points": 5}, "store_id: required"),
        ("reverse", {"reverses": "e-1"}, "store_id: required"),
        ("adjust", {"points": MAX_AMOUNT + 1, "reason": "x", "operator_id": "o"},
         "points: must be between -10^15 and 10^15"),
        ("adjust", {"points": 5, "operator_id": "o"}, "reason: required"),
        ("earn", {"points": 5, "store_id": "s", "occurred_at": "1900-01-01T00:00:00+00:00"},
         "occurred_at: must be between 1970-01-01 and 9999-12-31"),
        ("earn", {"points": 5, "store_id": "s", "expires_at": "1900-01-01T00:00:00+00:00"},
         "expires_at: must be between 1970-01-01 and 9999-12-31"),
        ("earn", {"points": 5, "store_id": "s", "occurred_at": "2024-06-01T12:03:00+00:00"},
         "occurred_at: must not be in the future"),
        ("earn", {"points": 5, "store_id": "s", "occurred_at": "2024-06-01T12:06:00+00:00"},
         "occurred_at: must not be more than 5 minutes in the future"),
        ("earn", {"points": 5, "store_id": "s", "occurred_at": "2024-06-01T12:00:00"},
         "occurred_at: must carry a UTC offset"),
        ("earn", {"points": "5x", "store_id": "s"}, "points: must be an integer"),
        ("earn", {"points": 5, "store_id": "s", "qualifying": "maybe"},
         "qualifying: must be true or false"),
        ("earn", {"points": 5, "store_id": "a b"}, "store_id: must be 1..64 characters"),
        ("top_up", {"store_id": "s", "cash_minor": 0}, "cash_minor: must be greater than 0"),
        ("spend", {"store_id": "s", "amount_minor": "ten"}, "amount_minor: must be an integer"),
        ("member", {"referrer_member_id": "m"}, "referrer_member_id: a member cannot refer"),
        ("reverse", {"store_id": "s"}, "reverses: required"),
    ],
)  # fmt: skip
def test_a_record_is_refused_where_the_rpc_would_be(
    kind: str, fields: dict[str, Any], message: str
) -> None:
    assert rejected(kind, member_id="m", **fields).startswith(message)


def test_a_records_message_names_every_bad_field() -> None:
    message = rejected("earn", member_id="", points=0, purchase_minor="x")
    assert message == (
        "purchase_minor: must be an integer; "
        "member_id: required: 1..64 characters of [A-Za-z0-9._:-]; "
        "store_id: required: 1..64 characters of [A-Za-z0-9._:-]; "
        "points: must be greater than 0"
    )


def test_null_text_fields_are_empty_not_the_word_none() -> None:
    command = record("redeem", member_id="m", points=1, store_id="s", order_ref=None)
    assert isinstance(command, c.RedeemPoints)
    assert command.order_ref == ""
