"""The one validator of account commands, shared by the gRPC API and `ledger import`.

Given plain values (str, int, bool, datetime | None) for a command's fields, each builder
(`enroll_member`, `earn`, `redeem`, `hold`, `capture_hold`, `release_hold`, `adjust`,
`reverse`) checks every rule and returns the command, or raises with every field violation at
once. The front ends only turn their input into these values: `ledger/api/requests.py` a
protobuf message (timestamps through HasField), `ledger/importer.py` a record's strings. A
value a front end cannot convert at all (a Timestamp with bad nanos, "12x" for an integer) is
that front end's own violation, added to the same `Violations` it then passes in, so one
answer still names every bad field.

Why here: `Violations` and the field checks are plain Python, and so are the commands they
guard, so they live next to the commands in `ledger/application/`. This module imports
nothing from grpc, protobuf or the generated `ledger/v1` code; `ledger/api/validation.py`
keeps only the protobuf side (Timestamp conversion, raising the servicer's
`InvalidArgument`).

What a builder raises is `violations.raise_if_any()`: `InvalidCommand` for this class, the
API's subclass raises `InvalidArgument`. Field names in violations are the gRPC request's
field names (`points`, `store_id`, ...).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from ledger.application import commands as c

IDENTIFIER = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CURRENCY = re.compile(r"[A-Z]{3}")
# No single amount may exceed this: balances then stay far from int64 overflow, which the
# aggregate checks as well.
MAX_AMOUNT = 10**15
MAX_TEXT = 256
MAX_FUTURE = timedelta(minutes=5)
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, tzinfo=UTC)
MAX_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_TTL_SECONDS = 900
_ZONES: set[str] | None = None


class InvalidCommand(ValueError):
    """Input that cannot become a command: one (field, description) pair per violation."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


class Violations:
    """Field checks. Each check records a violation and returns a usable value, so one
    answer names every bad field at once; `raise_if_any` ends the checking."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        # A field's first violation says what is wrong with it; a later check sees only the
        # stand-in value the first returned ("must be an integer", then "must be greater
        # than 0" of the 0 in its place, would contradict it).
        if all(f != field for f, _ in self.items):
            self.items.append((field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidCommand(self.items)

    def identifier(self, field: str, value: str, required: bool = True) -> str:
        if not value:
            if required:
                self.add(field, "required: 1..64 characters of [A-Za-z0-9._:-]")
        elif not IDENTIFIER.fullmatch(value):
            self.add(field, "must be 1..64 characters of [A-Za-z0-9._:-]")
        return value

    def request_id(self, value: str, field: str = "request_id") -> str:
        if not value:
            self.add(field, "required: the idempotency key, 1..128 characters")
        elif len(value) > 128:
            self.add(field, "at most 128 characters")
        elif not value.isprintable():
            self.add(field, "must be printable characters")
        return value

    def text(self, field: str, value: str, limit: int = MAX_TEXT, required: bool = False) -> str:
        if required and not value.strip():
            self.add(field, "required")
        if len(value) > limit:
            self.add(field, f"at most {limit} characters")
        return value

    def positive(self, field: str, value: int, limit: int = MAX_AMOUNT) -> int:
        if value <= 0:
            self.add(field, "must be greater than 0")
        elif value > limit:
            self.add(field, f"must be at most {limit}")
        return value

    def non_negative(self, field: str, value: int, limit: int = MAX_AMOUNT) -> int:
        if value < 0:
            self.add(field, "must not be negative")
        elif value > limit:
            self.add(field, f"must be at most {limit}")
        return value

    def in_range(self, field: str, value: int, low: int, high: int) -> int:
        if not low <= value <= high:
            self.add(field, f"must be between {low} and {high}")
        return value

    def moment(self, field: str, value: datetime | None) -> datetime | None:
        """An instant (None: not given), which must carry a UTC offset and lie between
        1970-01-01 and 9999-12-31; returned in UTC."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            self.add(field, "must carry a UTC offset")
            return None
        if not MIN_TIME <= value <= MAX_TIME:
            self.add(field, "must be between 1970-01-01 and 9999-12-31")
            return None
        return value.astimezone(UTC)

    def occurred_at(self, value: datetime | None, now: datetime) -> datetime | None:
        moment = self.moment("occurred_at", value)
        if moment is not None and moment > now + MAX_FUTURE:
            self.add("occurred_at", "must not be more than 5 minutes in the future")
        return moment

    def time_zone(self, field: str, value: str) -> str:
        global _ZONES  # noqa: PLW0603 - computed once, read-only afterwards
        if _ZONES is None:
            _ZONES = available_timezones()
        if value not in _ZONES and value != "UTC":
            self.add(field, "must be an IANA time zone name such as Europe/Berlin")
            return "UTC"
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.add(field, "must be an IANA time zone name such as Europe/Berlin")
            return "UTC"
        return value

    def currency(self, field: str, value: str) -> str:
        if not CURRENCY.fullmatch(value):
            self.add(field, "must be an ISO 4217 code: three upper-case letters")
        return value


