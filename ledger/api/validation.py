"""Field checks shared by every RPC. Each check records a violation and returns a usable
value, so one response names every bad field at once."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from google.protobuf.timestamp_pb2 import Timestamp

from ledger.api.errors import InvalidArgument

IDENTIFIER = re.compile(r"[A-Za-z0-9._:-]{1,64}")
CURRENCY = re.compile(r"[A-Z]{3}")
# No single amount may exceed this: balances then stay far from int64 overflow, which the
# aggregate checks as well.
MAX_AMOUNT = 10**15
MAX_TEXT = 256
MAX_FUTURE = timedelta(minutes=5)
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, tzinfo=UTC)
_ZONES: set[str] | None = None


class Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.items.append((field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

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

    def timestamp(self, field: str, ts: Timestamp, present: bool) -> datetime | None:
        if not present:
            return None
        if not 0 <= ts.nanos < 1_000_000_000:
            self.add(field, "nanos must be in 0..999999999")
            return None
        try:
            moment = ts.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            self.add(field, "out of range")
            return None
        if not MIN_TIME <= moment <= MAX_TIME:
            self.add(field, "must be between 1970-01-01 and 9999-12-31")
            return None
        return moment

    def occurred_at(self, ts: Timestamp, present: bool, now: datetime) -> datetime | None:
        moment = self.timestamp("occurred_at", ts, present)
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