# ---------------------------------------------------------------------- account commands


class AccountFields(TypedDict):
    """The fields every account command has, as a front end hands them over."""

    program_id: str
    member_id: str
    request_id: str
    occurred_at: datetime | None
    store_id: str


def _account(
    v: Violations,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None,
    store_id: str,
    now: datetime,
    store_required: bool = False,
) -> AccountFields:
    """Commands that move points at a till (Earn, Redeem, Reverse) must name the store or
    channel: settlement follows the points across stores."""
    return {
        "program_id": v.identifier("program_id", program_id),
        "member_id": v.identifier("member_id", member_id),
        "request_id": v.request_id(request_id),
        "occurred_at": v.occurred_at(occurred_at, now),
        "store_id": v.identifier("store_id", store_id, required=store_required),
    }


def enroll_member(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str = "",
    referrer_member_id: str = "",
    now: datetime,
    violations: Violations | None = None,
) -> c.EnrollMember:
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now)
    referrer = v.identifier("referrer_member_id", referrer_member_id, required=False)
    if referrer and referrer == member_id:
        v.add("referrer_member_id", "a member cannot refer themselves")
    v.raise_if_any()
    return c.EnrollMember(referrer_member_id=referrer, **fields)


def earn(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str,
    points: int,
    purchase_minor: int = 0,
    order_ref: str = "",
    reason: str = "",
    qualifying: bool = True,
    expires_at: datetime | None = None,
    now: datetime,
    violations: Violations | None = None,
) -> c.EarnPoints:
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now, True)
    cmd = c.EarnPoints(
        points=v.positive("points", points),
        purchase_minor=v.non_negative("purchase_minor", purchase_minor),
        order_ref=v.text("order_ref", order_ref),
        reason=v.text("reason", reason),
        qualifying=qualifying,
        expires_at=v.moment("expires_at", expires_at),
        **fields,
    )
    v.raise_if_any()
    return cmd


def redeem(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str,
    points: int,
    order_ref: str = "",
    reason: str = "",
    now: datetime,
    violations: Violations | None = None,
) -> c.RedeemPoints:
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now, True)
    cmd = c.RedeemPoints(
        points=v.positive("points", points),
        order_ref=v.text("order_ref", order_ref),
        reason=v.text("reason", reason),
        **fields,
    )
    v.raise_if_any()
    return cmd


def hold(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str = "",
    points: int,
    ttl_seconds: int = 0,
    order_ref: str = "",
    now: datetime,
    violations: Violations | None = None,
) -> c.HoldPoints:
    """`ttl_seconds` 0: the default, DEFAULT_TTL_SECONDS."""
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now)
    ttl = ttl_seconds or DEFAULT_TTL_SECONDS
    cmd = c.HoldPoints(
        points=v.positive("points", points),
        ttl_seconds=v.in_range("ttl_seconds", ttl, 1, MAX_TTL_SECONDS),
        order_ref=v.text("order_ref", order_ref),
        **fields,
    )
    v.raise_if_any()
    return cmd


def capture_hold(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str = "",
    hold_id: str,
    points: int = 0,
    now: datetime,
    violations: Violations | None = None,
) -> c.CaptureHold:
    """`points` 0: capture all that is held."""
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now)
    cmd = c.CaptureHold(
        hold_id=v.identifier("hold_id", hold_id),
        points=v.non_negative("points", points),
        **fields,
    )
    v.raise_if_any()
    return cmd


def release_hold(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str = "",
    hold_id: str,
    now: datetime,
    violations: Violations | None = None,
) -> c.ReleaseHold:
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now)
    cmd = c.ReleaseHold(hold_id=v.identifier("hold_id", hold_id), **fields)
    v.raise_if_any()
    return cmd


def adjust(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str = "",
    points: int,
    reason: str,
    operator_id: str,
    now: datetime,
    violations: Violations | None = None,
) -> c.AdjustPoints:
    """`points` signed: a credit or a debit, not 0, at most MAX_AMOUNT either way."""
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now)
    if points == 0:
        v.add("points", "must not be 0")
    elif abs(points) > MAX_AMOUNT:
        v.add("points", "must be between -10^15 and 10^15")
    cmd = c.AdjustPoints(
        points=points,
        reason=v.text("reason", reason, required=True),
        operator_id=v.identifier("operator_id", operator_id),
        **fields,
    )
    v.raise_if_any()
    return cmd


def reverse(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str,
    transaction_id: str,
    points: int = 0,
    amount_minor: int = 0,
    reason: str = "",
    refund_purchase_minor: int | None = None,
    now: datetime,
    violations: Violations | None = None,
) -> c.ReverseTransaction:
    """`points` (an Earn, a redemption, a ConvertPoints) or `amount_minor` (a Spend, a
    TopUp); 0 = all that is left of the transaction. `refund_purchase_minor` (None: not
    given) is an Earn's: whether the transaction is one, only its account can tell."""
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now, True)
    v.identifier("transaction_id", transaction_id)
    v.non_negative("points", points)
    v.non_negative("amount_minor", amount_minor)
    if points and amount_minor:
        v.add("amount_minor", "set points (for points) or amount_minor (for money), not both")
    if refund_purchase_minor is not None:
        v.non_negative("refund_purchase_minor", refund_purchase_minor)
    cmd = c.ReverseTransaction(
        transaction_id=transaction_id,
        points=points,
        amount_minor=amount_minor,
        refund_purchase_minor=refund_purchase_minor,
        reason=v.text("reason", reason),
        **fields,
    )
    v.raise_if_any()
    return cmd


def top_up(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str,
    cash_minor: int,
    bonus_minor: int | None = None,
    payment_ref: str = "",
    now: datetime,
    violations: Violations | None = None,
) -> c.TopUp:
    """`bonus_minor` None: the program's top_up_bonus schedule decides (0 is a bonus of 0)."""
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now, True)
    cmd = c.TopUp(
        cash_minor=v.positive("cash_minor", cash_minor),
        bonus_minor=None if bonus_minor is None else v.non_negative("bonus_minor", bonus_minor),
        payment_ref=v.text("payment_ref", payment_ref),
        **fields,
    )
    v.raise_if_any()
    return cmd


def spend(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str,
    amount_minor: int,
    order_ref: str = "",
    now: datetime,
    violations: Violations | None = None,
) -> c.Spend:
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now, True)
    cmd = c.Spend(
        amount_minor=v.positive("amount_minor", amount_minor),
        order_ref=v.text("order_ref", order_ref),
        **fields,
    )
    v.raise_if_any()
    return cmd


def convert_points(
    *,
    program_id: str,
    member_id: str,
    request_id: str,
    occurred_at: datetime | None = None,
    store_id: str,
    points: int,
    now: datetime,
    violations: Violations | None = None,
) -> c.ConvertPoints:
    v = violations if violations is not None else Violations()
    fields = _account(v, program_id, member_id, request_id, occurred_at, store_id, now, True)
    cmd = c.ConvertPoints(points=v.positive("points", points), **fields)
    v.raise_if_any()
    return cmd
